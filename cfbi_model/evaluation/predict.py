"""Predicting a whole benchmark split (what `cfbi predict` runs): every video's scored frames as palette PNGs in
OUT/Annotations/<video>/<frame>.png, resumable, sharded over the processes of a distributed run, and the zip
archive the evaluation servers accept.

Each video folder is written as <video>.partial and renamed when complete (cfbi_model.inference.sinks), so a
folder named after a video is finished: a resumed run skips it, an interrupted one redoes the partial ones.
`evaluate_videos` scores a model on videos with ground truth (the validation of `cfbi train`).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..config import InferenceConfig
from ..data.layouts import DataError
from ..inference.driver import load_annotations, run_video
from ..inference.segmenter import FramePrediction, VideoSegmenter
from ..inference.sinks import MaskCollector, MaskFolderWriter, written_by_cfbi
from ..io.frames import MediaError, image_size
from ..io.source import Video, frame_size
from . import metrics

__all__ = [
    "VideoTiming",
    "shard",
    "predict_video",
    "predict_split",
    "finished_videos",
    "write_zip",
    "format_timings",
    "evaluate_videos",
]


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


def shard(videos: Sequence[Video], rank: int, world: int) -> list[Video]:
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
    """Names of the complete video folders this program wrote under OUT/Annotations (partial ones end in
    .partial; a folder without the writer's marker is not one of ours)."""
    path = Path(annotations_dir)
    if not path.is_dir():
        return set()
    return {p.name for p in path.iterdir() if not p.name.endswith(".partial") and written_by_cfbi(p)}


def _checked(video: Video) -> Video:
    """The video with its size, after every frame's and annotation's header was read (DataError naming the first
    that differs), before the video starts."""
    try:
        height, width = frame_size(video.frames)
    except MediaError as error:
        raise DataError(f"video {video.name!r}: {error}") from None
    for path in video.annotations.values():
        found = image_size(path, "mask")
        if found != (width, height):
            raise DataError(
                f"annotation {path} is {found[0]}x{found[1]} but the frames of video {video.name!r} "
                f"are {width}x{height} (WxH)"
            )
    return replace(video, size=(height, width))


def predict_video(
    model,
    video: Video,
    annotations_dir: str | os.PathLike,
    inference: InferenceConfig | None = None,
    rank: int = 0,
    on_frame: Callable[[FramePrediction], None] | None = None,
    settings: dict | None = None,
) -> VideoTiming:
    """Propagate one video's annotations and write its scored frames to annotations_dir/<video>/ (settings: what
    the folder's marker records)."""
    video = _checked(video)
    annotations, palette = load_annotations(None, video)
    writer = MaskFolderWriter(annotations_dir, video.name, palette, scored=video.scored, settings=settings)
    result = run_video(VideoSegmenter(model, inference), video, writer, annotations=annotations, on_frame=on_frame)
    return VideoTiming(video.name, len(video), writer.count, len(result.objects), result.seconds, rank)


def predict_split(
    model,
    videos: Sequence[Video],
    out_dir: str | os.PathLike,
    inference: InferenceConfig | None = None,
    *,
    rank: int = 0,
    world: int = 1,
    resume: bool = False,
    progress: bool = False,
    settings: dict | None = None,
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
    timings = [VideoTiming(v.name, len(v), len(v.scored), 0, 0.0, rank, True) for v in mine if v.name in done]
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

                timings.append(predict_video(model, video, annotations_dir, inference, rank, tick, settings))
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


def evaluate_videos(
    model, videos: Sequence[Video], inference: InferenceConfig | None = None, max_frames: int | None = None
) -> metrics.DatasetResult:
    """DAVIS J&F of the model over videos with ground-truth masks on every frame (the first frame's mask given;
    objects 1..max id of it), each cut to its first max_frames frames."""
    from .. import io as cfbi_io  # noqa: PLC0415

    was_training = model.training
    results = []
    try:
        for video in videos:
            count = len(video) if max_frames is None else min(len(video), max_frames)
            cut = replace(video, frames=video.frames[:count], stems=video.stems[:count], scored=None)
            gt = np.stack([cfbi_io.read_mask(video.masks[i])[0] for i in range(count)])
            collector = MaskCollector()
            run_video(VideoSegmenter(model, inference), cut, collector, annotations={0: gt[0]})
            results.append(
                metrics.evaluate_sequence(gt, collector.masks, metrics.davis_object_ids(gt[0]), name=video.name)
            )
    finally:
        model.train(was_training)
    return metrics.DatasetResult(results)
