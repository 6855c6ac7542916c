"""Training videos: those of the DAVIS-2017 and YouTube-VOS layouts whose frames have masks, and drawing videos
from several data sets."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from ..io.frames import MediaError, image_size, read_frame
from ..io.masks import read_mask
from ..io.source import Video
from . import layouts
from .layouts import DataError

__all__ = ["DataError", "check_sizes", "davis_videos", "youtube_vos_videos", "MixedVideos", "load_frame", "load_mask"]


def load_frame(path: str) -> np.ndarray:
    """RGB uint8 [H, W, 3] (cfbi_model.io.read_frame); DataError naming the file when missing or corrupt."""
    try:
        return read_frame(path)
    except MediaError as error:
        raise DataError(str(error)) from None


def load_mask(path: str) -> np.ndarray:
    """Label map [H, W] uint8 (cfbi_model.io.read_mask); DataError naming the file."""
    try:
        return read_mask(path)[0]
    except MediaError as error:
        raise DataError(str(error)) from None


def _every_frame_masked(video: Video, mask_dir: str) -> Video:
    """DAVIS training: every frame has its mask and every mask its frame (DataError naming the first that lacks
    one); at least 2 frames."""
    missing = [i for i in range(len(video)) if i not in video.masks]
    if missing:
        frame = video.frames[missing[0]]
        raise DataError(
            f"missing mask: {os.path.join(mask_dir, video.stem(missing[0]) + '.png')} (frame {frame}; "
            f"{len(missing)} frame(s) of {video.name!r} lack a mask)"
        )
    stems = set(video.stems)
    orphans = sorted(n for n in os.listdir(mask_dir) if n.lower().endswith(".png") and n[:-4] not in stems)
    if orphans:
        raise DataError(
            f"missing frame: {os.path.join(os.path.dirname(video.frames[0]), orphans[0][:-4] + '.jpg')} "
            f"(mask {os.path.join(mask_dir, orphans[0])} has no image)"
        )
    return _at_least_two(video.annotated_only(), mask_dir)


def _at_least_two(video: Video, mask_dir: str) -> Video:
    if len(video) < 2:
        raise DataError(
            f"video {video.name!r} has {len(video)} annotated frame(s) in {mask_dir}; training needs at least 2"
        )
    return video


def davis_videos(
    root: str | os.PathLike, split: str = "train", resolution: str = "480p", sequences: Sequence[str] | None = None
) -> list[Video]:
    """Training videos of a DAVIS-2017 split (ImageSets/2017/<split>.txt), or of the given sequence names
    (cfbi_model.data.layouts.davis). Every frame must have its mask."""
    root = os.fspath(root)
    videos = []
    for video in layouts.davis(root, split, resolution, sequences):
        videos.append(_every_frame_masked(video, os.path.join(root, "Annotations", resolution, video.name)))
    return videos


def youtube_vos_videos(root: str | os.PathLike, split: str = "train") -> list[Video]:
    """Training videos of a YouTube-VOS split (cfbi_model.data.layouts.youtube): the frames that have a mask (the
    training annotations cover every fifth frame)."""
    base = os.path.join(os.fspath(root), split, "Annotations")
    return [
        _at_least_two(video.annotated_only(), os.path.join(base, video.name))
        for video in layouts.youtube(root, split, strict=False)
    ]


def check_sizes(videos: Sequence[Video]) -> int:
    """Every frame and mask of the training videos read from its header (no decoding): DataError naming the
    first mask whose size differs from its frame's, or an unreadable file, before the first step rather than
    when a clip happens to draw it. Returns the number of frames checked."""
    checked = 0
    for video in videos:
        for index, frame in enumerate(video.frames):
            try:
                size = image_size(frame, "frame")
                mask = video.masks.get(index)
                found = image_size(mask, "mask") if mask is not None else size
            except MediaError as error:
                raise DataError(str(error)) from None
            if found != size:
                raise DataError(
                    f"mask {mask} is {found[0]}x{found[1]} but its frame {frame} is {size[0]}x{size[1]} (WxH)"
                )
            checked += 1
    return checked


class MixedVideos:
    """Draws videos from several lists with given weights (e.g. DAVIS : YouTube-VOS = 1 : 1 per sample,
    whatever their sizes)."""

    def __init__(self, sources: Sequence[Sequence[Video]], weights: Sequence[float] | None = None) -> None:
        sources = [list(s) for s in sources if len(s)]
        if not sources:
            raise DataError("no training videos")
        weights = [1.0] * len(sources) if weights is None else [float(w) for w in weights][: len(sources)]
        if len(weights) != len(sources) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"need one non-negative weight per source, got {weights}")
        self.sources = sources
        self.probabilities = np.asarray(weights) / sum(weights)

    def draw(self, rng: np.random.Generator) -> Video:
        source = self.sources[int(rng.choice(len(self.sources), p=self.probabilities))]
        return source[int(rng.integers(len(source)))]

    def __len__(self) -> int:
        return sum(len(s) for s in self.sources)
