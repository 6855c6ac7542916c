"""`cfbi segment`: segment the objects of a first-frame mask through a video (frame folder or video file).

    cfbi segment --frames DIR | --video FILE --mask FIRST.png --out DIR --checkpoint PATH
                 [--config NAME] [--overlay FILE.mp4|.gif] [--device cpu|cuda] [--allow-random]

Writes one palette PNG per frame into --out (the palette of the input mask), named after the frame files
(or 00000.png, 00001.png, ... for a video file).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Iterator

import numpy as np

from .. import media
from ..config import config_names

_PROG = "cfbi segment"


class _UsageError(Exception):
    pass


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "segment", help="segment the objects of a first-frame mask through a video",
        description="Propagate the objects of a first-frame mask through a video with CFBI+.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--frames", metavar="DIR", help="folder of frames (sorted by file name)")
    source.add_argument("--video", metavar="FILE", help="video file (needs imageio and imageio-ffmpeg)")
    parser.add_argument("--mask", required=True, metavar="FIRST.png",
                        help="label mask of the first frame (palette PNG: 0 background, 1..K objects)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder for the palette PNGs")
    parser.add_argument("--checkpoint", metavar="PATH", help="CFBI+ checkpoint (.pth)")
    parser.add_argument("--config", default="resnet101", choices=config_names(),
                        help="model configuration (default: resnet101, the released one)")
    parser.add_argument("--overlay", metavar="FILE", help="also write an overlay video (.mp4) or animation (.gif)")
    parser.add_argument("--device", default=None, choices=["cpu", "cuda"],
                        help="default: cuda when available, else cpu")
    parser.add_argument("--allow-random", action="store_true",
                        help="run with random weights when no checkpoint is given (for testing only)")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0], metavar="S",
                        help="multi-scale inference (e.g. 1.0 1.15 1.3)")
    parser.add_argument("--flip", action="store_true", help="also average horizontally flipped views")
    parser.add_argument("--global-atrous", type=int, default=2, help="4x global-matching atrous rate (default 2)")
    parser.add_argument("--min-matching-pixels", type=int, default=100,
                        help="with --global-atrous > 1, objects with at most this many pixels (times atrous^2) "
                             "in a reference frame keep all their pixels (default 100, the authors' released "
                             "evaluation setting; 0 subsamples every object)")
    parser.add_argument("--amp", action="store_true", help="mixed precision on CUDA")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
    return parser


def _error(message: str) -> int:
    print(f"{_PROG}: error: {message}", file=sys.stderr)
    return 2


def _frames(args: argparse.Namespace) -> tuple[Iterator[tuple[str, str, np.ndarray]], int | None, float]:
    """(iterator of (output name, source description, RGB frame), frame count if known, fps)."""
    if args.frames:
        paths = media.list_frames(args.frames)
        names = [os.path.splitext(os.path.basename(path))[0] + ".png" for path in paths]
        if len(set(names)) != len(names):
            duplicate = next(n for n in names if names.count(n) > 1)
            raise _UsageError(f"frame folder {args.frames!r} holds several frames named {duplicate[:-4]!r}.*; "
                              "their masks would overwrite each other")

        def from_folder() -> Iterator[tuple[str, str, np.ndarray]]:
            for name, path in zip(names, paths):
                yield name, repr(path), media.read_image(path)

        return from_folder(), len(paths), 24.0
    if not os.path.isfile(args.video):
        raise media.MediaError(f"video {args.video!r} does not exist")

    def from_video() -> Iterator[tuple[str, str, np.ndarray]]:
        for index, frame in enumerate(media.iter_video(args.video)):
            yield f"{index:05d}.png", f"frame {index} of {args.video!r}", frame

    return from_video(), None, media.video_fps(args.video)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (media.MediaError, _UsageError) as error:
        return _error(str(error))


def _run(args: argparse.Namespace) -> int:
    import torch  # noqa: PLC0415 - keep `cfbi --help` light
    from tqdm import tqdm  # noqa: PLC0415

    from ..checkpoint import CheckpointError, load_checkpoint  # noqa: PLC0415
    from ..inference import VideoSegmenter  # noqa: PLC0415
    from ..network import CFBIPlus  # noqa: PLC0415

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
    first_labels, palette = media.read_mask(args.mask)
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

    model = CFBIPlus(args.config)
    if args.checkpoint is not None:
        try:
            load_checkpoint(model, args.checkpoint)
        except CheckpointError as error:
            raise _UsageError(str(error)) from error
    else:
        print(f"{_PROG}: warning: running with RANDOM weights (--allow-random); the masks are meaningless",
              file=sys.stderr)
    model.to(device)
    try:
        segmenter = VideoSegmenter(model, global_atrous=args.global_atrous,
                                   min_matching_pixels=args.min_matching_pixels, scales=tuple(args.scales),
                                   flip=args.flip, amp=args.amp)
    except ValueError as error:
        raise _UsageError(str(error)) from error

    writer = media.OverlayWriter(args.overlay, fps) if args.overlay else None
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
          writer: media.OverlayWriter | None) -> None:
    media.write_mask(os.path.join(out, name), labels, palette)
    if writer is not None:
        writer.add(media.overlay(frame, labels, palette))
