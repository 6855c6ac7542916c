"""Whole videos in one call: frame sources (folder, video file, any iterable), annotations (one mask, a folder of
masks named after frames, a dict), output folders that are complete or recognisably unfinished, and
`segment_video`, which ties them to VideoSegmenter.propagate.

    result = cfbi_model.segment_video("frames/", "annotations/", checkpoint="model.pth", out="out/")
    # out/frames/<frame>.png, the annotations' palette; result.frames, result.objects, result.seconds

An output folder DIR/<name>/ is written as DIR/<name>.partial/ and renamed when the last frame is written, so
a folder named after a video is always complete (`cfbi evaluate` and `cfbi predict --resume` rely on it).
"""

from __future__ import annotations

import itertools
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from ..config import IGNORE_LABEL, InferenceConfig
from ..io.frames import MediaError, image_size, list_frames, read_frame
from ..io.masks import PARTIAL_SUFFIX, read_mask, write_mask
from ..io.overlay import overlay as draw_overlay
from ..io.video import OverlayWriter, iter_video, video_fps
from .propagate import AnnotationError, FramePrediction

__all__ = [
    "FrameSource",
    "open_source",
    "load_annotations",
    "MaskFolderWriter",
    "PARTIAL_SUFFIX",
    "VideoResult",
    "segment_video",
]


@dataclass
class FrameSource:
    """Frames to segment. names: output file stems, one per frame (None: 00000, 00001, ... as they come);
    paths: frame files (a folder source); size: (height, width) when known before decoding."""

    frames: Iterable[np.ndarray | Tensor]
    names: list[str] | None = None
    paths: list[str] | None = None
    name: str = "video"
    fps: float = 24.0
    size: tuple[int, int] | None = None

    def __len__(self) -> int:
        if self.names is None:
            raise TypeError("the length of this frame source is not known before reading it")
        return len(self.names)

    def stem(self, index: int) -> str:
        return self.names[index] if self.names is not None else f"{index:05d}"


def _folder_frames(paths: list[str]) -> Iterator[np.ndarray]:
    for path in paths:
        yield read_frame(path)


