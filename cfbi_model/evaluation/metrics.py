"""DAVIS-2017 semi-supervised evaluation: region similarity J and boundary F-measure F.

The numbers are those of the official DAVIS-2017 evaluation code (davis2017-evaluation: ``davis2017/metrics.py``,
``davis2017/utils.py``, ``davis2017/evaluation.py``, ``davis2017/davis.py``, ``davis2017/results.py``),
re-implemented here with numpy only:

* **J** (``region_similarity``) is the Jaccard index |P ∩ G| / |P ∪ G|, and 1 when both masks are empty.
* **F** (``boundary_f_measure``) compares one-pixel boundary maps (``seg_to_boundary``, the Berkeley ``seg2bmap``
  neighbourhood: a pixel is on the boundary when it differs from its right, lower or lower-right neighbour, with
  the special last row / last column rules). A boundary pixel counts as matched when a boundary pixel of the
  other mask lies within a disk of radius ``ceil(bound_th * image diagonal)`` (8 pixels for 480x854). The disk is
  ``skimage.morphology.disk(r)`` = {(dy, dx): dy² + dx² <= r²}, applied with ``cv2.dilate`` (pixels outside the
  image never contribute), which is what the official code does. Precision/recall conventions for empty
  boundaries are the official ones: both empty -> F = 1, exactly one empty -> F = 0.
* Per object, the frames of a sequence give ``statistics``: mean, recall = fraction of frames with value > 0.5,
  decay = mean of the first quarter minus mean of the last quarter (4 bins cut at
  ``round(linspace(1, n, 5) + 1e-10) - 1``, neighbouring bins sharing their end frame).
* Semi-supervised protocol (``evaluate_sequence``): the objects are 1..max(label of the first ground-truth
  frame) (the official ``num_objects = int(np.max(masks[0]))``, so an id missing from the first frame below the
  largest one is still an object, with an empty ground truth there); the first and the last frame are not
  scored; ground-truth pixels labelled 255 are turned into background and no void region is excluded (the official
  semi-supervised path passes ``void_pixels=None``); a predicted id that is not one of the objects is an error
  (the official tool stops with "there is an index higher than the number of objects"); an object that never
  appears in the prediction counts as an empty mask.
* Global results (``DatasetResult.global_measures``): every measure is the mean over all objects of all
  sequences (not over sequences); ``J&F-Mean = (J-Mean + F-Mean) / 2``.

Known deliberate difference: the official ``db_statistics`` casts the bin indices to ``uint8``, which wraps for
sequences with 256 or more scored frames (its decay then comes out wrong or NaN); here plain integers are used
(identical for every shorter sequence, which includes all of DAVIS 2017).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..config import IGNORE_LABEL  # void pixels of DAVIS annotations (background when scored)

__all__ = [
    "DEFAULT_BOUND_TH",
    "GLOBAL_MEASURES",
    "MeasureStats",
    "ObjectResult",
    "SequenceResult",
    "DatasetResult",
    "UnknownObjectError",
    "region_similarity",
    "boundary_f_measure",
    "boundary_radius",
    "disk",
    "dilate_disk",
    "seg_to_boundary",
    "statistics",
    "davis_object_ids",
    "evaluate_sequence",
    "evaluate_dataset",
]

DEFAULT_BOUND_TH = 0.008
"""Boundary tolerance of the DAVIS protocol, as a fraction of the image diagonal."""

GLOBAL_MEASURES = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
"""The global measures, in the order of the official results table."""


class UnknownObjectError(ValueError):
    """A prediction contains an object id that is not one of the sequence's objects."""


# --------------------------------------------------------------------------------------------------------------
# Per-frame measures
# --------------------------------------------------------------------------------------------------------------


