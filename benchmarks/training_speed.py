"""Optimizer steps per second of `cfbi train` on this machine (benchmarks/results/training_speed.md).

    .venv/bin/python -m benchmarks.training_speed --config small --crop 465 --batch-size 1 \
        --num-current 3 --steps 3 --threads 1

Clips come from synthetic 480p videos (cfbi_model.data.synthetic); the first step is not timed (allocations,
thread pools). Prints one JSON line: the settings, the seconds of each timed step, their median and
steps/s, the CPU model and the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

from benchmarks.machine import cpu_name
from cfbi_model.config import ClipConfig, TrainConfig, config_names
from cfbi_model.data import collate_clips, davis_videos
from cfbi_model.data.synthetic import SyntheticConfig, write_synthetic_davis
from cfbi_model.training import Trainer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="small", choices=config_names())
    parser.add_argument("--crop", type=int, default=465)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--num-current", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (after one untimed)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as root:
        write_synthetic_davis(
            root,
            num_train=2,
            num_val=0,
            seed=0,
            config=SyntheticConfig(height=480, width=854, num_frames=(12, 12), max_objects=3),
        )
        config = TrainConfig(
            model=args.config,
            steps=args.steps + 1,
            batch_size=args.batch_size,
            warmup_steps=1,
            clip=ClipConfig(num_current=args.num_current, crop_size=(args.crop, args.crop)),
            num_workers=0,
            checkpoint_every=0,
            log_every=0,
            amp=False,
        )
        trainer = Trainer(
            config, davis_videos(root, "train"), os.path.join(root, "run"), progress=False, tensorboard=False
        )
        batches = [
            collate_clips([trainer.dataset[s * args.batch_size + i] for i in range(args.batch_size)])
            for s in range(args.steps + 1)
        ]  # sampled up front: the loader is not what is timed
        seconds = []
        for index, batch in enumerate(batches):
            started = time.perf_counter()
            trainer.train_step(batch)
            if index:
                seconds.append(time.perf_counter() - started)
    median = statistics.median(seconds)
    print(
        json.dumps(
            {
                "config": args.config,
                "crop": args.crop,
                "batch_size": args.batch_size,
                "num_current": args.num_current,
                "threads": args.threads,
                "seconds": [round(s, 3) for s in seconds],
                "median_s": round(median, 3),
                "steps_per_s": round(1.0 / median, 3),
                "cpu": cpu_name(),
                "load_before": [round(x, 1) for x in load_before],
                "load_after": [round(x, 1) for x in os.getloadavg()],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
