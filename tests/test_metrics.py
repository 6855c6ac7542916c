"""Tests of cfbi_model.evaluation.metrics: hand-computed J, F, boundaries and statistics, and a comparison with a small
port of the official DAVIS-2017 evaluation code on random masks."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from cfbi_model.evaluation import metrics as M


def box(shape, rows, cols):
    """Bool mask of ``shape`` with rows[0]..rows[1] x cols[0]..cols[1] (inclusive) set."""
    m = np.zeros(shape, bool)
    m[rows[0] : rows[1] + 1, cols[0] : cols[1] + 1] = True
    return m


def coords(mask):
    return {(int(y), int(x)) for y, x in zip(*np.nonzero(mask))}


# ---------------------------------------------------------------------------------------------------------
# J
# ---------------------------------------------------------------------------------------------------------


def test_region_similarity_hand_values():
    e = np.zeros((4, 4), bool)
    a = box((4, 4), (1, 2), (1, 2))  # 4 px
    b = box((4, 4), (1, 2), (2, 3))  # 4 px, overlap = column 2 rows 1-2 = 2 px
    assert M.region_similarity(e, e) == 1.0  # union empty: J = 1 by convention
    assert M.region_similarity(a, e) == 0.0  # gt empty, pred not: 0 / 4
    assert M.region_similarity(e, a) == 0.0  # pred empty, gt not: 0 / 4
    assert M.region_similarity(a, a) == 1.0
    assert M.region_similarity(b, a) == pytest.approx(2 / 6)  # inter 2, union 4 + 4 - 2 = 6


def test_region_similarity_void_excluded_when_given():
    gt = box((3, 3), (1, 1), (1, 1))
    pred = gt.copy()
    pred[0, 0] = True
    void = np.zeros((3, 3), bool)
    void[0, 0] = True
    assert M.region_similarity(pred, gt) == 0.5  # inter 1, union 2
    assert M.region_similarity(pred, gt, void) == 1.0  # the extra pixel is void: inter 1, union 1


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        M.region_similarity(np.zeros((3, 4), bool), np.zeros((4, 3), bool))
    with pytest.raises(ValueError):
        M.boundary_f_measure(np.zeros((3, 4), bool), np.zeros((4, 3), bool))


# ---------------------------------------------------------------------------------------------------------
# Boundaries
# ---------------------------------------------------------------------------------------------------------


def test_seg_to_boundary_single_pixel():
    # A pixel differs from its right, lower or lower-right neighbour: for a lone pixel at (2, 2) that is
    # (2, 2) itself (right/down are 0), (2, 1) (right is 1), (1, 2) (down is 1) and (1, 1) (diagonal is 1):
    # the boundary is the 2x2 block shifted half a pixel towards the origin.
    m = np.zeros((5, 5), bool)
    m[2, 2] = True
    assert coords(M.seg_to_boundary(m)) == {(1, 1), (1, 2), (2, 1), (2, 2)}


def test_seg_to_boundary_interior_box_is_outline_of_grown_box():
    # Box rows 2-4, cols 1-3 of a 7x5 image: boundary = outline of rows 1-4 x cols 0-3 (16 - inner 2x2 = 12 px).
    m = box((7, 5), (2, 4), (1, 3))
    expected = coords(box((7, 5), (1, 4), (0, 3))) - coords(box((7, 5), (2, 3), (1, 2)))
    assert coords(M.seg_to_boundary(m)) == expected
    assert len(expected) == 12


def test_seg_to_boundary_border_rules():
    # Left border column: each pixel differs from its right neighbour -> the column itself is the boundary.
    assert coords(M.seg_to_boundary(box((4, 4), (0, 3), (0, 0)))) == {(y, 0) for y in range(4)}
    # Right border column: the last column only compares with the pixel below (equal, or nothing below for the
    # corner, which is forced to 0), so the boundary is column 2 (0 next to 1), not the column itself.
    assert coords(M.seg_to_boundary(box((4, 4), (0, 3), (3, 3)))) == {(y, 2) for y in range(4)}
    # Top border row: every pixel differs from the one below -> row 0 (its last pixel by the last-column rule).
    assert coords(M.seg_to_boundary(box((4, 4), (0, 0), (0, 3)))) == {(0, x) for x in range(4)}
    # Bottom border row: row 2 (0 above 1); the last row compares only with its right neighbour (equal).
    assert coords(M.seg_to_boundary(box((4, 4), (3, 3), (0, 3)))) == {(2, x) for x in range(4)}
    # The whole image: nothing differs inside, the last row/column rules find nothing -> empty boundary.
    assert not M.seg_to_boundary(np.ones((4, 4), bool)).any()
    # Bottom-right corner pixel: never a boundary pixel itself; its up/left/up-left neighbours are.
    m = np.zeros((3, 3), bool)
    m[2, 2] = True
    assert coords(M.seg_to_boundary(m)) == {(1, 1), (1, 2), (2, 1)}


def test_disk_matches_skimage_definition():
    # skimage.morphology.disk(r): dy^2 + dx^2 <= r^2.
    # r=1: the 5-pixel cross; r=2: 13 pixels ((1,2) has 1+4=5>4: excluded); r=3: 7+2*5+2*5+2 = 29.
    assert M.disk(0).tolist() == [[True]]
    assert M.disk(1).astype(int).tolist() == [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    assert M.disk(2).sum() == 13 and not M.disk(2)[0, 1] and M.disk(2)[0, 2] and M.disk(2)[1, 1]
    assert M.disk(3).sum() == 29


def test_disk_equals_skimage_if_installed():
    morphology = pytest.importorskip("skimage.morphology")
    for r in range(0, 20):
        assert np.array_equal(morphology.disk(float(r)).astype(bool), M.disk(r))


def naive_dilate(mask, radius):
    """Reference dilation: OR of the mask shifted by every disk offset, nothing coming from outside."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    for dy, dx in zip(*np.nonzero(M.disk(radius))):
        dy, dx = int(dy) - radius, int(dx) - radius
        if abs(dy) >= h or abs(dx) >= w:
            continue
        src = mask[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)]
        out[max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)] |= src
    return out


