"""Predicting a whole benchmark split (what `cfbi predict` runs): every video's scored frames as palette PNGs in
OUT/Annotations/<video>/<frame>.png, resumable, sharded over the processes of a distributed run, and the zip
archive the evaluation servers accept.

Each video folder is written as <video>.partial and renamed when complete (cfbi_model.inference.video), so a
folder named after a video is finished: a resumed run skips it, an interrupted one redoes the partial ones.
"""

from __future__ import annotations

import os
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import IGNORE_LABEL, InferenceConfig
from ..data.datasets import DataError
from ..data.splits import PredictVideo
from ..inference.propagate import FramePrediction
from ..inference.segmenter import VideoSegmenter
from ..inference.video import MaskFolderWriter
from ..io.frames import MediaError, image_size, read_frame
from ..io.masks import read_mask

__all__ = ["VideoTiming", "shard", "predict_video", "predict_split", "finished_videos", "write_zip", "format_timings"]


@dataclass
class VideoTiming:
    """One video of a run: frames propagated, masks written, objects, seconds, the rank that did it; skipped
    when a resumed run found it finished."""

    name: str
    frames: int
    written: int
    objects: int
    seconds: float
    rank: int = 0
    skipped: bool = False


def shard(videos: Sequence[PredictVideo], rank: int, world: int) -> list[PredictVideo]:
    """The videos of one rank: longest first, each to the rank with the fewest frames so far (ties: lowest
    rank), so that every video goes to exactly one rank and the ranks' loads are close. Same result on every
    rank."""
    loads = [0] * world
    mine = []
    for video in sorted(videos, key=lambda v: (-len(v), v.name)):
        target = min(range(world), key=lambda r: (loads[r], r))
        loads[target] += len(video)
        if target == rank:
            mine.append(video)
    return mine


def finished_videos(annotations_dir: str | os.PathLike) -> set[str]:
    """Names of the complete video folders under OUT/Annotations (partial ones end in .partial)."""
    path = Path(annotations_dir)
    if not path.is_dir():
        return set()
    return {p.name for p in path.iterdir() if p.is_dir() and not p.name.endswith(".partial")}


def _check_video(video: PredictVideo) -> tuple[int, int]:
    """Every frame's and annotation's size from the headers, before the video starts: (width, height)."""
    size = image_size(video.frames[0], "frame")
    for path in video.frames[1:]:
        found = image_size(path, "frame")
        if found != size:
            raise DataError(
                f"frame {path} is {found[0]}x{found[1]}, the first frame of video {video.name!r} "
                f"({video.frames[0]}) is {size[0]}x{size[1]} (WxH)"
            )
    for path in video.annotations.values():
        found = image_size(path, "mask")
        if found != size:
            raise DataError(
                f"annotation {path} is {found[0]}x{found[1]} but the frames of video {video.name!r} "
                f"are {size[0]}x{size[1]} (WxH)"
            )
    return size


def _annotations(video: PredictVideo) -> tuple[dict[int, np.ndarray], list[int] | None]:
    """Annotations as label maps (only the objects that start there, when the split says which) and the
    palette of the first one."""
    out, palette = {}, None
    for index, path in sorted(video.annotations.items()):
        labels, found = read_mask(path)
        palette = palette or found
        if video.new_objects is not None:
            keep = np.isin(labels, (0, IGNORE_LABEL, *video.new_objects.get(index, ())))
            labels = np.where(keep, labels, 0).astype(np.uint8)
        out[index] = labels
    return out, palette


