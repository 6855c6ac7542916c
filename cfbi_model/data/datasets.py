"""Video data sets: DAVIS-2017 and YouTube-VOS layouts, and drawing videos from several of them."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..io.frames import MediaError, read_frame
from ..io.masks import read_mask

__all__ = ["DataError", "VideoEntry", "davis_videos", "youtube_vos_videos", "MixedVideos", "load_frame", "load_mask"]


class DataError(MediaError):
    """A data set that cannot be read; the message names the file or folder."""


# ----------------------------------------------------------------------------------------------------- readers
@dataclass(frozen=True)
class VideoEntry:
    """One video: frame image paths and their mask paths (same length, in time order)."""

    name: str
    frames: tuple[str, ...]
    masks: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.frames)


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


def _stems(folder: str, extensions: tuple[str, ...]) -> dict[str, str]:
    return {
        os.path.splitext(n)[0]: os.path.join(folder, n)
        for n in sorted(os.listdir(folder))
        if n.lower().endswith(extensions)
    }


def _pair_frames(name: str, image_dir: str, mask_dir: str, require_all_masks: bool) -> VideoEntry:
    if not os.path.isdir(image_dir):
        raise DataError(f"missing frame folder of video {name!r}: {image_dir}")
    if not os.path.isdir(mask_dir):
        raise DataError(f"missing annotation folder of video {name!r}: {mask_dir}")
    images = _stems(image_dir, (".jpg", ".jpeg", ".png"))
    masks = _stems(mask_dir, (".png",))
    if require_all_masks:
        missing = sorted(set(images) - set(masks))
        if missing:
            raise DataError(
                f"missing mask: {os.path.join(mask_dir, missing[0] + '.png')} (frame "
                f"{images[missing[0]]}; {len(missing)} frame(s) of {name!r} lack a mask)"
            )
        orphans = sorted(set(masks) - set(images))
        if orphans:
            raise DataError(
                f"missing frame: {os.path.join(image_dir, orphans[0] + '.jpg')} (mask {masks[orphans[0]]} has no image)"
            )
    stems = [s for s in images if s in masks]
    if len(stems) < 2:
        raise DataError(f"video {name!r} has {len(stems)} annotated frame(s) in {mask_dir}; training needs at least 2")
    return VideoEntry(name, tuple(images[s] for s in stems), tuple(masks[s] for s in stems))


def davis_videos(
    root: str | os.PathLike, split: str = "train", resolution: str = "480p", sequences: Sequence[str] | None = None
) -> list[VideoEntry]:
    """Videos of a DAVIS-2017 split (root/ImageSets/2017/<split>.txt), or of the given sequence names. Every
    frame must have its mask."""
    root = os.fspath(root)
    if sequences is None:
        listing = os.path.join(root, "ImageSets", "2017", f"{split}.txt")
        if not os.path.isfile(listing):
            raise DataError(f"missing DAVIS split file: {listing}")
        with open(listing) as handle:
            sequences = [line.strip() for line in handle if line.strip()]
        if not sequences:
            raise DataError(f"DAVIS split file {listing} lists no sequences")
    return [
        _pair_frames(
            name,
            os.path.join(root, "JPEGImages", resolution, name),
            os.path.join(root, "Annotations", resolution, name),
            True,
        )
        for name in sequences
    ]


def youtube_vos_videos(root: str | os.PathLike, split: str = "train") -> list[VideoEntry]:
    """Videos of a YouTube-VOS split (root/<split>/JPEGImages, Annotations, meta.json). Only frames with a
    mask are used (the training annotations cover every fifth frame)."""
    base = os.path.join(os.fspath(root), split)
    meta_path = os.path.join(base, "meta.json")
    if not os.path.isfile(meta_path):
        raise DataError(f"missing YouTube-VOS meta file: {meta_path}")
    try:
        with open(meta_path) as handle:
            meta = json.load(handle)
        names = sorted(meta["videos"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"corrupt YouTube-VOS meta file {meta_path}: {error!r}") from None
    videos = []
    for name in names:
        videos.append(
            _pair_frames(name, os.path.join(base, "JPEGImages", name), os.path.join(base, "Annotations", name), False)
        )
    if not videos:
        raise DataError(f"YouTube-VOS meta file {meta_path} lists no videos")
    return videos


class MixedVideos:
    """Draws videos from several lists with given weights (e.g. DAVIS : YouTube-VOS = 1 : 1 per sample,
    whatever their sizes)."""

    def __init__(self, sources: Sequence[Sequence[VideoEntry]], weights: Sequence[float] | None = None) -> None:
        sources = [list(s) for s in sources if len(s)]
        if not sources:
            raise DataError("no training videos")
        weights = [1.0] * len(sources) if weights is None else [float(w) for w in weights][: len(sources)]
        if len(weights) != len(sources) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"need one non-negative weight per source, got {weights}")
        self.sources = sources
        self.probabilities = np.asarray(weights) / sum(weights)

    def draw(self, rng: np.random.Generator) -> VideoEntry:
        source = self.sources[int(rng.choice(len(self.sources), p=self.probabilities))]
        return source[int(rng.integers(len(source)))]

    def __len__(self) -> int:
        return sum(len(s) for s in self.sources)
