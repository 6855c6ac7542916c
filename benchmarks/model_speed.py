"""Per-frame CFBI+ inference time at 480p and the share of it spent in the matching operators.

Runs the VideoSegmenter (the authors' protocol: a 480x854 frame is resized to 481x849) on a synthetic clip
with random weights, times every `step` after warm-up, and times the cfbi_ops.global_match / local_match
calls made inside it (wrappers around the public functions; CUDA is synchronised around each call).
Writes a Markdown table to benchmarks/results/model.md (or --output).

    python -m benchmarks.model_speed                         # resnet101 and small, CPU
    python -m benchmarks.model_speed --configs small --frames 5 --device cuda
    python -m benchmarks.model_speed --variants float32 bfloat16 float32+compile bfloat16+compile --accuracy
"""

from __future__ import annotations

import argparse
import contextlib
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
            img[y : y + height // 5, x : x + width // 6] = ((40 * k) % 256, 200, (255 - 40 * k) % 256)
        frames.append(img)
    labels = np.zeros((height, width), np.uint8)
    for k in range(objects):
        y, x = (k + 1) * height // (objects + 2), (k + 1) * width // (objects + 2)
        labels[y : y + height // 5, x : x + width // 6] = k + 1
    return frames, labels


def parse_variant(text: str) -> tuple[str, bool]:
    """ "bfloat16+compile" -> ("bfloat16", True): an InferenceConfig precision, optionally compiled."""
    precision, _, rest = text.partition("+")
    if rest not in ("", "compile"):
        raise argparse.ArgumentTypeError(f"variant {text!r}: PRECISION or PRECISION+compile")
    InferenceConfig(precision=precision)  # ValueError for an unknown precision
    return precision, rest == "compile"


def make_model(config: str, device: torch.device) -> CFBIPlus:
    torch.manual_seed(0)  # the same weights for every variant
    return CFBIPlus(config).to(device).eval()


def measure(config: str, variant: str, args: argparse.Namespace, device: torch.device) -> dict:
    precision, compiled = parse_variant(variant)
    model = make_model(config, device)
    frames, labels = synthetic_clip(args.frames + args.warmup + 1, args.height, args.width, args.objects)
    # The part timers wrap the model's methods, which a compiled graph would not call: compiled runs time steps.
    timer = PartTimer(model, device) if not compiled else contextlib.nullcontext(PartTimer(model, device))
    step_times, warmup_times = [], []
    with timer as parts:
        # Made inside the timers: the segmenter keeps the model's (wrapped) methods.
        seg = VideoSegmenter(
            model,
            global_atrous=args.global_atrous,
            min_matching_pixels=args.min_matching_pixels,
            amp=args.amp,
            precision=precision,
            compile=compiled,
        )
        seg.step(frames[0], labels)
        for t, frame in enumerate(frames[1:]):
            if t == args.warmup:
                parts.reset()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            seg.step(frame)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            (step_times if t >= args.warmup else warmup_times).append(time.perf_counter() - start)
    total = sum(step_times)
    n = len(step_times)
    return {
        "config": config,
        "variant": variant,
        "input": seg._augs[0].size,
        "labels": seg.num_labels,
        "median": statistics.median(step_times),
        "mean": total / n,
        "min": min(step_times),
        "first": warmup_times[0] if warmup_times else float("nan"),
        "global": parts.totals["global_match"] / n,
        "local": parts.totals["local_match"] / n,
        "features": parts.totals["features"] / n,
        "ensembler": parts.totals["ensembler"] / n,
        "share": (parts.totals["global_match"] + parts.totals["local_match"]) / total,
        "frames": n,
        "params": sum(p.numel() for p in model.parameters()),
    }


def accuracy(config: str, variant: str, args: argparse.Namespace, device: torch.device, reference: dict) -> dict:
    """Label agreement and the largest probability difference against float32 on synthetic clips with 1, 3 and 8
    objects, and the J&F of `cfbi demo`'s clip (for the small configuration, with the shipped weights)."""
    from cfbi_model.build import load_model, shipped_weights
    from cfbi_model.data.synthetic import SyntheticConfig, render_video
    from cfbi_model.evaluation import metrics

    precision, compiled = parse_variant(variant)
    model = load_model(shipped_weights(), device=device) if config == "small" else make_model(config, device)
    clips = [("demo", *render_video(2024, SyntheticConfig(num_frames=(24, 24))))] if config == "small" else []
    for objects in (1, 3, 8):
        frames, labels = synthetic_clip(args.accuracy_frames, args.height, args.width, objects, seed=objects)
        clips.append((f"{objects} objects", np.stack(frames), np.stack([labels] * len(frames))))
    out = {"config": config, "variant": variant}
    for name, frames, gt in clips:
        seg = VideoSegmenter(model, precision=precision, compile=compiled)
        results = [seg.step(frames[0], gt[0])] + [seg.step(f) for f in frames[1:]]
        labels = np.stack([r.labels for r in results])
        probs = [r.probs.float().cpu() for r in results]
        key = (config, name)
        if key not in reference:
            reference[key] = (labels, probs)
        base_labels, base_probs = reference[key]
        row = {
            "agreement": float((labels == base_labels).mean()),
            "max_prob_diff": max(float((a - b).abs().max()) for a, b in zip(probs, base_probs)),
        }
        if name == "demo":
            row["jf"] = metrics.evaluate_sequence(gt, labels, metrics.davis_object_ids(gt[0])).measures()["J&F-Mean"]
        out[name] = row
    return out


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
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["float32"],
        help="precisions to time, each optionally +compile (e.g. float32 bfloat16 float32+compile bfloat16+compile)",
    )
    parser.add_argument(
        "--accuracy",
        action="store_true",
        help="also compare every variant with float32 on clips with 1, 3 and 8 objects (and the demo clip for small)",
    )
    parser.add_argument("--accuracy-frames", type=int, default=8, help="frames per accuracy clip")
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
                for variant in args.variants:
                    result = measure(config, variant, args, device)
                    result["threads"] = threads
                    rows.append(result)
                    print(
                        f"{config} {variant}, {threads} thread(s): {result['median'] * 1000:.0f} ms/frame (median "
                        f"of {result['frames']}; first step {result['first']:.1f} s), matching "
                        f"{100 * result['share']:.1f}%",
                        file=sys.stderr,
                    )
        accuracies, reference = [], {}
        if args.accuracy:
            for config in args.configs:
                for variant in ["float32", *[v for v in args.variants if v != "float32"]]:
                    accuracies.append(accuracy(config, variant, args, device, reference))
                    print(f"{config} {variant}: {accuracies[-1]}", file=sys.stderr)
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
        "| config | variant | threads | params | network input | ms/frame (median) | vs float32 | mean | min "
        "| first step s | global match ms | local match ms | matching share | features ms | ensembler ms | other ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = {(r["config"], r["threads"]): r["median"] for r in rows if r["variant"] == "float32"}
    for r in rows:
        other = r["mean"] - r["global"] - r["local"] - r["features"] - r["ensembler"]
        ratio = base.get((r["config"], r["threads"]))
        parts = (
            f"{r['global'] * 1000:.0f} | {r['local'] * 1000:.0f} | {100 * r['share']:.1f}% | "
            f"{r['features'] * 1000:.0f} | {r['ensembler'] * 1000:.0f} | {other * 1000:.0f}"
            if not r["variant"].endswith("+compile")
            else "- | - | - | - | - | -"
        )
        lines.append(
            f"| {r['config']} | {r['variant']} | {r['threads']} | {r['params'] / 1e6:.1f} M | "
            f"{r['input'][0]}x{r['input'][1]} | {r['median'] * 1000:.0f} | "
            + (f"{ratio / r['median']:.2f}x" if ratio else "-")
            + f" | {r['mean'] * 1000:.0f} | {r['min'] * 1000:.0f} | {r['first']:.1f} | {parts} |"
        )
    lines += [
        "",
        "features = backbone + ASPP + decoder + FPN of the current frame; ensembler = the collaborative "
        "ensembler (all labels); other = the rest of `step` (matching glue, attention pooling, resizing, "
        "upsampling the probabilities to the frame, softmax, argmax, state update). vs float32 = the float32 row's "
        "median / this row's, same run. first step = the first warm-up step (with +compile: the "
        "compilation). Compiled graphs are not split into parts.",
    ]
    if accuracies:
        lines += [
            "",
            "## Accuracy against float32",
            "",
            "Each variant against float32 with the same weights (small: the shipped weights; resnet101: random "
            f"weights, seed 0), clips of {args.accuracy_frames} frames at {args.height}x{args.width} with 1, 3 "
            "and 8 objects; `demo` is `cfbi demo`'s clip (seed 2024, 24 frames). agreement = equal labels, all "
            "frames; max |dp| = largest probability difference.",
            "",
            "| config | variant | clip | labels equal | max dp | J&F (demo) |",
            "|---|---|---|---|---|---|",
        ]
        for a in accuracies:
            for name, row in a.items():
                if isinstance(row, dict):
                    jf = f"{row['jf']:.3f}" if "jf" in row else ""
                    lines.append(
                        f"| {a['config']} | {a['variant']} | {name} | {100 * row['agreement']:.3f}% | "
                        f"{row['max_prob_diff']:.3g} | {jf} |"
                    )
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
                "variants",
            )
        }
        with open(args.json, "w") as f:
            json.dump(dict(args=settings, machine=header, rows=rows, accuracy=accuracies), f, indent=1)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
