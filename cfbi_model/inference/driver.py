"""The one driver that feeds a video to the engine: `run_video(segmenter, video, *sinks)`, and what is written on it
(`segment_video`, the one-call entry point; cfbi predict, evaluate, demo and the training validation).

    result = cfbi_model.segment_video("frames/", "annotations/", checkpoint="model.pth", out="out/")
    # out/frames/<frame>.png, the annotations' palette; result.frames, result.objects, result.seconds

`propagate` is the loop itself, as a generator: every frame goes once through VideoSegmenter.step with its
annotation, if any; run_video hands each prediction to the sinks (cfbi_model.inference.sinks).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from ..config import IGNORE_LABEL, InferenceConfig
from ..io.frames import MediaError, image_size
from ..io.masks import read_mask
from ..io.source import Video, open_video
from .segmenter import AnnotationError, FramePrediction, VideoSegmenter
from .sinks import MaskCollector, MaskFolderWriter, OverlaySink, Sink

__all__ = ["propagate", "run_video", "VideoResult", "load_annotations", "segment_video"]


def _frames_and_predictions(
    segmenter: VideoSegmenter, frames: Iterable[Any], annotations: Mapping[int, Any]
) -> Iterator[tuple[Any, FramePrediction]]:
    """(frame, prediction) for every frame: the package's one loop that feeds frames to the engine."""
    annotations = dict(annotations)
    if not annotations:
        raise AnnotationError("no annotation: give at least one frame's label map")
    bad = [k for k in annotations if not isinstance(k, (int, np.integer)) or k < 0]
    if bad:
        raise AnnotationError(f"annotation keys must be frame indices >= 0, got {bad[0]!r}")
    segmenter.reset()
    count = 0
    for index, frame in enumerate(frames):
        count = index + 1
        yield frame, segmenter.step(frame, annotations.pop(index, None))
    if annotations:
        raise AnnotationError(f"annotation of frame {min(annotations)} but the video has {count} frame(s)")


def propagate(
    segmenter: VideoSegmenter, frames: Iterable[np.ndarray | Tensor], annotations: Mapping[int, Any]
) -> Iterator[FramePrediction]:
    """Segment `frames` (any iterable, consumed lazily) from annotations {frame index: label map [H, W] of object
    ids, or a mask file}; yields one FramePrediction per frame, in order.

    AnnotationError for an annotation whose size differs from its frame, ids above 254, no annotation at all,
    or indices beyond the last frame (raised after the last frame)."""
    for _, prediction in _frames_and_predictions(segmenter, frames, annotations):
        yield prediction


@dataclass
class VideoResult:
    """What a run did: frames, object ids, seconds spent (and per frame); segment_video also gives the masks
    [T, H, W] uint8 (when no output folder was given) or the output folder."""

    frames: int
    objects: tuple[int, ...]
    seconds: float
    per_frame: list[float] = field(default_factory=list, repr=False)
    masks: np.ndarray | None = None
    folder: Path | None = None

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("inf")

    def summary(self) -> str:
        """One line: frames, objects, seconds, frames per second."""
        return f"{self.frames} frames, {len(self.objects)} object(s), {self.seconds:.1f} s, {self.fps:.2f} frames/s"


def run_video(
    segmenter: VideoSegmenter,
    video: Video,
    *sinks: Sink,
    annotations: Mapping[int, Any] | None = None,
    on_frame: Callable[[FramePrediction], None] | None = None,
) -> VideoResult:
    """Feed every frame of `video` to the engine and each prediction to every sink (then finish() them; close()
    them when the run fails). annotations: {frame index: label map or mask file} (None: load_annotations of the
    video's own). on_frame: called with every prediction (e.g. a progress bar)."""
    if annotations is None:
        annotations, _ = load_annotations(None, video)
    per_frame: list[float] = []
    ids: tuple[int, ...] = (0,)
    start = last = time.perf_counter()
    try:
        for frame, prediction in _frames_and_predictions(segmenter, video.iter_frames(), annotations):
            ids = prediction.ids
            for sink in sinks:
                sink.add(prediction, frame, video.stem(prediction.index))
            if on_frame is not None:
                on_frame(prediction)
            now = time.perf_counter()
            per_frame.append(now - last)
            last = now
        if not per_frame:
            raise MediaError(f"{video.name!r} holds no frames")
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    seconds = time.perf_counter() - start
    for sink in sinks:
        sink.finish()
    return VideoResult(len(per_frame), tuple(i for i in ids if i != 0), seconds, per_frame)


