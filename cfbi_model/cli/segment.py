"""`cfbi segment`: segment the objects of a first-frame mask through a video (frame folder or video file).

    cfbi segment --frames DIR | --video FILE --mask FIRST.png --out DIR --checkpoint PATH
                 [--overlay FILE.mp4|.gif] [--device cpu|cuda] [inference options] [--allow-random [--config NAME]]

The model is the checkpoint's own (its configuration is stored in it; the authors' released files load as
resnet101); --config is needed only for --allow-random or files without a configuration.

Writes one palette PNG per frame into --out (the palette of the input mask), named after the frame files
(or 00000.png, 00001.png, ... for a video file).
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator

import numpy as np

from .. import io as cfbi_io
from ._options import HelpFormatter, add_config_argument, add_inference_arguments, inference_config

_PROG = "cfbi segment"


class _UsageError(Exception):
    pass


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "segment", help="segment the objects of a first-frame mask through a video",
        description="Propagate the objects of a first-frame mask through a video with CFBI+.",
        formatter_class=HelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--frames", metavar="DIR", help="folder of frames (sorted by file name)")
    source.add_argument("--video", metavar="FILE", help="video file (needs imageio and imageio-ffmpeg)")
    parser.add_argument("--mask", required=True, metavar="FIRST.png",
                        help="label mask of the first frame (palette PNG: 0 background, 1..K objects)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder for the palette PNGs")
    parser.add_argument("--checkpoint", metavar="PATH", help="CFBI+ checkpoint (.pth)")
    add_config_argument(parser, "(default: the checkpoint's; resnet101 without a checkpoint)")
    parser.add_argument("--overlay", metavar="FILE", help="also write an overlay video (.mp4) or animation (.gif)")
    parser.add_argument("--device", default=None, choices=["cpu", "cuda"],
                        help="None: cuda when available, else cpu")
    parser.add_argument("--allow-random", action="store_true",
                        help="run with random weights when no checkpoint is given (for testing only)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_inference_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def _error(message: str) -> int:
    print(f"{_PROG}: error: {message}", file=sys.stderr)
    return 2


def _frames(args: argparse.Namespace) -> tuple[Iterator[tuple[str, str, np.ndarray]], int | None, float]:
    """(iterator of (output name, source description, RGB frame), frame count if known, fps)."""
    if args.frames:
        paths = cfbi_io.list_frames(args.frames)
        names = [os.path.splitext(os.path.basename(path))[0] + ".png" for path in paths]
        if len(set(names)) != len(names):
            duplicate = next(n for n in names if names.count(n) > 1)
            raise _UsageError(f"frame folder {args.frames!r} holds several frames named {duplicate[:-4]!r}.*; "
                              "their masks would overwrite each other")

        def from_folder() -> Iterator[tuple[str, str, np.ndarray]]:
            for name, path in zip(names, paths):
                yield name, repr(path), cfbi_io.read_frame(path)

        return from_folder(), len(paths), 24.0
    if not os.path.isfile(args.video):
        raise cfbi_io.MediaError(f"video {args.video!r} does not exist")

    def from_video() -> Iterator[tuple[str, str, np.ndarray]]:
        for index, frame in enumerate(cfbi_io.iter_video(args.video)):
            yield f"{index:05d}.png", f"frame {index} of {args.video!r}", frame

    return from_video(), None, cfbi_io.video_fps(args.video)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (cfbi_io.MediaError, _UsageError) as error:
        return _error(str(error))


def _run(args: argparse.Namespace) -> int:
    import torch  # noqa: PLC0415 - keep `cfbi --help` light
    from tqdm import tqdm  # noqa: PLC0415

    from ..build import CheckpointError, build_model, load_model  # noqa: PLC0415
    from ..inference.segmenter import VideoSegmenter  # noqa: PLC0415

    # Check everything that can be checked before the (slow) model is built.
    if args.checkpoint is None and not args.allow_random:
        raise _UsageError("no --checkpoint given; refusing to segment with random weights "
                          "(pass --allow-random to do so anyway, e.g. for testing)")
    if args.checkpoint is not None and not os.path.isfile(args.checkpoint):
        raise _UsageError(f"checkpoint {args.checkpoint!r} does not exist")
    if args.overlay and os.path.splitext(args.overlay)[1].lower() not in (".mp4", ".gif"):
        raise _UsageError(f"overlay {args.overlay!r} must end with .mp4 or .gif")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise _UsageError("--device cuda requested but CUDA is not available")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        inference = inference_config(args)
    except ValueError as error:
        raise _UsageError(str(error)) from error
    first_labels, palette = cfbi_io.read_mask(args.mask)
    frames, total, fps = _frames(args)
    try:
        first_name, first_source, first_frame = next(frames)
    except StopIteration:
        raise _UsageError(f"{args.video or args.frames!r} holds no frames") from None
    if first_frame.shape[:2] != first_labels.shape:
        raise _UsageError(f"mask {args.mask!r} is {first_labels.shape[1]}x{first_labels.shape[0]} (WxH) but the "
                          f"first frame ({first_source}) is {first_frame.shape[1]}x{first_frame.shape[0]}")
    if args.frames and os.path.isdir(args.out) and os.path.samefile(args.out, args.frames):
        raise _UsageError(f"--out {args.out!r} is the frame folder; choose another folder")
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as error:
        raise _UsageError(f"cannot create output folder {args.out!r}: {error}") from error

    if args.checkpoint is not None:
        try:
            model = load_model(args.checkpoint, config=args.config, device=device)
        except CheckpointError as error:
            raise _UsageError(str(error)) from error
    else:
        print(f"{_PROG}: warning: running with RANDOM weights (--allow-random); the masks are meaningless",
              file=sys.stderr)
        model = build_model(args.config or "resnet101").to(device)
    segmenter = VideoSegmenter(model, inference)

    writer = cfbi_io.OverlayWriter(args.overlay, fps) if args.overlay else None
    progress = tqdm(total=total, unit="frame", desc="segment", disable=args.quiet, file=sys.stderr)
    count = 0
    try:
        segmenter.start(first_frame, first_labels)
        _emit(args.out, first_name, first_frame, first_labels, palette, writer)
        progress.update(1)
        count = 1
        for name, source, frame in frames:
            if frame.shape[:2] != first_labels.shape:
                raise _UsageError(f"frame {source} is {frame.shape[1]}x{frame.shape[0]}, the first frame is "
                                  f"{first_frame.shape[1]}x{first_frame.shape[0]}")
            labels = segmenter.step(frame).labels.cpu().numpy().astype(np.uint8)
            _emit(args.out, name, frame, labels, palette, writer)
            progress.update(1)
            count += 1
    finally:
        progress.close()
        if writer is not None:
            writer.close()
    print(f"{_PROG}: wrote {count} masks to {args.out}" + (f" and {args.overlay}" if args.overlay else ""),
          file=sys.stderr)
    return 0


def _emit(out: str, name: str, frame: np.ndarray, labels: np.ndarray, palette: list[int] | None,
          writer: cfbi_io.OverlayWriter | None) -> None:
    cfbi_io.write_mask(os.path.join(out, name), labels, palette)
    if writer is not None:
        writer.add(cfbi_io.overlay(frame, labels, palette))
