"""Per-frame CFBI+ inference time at 480p and the share of it spent in the matching operators.

Runs the VideoSegmenter (the authors' protocol: a 480x854 frame is resized to 481x849) on a synthetic clip
with random weights, times every `step` after warm-up, and times the cfbi_ops.global_match / local_match
calls made inside it (wrappers around the public functions; CUDA is synchronised around each call).
Writes a Markdown table to benchmarks/results/model.md (or --output).

    python -m benchmarks.model_speed                         # resnet101 and small, CPU
    python -m benchmarks.model_speed --configs small --frames 5 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict

import numpy as np
import torch

import cfbi_model.modeling.matching as matching_module
import cfbi_ops
from benchmarks.machine import machine_info
from cfbi_model import CFBIPlus, InferenceConfig, VideoSegmenter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PartTimer:
    """Wall-clock timers around cfbi_ops.global_match / local_match (as seen by cfbi_model.modeling.matching), the
    model's feature extraction (backbone + FPN) and its collaborative ensembler."""

    def __init__(self, model: CFBIPlus, device: torch.device) -> None:
        self.model = model
        self.device = device
        self.totals: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._restore = []

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _wrap(self, owner, attribute: str, label: str, instance: bool) -> None:
        original = getattr(owner, attribute)

        def timed(*args, **kwargs):
            self._sync()
            start = time.perf_counter()
            out = original(*args, **kwargs)
            self._sync()
            self.totals[label] += time.perf_counter() - start
            self.calls[label] += 1
            return out

        setattr(owner, attribute, timed)
        if instance:  # drop the instance attribute again, exposing the class method
            self._restore.append(lambda: delattr(owner, attribute))
        else:
            self._restore.append(lambda: setattr(owner, attribute, original))

    def __enter__(self) -> PartTimer:
        self._wrap(matching_module.cfbi_ops, "global_match", "global_match", instance=False)
        self._wrap(matching_module.cfbi_ops, "local_match", "local_match", instance=False)
        self._wrap(self.model, "extract_features", "features", instance=True)
        self._wrap(self.model.dynamic_seghead, "forward", "ensembler", instance=True)
        return self

    def __exit__(self, *exc) -> None:
        for restore in reversed(self._restore):
            restore()
        self._restore.clear()

    def reset(self) -> None:
        self.totals.clear()
        self.calls.clear()