Annotations = str | os.PathLike | np.ndarray | Tensor | Mapping[int | str, Any]


def load_annotations(annotations: Annotations | None, video: Video) -> tuple[dict[int, Any], list[int] | None]:
    """({frame index: label map}, palette of the first mask file or None), every mask file read once, now.

    annotations: a mask file or a label map [H, W] (for the first frame); a folder of masks named after the
    frames (same stem; 00000.png ... for a video file or an iterable); a dict keyed by frame index or stem; or
    None: the video's own annotations, keeping at each frame only the objects that first appear there where the
    layout says so (video.first_frames). AnnotationError for a name that matches no frame and, for mask files,
    a size that differs from the frames'."""
    if annotations is None:
        annotations = dict(video.annotations)
    elif isinstance(annotations, (str, os.PathLike)):
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
        index = _stem_index(key, video) if isinstance(key, str) else int(key)
        if index is None:
            raise AnnotationError(
                f"annotation {value if isinstance(value, (str, os.PathLike)) else key!r} "
                "matches no frame (masks are named after the frames: same stem, .png)"
            )
        by_index[index] = value
    palette = None
    for index, value in sorted(by_index.items()):
        if not isinstance(value, (str, os.PathLike)):
            continue
        _check_size(value, video)
        labels, found = read_mask(value)
        palette = palette or found
        if video.first_frames is not None:
            starting = video.first_frames.get(index, ())
            labels = np.where(np.isin(labels, (0, IGNORE_LABEL, *starting)), labels, 0).astype(np.uint8)
        by_index[index] = labels
    return by_index, palette


def _check_size(path: str | os.PathLike, video: Video) -> None:
    if video.size is None:
        return
    width, height = image_size(path, "mask")
    if (height, width) != tuple(video.size):
        raise AnnotationError(
            f"mask {os.fspath(path)!r} is {width}x{height} (WxH) but the frames are {video.size[1]}x{video.size[0]}"
        )


def _stem_index(stem: str, video: Video) -> int | None:
    if video.stems is not None:
        try:
            return list(video.stems).index(stem)
        except ValueError:
            return None
    return int(stem) if stem.isdigit() else None


def segment_video(
    source: str | os.PathLike | Iterable[np.ndarray | Tensor] | Video,
    annotations: Annotations,
    *,
    checkpoint: str | os.PathLike | None = None,
    model: Any = None,
    config: InferenceConfig | None = None,
    device: str | None = None,
    segmenter: Any = None,
    out: str | os.PathLike | None = None,
    name: str | None = None,
    per_object: bool = False,
    overlay: str | os.PathLike | None = None,
    palette: list[int] | None = None,
    on_frame: Callable[[FramePrediction], None] | None = None,
) -> VideoResult:
    """Segment a whole video with a checkpoint (or a loaded model, or an engine such as load_exported's) in one call.

    source: a frame folder, a video file, any iterable of RGB frames [H, W, 3] uint8, or a Video.
    annotations: a mask file or label map (first frame), a folder of masks named after the frames, or a dict
        {frame index or stem: label map or mask file}; any object ids 1..254, objects may start on any frame.
    out: write out/<name>/<frame>.png (name: the folder's or video's name, else "video"; one plain folder
        name) and return the folder; without it the masks [T, H, W] are returned (kept in memory).
    overlay: also an .mp4 / .gif overlay. on_frame: called with every FramePrediction (e.g. a progress bar).
    """
    from ..build import load_model  # noqa: PLC0415
    from ..runtime import default_device  # noqa: PLC0415

    video = open_video(source)
    by_index, file_palette = load_annotations(annotations, video)
    palette = palette or file_palette
    if segmenter is None and model is None:
        if checkpoint is None:
            raise ValueError("segment_video needs a checkpoint or a model (or a segmenter)")
        model = load_model(checkpoint, device=device or default_device())
    writer = MaskFolderWriter(out, name or video.name, palette, per_object) if out is not None else None
    collector = MaskCollector() if writer is None else None
    sinks = [s for s in (writer, collector) if s is not None]
    if overlay is not None:
        sinks.append(OverlaySink(overlay, video.fps, palette))
    if segmenter is None:
        segmenter = VideoSegmenter(model, config)
    result = run_video(segmenter, video, *sinks, annotations=by_index, on_frame=on_frame)
    result.masks = collector.masks if collector is not None else None
    result.folder = writer.folder if writer is not None else None
    return result
