"""`cfbi train`: train CFBI+ on DAVIS-2017 and / or YouTube-VOS, from scratch, from pretrained weights
(--init) or with one of the paper's recipes (--recipe); resume a run (--resume).

Multi-process: `torchrun --nproc_per_node=2 -m cfbi_model.cli train ...` (DistributedDataParallel; gloo on
CPU, nccl on CUDA); the batch size is per process. SIGINT / SIGTERM write the checkpoint of the current step
and exit with status 128 + the signal number (130, 143).
"""

from __future__ import annotations

import argparse
import os
import sys

from ..config import ClipConfig, TrainConfig
from ..training.recipes import RECIPES, recipe_fields, recipe_train_config
from ._options import (
    HelpFormatter,
    add_config_arguments,
    add_inference_arguments,
    given_config_values,
    inference_config,
)

__all__ = ["add_parser", "run"]


def _recipes_help() -> str:
    return "; ".join(f"{r.name}: {r.description}" for r in RECIPES.values())


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train",
        help="train a CFBI+ model on DAVIS-2017 / YouTube-VOS",
        description="Train CFBI+ (sequential training, bootstrapped cross-entropy, SGD with poly decay). "
        "Checkpoints go to --out/checkpoint.pth (model and its configuration, optimizer, scheduler, "
        "step, RNG state, a checksum), atomically; --resume continues from it exactly and refuses a "
        "damaged checkpoint or changed settings. Every logged step goes to --out/log.jsonl and, when "
        "tensorboard is installed, --out/tensorboard. SIGINT / SIGTERM write the checkpoint of the "
        "current step and exit with 130 / 143. Start under torchrun for several processes.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default=None,
        help="the paper's settings (each overridable by its flag); with another global batch "
        "(processes x --batch-size x --accumulate) the lr is scaled linearly. " + _recipes_help(),
    )
    parser.add_argument(
        "--data",
        metavar="DIR",
        default=None,
        help="DAVIS-2017 root (JPEGImages/480p, "
        "Annotations/480p, ImageSets/2017); needed unless the run trains on YouTube-VOS only",
    )
    parser.add_argument(
        "--data-youtube",
        metavar="DIR",
        default=None,
        help="YouTube-VOS root (train/JPEGImages, train/Annotations, train/meta.json), mixed with DAVIS",
    )
    parser.add_argument("--train-split", default="train", help="DAVIS split to train on")
    parser.add_argument("--val-split", default="val", help="DAVIS split for the periodic J&F")
    parser.add_argument(
        "--val-sequences",
        type=int,
        default=None,
        metavar="N",
        help="validate on the first N sequences of the split only (None: all)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (None: torch's choice)")
    parser.add_argument("--out", default="runs/cfbi", metavar="DIR", help="run folder")
    parser.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pth")
    parser.add_argument(
        "--allow-changes",
        action="store_true",
        help="with --resume, continue although settings differ from the checkpoint's (named in "
        "a warning) instead of refusing",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="progress bar (loss, lr, steps/s, ETA) on stderr",
    )
    # One option per TrainConfig / ClipConfig field; a recipe yields to those given on the command line.
    set_by_recipe = recipe_fields()

    def note(name: str) -> str:
        return "; a --recipe sets its own" if name in set_by_recipe else ""

    add_config_arguments(parser.add_argument_group("training (defaults: TrainConfig)"), TrainConfig, note=note)
    add_config_arguments(parser.add_argument_group("clips (defaults: ClipConfig)"), ClipConfig, note=note)
    add_inference_arguments(parser, prefix="val-", title="validation inference")
    parser.set_defaults(func=run)
    return parser


def _error(message: str, status: int = 1) -> int:
    print(f"cfbi train: error: {message}", file=sys.stderr)
    return status


def run(args: argparse.Namespace) -> int:
    world_size, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    try:
        inference = inference_config(args, prefix="val-")  # of the periodic validation
        config, account = recipe_train_config(
            args.recipe,
            world_size,
            **given_config_values(args, TrainConfig),
            clip=given_config_values(args, ClipConfig),
        )
    except ValueError as error:
        return _error(str(error), 2)
    use_davis = args.data is not None and config.youtube_ratio < 1.0
    use_youtube = args.data_youtube is not None and config.youtube_ratio > 0.0
    if args.recipe:
        missing = [
            flag
            for need, flag in (("davis", "--data"), ("youtube", "--data-youtube"))
            if need in RECIPES[args.recipe].needs and getattr(args, flag[2:].replace("-", "_")) is None
        ]
        if missing:
            return _error(
                f"recipe {args.recipe} trains on {' and '.join(RECIPES[args.recipe].needs)}: pass "
                f"{' and '.join(missing)}",
                2,
            )
    if not (use_davis or use_youtube):
        return _error(
            "no training data: pass --data (DAVIS-2017) and / or --data-youtube (YouTube-VOS, with "
            "--youtube-ratio > 0)",
            2,
        )
    if config.val_every and args.data is None:
        return _error("--val-every needs --data (the DAVIS-2017 validation split)", 2)
    if rank == 0:
        print(f"cfbi train: {account}", file=sys.stderr)

    import torch

    from ..build import CheckpointError
    from ..data.datasets import DataError, MixedVideos, check_sizes, davis_videos, youtube_vos_videos
    from ..training.trainer import Trainer, TrainingInterrupted

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        sources, weights = [], []
        if use_davis:
            sources.append(davis_videos(args.data, args.train_split))
            weights.append(1.0 - config.youtube_ratio if use_youtube else 1.0)
        if use_youtube:
            sources.append(youtube_vos_videos(args.data_youtube))
            weights.append(config.youtube_ratio if use_davis else 1.0)
        videos = MixedVideos(sources, weights)
        val = []
        if config.val_every:
            val = davis_videos(args.data, args.val_split)
            if args.val_sequences:
                val = val[: args.val_sequences]
        # Every frame's and mask's size from its header, now: a bad file ends the run before its first step.
        check_sizes([v for source in sources for v in source])
    except DataError as error:
        return _error(str(error))
    if args.resume and not os.path.exists(os.path.join(args.out, "checkpoint.pth")):
        return _error(f"--resume: no checkpoint in {args.out} (a mistyped --out?); leave out --resume to start a run")
    try:
        trainer = Trainer(config, videos, args.out, val_videos=val, inference=inference, progress=args.progress)
        history = trainer.train(resume=args.resume, allow_changes=args.allow_changes)
    except TrainingInterrupted as stop:
        if rank == 0:
            print(f"cfbi train: {stop}", file=sys.stderr)
        return 128 + stop.signum
    except (DataError, CheckpointError) as error:
        return _error(str(error).splitlines()[0] if str(error) else type(error).__name__)
    if trainer.rank == 0:
        last = history[-1] if history else {}
        print(f"step {trainer.step}: loss {last.get('loss', float('nan')):.4f}; checkpoint {trainer.checkpoint_path}")
    return 0