def test_dilate_disk_single_pixel_and_corner():
    m = np.zeros((9, 9), bool)
    m[4, 4] = True
    assert np.array_equal(M.dilate_disk(m, 3)[1:8, 1:8], M.disk(3))
    assert M.dilate_disk(m, 3).sum() == 29
    c = np.zeros((5, 6), bool)
    c[0, 0] = True  # at the corner only the quarter of the disk inside the image remains
    assert np.array_equal(M.dilate_disk(c, 2)[:3, :3], M.disk(2)[2:, 2:])
    assert M.dilate_disk(c, 2).sum() == 6  # quarter of disk(2): (0,0),(0,1),(0,2),(1,0),(1,1),(2,0)


def test_dilate_disk_matches_naive_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(60):
        h, w = rng.integers(1, 30, size=2)
        m = rng.random((h, w)) < rng.choice([0.01, 0.05, 0.3])
        r = int(rng.integers(0, 9))
        assert np.array_equal(M.dilate_disk(m, r), naive_dilate(m, r)), (h, w, r)


def test_boundary_radius():
    assert M.boundary_radius((480, 854)) == 8  # 0.008 * 979.65 = 7.84 -> 8
    assert M.boundary_radius((20, 20)) == 1  # 0.008 * 28.28 = 0.23 -> 1
    assert M.boundary_radius((7, 5)) == 1
    assert M.boundary_radius((1080, 1920)) == 18  # 0.008 * 2202.9 = 17.6 -> 18
    assert M.boundary_radius((10, 10), bound_th=3) == 3  # >= 1: pixels


# ---------------------------------------------------------------------------------------------------------
# F
# ---------------------------------------------------------------------------------------------------------


def test_boundary_f_measure_empty_conventions():
    e = np.zeros((6, 6), bool)
    a = box((6, 6), (1, 2), (1, 2))
    assert M.boundary_f_measure(e, e) == 1.0  # both boundaries empty: P = R = 1
    assert M.boundary_f_measure(a, e) == 0.0  # gt empty: P = 0, R = 1 -> F = 0
    assert M.boundary_f_measure(e, a) == 0.0  # pred empty: P = 1, R = 0 -> F = 0
    assert M.boundary_f_measure(a, a) == 1.0


