"""Frames per second of `cfbi predict` on a generated DAVIS-layout split, with 1 and with N processes (torchrun,
gloo on the CPU), each process with --threads T. Prints a Markdown table.

The split is written by cfbi_model.data.synthetic.write_synthetic_davis (frames of 160x120 by default); the
model is the shipped small checkpoint unless --checkpoint is given. Frames per second = frames of the split /
wall time of the whole command (start-up, model loading and the final gather included), so that it is what a
user waits for.

    python -m benchmarks.predict_speed --videos 8 --processes 1 2 --threads 1
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from benchmarks.machine import machine_info

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_predict(data: str, out: str, checkpoint: str, processes: int, threads: int) -> float:
    """Wall seconds of one `cfbi predict` run."""
    args = [
        "predict",
        "--data",
        data,
        "--checkpoint",
        checkpoint,
        "--out",
        out,
        "--threads",
        str(threads),
        "--quiet",
        "--device",
        "cpu",
    ]
    if processes == 1:
        command = [sys.executable, "-m", "cfbi_model.cli", *args]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(processes),
            "-m",
            "cfbi_model.cli",
            *args,
        ]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"cfbi predict failed ({processes} process(es)):\n{done.stderr[-4000:]}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--frames", type=int, nargs=2, default=(20, 20), metavar=("MIN", "MAX"))
    parser.add_argument("--height", type=int, default=120)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--checkpoint", default=None, help="default: the shipped small checkpoint")
    args = parser.parse_args(argv)

    from cfbi_model.build import shipped_weights  # noqa: PLC0415
    from cfbi_model.data.synthetic import SyntheticConfig, write_synthetic_davis  # noqa: PLC0415

    checkpoint = args.checkpoint or shipped_weights()
    rows = []
    with tempfile.TemporaryDirectory(prefix="cfbi-predict-speed-") as scratch:
        data = os.path.join(scratch, "davis")
        names = write_synthetic_davis(
            data,
            num_train=0,
            num_val=args.videos,
            seed=0,
            config=SyntheticConfig(height=args.height, width=args.width, num_frames=tuple(args.frames)),
        )
        frames = sum(len(os.listdir(os.path.join(data, "JPEGImages", "480p", n))) for n in names["val"])
        for processes in args.processes:
            load = os.getloadavg()
            seconds = run_predict(data, os.path.join(scratch, f"out{processes}"), checkpoint, processes, args.threads)
            rows.append((processes, seconds, frames / seconds, load))
    info = machine_info()
    print(f"- machine: {info['machine']} {info['cpu']}, {info['logical CPUs']} logical CPUs")
    print(
        f"- split: {args.videos} generated videos, {frames} frames of {args.width}x{args.height}; "
        f"checkpoint {os.path.basename(checkpoint)}; {args.threads} thread(s) per process\n"
    )
    print("| processes | seconds | frames/s | load average before (1 min) |\n|---|---|---|---|")
    for processes, seconds, rate, load in rows:
        print(f"| {processes} | {seconds:.1f} | {rate:.2f} | {load[0]:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
