"""Per-frame time of the packages of `cfbi export` against eager inference, the compile time and the package size.

    python -m benchmarks.export_speed [--configs small resnet101] [--size 480 854] [--frames 6]
                                      [--dtypes float32 bfloat16] [--device cpu|cuda]
                                      [--out benchmarks/results/export.json]

Random weights (speed does not depend on them), a generated clip with two objects, one annotated first frame;
the first propagated frame of each engine is a warm-up and is not counted. Prints a Markdown table row per
configuration and writes the figures with machine_info() as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np
import torch

from benchmarks.machine import machine_info


def _clip(height: int, width: int, frames: int) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(0)
    clip = [rng.integers(0, 256, (height, width, 3)).astype(np.uint8) for _ in range(frames)]
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4 : height // 2, width // 4 : width // 2] = 1
    mask[height // 2 : 3 * height // 4, width // 2 : 3 * width // 4] = 2
    return clip, mask


def _per_frame(engine, clip: list[np.ndarray], mask: np.ndarray) -> list[float]:
    times = []
    engine.step(clip[0], mask)
    for frame in clip[1:]:
        start = time.perf_counter()
        engine.step(frame)
        times.append(time.perf_counter() - start)
    return times[1:]  # the first propagated frame warms up


def measure(name: str, size: tuple[int, int], frames: int, dtype: str, device: str = "cpu") -> dict:
    from cfbi_model import VideoSegmenter, build_model, load_exported  # noqa: PLC0415
    from cfbi_model.config import InferenceConfig  # noqa: PLC0415
    from cfbi_model.inference.export import export_model  # noqa: PLC0415

    load_before = os.getloadavg()[0]
    torch.manual_seed(0)
    model = build_model(name).eval().to(device)
    clip, mask = _clip(*size, frames)
    eager = _per_frame(VideoSegmenter(model, precision=dtype), clip, mask)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        manifest = export_model(model, folder, config=InferenceConfig(precision=dtype))
        total = time.perf_counter() - start
        package_bytes = sum(os.path.getsize(os.path.join(folder, p)) for p in manifest["packages"].values())
        exported = _per_frame(load_exported(folder), clip, mask)
    return {
        "config": name,
        "size": list(size),
        "dtype": dtype,
        "device": device,
        "eager_ms": round(1e3 * statistics.median(eager), 1),
        "exported_ms": round(1e3 * statistics.median(exported), 1),
        "export_s": manifest["export_seconds"],
        "compile_s": manifest["compile_seconds"],
        "total_export_s": round(total, 1),
        "package_mib": round(package_bytes / 2**20, 1),
        "frames_timed": len(exported),
        "speedup": round(statistics.median(eager) / statistics.median(exported), 2),
        "load_average_before": round(load_before, 1),
        "load_average_after": round(os.getloadavg()[0], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["small", "resnet101"])
    parser.add_argument("--size", nargs=2, type=int, default=[480, 854], metavar=("H", "W"))
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument(
        "--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16", "float16"]
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the packages run")
    parser.add_argument("--out", default="benchmarks/results/export.json")
    args = parser.parse_args()
    results = {"machine": machine_info(args.device), "rows": []}
    print(
        "| model | frame | dtype | eager ms/frame | exported ms/frame | eager / exported | trace s | compile s "
        "| packages MiB | load before -> after |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.configs:
        for dtype in args.dtypes:
            row = measure(name, tuple(args.size), args.frames, dtype, args.device)
            results["rows"].append(row)
            print(
                f"| {name} | {row['size'][1]}x{row['size'][0]} | {dtype} | {row['eager_ms']} | {row['exported_ms']} "
                f"| {row['speedup']} | {row['export_s']} | {row['compile_s']} | {row['package_mib']} "
                f"| {row['load_average_before']} -> {row['load_average_after']} |",
                flush=True,
            )
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=2)
    print(json.dumps(results["machine"]))


if __name__ == "__main__":
    main()