def synthetic_clip(count: int, height: int, width: int, objects: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    frames = []
    for t in range(count):
        img = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        for k in range(objects):
            y, x = (k + 1) * height // (objects + 2) + 3 * t, (k + 1) * width // (objects + 2) + 5 * t
            img[y : y + height // 5, x : x + width // 6] = (40 * k, 200, 255 - 40 * k)
        frames.append(img)
    labels = np.zeros((height, width), np.uint8)
    for k in range(objects):
        y, x = (k + 1) * height // (objects + 2), (k + 1) * width // (objects + 2)
        labels[y : y + height // 5, x : x + width // 6] = k + 1
    return frames, labels


def measure(config: str, args: argparse.Namespace, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = CFBIPlus(config).to(device).eval()
    frames, labels = synthetic_clip(args.frames + args.warmup + 1, args.height, args.width, args.objects)
    seg = VideoSegmenter(
        model, global_atrous=args.global_atrous, min_matching_pixels=args.min_matching_pixels, amp=args.amp
    )
    timer = PartTimer(model, device)
    step_times = []
    with timer:
        seg.step(frames[0], labels)
        for t, frame in enumerate(frames[1:]):
            if t == args.warmup:
                timer.reset()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            seg.step(frame)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if t >= args.warmup:
                step_times.append(time.perf_counter() - start)
    total = sum(step_times)
    n = len(step_times)
    return {
        "config": config,
        "input": seg._augs[0].size,
        "labels": seg.num_labels,
        "median": statistics.median(step_times),
        "mean": total / n,
        "min": min(step_times),
        "global": timer.totals["global_match"] / n,
        "local": timer.totals["local_match"] / n,
        "features": timer.totals["features"] / n,
        "ensembler": timer.totals["ensembler"] / n,
        "share": (timer.totals["global_match"] + timer.totals["local_match"]) / total,
        "frames": n,
        "params": sum(p.numel() for p in model.parameters()),
    }


def header_lines(device: torch.device) -> list[str]:
    """The table's account of the machine (benchmarks.machine) and of the kernels' last commit."""
    info = machine_info(str(device))
    try:
        commit = subprocess.run(
            ["git", "log", "-1", "--format=%h %s", "--", "csrc", "cfbi_ops"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    lines = [
        f"- machine: {info['machine']} {info['cpu']}, {info['logical CPUs']} logical CPUs, {info['system']}",
        f"- torch {info['torch']} (default intra-op threads {info['threads']}), Python {info['python']}",
        f"- device: {device}" + (f" ({info['gpu']})" if "gpu" in info else ""),
        f"- cfbi_ops compiled extension: {cfbi_ops.HAS_EXTENSION}; last csrc/cfbi_ops commit: {commit}",
    ]
    if hasattr(os, "getloadavg"):
        lines.append("- load average before the run (1/5/15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["resnet101", "small"])
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=854)
    parser.add_argument("--objects", type=int, default=2)
    parser.add_argument("--frames", type=int, default=3, help="timed frames per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed frames after the first")
    parser.add_argument("--global-atrous", type=int, default=2)
    parser.add_argument(
        "--min-matching-pixels",
        type=int,
        default=InferenceConfig().min_matching_pixels,
        help="default: cfbi_model.config.InferenceConfig (100 is the authors' released setting)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=None,
        help="torch intra-op thread counts to measure (default: torch's current setting)",
    )
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--output", default=os.path.join(REPO, "benchmarks", "results", "model.md"))
    parser.add_argument("--json", default=None, help="also write the rows and settings as JSON here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    header = header_lines(device)
    default_threads = torch.get_num_threads()
    rows = []
    try:
        for threads in args.threads or [default_threads]:
            torch.set_num_threads(threads)
            for config in args.configs:
                result = measure(config, args, device)
                result["threads"] = threads
                rows.append(result)
                print(
                    f"{config}, {threads} thread(s): {result['median'] * 1000:.0f} ms/frame (median of "
                    f"{result['frames']}), matching {100 * result['share']:.1f}% (global "
                    f"{result['global'] * 1000:.0f} ms, local {result['local'] * 1000:.0f} ms)",
                    file=sys.stderr,
                )
    finally:
        torch.set_num_threads(default_threads)

    if hasattr(os, "getloadavg"):
        header.append(
            "- load average after the run (1/5/15 min): "
            + ", ".join(f"{x:.2f}" for x in os.getloadavg())
            + " (a shared machine: other jobs ran alongside; with 2 cores a load above 2 means the "
            "benchmark did not have the CPUs to itself)"
        )
    lines = [
        "# CFBI+ per-frame inference time",
        "",
        f"Frame {args.height}x{args.width} (DAVIS 480p), {args.objects} objects + background, single scale, no flip, "
        f"4x global atrous {args.global_atrous}, min matching pixels {args.min_matching_pixels}"
        + (", AMP" if args.amp else "")
        + "; random weights; "
        f"{args.warmup} warm-up frame(s), then {args.frames} timed frames (`VideoSegmenter.step`). Matching = "
        "time inside `cfbi_ops.global_match` + `cfbi_ops.local_match` (3 scales each); ms columns are per frame.",
        "",
        *header,
        "",
        "| config | threads | params | network input | ms/frame (median) | mean | min | global match ms "
        "| local match ms | matching share | features ms | ensembler ms | other ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        other = r["mean"] - r["global"] - r["local"] - r["features"] - r["ensembler"]
        lines.append(
            f"| {r['config']} | {r['threads']} | {r['params'] / 1e6:.1f} M | "
            f"{r['input'][0]}x{r['input'][1]} | "
            f"{r['median'] * 1000:.0f} | {r['mean'] * 1000:.0f} | {r['min'] * 1000:.0f} | "
            f"{r['global'] * 1000:.0f} | {r['local'] * 1000:.0f} | {100 * r['share']:.1f}% | "
            f"{r['features'] * 1000:.0f} | {r['ensembler'] * 1000:.0f} | {other * 1000:.0f} |"
        )
    lines += [
        "",
        "features = backbone + ASPP + decoder + FPN of the current frame; ensembler = the collaborative "
        "ensembler (all labels); other = the rest of `step` (matching glue, attention pooling, resizing, "
        "upsampling the probabilities to the frame, softmax, argmax, state update).",
    ]
    lines += [
        "",
        "Command: `python -m benchmarks.model_speed " + " ".join(argv if argv is not None else sys.argv[1:]) + "`",
        "",
    ]
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        f.write("\n".join(lines))
    print(f"wrote {args.output}", file=sys.stderr)
    if args.json:
        settings = {
            k: getattr(args, k)
            for k in (
                "height",
                "width",
                "objects",
                "frames",
                "warmup",
                "global_atrous",
                "min_matching_pixels",
                "device",
                "amp",
            )
        }
        with open(args.json, "w") as f:
            json.dump(dict(args=settings, machine=header, rows=rows), f, indent=1)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
