"""DAVIS-2017 semi-supervised J&F of predicted masks against ground-truth masks, folder against folder.

Both folders are in the DAVIS layout: one sub-folder per sequence, one PNG per frame (``00000.png``, ...), each
pixel's palette index (or grey level) being its object id, 0 for background. The ground truth's sequences are the
sub-folders of ``gt_root``; its frames are the PNG files of each one, in name order. As in the official
davis2017-evaluation tool:

* the objects of a sequence are ids 1 .. max id of its first ground-truth frame;
* the first and the last frame are not scored, so predictions are read (and needed) only for the other frames,
  under the ground truth's file names;
* ground-truth pixels labelled 255 count as background (the semi-supervised evaluation excludes no void region);
* a predicted id that is not one of the objects (255 included) is an error; an object never predicted counts as
  empty.

See ``cfbi_model.evaluation.metrics`` for the measures.
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import IGNORE_LABEL
from ..io.frames import MediaError
from ..io.masks import PARTIAL_SUFFIX, read_mask
from . import metrics
from .metrics import GLOBAL_MEASURES, DatasetResult, SequenceResult

__all__ = [
    "EvaluationError",
    "evaluate_folders",
    "list_sequences",
    "format_report",
    "write_json",
    "write_csv",
]


class EvaluationError(MediaError):
    """A problem with the input folders or files; its message names the file."""


def _png_frames(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.iterdir() if p.suffix == ".png" and p.is_file())


def list_sequences(gt_root: Path) -> list[str]:
    """Names of the sequence folders of a DAVIS-layout ground-truth folder, sorted."""
    if not gt_root.is_dir():
        raise EvaluationError(f"ground-truth folder not found: {gt_root}")
    names = sorted(p.name for p in gt_root.iterdir() if p.is_dir())
    if not names:
        raise EvaluationError(f"no sequence folders in the ground-truth folder {gt_root}")
    return names


@dataclass(frozen=True)
class _Job:
    name: str
    gt_dir: Path
    pred_dir: Path
    bound_th: float


def _size(a: np.ndarray) -> str:
    return f"{a.shape[1]}x{a.shape[0]}"


def _evaluate_job(job: _Job) -> SequenceResult:
    """Read one sequence's ground truth and predictions, check them, and compute its J and F (runs in a
    worker process)."""
    frames = _png_frames(job.gt_dir)
    if len(frames) < 3:
        raise EvaluationError(
            f"{job.gt_dir}: {len(frames)} ground-truth frame(s); the first and last frames are "
            "not scored, so a sequence needs at least 3"
        )
    first_path = job.gt_dir / f"{frames[0]}.png"
    first = _read_labels(first_path)
    gt = np.zeros((len(frames), *first.shape), dtype=first.dtype)
    gt[0] = first
    for i, frame in enumerate(frames[1:], start=1):
        path = job.gt_dir / f"{frame}.png"
        labels = _read_labels(path)
        if labels.shape != first.shape:
            raise EvaluationError(
                f"{path}: size {_size(labels)} differs from the sequence's first frame {first_path} ({_size(first)})"
            )
        if labels.dtype != gt.dtype:
            gt = gt.astype(np.result_type(gt.dtype, labels.dtype))
        gt[i] = labels
    object_ids = metrics.davis_object_ids(first)
    allowed = np.asarray([0, *object_ids])

    if not job.pred_dir.is_dir():
        partial = job.pred_dir.with_name(job.pred_dir.name + PARTIAL_SUFFIX)
        hint = f" ({partial} is what an interrupted run left)" if partial.is_dir() else ""
        raise EvaluationError(f"missing prediction folder for sequence {job.name!r}: {job.pred_dir}{hint}")
    pred = np.zeros(gt.shape, dtype=np.uint8)
    for i in range(1, len(frames) - 1):
        path = job.pred_dir / f"{frames[i]}.png"
        if not path.is_file():
            raise EvaluationError(f"missing predicted frame: {path} (ground truth {job.gt_dir / (frames[i] + '.png')})")
        labels = _read_labels(path)
        if labels.shape != gt.shape[1:]:
            raise EvaluationError(
                f"{path}: size {_size(labels)} does not match the ground truth "
                f"{job.gt_dir / (frames[i] + '.png')} ({_size(gt[i])})"
            )
        present = np.unique(labels)
        unknown = present[~np.isin(present, allowed)]
        if unknown.size:
            objects = ", ".join(map(str, object_ids)) or "none"
            hint = (
                f" ({IGNORE_LABEL} marks void pixels in ground truths; it is not a valid prediction)"
                if IGNORE_LABEL in unknown
                else ""
            )
            raise EvaluationError(
                f"{path}: predicted object id(s) {', '.join(str(int(u)) for u in unknown)} are not in the ground "
                f"truth of sequence {job.name!r} (objects: {objects}, from {first_path}){hint}"
            )
        if labels.dtype != pred.dtype:
            pred = pred.astype(np.result_type(pred.dtype, labels.dtype))
        pred[i] = labels
    return metrics.evaluate_sequence(gt, pred, object_ids, name=job.name, frame_names=frames, bound_th=job.bound_th)


def evaluate_folders(
    gt_root: Path,
    pred_root: Path,
    *,
    workers: int | None = None,
    bound_th: float = metrics.DEFAULT_BOUND_TH,
    sequences: list[str] | None = None,
) -> DatasetResult:
    """Evaluate every sequence folder of ``gt_root`` (or only ``sequences``) against the same-named folder of
    ``pred_root``, ``workers`` sequences at a time in separate processes (default: one per CPU; 1 runs
    in this process). Raises EvaluationError on the first bad file."""
    if not pred_root.is_dir():
        raise EvaluationError(f"prediction folder not found: {pred_root}")
    names = list_sequences(gt_root) if sequences is None else list(sequences)
    for name in names:
        if not (gt_root / name).is_dir():
            raise EvaluationError(f"missing ground-truth folder for sequence {name!r}: {gt_root / name}")
    jobs = [_Job(name, gt_root / name, pred_root / name, bound_th) for name in names]
    n_workers = min(workers or os.cpu_count() or 1, len(jobs))
    if n_workers <= 1:
        return DatasetResult([_evaluate_job(job) for job in jobs])
    # spawn: children import only numpy, Pillow and this package, whatever the parent process has loaded.
    with ProcessPoolExecutor(max_workers=n_workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_evaluate_job, job) for job in jobs]
        try:
            results = [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return DatasetResult(results)


def _read_labels(path: Path) -> np.ndarray:
    """The label map of one PNG (cfbi_model.io.read_mask) with errors as EvaluationError."""
    try:
        return read_mask(path)[0]
    except MediaError as error:
        raise EvaluationError(str(error)) from None


# --------------------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------------------


def _fmt(x: float) -> str:
    return f"{x:.3f}" if math.isfinite(x) else "nan"


def _table(headers: list[str], rows: list[list[str]], label_column: bool = True) -> str:
    """Aligned text table; the first column is left-aligned when it holds labels, the others right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 and label_column else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        )

    return "\n".join([line(headers), *(line(row) for row in rows)])