def open_source(source: str | os.PathLike | Iterable[np.ndarray | Tensor], *, check: bool = True) -> FrameSource:
    """A frame folder (image files sorted by name), a video file (decoded as a stream) or any iterable of RGB
    frames [H, W, 3] uint8. With `check`, a folder's frame headers are all read (a missing, unreadable or
    differently sized frame is a MediaError before any work is done) and a video's first frame is decoded."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        name = os.path.basename(os.path.normpath(path))
        if os.path.isdir(path):
            paths = list_frames(path)
            stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
            if len(set(stems)) != len(stems):
                duplicate = next(s for s in stems if stems.count(s) > 1)
                raise MediaError(
                    f"frame folder {path!r} holds several frames named {duplicate!r}.*; their masks "
                    "would overwrite each other"
                )
            size = None
            if check:
                first = image_size(paths[0], "frame")
                for other in paths[1:]:
                    found = image_size(other, "frame")
                    if found != first:
                        raise MediaError(
                            f"frame {other!r} is {found[0]}x{found[1]}, the first frame {paths[0]!r} is "
                            f"{first[0]}x{first[1]} (WxH)"
                        )
                size = (first[1], first[0])
            return FrameSource(_folder_frames(paths), stems, paths, name, 24.0, size)
        if not os.path.isfile(path):
            raise MediaError(f"video {path!r} does not exist")
        frames, size = iter_video(path), None
        if check:  # decode the first frame now: an unreadable file fails before any work, and the size is known
            try:
                first = next(frames)
            except StopIteration:
                raise MediaError(f"video {path!r} holds no frames") from None
            frames, size = itertools.chain([first], frames), first.shape[:2]
        return FrameSource(frames, None, None, os.path.splitext(name)[0], video_fps(path), size)
    if isinstance(source, np.ndarray) and source.ndim == 4:
        return FrameSource(iter(source), [f"{i:05d}" for i in range(len(source))])
    names = [f"{i:05d}" for i in range(len(source))] if hasattr(source, "__len__") else None
    return FrameSource(iter(source), names)


Annotations = str | os.PathLike | np.ndarray | Tensor | Mapping[int | str, Any]


def load_annotations(annotations: Annotations, source: FrameSource) -> tuple[dict[int, Any], list[int] | None]:
    """({frame index: mask file or label map}, palette of the first mask file or None).

    `annotations`: a mask file or a label map [H, W] (for the first frame); a folder of masks named after the
    frames (same stem; 00000.png ... for a video or an iterable); or a dict keyed by frame index or stem.
    AnnotationError for a name that matches no frame (checked before any frame is read when the names are
    known) and, for mask files, a size that differs from the frames'."""
    palette = None
    if isinstance(annotations, (str, os.PathLike)):
        path = os.fspath(annotations)
        if os.path.isdir(path):
            files = sorted(n for n in os.listdir(path) if n.lower().endswith(".png"))
            if not files:
                raise AnnotationError(f"annotation folder {path!r} holds no .png masks")
            annotations = {os.path.splitext(n)[0]: os.path.join(path, n) for n in files}
        elif os.path.isfile(path):
            annotations = {0: path}
        else:
            raise AnnotationError(f"annotation {path!r} does not exist")
    elif not isinstance(annotations, Mapping):
        annotations = {0: annotations}
    by_index: dict[int, Any] = {}
    for key, value in annotations.items():
        if isinstance(key, str):
            index = _stem_index(key, source)
            if index is None:
                raise AnnotationError(
                    f"annotation {value if isinstance(value, (str, os.PathLike)) else key!r} "
                    f"matches no frame (masks are named after the frames: same stem, .png)"
                )
        else:
            index = int(key)
        by_index[index] = value
    files = [(i, v) for i, v in sorted(by_index.items()) if isinstance(v, (str, os.PathLike))]
    for _, path in files:  # every mask read once now: unreadable files and bad ids fail before any work
        labels, found = read_mask(path)
        palette = palette or found
        height, width = labels.shape
        if source.size is not None and (height, width) != source.size:
            raise AnnotationError(
                f"mask {os.fspath(path)!r} is {width}x{height} (WxH) but the frames are "
                f"{source.size[1]}x{source.size[0]}"
            )
    return by_index, palette


def _stem_index(stem: str, source: FrameSource) -> int | None:
    if source.names is not None:
        try:
            return source.names.index(stem)
        except ValueError:
            return None
    return int(stem) if stem.isdigit() else None


class MaskFolderWriter:
    """Writes out_root/<name>/<stem>.png (palette PNGs of object ids) through out_root/<name>.partial/, renamed
    by finish(); with per_object also <name>/objects/<id>/<stem>.png (0 / 255 greyscale)."""

    def __init__(
        self, out_root: str | os.PathLike, name: str, palette: list[int] | None = None, per_object: bool = False
    ) -> None:
        self.folder = Path(out_root) / name
        self.partial = Path(out_root) / (name + PARTIAL_SUFFIX)
        self.palette = palette
        self.per_object = per_object
        try:
            if self.partial.exists():  # what an interrupted run left
                shutil.rmtree(self.partial)
            self.partial.mkdir(parents=True)
        except OSError as error:
            raise MediaError(f"cannot create output folder {str(self.partial)!r}: {error}") from None
        self.count = 0

    def write(self, stem: str, labels: np.ndarray, ids: Iterable[int] = ()) -> None:
        write_mask(self.partial / f"{stem}.png", labels, self.palette)
        if self.per_object:
            for object_id in ids:
                if object_id in (0, IGNORE_LABEL):
                    continue
                folder = self.partial / "objects" / f"{object_id:03d}"
                folder.mkdir(parents=True, exist_ok=True)
                binary = np.where(labels == object_id, 255, 0).astype(np.uint8)
                try:
                    from PIL import Image  # noqa: PLC0415

                    Image.fromarray(binary, mode="L").save(folder / f"{stem}.png")
                except OSError as error:
                    raise MediaError(f"cannot write mask {str(folder / stem)!r}.png: {error}") from error
        self.count += 1

    def finish(self) -> Path:
        """Rename the finished folder into place (replacing an older one of the same name)."""
        if self.folder.exists():
            shutil.rmtree(self.folder)
        os.replace(self.partial, self.folder)
        return self.folder


