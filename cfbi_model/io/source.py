"""The one record of a video, whatever it comes from: a data set layout (cfbi_model.data.layouts), a frame
folder, a video file, or any iterable of frames (open_video).

    video = open_video("frames/")            # Video(name="frames", frames=(paths...), ...)
    for frame in video.iter_frames(): ...    # RGB uint8 [H, W, 3], read one at a time
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .frames import MediaError, image_size, list_frames, read_frame
from .video import iter_video, video_fps

__all__ = ["Video", "open_video", "frame_size"]


@dataclass(frozen=True)
class Video:
    """One video.

    name: its name (an output folder's name once checked by io.names.plain_name).
    frames: frame files in time order (read lazily), or the frames themselves (any iterable, consumed once).
    annotations: {frame index: mask file} the task gives (DAVIS: the first frame; YouTube-VOS / MOSE: the
        frames where objects first appear).
    masks: {frame index: mask file} of the ground truth where the layout has it (training, validation).
    scored: the indices of the frames a benchmark scores, increasing (None: every frame).
    first_frames: {frame index: ids of the objects whose first frame it is} where meta.json says so (None:
        every object of an annotation is used).
    stems: output file stems, one per frame (None: 00000, 00001, ... as the frames come).
    fps: frames per second (overlays); size: (height, width) when known before decoding.
    """

    name: str
    frames: Sequence[str] | Iterable[Any]
    annotations: Mapping[int, str] = field(default_factory=dict)
    masks: Mapping[int, str] = field(default_factory=dict)
    scored: tuple[int, ...] | None = None
    first_frames: Mapping[int, tuple[int, ...]] | None = None
    stems: Sequence[str] | None = None
    fps: float = 24.0
    size: tuple[int, int] | None = None

    def __len__(self) -> int:
        if self.stems is None:
            raise TypeError(f"the length of video {self.name!r} is not known before reading it")
        return len(self.stems)

    def stem(self, index: int) -> str:
        return self.stems[index] if self.stems is not None else f"{index:05d}"

    def iter_frames(self) -> Iterator[Any]:
        """The frames in order: files are read one at a time (RGB uint8 [H, W, 3]), others passed through."""
        for frame in self.frames:
            yield read_frame(frame) if isinstance(frame, (str, os.PathLike)) else frame

    def annotated_only(self) -> Video:
        """The frames that have a ground-truth mask, renumbered (YouTube-VOS training annotates every fifth)."""
        keep = [i for i in range(len(self)) if i in self.masks]
        return replace(
            self,
            frames=tuple(self.frames[i] for i in keep),
            annotations={},
            masks={new: self.masks[old] for new, old in enumerate(keep)},
            scored=None,
            first_frames=None,
            stems=tuple(self.stems[i] for i in keep),
        )


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def open_video(source: str | os.PathLike | Iterable[Any] | Video, *, check: bool = True) -> Video:
    """A Video of a frame folder (image files sorted by name), a video file (decoded as a stream) or any
    iterable of RGB frames [H, W, 3] uint8 (a [T, H, W, 3] array included); a Video is returned as it is.

    With `check`, a folder's frame headers are all read (a missing, unreadable or differently sized frame is a
    MediaError before any work is done) and a video file's first frame is decoded."""
    if isinstance(source, Video):
        return source
    if not isinstance(source, (str, os.PathLike)):
        if isinstance(source, np.ndarray) and source.ndim == 4:
            source = list(source)
        stems = [f"{i:05d}" for i in range(len(source))] if hasattr(source, "__len__") else None
        return Video("video", source, stems=stems)
    path = os.fspath(source)
    name = os.path.basename(os.path.abspath(path))  # "." inside a frame folder: that folder's name
    if os.path.isdir(path):
        paths = list_frames(path)
        stems = [_stem(p) for p in paths]
        if len(set(stems)) != len(stems):
            duplicate = next(s for s in stems if stems.count(s) > 1)
            raise MediaError(
                f"frame folder {path!r} holds several frames named {duplicate!r}.*; their masks would overwrite "
                "each other"
            )
        return Video(name, tuple(paths), stems=tuple(stems), size=frame_size(paths) if check else None)
    if not os.path.isfile(path):
        raise MediaError(f"video {path!r} does not exist")
    frames, size = iter_video(path), None
    if check:  # decode the first frame now: an unreadable file fails before any work, and the size is known
        try:
            first = next(frames)
        except StopIteration:
            raise MediaError(f"video {path!r} holds no frames") from None
        frames, size = itertools.chain([first], frames), first.shape[:2]
    return Video(os.path.splitext(name)[0], frames, fps=video_fps(path), size=size)


def frame_size(paths: Sequence[str]) -> tuple[int, int]:
    """(height, width) of every frame, from the headers; MediaError naming the first that differs."""
    first = image_size(paths[0], "frame")
    for other in paths[1:]:
        found = image_size(other, "frame")
        if found != first:
            raise MediaError(
                f"frame {other!r} is {found[0]}x{found[1]}, the first frame {paths[0]!r} is {first[0]}x{first[1]} (WxH)"
            )
    return first[1], first[0]