def test_boundary_f_measure_thin_lines():
    # 20x20 -> radius 1 (the 5-pixel cross). GT: 1-px line row 10, cols 5-14; its boundary is rows 9 and 10,
    # cols 4-14 (22 px). A copy moved down by d rows has boundary rows 9+d, 10+d.
    gt = box((20, 20), (10, 10), (5, 14))
    # d=1: J = 0 (no common pixel); boundary rows 10,11 vs 9,10: every pixel is at distance <= 1 -> P=R=1, F=1.
    d1 = box((20, 20), (11, 11), (5, 14))
    assert M.region_similarity(d1, gt) == 0.0
    assert M.boundary_f_measure(d1, gt) == 1.0
    # d=2: boundary rows 11,12 vs 9,10: only row 11 <-> row 10 are within 1: P = 11/22, R = 11/22, F = 0.5.
    d2 = box((20, 20), (12, 12), (5, 14))
    assert M.boundary_f_measure(d2, gt) == pytest.approx(0.5)
    # d=3: boundary rows 12,13 vs 9,10: nothing within 1 -> P = R = 0 -> F = 0.
    d3 = box((20, 20), (13, 13), (5, 14))
    assert M.boundary_f_measure(d3, gt) == 0.0
    # With a 3-pixel tolerance the d=3 line matches everywhere: rows 12,13 vs 9,10 are <= 3 apart... except
    # row 13 vs row 9 (4) -- but row 13 is within 3 of row 10 and row 9 within 3 of row 12: P = R = 1.
    assert M.boundary_f_measure(d3, gt, bound_th=3) == 1.0


def test_boundary_f_measure_odd_size_box():
    # 7x5 image -> radius 1. GT box rows 2-4, cols 1-3: boundary = outline of rows 1-4 x cols 0-3 (12 px).
    # Pred rows 2-4, col 1: boundary = rows 1-4 x cols 0-1 (8 px, no interior).
    # Every pred boundary pixel is on or next to the GT outline: P = 8/8. GT outline pixels near the pred
    # boundary: columns 0 and 1 (6 px) and (1,2), (4,2) (next to (1,1), (4,1)): 8 of 12 -> R = 2/3.
    # F = 2 * 1 * 2/3 / (1 + 2/3) = 0.8. J = 3 / 9.
    gt = box((7, 5), (2, 4), (1, 3))
    pred = box((7, 5), (2, 4), (1, 1))
    assert M.boundary_f_measure(pred, gt) == pytest.approx(0.8)
    assert M.region_similarity(pred, gt) == pytest.approx(1 / 3)
    # Swapping roles swaps P and R: F is symmetric.
    assert M.boundary_f_measure(gt, pred) == pytest.approx(0.8)


def test_boundary_f_measure_objects_touching_the_border():
    # 6x6 -> radius 1. GT = left half (cols 0-2): boundary = column 2. Pred cols 0-1: boundary column 1.
    gt = box((6, 6), (0, 5), (0, 2))
    assert M.boundary_f_measure(box((6, 6), (0, 5), (0, 1)), gt) == 1.0  # columns 1 vs 2: all within 1
    assert M.region_similarity(box((6, 6), (0, 5), (0, 1)), gt) == pytest.approx(12 / 18)
    assert M.boundary_f_measure(box((6, 6), (0, 5), (0, 0)), gt) == 0.0  # column 0 vs 2: distance 2
    # Right half (cols 3-5): boundary column 2; pred cols 4-5: boundary column 3 -> F = 1.
    right = box((6, 6), (0, 5), (3, 5))
    assert M.boundary_f_measure(box((6, 6), (0, 5), (4, 5)), right) == 1.0
    # Whole frame vs whole frame: both boundaries empty -> F = 1. Whole frame vs all but column 0: the GT has
    # no boundary pixel but the prediction has (column 0): P = 0, R = 1 -> F = 0, while J = 30/36.
    full = np.ones((6, 6), bool)
    assert M.boundary_f_measure(full, full) == 1.0
    assert M.boundary_f_measure(box((6, 6), (0, 5), (1, 5)), full) == 0.0
    assert M.region_similarity(box((6, 6), (0, 5), (1, 5)), full) == pytest.approx(30 / 36)


