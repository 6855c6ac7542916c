"""`cfbi predict`: segment every video of a benchmark split and write what its evaluation scores.

    cfbi predict --data ROOT --layout {davis,youtube} --split NAME --checkpoint PATH --out DIR [--zip FILE]
                 [--all-frames] [--resume] [--threads N] [--device cpu|cuda] [inference options]
    torchrun --nproc-per-node N -m cfbi_model.cli predict ...      # the videos shared among N processes

Writes DIR/Annotations/<video>/<frame>.png for every scored frame (palette of the annotations), each video
folder through <video>.partial renamed when complete; --resume skips finished videos; --zip writes the archive
the evaluation servers accept (Annotations/<video>/<frame>.png), on rank 0 once every rank is done.
Layouts: cfbi_model.data.splits (MOSE uses the YouTube-VOS layout).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from ._options import (
    HelpFormatter,
    add_config_argument,
    add_inference_arguments,
    add_runtime_arguments,
    apply_runtime,
    inference_config,
)

__all__ = ["add_parser", "run"]

_PROG = "cfbi predict"
_DEFAULT_SPLIT = {"davis": "val", "youtube": "valid"}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "predict",
        help="segment a whole DAVIS / YouTube-VOS / MOSE split (resumable, multi-process)",
        description="Segment every video of a benchmark split from its annotations and write the masks its "
        "evaluation scores to DIR/Annotations/<video>/<frame>.png (optionally zipped for the "
        "evaluation server). Under torchrun the videos are shared among the processes.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--data", required=True, metavar="ROOT", help="data set root")
    parser.add_argument(
        "--layout",
        choices=sorted(_DEFAULT_SPLIT),
        default="davis",
        help="davis: DAVIS-2017; youtube: YouTube-VOS 2018 / 2019 or MOSE",
    )
    parser.add_argument("--split", default=None, help="split name (None: val for davis, valid for youtube)")
    parser.add_argument("--resolution", default="480p", help="DAVIS resolution folder")
    parser.add_argument(
        "--all-frames",
        action="store_true",
        help="youtube: propagate through every frame of ROOT/<split>_all_frames (the scored "
        "frames are still those of ROOT/<split>/JPEGImages)",
    )
    parser.add_argument("--checkpoint", required=True, metavar="PATH", help="CFBI+ checkpoint (.pth)")
    add_config_argument(parser, "(only for checkpoints without one)")
    parser.add_argument("--out", required=True, metavar="DIR", help="writes DIR/Annotations/<video>/<frame>.png")
    parser.add_argument("--zip", default=None, metavar="FILE", help="also write the submission archive")
    parser.add_argument("--resume", action="store_true", help="skip the videos an earlier run finished")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_runtime_arguments(parser)
    add_inference_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def _error(message: str, code: int) -> int:
    print(f"{_PROG}: error: {message}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    """Entry point: 0, 1 for bad input data or a bad checkpoint, 2 for a bad command line."""
    import torch  # noqa: PLC0415

    from ..build import CheckpointError, load_model  # noqa: PLC0415
    from ..data.splits import LAYOUTS, youtube_split  # noqa: PLC0415
    from ..evaluation.predict import finished_videos, format_timings, predict_split, write_zip  # noqa: PLC0415
    from ..io.frames import MediaError  # noqa: PLC0415

    split = args.split or _DEFAULT_SPLIT[args.layout]
    if args.all_frames and args.layout != "youtube":
        return _error("--all-frames is for --layout youtube", 2)
    if args.zip is not None and os.path.isdir(args.zip):
        return _error(f"--zip {args.zip!r} is a folder; give a file name", 2)
    if not os.path.isfile(args.checkpoint):
        return _error(f"checkpoint {args.checkpoint!r} does not exist", 1)
    try:
        device = apply_runtime(args)
        inference = inference_config(args)
    except ValueError as error:
        return _error(str(error), 2)
    try:
        if args.layout == "youtube":
            videos = youtube_split(args.data, split, all_frames=args.all_frames)
        else:
            videos = LAYOUTS["davis"](args.data, split, args.resolution)
    except MediaError as error:  # DataError included
        return _error(str(error), 1)
    annotations_dir = os.path.join(args.out, "Annotations")
    finished = finished_videos(annotations_dir) & {v.name for v in videos}
    if finished and not args.resume:
        return _error(
            f"{annotations_dir} holds {len(finished)} finished video(s) of an earlier run; pass --resume "
            "to skip them, or choose another --out",
            2,
        )

    world, rank, local_rank = (
        int(os.environ.get(k, d)) for k, d in (("WORLD_SIZE", "1"), ("RANK", "0"), ("LOCAL_RANK", "0"))
    )
    distributed = world > 1
    if distributed:
        import torch.distributed as dist  # noqa: PLC0415

        if device == "cuda":
            torch.cuda.set_device(local_rank)
            device = f"cuda:{local_rank}"
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    started = time.perf_counter()
    timings, failure = [], None
    try:
        model = load_model(args.checkpoint, config=args.config, device=device)
        timings = predict_split(
            model,
            videos,
            args.out,
            inference,
            rank=rank,
            world=world,
            resume=args.resume,
            progress=not args.quiet and rank == 0,
        )
    except CheckpointError as error:
        failure = str(error)
    except MediaError as error:
        failure = str(error)
    if distributed:
        # Every rank reaches this gather, failed or not, so that none waits forever; it is also the barrier
        # before the zip.
        gathered: list = [None] * world
        dist.all_gather_object(gathered, (timings, failure))
        timings = [t for part, _ in gathered for t in part]
        failures = [f"rank {r}: {f}" for r, (_, f) in enumerate(gathered) if f is not None]
        dist.destroy_process_group()
    else:
        failures = [failure] if failure is not None else []
    if failures:
        return _error("; ".join(failures), 1) if rank == 0 else 1
    if rank != 0:
        return 0
    if args.zip is not None:
        try:
            write_zip(args.out, args.zip, [v.name for v in videos])
        except MediaError as error:
            return _error(str(error), 1)
    seconds = time.perf_counter() - started
    done = [t for t in timings if not t.skipped]
    frames = sum(t.frames for t in done)
    print(format_timings(timings))
    print(
        f"{_PROG}: {len(videos)} video(s) ({len(timings) - len(done)} skipped), {frames} frames, "
        f"{seconds:.1f} s, {frames / seconds if seconds > 0 else 0.0:.2f} frames/s on {world} process(es); "
        f"wrote {annotations_dir}" + (f" and {args.zip}" if args.zip else ""),
        file=sys.stderr,
    )
    return 0