@dataclass
class VideoResult:
    """What segment_video did: masks [T, H, W] uint8 object ids (when no output folder was given), the output
    folder (when one was), frames, object ids, seconds spent."""

    masks: np.ndarray | None
    folder: Path | None
    frames: int
    objects: tuple[int, ...]
    seconds: float
    per_frame: list[float] = field(default_factory=list, repr=False)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("inf")

    def summary(self) -> str:
        """One line: frames, objects, seconds, frames per second."""
        return f"{self.frames} frames, {len(self.objects)} object(s), {self.seconds:.1f} s, {self.fps:.2f} frames/s"


def segment_video(
    source: str | os.PathLike | Iterable[np.ndarray | Tensor] | FrameSource,
    annotations: Annotations,
    *,
    checkpoint: str | os.PathLike | None = None,
    model: Any = None,
    config: InferenceConfig | None = None,
    device: str | None = None,
    out: str | os.PathLike | None = None,
    name: str | None = None,
    per_object: bool = False,
    overlay: str | os.PathLike | None = None,
    palette: list[int] | None = None,
    on_frame: Callable[[FramePrediction], None] | None = None,
) -> VideoResult:
    """Segment a whole video with a checkpoint (or a loaded model) in one call.

    source: a frame folder, a video file, or any iterable of RGB frames [H, W, 3] uint8.
    annotations: a mask file or label map (first frame), a folder of masks named after the frames, or a dict
        {frame index or stem: label map or mask file}; any object ids 1..254, objects may start on any frame.
    out: write out/<name>/<frame>.png (name: the folder's or video's name, else "video") and return the folder;
        without it the masks [T, H, W] are returned (kept in memory). overlay: also an .mp4 / .gif overlay.
    on_frame: called with every FramePrediction (e.g. a progress bar).
    """
    import torch  # noqa: PLC0415

    from ..build import load_model  # noqa: PLC0415
    from .segmenter import VideoSegmenter  # noqa: PLC0415

    frames = source if isinstance(source, FrameSource) else open_source(source)
    by_index, file_palette = load_annotations(annotations, frames)
    palette = palette or file_palette
    if model is None:
        if checkpoint is None:
            raise ValueError("segment_video needs a checkpoint or a model")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = load_model(checkpoint, device=device)
    segmenter = VideoSegmenter(model, config)
    writer = MaskFolderWriter(out, name or frames.name, palette, per_object) if out is not None else None
    overlay_writer = OverlayWriter(os.fspath(overlay), frames.fps) if overlay is not None else None
    masks: list[np.ndarray] = []
    per_frame: list[float] = []
    ids: tuple[int, ...] = (0,)
    shown = _Tee(frames.frames) if overlay_writer is not None else None
    start = time.perf_counter()
    try:
        last = start
        for prediction in segmenter.propagate(shown if shown is not None else frames.frames, by_index):
            ids = prediction.ids
            if writer is not None:
                writer.write(frames.stem(prediction.index), prediction.labels, ids)
            else:
                masks.append(prediction.labels)
            if overlay_writer is not None:
                overlay_writer.add(draw_overlay(_rgb(shown.last), prediction.labels, palette))
            if on_frame is not None:
                on_frame(prediction)
            now = time.perf_counter()
            per_frame.append(now - last)
            last = now
    finally:
        if overlay_writer is not None:
            overlay_writer.close()
    seconds = time.perf_counter() - start
    if not per_frame:
        raise MediaError(f"{frames.name!r} holds no frames")
    folder = writer.finish() if writer is not None else None
    return VideoResult(
        None if writer is not None else np.stack(masks),
        folder,
        len(per_frame),
        tuple(i for i in ids if i != 0),
        seconds,
        per_frame,
    )


class _Tee:
    """Passes frames through and remembers the last one (for the overlay)."""

    def __init__(self, frames: Iterable[Any]) -> None:
        self._frames = iter(frames)
        self.last: Any = None

    def __iter__(self) -> Iterator[Any]:
        for frame in self._frames:
            self.last = frame
            yield frame


def _rgb(frame: np.ndarray | Tensor) -> np.ndarray:
    return frame.cpu().numpy() if isinstance(frame, Tensor) else np.asarray(frame)
