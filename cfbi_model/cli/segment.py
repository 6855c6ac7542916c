"""`cfbi segment`: segment the objects of annotated frames through a video (frame folder or video file).

    cfbi segment (--frames DIR | --video FILE) (--mask FIRST.png | --masks DIR) --out DIR
                 (--checkpoint PATH | --exported DIR)
                 [--name NAME] [--per-object] [--overlay FILE.mp4|.gif] [--threads N] [--device cpu|cuda]
                 [inference options] [--allow-random [--config NAME]]

--masks holds palette PNGs named after frames (same stem; 00000.png, ... for a video file): an object starts at
the first annotated frame that contains it, frames before the first annotation are background, and a later
annotation of a known object is a correction. Writes DIR/<name>/<frame>.png (name: the frame folder's or the
video's; the palette of the first mask), through DIR/<name>.partial/ renamed at the end, which is the layout
`cfbi evaluate --pred DIR` reads.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import UsageError
from ._options import (
    HelpFormatter,
    add_config_argument,
    add_inference_arguments,
    add_runtime_arguments,
    apply_runtime,
    inference_config,
)

__all__ = ["add_parser", "run"]

_PROG = "cfbi segment"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "segment",
        help="segment annotated objects through a video",
        description="Propagate the objects of annotated frames (a first-frame mask, or masks on any frames) "
        "through a video with CFBI+.",
        formatter_class=HelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--frames", metavar="DIR", help="folder of frames (sorted by file name)")
    source.add_argument("--video", metavar="FILE", help="video file (needs imageio and imageio-ffmpeg)")
    annotation = parser.add_mutually_exclusive_group(required=True)
    annotation.add_argument(
        "--mask",
        metavar="FIRST.png",
        help="label mask of the first frame (palette PNG: 0 background, ids 1..254, 255 ignored)",
    )
    annotation.add_argument(
        "--masks",
        metavar="DIR",
        help="folder of label masks named after frames (same stem, .png); objects start at "
        "their first annotation, later ones are corrections",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="writes DIR/<name>/<frame>.png")
    parser.add_argument(
        "--name", default=None, help="output sub-folder (None: the frame folder's name or the video file's stem)"
    )
    parser.add_argument(
        "--per-object",
        action="store_true",
        help="also write DIR/<name>/objects/<id>/<frame>.png (one 0/255 mask per object)",
    )
    parser.add_argument("--checkpoint", metavar="PATH", help="CFBI+ checkpoint (.pth)")
    parser.add_argument(
        "--exported",
        metavar="DIR",
        help="run the packages of `cfbi export` instead of a checkpoint (single scale, no flip; their own "
        "inference settings)",
    )
    parser.add_argument(
        "--allow-other-torch",
        action="store_true",
        help="with --exported: run packages exported with another torch release (refused by default)",
    )
    add_config_argument(parser, "(default: the checkpoint's; resnet101 without a checkpoint)")
    parser.add_argument("--overlay", metavar="FILE", help="also write an overlay video (.mp4) or animation (.gif)")
    add_runtime_arguments(parser)
    parser.add_argument(
        "--allow-random",
        action="store_true",
        help="run with random weights when no checkpoint is given (for testing only)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_inference_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Exit codes (cfbi_model.cli.main): 2 for a command-line mistake, 1 for bad input."""
    from tqdm import tqdm  # noqa: PLC0415 - keep `cfbi --help` light

    from ..build import build_model, load_model  # noqa: PLC0415
    from ..inference.driver import load_annotations, segment_video  # noqa: PLC0415
    from ..io.frames import MediaError  # noqa: PLC0415
    from ..io.names import plain_name  # noqa: PLC0415
    from ..io.source import open_video  # noqa: PLC0415

    # Check everything that can be checked before the (slow) model is built and the first frame is written.
    if args.exported is not None:
        if args.checkpoint is not None or args.allow_random:
            raise UsageError("--exported runs its packages: give no --checkpoint or --allow-random with it")
        if tuple(args.scales) != (1.0,) or args.flip:
            raise UsageError("--exported runs single-scale inference without flip (no --scales, --flip)")
    elif args.allow_other_torch:
        raise UsageError("--allow-other-torch applies to --exported packages only")
    elif args.checkpoint is None and not args.allow_random:
        raise UsageError(
            "no --checkpoint given; refusing to segment with random weights "
            "(pass --allow-random to do so anyway, e.g. for testing)"
        )
    if args.checkpoint is not None and not os.path.isfile(args.checkpoint):
        raise MediaError(f"checkpoint {args.checkpoint!r} does not exist")
    if args.overlay and os.path.splitext(args.overlay)[1].lower() not in (".mp4", ".gif"):
        raise UsageError(f"overlay {args.overlay!r} must end with .mp4 or .gif")
    device = apply_runtime(args)
    inference = inference_config(args)
    video = open_video(args.frames or args.video)  # a folder: every frame's header checked
    name = args.name or video.name
    try:
        plain_name(name, "--name")
    except MediaError as error:
        raise UsageError(str(error)) from None
    if args.frames and os.path.realpath(os.path.join(args.out, name)) == os.path.realpath(args.frames):
        raise UsageError(f"--out {args.out!r} with --name {name!r} is the frame folder; choose another folder")
    annotations, palette = load_annotations(args.masks or args.mask, video)
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as error:
        raise MediaError(f"cannot create output folder {args.out!r}: {error}") from error
    _check_outputs(args, name)

    segmenter = model = None
    if args.exported is not None:
        from ..inference.exported import load_exported  # noqa: PLC0415

        segmenter = load_exported(args.exported, allow_other_torch=args.allow_other_torch)
    elif args.checkpoint is not None:
        model = load_model(args.checkpoint, config=args.config, device=device)
    else:
        print(
            f"{_PROG}: warning: running with RANDOM weights (--allow-random); the masks are meaningless",
            file=sys.stderr,
        )
        model = build_model(args.config or "resnet101").to(device)

    total = len(video) if video.stems is not None else None
    with tqdm(total=total, unit="frame", desc="segment", disable=args.quiet, file=sys.stderr) as progress:
        result = segment_video(
            video,
            annotations,
            model=model,
            config=inference,
            segmenter=segmenter,
            out=args.out,
            name=name,
            per_object=args.per_object,
            overlay=args.overlay,
            palette=palette,
            on_frame=lambda _: progress.update(1),
        )
    print(
        f"{_PROG}: {result.summary()}; wrote {result.folder}" + (f" and {args.overlay}" if args.overlay else ""),
        file=sys.stderr,
    )
    return 0


def _check_outputs(args: argparse.Namespace, name: str) -> None:
    """Before the run: OUT/<name> must be absent or an earlier output, and the overlay's folder writable."""
    from ..inference.sinks import check_replaceable  # noqa: PLC0415
    from ..io.frames import MediaError  # noqa: PLC0415

    check_replaceable(os.path.join(args.out, name))
    if args.overlay:
        parent = os.path.dirname(os.path.abspath(args.overlay))
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK) or os.path.isdir(args.overlay):
            raise MediaError(
                f"cannot write the overlay {args.overlay!r}: its folder {parent!r} is not a writable folder"
            )
