"""`cfbi train`: train CFBI+ on DAVIS-2017 (and optionally YouTube-VOS) from scratch or resume a run.

Multi-process: `torchrun --nproc_per_node=2 -m cfbi_model.cli train ...` (DistributedDataParallel; gloo on
CPU, nccl on CUDA); the batch size is per process.
"""
from __future__ import annotations

import argparse
import os
import sys

from ..config import ClipConfig, TrainConfig, config_names
from ._options import HelpFormatter, add_inference_arguments, inference_config, positive_int

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    train, clip = TrainConfig(), ClipConfig()  # every default below is theirs
    parser = subparsers.add_parser(
        "train", help="train a CFBI+ model on DAVIS-2017 / YouTube-VOS",
        description="Train CFBI+ (sequential training, bootstrapped cross-entropy, SGD with poly decay). "
                    "Checkpoints go to --out/checkpoint.pth (model and its configuration, optimizer, scheduler, "
                    "step, RNG state); --resume continues from it exactly. TensorBoard logs go to "
                    "--out/tensorboard when tensorboard is installed. Start under torchrun for several processes.",
        formatter_class=HelpFormatter)
    parser.add_argument("--config", default=train.model, choices=config_names(), help="model configuration")
    parser.add_argument("--data", required=True, metavar="DIR", help="DAVIS-2017 root (JPEGImages/480p, "
                        "Annotations/480p, ImageSets/2017)")
    parser.add_argument("--data-youtube", metavar="DIR", help="YouTube-VOS root (train/JPEGImages, "
                        "train/Annotations, train/meta.json), mixed with DAVIS")
    parser.add_argument("--youtube-ratio", type=float, default=0.5,
                        help="fraction of the clips drawn from YouTube-VOS when --data-youtube is given")
    parser.add_argument("--train-split", default="train", help="DAVIS split to train on")
    parser.add_argument("--val-split", default="val", help="DAVIS split for the periodic J&F")
    parser.add_argument("--val-every", type=int, default=train.val_every, metavar="N",
                        help="validate every N steps (0: never)")
    parser.add_argument("--val-sequences", type=int, default=None, metavar="N",
                        help="validate on the first N sequences of the split only (None: all)")
    parser.add_argument("--val-max-frames", type=int, default=train.val_max_frames, metavar="N",
                        help="frames per validation video (None: all)")
    parser.add_argument("--steps", type=positive_int, default=train.steps, help="total optimizer steps")
    parser.add_argument("--batch-size", type=positive_int, default=train.batch_size, help="clips per step and process")
    parser.add_argument("--lr", type=float, default=train.lr, help="base learning rate")
    parser.add_argument("--warmup", type=int, default=train.warmup_steps, help="warm-up steps")
    parser.add_argument("--crop", type=positive_int, default=clip.crop_size[0], help="square crop size (16k + 1)")
    parser.add_argument("--short-edge", type=int, default=clip.short_edge,
                        help="resize frames to this short edge before the random scale (0: keep the size)")
    parser.add_argument("--num-current", type=positive_int, default=clip.num_current, help="current frames per clip")
    parser.add_argument("--sequential-start", type=int, default=train.sequential_start,
                        help="step from which the previous mask is the model's prediction (None: steps / 2)")
    parser.add_argument("--hard-mining-steps", type=int, default=train.hard_mining_steps,
                        help="steps over which the bootstrapped loss goes from 100%% to 15%% (None: steps / 2)")
    parser.add_argument("--checkpoint-every", type=int, default=train.checkpoint_every, metavar="N",
                        help="write the checkpoint every N steps (and at the end)")
    parser.add_argument("--log-every", type=int, default=train.log_every, metavar="N", help="log every N steps")
    parser.add_argument("--workers", type=int, default=train.num_workers, help="data-loader processes")
    parser.add_argument("--seed", type=int, default=train.seed, help="seeds the initial weights and the clips")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (None: torch's choice)")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=train.amp, help="autocast on CUDA")
    parser.add_argument("--out", default="runs/cfbi", metavar="DIR", help="run folder")
    parser.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pth")
    add_inference_arguments(parser, prefix="val-", title="validation inference")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import torch

    from ..data.datasets import DataError, MixedVideos, davis_videos, youtube_vos_videos
    from ..training.trainer import Trainer

    if args.threads:
        torch.set_num_threads(args.threads)
    if not 0.0 <= args.youtube_ratio <= 1.0:
        print("cfbi train: error: --youtube-ratio must lie in [0, 1]", file=sys.stderr)
        return 2
    try:
        inference = inference_config(args, prefix="val-")  # of the periodic validation
    except ValueError as error:
        print(f"cfbi train: error: {error}", file=sys.stderr)
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
                         amp=args.amp)
    if args.resume and not os.path.isfile(os.path.join(args.out, "checkpoint.pth")):
        print(f"cfbi train: --resume: no checkpoint in {args.out}; starting from step 0", file=sys.stderr)
    try:
        trainer = Trainer(config, videos, args.out, val_videos=val, inference=inference)
        history = trainer.train(resume=args.resume)
    except DataError as error:
        print(f"cfbi train: error: {error}", file=sys.stderr)
        return 1
    if trainer.rank == 0:
        last = history[-1] if history else {}
        print(f"step {trainer.step}: loss {last.get('loss', float('nan')):.4f}; checkpoint {trainer.checkpoint_path}")
    return 0