def format_report(result: DatasetResult) -> str:
    """The text printed by ``cfbi evaluate``: per-sequence, per-object and global tables."""
    seq_rows = [
        [s.name, str(len(s.objects)), *(_fmt(s.measures()[m]) for m in GLOBAL_MEASURES)] for s in result.sequences
    ]
    obj_rows = [
        [f"{name}_{o.object_id}", _fmt(o.jf_mean), _fmt(o.J.mean), _fmt(o.F.mean)] for name, o in result.objects
    ]
    glob = result.global_measures()
    n_obj = len(result.objects)
    parts = [
        "Per-sequence results (each measure averaged over the sequence's objects)",
        _table(["Sequence", "Objects", *GLOBAL_MEASURES], seq_rows),
        "",
        "Per-object results",
        _table(["Object", "J&F-Mean", "J-Mean", "F-Mean"], obj_rows),
        "",
        f"Global results ({len(result.sequences)} sequences, {n_obj} objects; averaged over objects)",
        _table(list(GLOBAL_MEASURES), [[_fmt(glob[m]) for m in GLOBAL_MEASURES]], label_column=False),
    ]
    return "\n".join(parts)


def write_json(result: DatasetResult, path: Path, settings: dict) -> None:
    """Global, per-sequence and per-object measures, with per-frame J and F, as JSON."""
    data = {**result.to_dict(per_frame=True), "settings": settings}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def write_csv(result: DatasetResult, path: Path) -> None:
    """One row per object, per sequence and a global row: ``Level, Sequence, Object, <GLOBAL_MEASURES>``
    (Level is object / sequence / global; empty cells for what does not apply or is NaN)."""

    def cells(m: dict[str, float]) -> list[str]:
        return [repr(m[k]) if math.isfinite(m[k]) else "" for k in GLOBAL_MEASURES]

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Level", "Sequence", "Object", *GLOBAL_MEASURES])
        for s in result.sequences:
            for o in s.objects:
                writer.writerow(["object", s.name, o.object_id, *cells(o.measures())])
            writer.writerow(["sequence", s.name, "", *cells(s.measures())])
        writer.writerow(["global", "", "", *cells(result.global_measures())])