def _as_bool_2d(mask: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a 2-D mask, got shape {arr.shape}")
    return arr.astype(bool, copy=False)


def _check_pair(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None) -> tuple[np.ndarray, ...]:
    p = _as_bool_2d(pred, "pred")
    g = _as_bool_2d(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred shape {p.shape} does not match gt shape {g.shape}")
    if void is None:
        return p, g, None
    v = _as_bool_2d(void, "void")
    if v.shape != g.shape:
        raise ValueError(f"void shape {v.shape} does not match gt shape {g.shape}")
    return p, g, v


def region_similarity(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None) -> float:
    """Jaccard index J = |pred ∩ gt| / |pred ∪ gt| of two binary masks of the same shape.

    Pixels where ``void`` is true are left out of both counts. J is 1.0 when the union is empty (both masks
    empty), as in the official ``db_eval_iou``.
    """
    p, g, v = _check_pair(pred, gt, void)
    inter = p & g
    union = p | g
    if v is not None:
        keep = ~v
        inter &= keep
        union &= keep
    n_union = int(np.count_nonzero(union))
    if n_union == 0:
        return 1.0
    return float(np.count_nonzero(inter) / n_union)


def seg_to_boundary(mask: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary map of a binary mask (the Berkeley ``seg2bmap`` used by DAVIS).

    A pixel is a boundary pixel when its value differs from its right, lower or lower-right neighbour, where a
    neighbour outside the image counts as background, except that on the last row only the right neighbour and
    on the last column only the lower neighbour are compared, and the bottom-right pixel is never a boundary
    pixel. The boundary therefore sits half a pixel towards the origin from the true contour. Returns a bool
    array of the mask's shape.
    """
    seg = _as_bool_2d(mask, "mask")
    right = np.zeros_like(seg)
    down = np.zeros_like(seg)
    diag = np.zeros_like(seg)
    right[:, :-1] = seg[:, 1:]
    down[:-1, :] = seg[1:, :]
    diag[:-1, :-1] = seg[1:, 1:]
    bmap = (seg ^ right) | (seg ^ down) | (seg ^ diag)
    bmap[-1, :] = seg[-1, :] ^ right[-1, :]
    bmap[:, -1] = seg[:, -1] ^ down[:, -1]
    bmap[-1, -1] = False
    return bmap


def boundary_radius(shape: tuple[int, int], bound_th: float = DEFAULT_BOUND_TH) -> int:
    """Radius in pixels of the boundary tolerance disk: ``ceil(bound_th * hypot(H, W))`` for ``bound_th < 1``,
    ``bound_th`` itself (which must then be a whole number) otherwise."""
    if bound_th < 0:
        raise ValueError(f"bound_th must be >= 0, got {bound_th}")
    if bound_th >= 1:
        if float(bound_th) != int(bound_th):
            raise ValueError(f"a pixel bound_th (>= 1) must be a whole number, got {bound_th}")
        return int(bound_th)
    # Same arithmetic as the official code: np.ceil(bound_th * np.linalg.norm(shape)).
    return int(np.ceil(bound_th * np.linalg.norm(np.asarray(shape[:2], dtype=np.float64))))


def disk(radius: int) -> np.ndarray:
    """The disk structuring element of ``skimage.morphology.disk(radius)``: a ``(2r+1, 2r+1)`` bool array, true
    where ``dy² + dx² <= r²``."""
    r = int(radius)
    if r < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    offsets = np.arange(-r, r + 1)
    return (offsets[:, None] ** 2 + offsets[None, :] ** 2) <= r * r


def dilate_disk(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of ``mask`` by ``disk(radius)``, with pixels outside the image contributing nothing
    (``cv2.dilate`` with its default constant border). Computed row by row of the disk: each row of the disk
    is a horizontal run, done with a cumulative sum, then shifted vertically."""
    m = _as_bool_2d(mask, "mask")
    r = int(radius)
    if r < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    h, w = m.shape
    if r == 0 or not m.any():
        return m.copy()
    # csum[:, r + x + 1] = number of true pixels in columns 0..x of the row; flat (0 or the row total) outside.
    csum = np.zeros((h, w + 2 * r + 1), dtype=np.int32)
    np.cumsum(m, axis=1, out=csum[:, r + 1 : r + 1 + w])
    csum[:, r + 1 + w :] = csum[:, r + w : r + w + 1]
    runs: dict[int, np.ndarray] = {}
    out = np.zeros_like(m)
    for dy in range(-r, r + 1):
        if abs(dy) >= h:
            continue
        half = math.isqrt(r * r - dy * dy)
        run = runs.get(half)
        if run is None:
            # true where columns x - half .. x + half of the row hold a true pixel
            run = csum[:, r + half + 1 : r + half + 1 + w] > csum[:, r - half : r - half + w]
            runs[half] = run
        # out[y] |= run[y + dy]
        if dy >= 0:
            out[: h - dy] |= run[dy:]
        else:
            out[-dy:] |= run[: h + dy]
    return out


def _count_matched(points: np.ndarray, targets: np.ndarray, radius: int) -> int:
    """Number of true pixels of ``points`` within ``disk(radius)`` of a true pixel of ``targets``
    (``count(points & dilate_disk(targets, radius))``), computed on the bounding box of ``points`` widened by
    the radius: target pixels farther away cannot match anything."""
    rows = np.flatnonzero(points.any(axis=1))
    cols = np.flatnonzero(points.any(axis=0))
    if rows.size == 0:
        return 0
    y0, y1 = max(rows[0] - radius, 0), min(rows[-1] + radius + 1, points.shape[0])
    x0, x1 = max(cols[0] - radius, 0), min(cols[-1] + radius + 1, points.shape[1])
    near = dilate_disk(targets[y0:y1, x0:x1], radius)
    return int(np.count_nonzero(points[y0:y1, x0:x1] & near))


def boundary_f_measure(
    pred: np.ndarray,
    gt: np.ndarray,
    bound_th: float = DEFAULT_BOUND_TH,
    void: np.ndarray | None = None,
) -> float:
    """Boundary F-measure F of two binary masks of the same shape (the official ``f_measure``).

    The boundaries of both masks (``seg_to_boundary``, after clearing ``void`` pixels when given) are matched
    within a disk of radius ``boundary_radius(shape, bound_th)``: precision is the fraction of predicted
    boundary pixels near a ground-truth boundary pixel, recall the fraction of ground-truth boundary pixels near
    a predicted one, F = 2PR / (P + R). Both boundaries empty: F = 1; exactly one empty: F = 0.
    """
    p, g, v = _check_pair(pred, gt, void)
    if v is not None:
        p = p & ~v
        g = g & ~v
    fg_boundary = seg_to_boundary(p)
    gt_boundary = seg_to_boundary(g)
    n_fg = int(np.count_nonzero(fg_boundary))
    n_gt = int(np.count_nonzero(gt_boundary))
    if n_fg == 0 and n_gt == 0:
        return 1.0
    if n_fg == 0 or n_gt == 0:
        # (precision, recall) = (1, 0) or (0, 1): F = 0.
        return 0.0
    radius = boundary_radius(p.shape, bound_th)
    fg_match = _count_matched(fg_boundary, gt_boundary, radius)
    gt_match = _count_matched(gt_boundary, fg_boundary, radius)
    precision = fg_match / float(n_fg)
    recall = gt_match / float(n_gt)
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


# --------------------------------------------------------------------------------------------------------------
# Per-object statistics
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeasureStats:
    """Mean, recall and decay of one measure (J or F) over the scored frames of one object."""

    mean: float
    recall: float
    decay: float


def _nanmean(values: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return float(np.nanmean(values)) if values.size else math.nan


def statistics(per_frame_values: Sequence[float] | np.ndarray) -> tuple[float, float, float]:
    """``(mean, recall, decay)`` of one object's per-frame values (the official ``db_statistics``).

    mean is the mean ignoring NaN; recall the fraction of frames whose value is > 0.5; decay the mean of the first
    of 4 bins minus the mean of the last, the bins being ``values[ids[i] : ids[i+1] + 1]`` with
    ``ids = round(linspace(1, n, 5) + 1e-10) - 1`` (so .5 rounds up and neighbouring bins share a frame).
    All three are NaN for an empty sequence.
    """
    values = np.asarray(per_frame_values, dtype=np.float64).ravel()
    n = values.size
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = _nanmean(values)
    recall = float(np.mean(values > 0.5))
    ids = np.round(np.linspace(1, n, 5) + 1e-10).astype(np.int64) - 1
    first = values[ids[0] : ids[1] + 1]
    last = values[ids[3] : ids[4] + 1]
    decay = _nanmean(first) - _nanmean(last)
    return mean, recall, decay


# --------------------------------------------------------------------------------------------------------------
# Sequences and datasets
# --------------------------------------------------------------------------------------------------------------


@dataclass
class ObjectResult:
    """Per-frame J and F of one object of one sequence, over the scored frames, with their statistics."""

    object_id: int
    j: np.ndarray
    f: np.ndarray
    J: MeasureStats = field(init=False)
    F: MeasureStats = field(init=False)

    def __post_init__(self) -> None:
        self.j = np.asarray(self.j, dtype=np.float64)
        self.f = np.asarray(self.f, dtype=np.float64)
        self.J = MeasureStats(*statistics(self.j))
        self.F = MeasureStats(*statistics(self.f))

    @property
    def jf_mean(self) -> float:
        """(J mean + F mean) / 2 of this object."""
        return (self.J.mean + self.F.mean) / 2.0

    def measures(self) -> dict[str, float]:
        """The seven measures of ``GLOBAL_MEASURES`` for this object alone."""
        return _measures_of([self])


def _measures_of(objects: Sequence[ObjectResult]) -> dict[str, float]:
    def avg(values: list[float]) -> float:
        return float(np.mean(values)) if values else math.nan

    j_mean = avg([o.J.mean for o in objects])
    f_mean = avg([o.F.mean for o in objects])
    return {
        "J&F-Mean": (j_mean + f_mean) / 2.0,
        "J-Mean": j_mean,
        "J-Recall": avg([o.J.recall for o in objects]),
        "J-Decay": avg([o.J.decay for o in objects]),
        "F-Mean": f_mean,
        "F-Recall": avg([o.F.recall for o in objects]),
        "F-Decay": avg([o.F.decay for o in objects]),
    }


@dataclass
class SequenceResult:
    """Results of one sequence: its objects (in id order) and the names of its scored frames."""

    name: str
    objects: list[ObjectResult]
    frame_names: list[str]

    @property
    def object_ids(self) -> list[int]:
        return [o.object_id for o in self.objects]

    def measures(self) -> dict[str, float]:
        """The seven measures averaged over this sequence's objects (NaN when it has none)."""
        return _measures_of(self.objects)


@dataclass
class DatasetResult:
    """Results of a set of sequences; the global measures average over all objects of all sequences."""

    sequences: list[SequenceResult]

    @property
    def objects(self) -> list[tuple[str, ObjectResult]]:
        """All ``(sequence name, object)`` pairs, in sequence order."""
        return [(s.name, o) for s in self.sequences for o in s.objects]

    def global_measures(self) -> dict[str, float]:
        """J&F-Mean, J-Mean, J-Recall, J-Decay, F-Mean, F-Recall, F-Decay over all objects (as the official
        ``evaluation_method.py``: ``np.mean`` of the per-object values)."""
        return _measures_of([o for _, o in self.objects])

    def to_dict(self, per_frame: bool = True) -> dict:
        """A JSON-ready dictionary (non-finite numbers become ``None``)."""

        def num(x: float) -> float | None:
            return float(x) if math.isfinite(x) else None

        def block(m: dict[str, float]) -> dict[str, float | None]:
            return {k: num(v) for k, v in m.items()}

        sequences = []
        for s in self.sequences:
            objects = []
            for o in s.objects:
                entry: dict = {"id": o.object_id, "name": f"{s.name}_{o.object_id}", **block(o.measures())}
                if per_frame:
                    entry["J"] = [num(x) for x in o.j]
                    entry["F"] = [num(x) for x in o.f]
                objects.append(entry)
            sequences.append({"name": s.name, "frames": list(s.frame_names), **block(s.measures()), "objects": objects})
        return {
            "global": block(self.global_measures()),
            "num_sequences": len(self.sequences),
            "num_objects": sum(len(s.objects) for s in self.sequences),
            "sequences": sequences,
        }


def davis_object_ids(first_gt_frame: np.ndarray, void_label: int | None = IGNORE_LABEL) -> list[int]:
    """Objects of a sequence as DAVIS semi-supervised defines them: ``1 .. max label`` of the first
    ground-truth frame, after void pixels are set to background."""
    labels = np.asarray(first_gt_frame)
    if void_label is not None:
        labels = np.where(labels == void_label, 0, labels)
    top = int(labels.max()) if labels.size else 0
    return list(range(1, top + 1))


def evaluate_sequence(
    gt_masks: np.ndarray,
    pred_masks: np.ndarray,
    object_ids: Iterable[int] | None = None,
    *,
    name: str = "",
    frame_names: Sequence[str] | None = None,
    bound_th: float = DEFAULT_BOUND_TH,
    skip_first_last: bool = True,
    void_label: int | None = IGNORE_LABEL,
) -> SequenceResult:
    """Per-object, per-frame J and F of one sequence of label maps.

    Args:
        gt_masks: ``[T, H, W]`` integer ground-truth labels (0 background, k object k, ``void_label`` void).
        pred_masks: ``[T, H, W]`` integer predicted labels, same shape.
        object_ids: objects to score; default ``davis_object_ids(gt_masks[0])``.
        name: sequence name stored in the result.
        frame_names: names of the T frames (default ``"00000"``, ``"00001"``, ...).
        bound_th: boundary tolerance of F (fraction of the diagonal, or pixels when >= 1).
        skip_first_last: leave out the first and the last frame, as the semi-supervised protocol does (the first
            frame is the given annotation); needs T >= 3.
        void_label: ground-truth label turned into background (``None``: none).

    Raises:
        ValueError: bad shapes, or too few frames.
        UnknownObjectError: a scored predicted frame holds a non-zero id that is not one of the objects.
    """
    gt = np.asarray(gt_masks)
    pred = np.asarray(pred_masks)
    if gt.ndim != 3:
        raise ValueError(f"gt_masks must be [T, H, W], got shape {gt.shape}")
    if pred.shape != gt.shape:
        raise ValueError(f"pred_masks shape {pred.shape} does not match gt_masks shape {gt.shape}")
    t = gt.shape[0]
    if frame_names is None:
        frame_names = [f"{i:05d}" for i in range(t)]
    elif len(frame_names) != t:
        raise ValueError(f"{len(frame_names)} frame names for {t} frames")
    if skip_first_last:
        if t < 3:
            raise ValueError(
                f"sequence {name!r} has {t} frame(s): the first and last frames are not scored, "
                "so at least 3 are needed"
            )
        scored = range(1, t - 1)
    else:
        scored = range(t)
    if void_label is not None:
        gt = np.where(gt == void_label, 0, gt)
    ids = davis_object_ids(gt[0], None) if object_ids is None else [int(k) for k in object_ids]

    allowed = np.asarray(sorted(set(ids) | {0}))
    for i in scored:
        present = np.unique(pred[i])
        unknown = present[~np.isin(present, allowed)]
        if unknown.size:
            raise UnknownObjectError(
                f"sequence {name!r}, frame {frame_names[i]}: predicted id(s) "
                f"{', '.join(str(int(u)) for u in unknown)} not among the objects {ids}"
            )

    j = np.zeros((len(ids), len(scored)))
    f = np.zeros((len(ids), len(scored)))
    for col, i in enumerate(scored):
        for row, k in enumerate(ids):
            g = gt[i] == k
            p = pred[i] == k
            j[row, col] = region_similarity(p, g)
            f[row, col] = boundary_f_measure(p, g, bound_th)
    objects = [ObjectResult(k, j[row], f[row]) for row, k in enumerate(ids)]
    return SequenceResult(name=name, objects=objects, frame_names=[frame_names[i] for i in scored])


def evaluate_dataset(
    sequences: Mapping[str, tuple[np.ndarray, np.ndarray]] | Iterable[tuple[str, np.ndarray, np.ndarray]],
    *,
    bound_th: float = DEFAULT_BOUND_TH,
    skip_first_last: bool = True,
    void_label: int | None = IGNORE_LABEL,
) -> DatasetResult:
    """Evaluate several sequences: ``{name: (gt_masks, pred_masks)}`` or ``(name, gt_masks, pred_masks)``
    triples, each pair as in ``evaluate_sequence`` (objects from the first ground-truth frame). The global
    measures are in ``result.global_measures()``."""
    items = [(k, g, p) for k, (g, p) in sequences.items()] if isinstance(sequences, Mapping) else list(sequences)
    return DatasetResult(
        [
            evaluate_sequence(
                g, p, name=name, bound_th=bound_th, skip_first_last=skip_first_last, void_label=void_label
            )
            for name, g, p in items
        ]
    )
