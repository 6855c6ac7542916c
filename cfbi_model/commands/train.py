"""`cfbi train`: train CFBI+ on DAVIS-2017 (and optionally YouTube-VOS) from scratch or resume a run.

Multi-process: `torchrun --nproc_per_node=2 -m cfbi_model.cli train ...` (DistributedDataParallel; gloo on
CPU, nccl on CUDA); the batch size is per process.
"""
from __future__ import annotations

import argparse
import os
import sys

from . import positive_int

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train", help="train a CFBI+ model on DAVIS-2017 / YouTube-VOS",
        description="Train CFBI+ (sequential training, bootstrapped cross-entropy, SGD with poly decay). "
                    "Checkpoints go to --out/checkpoint.pth (model, optimizer, scheduler, step, RNG state); "
                    "--resume continues from it exactly. TensorBoard logs go to --out/tensorboard when "
                    "tensorboard is installed. Start under torchrun for several processes.")
    parser.add_argument("--config", default="resnet101", help="model configuration (resnet101, small)")
    parser.add_argument("--data", required=True, metavar="DIR", help="DAVIS-2017 root (JPEGImages/480p, "
                        "Annotations/480p, ImageSets/2017)")
    parser.add_argument("--data-youtube", metavar="DIR", help="YouTube-VOS root (train/JPEGImages, "
                        "train/Annotations, train/meta.json), mixed with DAVIS")
    parser.add_argument("--youtube-ratio", type=float, default=0.5,
                        help="fraction of the clips drawn from YouTube-VOS when --data-youtube is given")
    parser.add_argument("--train-split", default="train", help="DAVIS split to train on (default: train)")
    parser.add_argument("--val-split", default="val", help="DAVIS split for the periodic J&F (default: val)")
    parser.add_argument("--val-every", type=int, default=0, metavar="N", help="validate every N steps (0: never)")
    parser.add_argument("--val-sequences", type=int, default=None, metavar="N",
                        help="validate on the first N sequences of the split only")
    parser.add_argument("--val-max-frames", type=int, default=None, metavar="N", help="frames per validation video")
    parser.add_argument("--steps", type=positive_int, default=100_000, help="total optimizer steps")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="clips per step and process")
    parser.add_argument("--lr", type=float, default=0.01, help="base learning rate")
    parser.add_argument("--warmup", type=int, default=1000, help="warm-up steps")
    parser.add_argument("--crop", type=positive_int, default=465, help="square crop size (16k + 1)")
    parser.add_argument("--short-edge", type=int, default=480,
                        help="resize frames to this short edge before the random scale (0: keep the size)")
    parser.add_argument("--num-current", type=positive_int, default=3, help="current frames per clip")
    parser.add_argument("--sequential-start", type=int, default=None,
                        help="step from which the previous mask is the model's prediction (default: steps / 2)")
    parser.add_argument("--hard-mining-steps", type=int, default=None,
                        help="steps over which the bootstrapped loss goes from 100%% to 15%% (default: steps / 2)")
    parser.add_argument("--checkpoint-every", type=int, default=1000, metavar="N")
    parser.add_argument("--log-every", type=int, default=10, metavar="N")
    parser.add_argument("--workers", type=int, default=2, help="data-loader processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-amp", action="store_true", help="no autocast on CUDA")
    parser.add_argument("--out", default="runs/cfbi", metavar="DIR", help="run folder (default: runs/cfbi)")
    parser.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pth")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import torch

    from ..data import ClipConfig, DataError, MixedVideos, davis_videos, youtube_vos_videos
    from ..train import Trainer, TrainConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    if not 0.0 <= args.youtube_ratio <= 1.0:
        print("cfbi train: error: --youtube-ratio must lie in [0, 1]", file=sys.stderr)
        return 2
    try:
        sources = [davis_videos(args.data, args.train_split)]
        weights = [1.0]
        if args.data_youtube:
            sources.append(youtube_vos_videos(args.data_youtube))
            weights = [1.0 - args.youtube_ratio, args.youtube_ratio]
        videos = MixedVideos(sources, weights)
        val = []
        if args.val_every:
            val = davis_videos(args.data, args.val_split)
            if args.val_sequences:
                val = val[:args.val_sequences]
    except DataError as error:
        print(f"cfbi train: error: {error}", file=sys.stderr)
        return 1
    crop = (args.crop, args.crop)
    config = TrainConfig(model=args.config, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                         warmup_steps=args.warmup, sequential_start=args.sequential_start,
                         hard_mining_steps=args.hard_mining_steps,
                         clip=ClipConfig(num_current=args.num_current, crop_size=crop,
                                         short_edge=args.short_edge or None),
                         seed=args.seed, num_workers=args.workers, checkpoint_every=args.checkpoint_every,
                         log_every=args.log_every, val_every=args.val_every, val_max_frames=args.val_max_frames,
                         amp=not args.no_amp)
    if args.resume and not os.path.isfile(os.path.join(args.out, "checkpoint.pth")):
        print(f"cfbi train: --resume: no checkpoint in {args.out}; starting from step 0", file=sys.stderr)
    try:
        trainer = Trainer(config, videos, args.out, val_videos=val)
        history = trainer.train(resume=args.resume)
    except DataError as error:
        print(f"cfbi train: error: {error}", file=sys.stderr)
        return 1
    if trainer.rank == 0:
        last = history[-1] if history else {}
        print(f"step {trainer.step}: loss {last.get('loss', float('nan')):.4f}; checkpoint {trainer.checkpoint_path}")
    return 0