# ---------------------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------------------


def test_statistics_ten_frames():
    # v = 1.0, 0.9, ..., 0.1: mean 0.55; recall = #(v > 0.5) / 10 = 5/10 (0.5 itself does not count).
    # Bins: round(linspace(1, 10, 5)) - 1 = round([1, 3.25, 5.5, 7.75, 10]) - 1 = [0, 2, 5, 7, 9];
    # first bin v[0:3] -> 0.9, last bin v[7:10] -> 0.2: decay 0.7.
    v = np.round(np.arange(10, 0, -1) / 10, 1)
    mean, recall, decay = M.statistics(v)
    assert mean == pytest.approx(0.55)
    assert recall == 0.5
    assert decay == pytest.approx(0.7)


def test_statistics_three_frames_rounds_half_up():
    # linspace(1, 3, 5) = [1, 1.5, 2, 2.5, 3]; +1e-10 makes .5 round up: [1, 2, 2, 3, 3] - 1 = [0, 1, 1, 2, 2].
    # First bin v[0:2] = [1, 0.5] -> 0.75, last bin v[2:3] = [0] -> decay 0.75 (round-half-even would give
    # last bin v[1:3] and decay 0.5). mean 0.5, recall 1/3.
    assert M.statistics([1.0, 0.5, 0.0]) == pytest.approx((0.5, 1 / 3, 0.75))


def test_statistics_edge_cases():
    assert M.statistics([0.7]) == pytest.approx((0.7, 1.0, 0.0))  # every bin is the one frame
    assert all(math.isnan(x) for x in M.statistics([]))
    mean, recall, _ = M.statistics([math.nan, 1.0, 0.0])  # NaN ignored by the mean, counted as <= 0.5
    assert mean == 0.5 and recall == pytest.approx(1 / 3)


# ---------------------------------------------------------------------------------------------------------
# Sequences and datasets
# ---------------------------------------------------------------------------------------------------------


def known_sequence():
    """5 frames of 6x6 (radius 1); first frame holds only id 2 -> objects 1 and 2 (1..max).

    Scored frames 1-3:
      frame 1: obj1 gt = pred = rows 1-2 x cols 1-2 -> J=F=1; obj2 gt = bottom-right 2x2 corner, pred empty -> J=F=0
      frame 2: obj1 absent in gt and pred -> J=F=1 (both empty); obj2 pred = gt -> J=F=1
      frame 3: obj1 absent in gt, pred = pixel (0,0) -> J=0, F=0 (pred boundary not empty, gt's is);
               obj2 pred = gt -> J=F=1
    obj1 J = F = [1, 1, 0]; obj2 J = F = [0, 1, 1].
    Frames 0 and 4 are not scored (their predictions are nonsense on purpose).
    """
    t, h, w = 5, 6, 6
    gt = np.zeros((t, h, w), np.uint8)
    pred = np.zeros((t, h, w), np.uint8)
    corner = box((h, w), (4, 5), (4, 5))
    sq = box((h, w), (1, 2), (1, 2))
    gt[:, corner] = 2
    gt[1][sq] = 1
    pred[1][sq] = 1
    pred[2][corner] = 2
    pred[3][corner] = 2
    pred[3][0, 0] = 1
    pred[0] = 2
    pred[4] = 1
    return gt, pred