def predict_video(
    model,
    video: PredictVideo,
    annotations_dir: str | os.PathLike,
    inference: InferenceConfig | None = None,
    rank: int = 0,
    on_frame: Callable[[FramePrediction], None] | None = None,
) -> VideoTiming:
    """Propagate one video's annotations and write its scored frames to annotations_dir/<video>/."""
    _check_video(video)
    annotations, palette = _annotations(video)
    writer = MaskFolderWriter(annotations_dir, video.name, palette)
    scored = set(video.outputs)
    segmenter = VideoSegmenter(model, inference)
    start = time.perf_counter()
    ids: tuple[int, ...] = (0,)
    frames = (read_frame(path) for path in video.frames)
    for prediction in segmenter.propagate(frames, annotations):
        ids = prediction.ids
        if prediction.index in scored:
            writer.write(video.stem(prediction.index), prediction.labels)
        if on_frame is not None:
            on_frame(prediction)
    writer.finish()
    return VideoTiming(video.name, len(video), writer.count, len(ids) - 1, time.perf_counter() - start, rank)


def predict_split(
    model,
    videos: Sequence[PredictVideo],
    out_dir: str | os.PathLike,
    inference: InferenceConfig | None = None,
    *,
    rank: int = 0,
    world: int = 1,
    resume: bool = False,
    progress: bool = False,
) -> list[VideoTiming]:
    """Predict this rank's share of `videos` into out_dir/Annotations/; with resume, finished videos are
    skipped. Returns this rank's timings (skipped videos included). progress: tqdm bars (overall, per video)."""
    annotations_dir = Path(out_dir) / "Annotations"
    try:
        annotations_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MediaError(f"cannot create output folder {str(annotations_dir)!r}: {error}") from None
    mine = shard(videos, rank, world)
    done = finished_videos(annotations_dir) if resume else set()
    timings = [VideoTiming(v.name, len(v), len(v.outputs), 0, 0.0, rank, True) for v in mine if v.name in done]
    todo = [v for v in mine if v.name not in done]
    from tqdm import tqdm  # noqa: PLC0415

    overall = tqdm(
        total=sum(len(v) for v in todo),
        unit="frame",
        desc=f"rank {rank}" if world > 1 else "split",
        disable=not progress,
        position=0,
    )
    try:
        for video in todo:
            with tqdm(
                total=len(video), unit="frame", desc=video.name, disable=not progress, position=1, leave=False
            ) as bar:

                def tick(_: FramePrediction, bar=bar) -> None:
                    bar.update(1)
                    overall.update(1)

                timings.append(predict_video(model, video, annotations_dir, inference, rank, tick))
    finally:
        overall.close()
    return timings


def write_zip(out_dir: str | os.PathLike, zip_path: str | os.PathLike, names: Sequence[str]) -> Path:
    """Zip out_dir/Annotations/<video>/*.png of the given videos as Annotations/<video>/<frame>.png (the layout
    the YouTube-VOS / MOSE / DAVIS servers accept); written to <zip>.partial and renamed. DataError when a video
    is not finished."""
    annotations_dir = Path(out_dir) / "Annotations"
    zip_path = Path(zip_path)
    missing = [n for n in names if not (annotations_dir / n).is_dir()]
    if missing:
        raise DataError(
            f"cannot zip: video {missing[0]!r} is not finished ({len(missing)} missing) in {annotations_dir}"
        )
    partial = zip_path.with_name(zip_path.name + ".partial")
    try:
        zip_path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name in sorted(names):
                for png in sorted((annotations_dir / name).glob("*.png")):
                    archive.write(png, f"Annotations/{name}/{png.name}")
        os.replace(partial, zip_path)
    except OSError as error:
        raise MediaError(f"cannot write zip {str(zip_path)!r}: {error}") from None
    return zip_path


def format_timings(timings: Sequence[VideoTiming]) -> str:
    """The per-video time table printed at the end of `cfbi predict`, with a total line."""
    rows = [("video", "frames", "written", "objects", "seconds", "frames/s", "rank")]
    for t in sorted(timings, key=lambda t: t.name):
        if t.skipped:
            rows.append((t.name, str(t.frames), str(t.written), "-", "skipped (finished earlier)", "", str(t.rank)))
        else:
            rate = f"{t.frames / t.seconds:.2f}" if t.seconds > 0 else "-"
            rows.append((t.name, str(t.frames), str(t.written), str(t.objects), f"{t.seconds:.1f}", rate, str(t.rank)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    return "\n".join(lines)
