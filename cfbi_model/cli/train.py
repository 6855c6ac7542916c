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

from ..config import RECIPES, ClipConfig, TrainConfig, config_names, recipe_train_config
from ._options import HelpFormatter, add_inference_arguments, inference_config, positive_int

__all__ = ["add_parser", "run"]

# Options a recipe sets (their defaults are TrainConfig's otherwise): the flags given on the command line
# override the recipe, so the parser records which were given.
_RECIPE_FIELDS = {
    "config": "model",
    "steps": "steps",
    "batch_size": "batch_size",
    "lr": "lr",
    "youtube_ratio": "youtube_ratio",
    "num_current": "num_current",
}


class _Given(argparse._StoreAction):
    """Stores the value and adds the option's dest to `namespace.given_options`."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        super().__call__(parser, namespace, values, option_string)
        namespace.given_options = frozenset(getattr(namespace, "given_options", frozenset())) | {self.dest}


def _recipe_option(parser: argparse.ArgumentParser, *names: str, help: str, **kwargs) -> None:
    parser.add_argument(*names, action=_Given, help=help + "; a --recipe sets its own", **kwargs)


def _recipes_help() -> str:
    return "; ".join(f"{r.name}: {r.description}" for r in RECIPES.values())


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    train, clip = TrainConfig(), ClipConfig()  # every default below is theirs
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
    _recipe_option(parser, "--config", default=train.model, choices=config_names(), help="model configuration")
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
    _recipe_option(
        parser,
        "--youtube-ratio",
        default=train.youtube_ratio,
        type=float,
        help="fraction of the clips drawn from YouTube-VOS when --data-youtube is given",
    )
    parser.add_argument(
        "--init",
        metavar="PATH",
        default=train.init,
        help="start from these weights: a torchvision ResNet, a DeepLabV3+ (jfzhang95 or VainF "
        "layout) or a CFBI+ checkpoint (README, 'Training'); ignored when resuming",
    )
    parser.add_argument("--train-split", default="train", help="DAVIS split to train on")
    parser.add_argument("--val-split", default="val", help="DAVIS split for the periodic J&F")
    parser.add_argument(
        "--val-every", type=int, default=train.val_every, metavar="N", help="validate every N steps (0: never)"
    )
    parser.add_argument(
        "--val-sequences",
        type=int,
        default=None,
        metavar="N",
        help="validate on the first N sequences of the split only (None: all)",
    )
    parser.add_argument(
        "--val-max-frames",
        type=int,
        default=train.val_max_frames,
        metavar="N",
        help="frames per validation video (None: all)",
    )
    _recipe_option(parser, "--steps", default=train.steps, type=positive_int, help="total optimizer steps")
    _recipe_option(
        parser,
        "--batch-size",
        default=train.batch_size,
        type=positive_int,
        help="clips per micro-batch and process (with a recipe: its global batch / (processes x --accumulate))",
    )
    parser.add_argument(
        "--accumulate",
        type=positive_int,
        default=train.accumulate,
        metavar="K",
        help="micro-batches per optimizer step (gradient accumulation; the same clips as a "
        "K-times-larger --batch-size)",
    )
    _recipe_option(parser, "--lr", default=train.lr, type=float, help="base learning rate (given: not scaled)")
    parser.add_argument("--momentum", type=float, default=train.momentum, help="SGD momentum")
    parser.add_argument("--weight-decay", type=float, default=train.weight_decay, help="SGD weight decay")
    parser.add_argument("--warmup", type=int, default=train.warmup_steps, help="warm-up steps")
    parser.add_argument(
        "--clip-grad-norm", type=float, default=train.clip_grad_norm, help="gradient-norm clip (0: off)"
    )
    parser.add_argument(
        "--top-k-percent",
        type=float,
        default=train.top_k_percent,
        help="final fraction of the hardest pixels in the bootstrapped loss",
    )
    parser.add_argument("--crop", type=positive_int, default=clip.crop_size[0], help="square crop size (16k + 1)")
    parser.add_argument(
        "--scale-range",
        type=float,
        nargs=2,
        default=list(clip.scale_range),
        metavar=("MIN", "MAX"),
        help="random scale of a clip",
    )
    parser.add_argument(
        "--short-edge",
        type=int,
        default=clip.short_edge,
        help="resize frames to this short edge before the random scale (0: keep the size)",
    )
    _recipe_option(
        parser, "--num-current", default=clip.num_current, type=positive_int, help="current frames per clip (N)"
    )
    parser.add_argument("--max-objects", type=positive_int, default=clip.max_objects, help="objects kept per clip")
    parser.add_argument(
        "--sequential-start",
        type=int,
        default=train.sequential_start,
        help="step from which the previous mask is the model's prediction (None: steps / 2)",
    )
    parser.add_argument(
        "--hard-mining-steps",
        type=int,
        default=train.hard_mining_steps,
        help="steps over which the bootstrapped loss goes from 100%% to --top-k-percent (None: steps / 2)",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=train.checkpoint_every,
        metavar="N",
        help="write the checkpoint every N steps (and at the end)",
    )
    parser.add_argument(
        "--keep",
        type=int,
        default=train.keep_checkpoints,
        metavar="N",
        help="also keep the last N checkpoints as checkpoint-STEP.pth",
    )
    parser.add_argument("--log-every", type=int, default=train.log_every, metavar="N", help="log every N steps")
    parser.add_argument("--workers", type=int, default=train.num_workers, help="data-loader processes")
    parser.add_argument("--seed", type=int, default=train.seed, help="seeds the initial weights and the clips")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (None: torch's choice)")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=train.amp, help="autocast on CUDA")
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
    add_inference_arguments(parser, prefix="val-", title="validation inference")
    parser.set_defaults(func=run, given_options=frozenset())
    return parser


def _error(message: str, status: int = 1) -> int:
    print(f"cfbi train: error: {message}", file=sys.stderr)
    return status


def run(args: argparse.Namespace) -> int:
    world_size, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    given = {
        field: getattr(args, dest)
        for dest, field in _RECIPE_FIELDS.items()
        if dest in args.given_options and field != "num_current"
    }
    if args.recipe is None:  # TrainConfig's defaults, as the parser holds them
        given.update({field: getattr(args, dest) for dest, field in _RECIPE_FIELDS.items() if field != "num_current"})
    clip_given = {
        "crop_size": (args.crop, args.crop),
        "short_edge": args.short_edge or None,
        "scale_range": tuple(args.scale_range),
        "max_objects": args.max_objects,
    }
    if args.recipe is None or "num_current" in args.given_options:
        clip_given["num_current"] = args.num_current
    try:
        inference = inference_config(args, prefix="val-")  # of the periodic validation
        config, account = recipe_train_config(
            args.recipe,
            world_size,
            **given,
            clip=clip_given,
            accumulate=args.accumulate,
            momentum=args.momentum,
            weight_decay=args.weight_decay,
            warmup_steps=args.warmup,
            clip_grad_norm=args.clip_grad_norm or None,
            top_k_percent=args.top_k_percent,
            sequential_start=args.sequential_start,
            hard_mining_steps=args.hard_mining_steps,
            seed=args.seed,
            num_workers=args.workers,
            checkpoint_every=args.checkpoint_every,
            keep_checkpoints=args.keep,
            log_every=args.log_every,
            val_every=args.val_every,
            val_max_frames=args.val_max_frames,
            amp=args.amp,
            init=args.init,
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
    if args.val_every and args.data is None:
        return _error("--val-every needs --data (the DAVIS-2017 validation split)", 2)
    if rank == 0:
        print(f"cfbi train: {account}", file=sys.stderr)

    import torch

    from ..build import CheckpointError
    from ..data.datasets import DataError, MixedVideos, davis_videos, youtube_vos_videos
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
        if args.val_every:
            val = davis_videos(args.data, args.val_split)
            if args.val_sequences:
                val = val[: args.val_sequences]
    except DataError as error:
        return _error(str(error))
    if args.resume and not os.path.exists(os.path.join(args.out, "checkpoint.pth")) and rank == 0:
        print(f"cfbi train: --resume: no checkpoint in {args.out}; starting from step 0", file=sys.stderr)
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