def test_evaluate_sequence_known():
    gt, pred = known_sequence()
    res = M.evaluate_sequence(gt, pred, name="seq")
    assert res.object_ids == [1, 2]
    assert res.frame_names == ["00001", "00002", "00003"]
    o1, o2 = res.objects
    assert o1.j.tolist() == [1, 1, 0] and o1.f.tolist() == [1, 1, 0]
    assert o2.j.tolist() == [0, 1, 1] and o2.f.tolist() == [0, 1, 1]
    # n = 3 bins [0:2], [2:3] (see test_statistics_three_frames_rounds_half_up):
    # obj1: mean 2/3, recall 2/3, decay mean(1, 1) - 0 = 1; obj2: mean 2/3, recall 2/3, decay 0.5 - 1 = -0.5.
    assert (o1.J.mean, o1.J.recall, o1.J.decay) == pytest.approx((2 / 3, 2 / 3, 1.0))
    assert (o2.F.mean, o2.F.recall, o2.F.decay) == pytest.approx((2 / 3, 2 / 3, -0.5))
    g = M.DatasetResult([res]).global_measures()
    assert g["J-Mean"] == pytest.approx(2 / 3) and g["F-Mean"] == pytest.approx(2 / 3)
    assert g["J&F-Mean"] == pytest.approx(2 / 3)
    assert g["J-Decay"] == pytest.approx(0.25) and g["F-Recall"] == pytest.approx(2 / 3)


def test_evaluate_sequence_unknown_prediction_id_only_in_scored_frames():
    gt, pred = known_sequence()
    pred[0] = 7  # frame 0 is not scored: ignored
    M.evaluate_sequence(gt, pred)
    pred[2, 0, 0] = 3
    with pytest.raises(M.UnknownObjectError, match="00002.*3"):
        M.evaluate_sequence(gt, pred)


def test_evaluate_sequence_void_label_is_background():
    # Frames 3x3, all scored. gt: object 1 at (1,1), 255 at (0,0); pred: object 1 at (1,1) and (0,0).
    # The semi-supervised protocol turns 255 into background without excluding it: J = 1/2.
    gt = np.zeros((1, 3, 3), np.uint8)
    gt[0, 1, 1] = 1
    gt[0, 0, 0] = 255
    pred = np.zeros_like(gt)
    pred[0, 1, 1] = pred[0, 0, 0] = 1
    res = M.evaluate_sequence(gt, pred, skip_first_last=False)
    assert res.object_ids == [1]
    assert res.objects[0].j.tolist() == [0.5]


def test_evaluate_sequence_needs_three_frames_and_matching_shapes():
    with pytest.raises(ValueError, match="at least 3"):
        M.evaluate_sequence(np.ones((2, 4, 4), int), np.ones((2, 4, 4), int))
    with pytest.raises(ValueError):
        M.evaluate_sequence(np.ones((3, 4, 4), int), np.ones((3, 4, 5), int))


def test_davis_object_ids():
    f = np.zeros((4, 4), np.uint8)
    assert M.davis_object_ids(f) == []
    f[0, 0] = 3
    f[1, 1] = 255
    assert M.davis_object_ids(f) == [1, 2, 3]  # 1..max, void ignored


def test_evaluate_dataset_global_is_mean_over_objects():
    # seq a: 1 object predicted exactly (J = F = 1); seq b: 3 objects never predicted (J = F = 0).
    # Global J-Mean = (1 + 0 + 0 + 0) / 4 = 0.25 (not the mean of the sequences, 0.5).
    a = np.zeros((3, 8, 8), np.uint8)
    a[:, 2:5, 2:5] = 1
    b = np.zeros((3, 8, 8), np.uint8)
    b[:, 0, 0], b[:, 3, 3], b[:, 6, 6] = 1, 2, 3
    res = M.evaluate_dataset({"a": (a, a.copy()), "b": (b, np.zeros_like(b))})
    g = res.global_measures()
    assert g["J-Mean"] == 0.25 and g["F-Mean"] == 0.25 and g["J&F-Mean"] == 0.25
    assert g["J-Recall"] == 0.25 and g["J-Decay"] == 0.0
    assert [s.name for s in res.sequences] == ["a", "b"]
    assert res.sequences[0].measures()["J-Mean"] == 1.0
    d = res.to_dict()
    assert d["num_objects"] == 4 and d["sequences"][1]["objects"][2]["name"] == "b_3"
    assert d["sequences"][1]["objects"][2]["J"] == [0.0]


