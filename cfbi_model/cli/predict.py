"""`cfbi predict`: segment every video of a benchmark split and write what its evaluation scores.

    cfbi predict --data ROOT --layout {davis,youtube} --split NAME --checkpoint PATH --out DIR [--zip FILE]
                 [--all-frames] [--resume] [--threads N] [--device cpu|cuda] [inference options]
    torchrun --nproc-per-node N -m cfbi_model.cli predict ...      # the videos shared among N processes

Writes DIR/Annotations/<video>/<frame>.png for every scored frame (palette of the annotations), each video
folder through <video>.partial renamed when complete; --resume skips finished videos; --zip writes the archive
the evaluation servers accept (Annotations/<video>/<frame>.png), on rank 0 once every rank is done.
Layouts: cfbi_model.data.layouts (MOSE uses the YouTube-VOS layout). --resume checks that the finished videos
were written with the same checkpoint and settings (recorded in each folder), --allow-changes keeps them anyway.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from ..errors import InputError, UsageError
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
    parser.add_argument(
        "--allow-changes",
        action="store_true",
        help="with --resume, keep finished videos even when they were written with another checkpoint or settings",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_runtime_arguments(parser)
    add_inference_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Exit codes (cfbi_model.cli.main): 2 for a command-line mistake, 1 for bad input data or a bad checkpoint."""
    from ..build import load_model  # noqa: PLC0415
    from ..data.layouts import davis, youtube  # noqa: PLC0415
    from ..evaluation.predict import finished_videos, format_timings, predict_split, write_zip  # noqa: PLC0415
    from ..io.frames import MediaError  # noqa: PLC0415
    from ..runtime import distributed_environment  # noqa: PLC0415

    split = args.split or _DEFAULT_SPLIT[args.layout]
    if args.all_frames and args.layout != "youtube":
        raise UsageError("--all-frames is for --layout youtube")
    if args.zip is not None and os.path.isdir(args.zip):
        raise UsageError(f"--zip {args.zip!r} is a folder; give a file name")
    if not os.path.isfile(args.checkpoint):
        raise MediaError(f"checkpoint {args.checkpoint!r} does not exist")
    device = apply_runtime(args)
    inference = inference_config(args)
    if args.layout == "youtube":
        videos = youtube(args.data, split, all_frames=args.all_frames)
    else:
        videos = davis(args.data, split, args.resolution)
    settings = _settings(args, inference)
    annotations_dir = os.path.join(args.out, "Annotations")
    finished = finished_videos(annotations_dir) & {v.name for v in videos}
    if finished and not args.resume:
        raise UsageError(
            f"{annotations_dir} holds {len(finished)} finished video(s) of an earlier run; pass --resume "
            "to skip them, or choose another --out"
        )
    if finished and not args.allow_changes:
        _check_resume(annotations_dir, sorted(finished), settings)

    env = distributed_environment()
    world, rank = env.world, env.rank
    distributed = world > 1
    if distributed:
        import torch  # noqa: PLC0415
        import torch.distributed as dist  # noqa: PLC0415

        if device == "cuda":
            torch.cuda.set_device(env.local_rank)
            device = f"cuda:{env.local_rank}"
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
            settings=settings,
        )
    except InputError as error:  # bad data, an unreadable or mismatched checkpoint
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
        if rank != 0:
            return 1
        raise InputError("; ".join(failures))
    if rank != 0:
        return 0
    if args.zip is not None:
        write_zip(args.out, args.zip, [v.name for v in videos])
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


def _settings(args: argparse.Namespace, inference) -> dict:
    """What decides a video's masks, recorded in each finished folder's marker: the checkpoint (its SHA-256),
    the model configuration override, the inference settings and the frames propagated."""
    from ..io.files import file_sha256  # noqa: PLC0415

    return {
        "checkpoint_sha256": file_sha256(args.checkpoint),
        "config": args.config,
        "inference": inference.to_dict(),
        "all_frames": bool(args.all_frames),
        "resolution": args.resolution,
    }


def _check_resume(annotations_dir: str, finished: list[str], settings: dict) -> None:
    """--resume keeps finished videos only when an earlier run wrote them with the same checkpoint and settings."""
    import json  # noqa: PLC0415

    from ..inference.sinks import read_marker  # noqa: PLC0415

    for name in finished:
        recorded = read_marker(os.path.join(annotations_dir, name))
        if recorded != json.loads(json.dumps(settings)):
            differing = sorted(k for k in settings if (recorded or {}).get(k) != json.loads(json.dumps(settings[k])))
            raise UsageError(
                f"--resume: video {name!r} in {annotations_dir} was written with other settings "
                f"({', '.join(differing) or 'unrecorded'} differ); resume with the earlier run's checkpoint and "
                "options, or pass --allow-changes to keep its videos anyway"
            )