# ---------------------------------------------------------------------------------------------------------
# Cross-check against a port of the official code
# ---------------------------------------------------------------------------------------------------------
# Oracle: a minimal port of db_eval_iou, f_measure, _seg2bmap (davis2017/metrics.py) and db_statistics
# (davis2017/utils.py) of davisvideochallenge/davis2017-evaluation, keeping their arithmetic; cv2.dilate with
# skimage's disk is replaced by naive_dilate above (tested against the disk definition) unless both are installed.

try:  # pragma: no cover - optional
    import cv2 as _cv2
    from skimage.morphology import disk as _sk_disk

    def _official_dilate(b, r):
        return _cv2.dilate(b.astype(np.uint8), _sk_disk(r).astype(np.uint8)).astype(bool)
except ImportError:  # pragma: no cover - optional

    def _official_dilate(b, r):
        return naive_dilate(b, int(r))


def _oracle_iou(annotation, segmentation):
    inters = np.sum(segmentation & annotation)
    union = np.sum(segmentation | annotation)
    return 1 if np.isclose(union, 0) else inters / union


def _oracle_seg2bmap(seg):
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = seg ^ e | seg ^ s | seg ^ se
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = 0
    return b


def _oracle_f(fg, gt, bound_th=0.008):
    bound_pix = bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(fg.shape))
    fg_b, gt_b = _oracle_seg2bmap(fg), _oracle_seg2bmap(gt)
    fg_dil, gt_dil = _official_dilate(fg_b, bound_pix), _official_dilate(gt_b, bound_pix)
    n_fg, n_gt = np.sum(fg_b), np.sum(gt_b)
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1, 0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0, 1
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1, 1
    else:
        precision = np.sum(fg_b & gt_dil) / float(n_fg)
        recall = np.sum(gt_b & fg_dil) / float(n_gt)
    return 0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def _oracle_statistics(v):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        m, o = np.nanmean(v), np.nanmean(v > 0.5)
        ids = (np.round(np.linspace(1, len(v), 5) + 1e-10) - 1).astype(np.uint8)
        bins = [v[ids[i] : ids[i + 1] + 1] for i in range(4)]
        return m, o, np.nanmean(bins[0]) - np.nanmean(bins[3])


def _random_mask(rng, h, w):
    kind = rng.integers(0, 5)
    if kind == 0:
        return rng.random((h, w)) < rng.random()
    if kind == 1:
        return np.zeros((h, w), bool)
    if kind == 2:
        return np.ones((h, w), bool)
    yy, xx = np.mgrid[:h, :w]
    if kind == 3:
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(1, max(h, w) + 1)
        return (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    m = np.zeros((h, w), bool)
    for _ in range(rng.integers(1, 4)):
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        m[y0 : rng.integers(y0, h) + 1, x0 : rng.integers(x0, w) + 1] = True
    return m


def test_matches_official_port_on_random_masks():
    rng = np.random.default_rng(2024)
    for trial in range(400):
        h, w = int(rng.integers(1, 90)), int(rng.integers(1, 90))
        gt = _random_mask(rng, h, w)
        pred = gt ^ (rng.random((h, w)) < 0.03) if trial % 2 else _random_mask(rng, h, w)
        th = (0.008, 0.03, 0.08, 2)[trial % 4]
        assert np.array_equal(M.seg_to_boundary(pred), _oracle_seg2bmap(pred))
        assert M.region_similarity(pred, gt) == float(_oracle_iou(gt, pred))
        assert M.boundary_f_measure(pred, gt, th) == float(_oracle_f(pred, gt, th)), (trial, h, w, th)


def test_statistics_match_official_port():
    rng = np.random.default_rng(5)
    for n in range(1, 256):  # the official uint8 bin indices wrap from 256 scored frames on
        v = rng.random(n)
        if n % 9 == 0:
            v[rng.integers(0, n)] = np.nan
        assert np.allclose(M.statistics(v), _oracle_statistics(v), rtol=0, atol=0, equal_nan=True), n
