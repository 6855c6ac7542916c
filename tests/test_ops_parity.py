"""Forward parity: compiled ops vs cfbi_ops.reference vs a brute-force loop written here.

The brute force is independent of reference.py: squared distances come from numpy (float64), and the
candidate rules (ignored labels, atrous grid, atrous_min_pixels, local windows), the per-label minimum,
the score 1 - 2 / (1 + exp(d + b)) and the background maps are explicit Python loops over pixels.
"""
from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch

import cfbi_ops
from cfbi_ops import reference as ref_impl
from conftest import (
    DTYPES,
    IGNORE,
    TOL,
    dtype_id,
    embeddings,
    generator,
    make_bias,
    make_global_case,
    make_local_case,
    requires_cuda,
    run_global,
    run_local,
)


# --------------------------------------------------------------------------------------------------
# Brute force
# --------------------------------------------------------------------------------------------------

def _score(d: float, b: float) -> float:
    return 1.0 - 2.0 / (1.0 + math.exp(d + b))


def _background(fg_pixel: list[float]) -> list[float]:
    num_labels = len(fg_pixel)
    if num_labels == 1:
        return list(fg_pixel)
    return [min(fg_pixel[j] for j in range(num_labels) if j != l) for l in range(num_labels)]


def _pairwise_sq(a: np.ndarray, b: np.ndarray) -> list[list[float]]:
    """a [N, C], b [M, C] -> nested list d[n][m] = sum_c (a[n, c] - b[m, c])^2 in float64."""
    return (((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)).tolist()


def brute_global(query, reference, labels, num_labels, fg_bias, bg_bias, atrous=1, min_pixels=0):
    """Returns (fg, bg) as float64 numpy arrays [B, L, H, W]."""
    query = query.detach().double().numpy()
    reference = reference.detach().double().numpy()
    labels = labels.long().numpy()
    if reference.ndim == 4:
        reference, labels = reference[:, None], labels[:, None]
    fb, bb = float(fg_bias), float(bg_bias)
    B, C, H, W = query.shape
    _, T, _, Hr, Wr = reference.shape
    fg = np.empty((B, num_labels, H, W))
    bg = np.empty((B, num_labels, H, W))
    for b in range(B):
        # Candidates (flat index over (t, y, x), label), by explicit loops.
        cands = []
        for t in range(T):
            counts = [0] * num_labels
            for y in range(Hr):
                for x in range(Wr):
                    lab = int(labels[b, t, y, x])
                    if 0 <= lab < num_labels:
                        counts[lab] += 1
            for y in range(Hr):
                for x in range(Wr):
                    lab = int(labels[b, t, y, x])
                    if not 0 <= lab < num_labels:
                        continue
                    on_grid = y % atrous == 0 and x % atrous == 0
                    small = min_pixels > 0 and counts[lab] <= min_pixels * atrous * atrous
                    if on_grid or small:
                        cands.append(((t * Hr + y) * Wr + x, lab))
        q = query[b].reshape(C, H * W).T
        r = reference[b].transpose(1, 0, 2, 3).reshape(C, T * Hr * Wr).T
        dist = _pairwise_sq(q, r)
        for p in range(H * W):
            best = [math.inf] * num_labels
            row = dist[p]
            for m, lab in cands:
                if row[m] < best[lab]:
                    best[lab] = row[m]
            scores = [1.0 if best[l] == math.inf else _score(best[l], bb if l == 0 else fb)
                      for l in range(num_labels)]
            back = _background(scores)
            for l in range(num_labels):
                fg[b, l, p // W, p % W] = scores[l]
                bg[b, l, p // W, p % W] = back[l]
    return fg, bg


def brute_local(query, previous, labels, num_labels, fg_bias, bg_bias, windows=(4, 8, 12, 16, 20, 24), atrous=1):
    """Returns (fg, bg) as float64 numpy arrays [B, L, K, H, W]."""
    query = query.detach().double().numpy()
    previous = previous.detach().double().numpy()
    labels = labels.long().numpy()
    fb, bb = float(fg_bias), float(bg_bias)
    B, C, H, W = query.shape
    K = len(windows)
    fg = np.empty((B, num_labels, K, H, W))
    bg = np.empty((B, num_labels, K, H, W))
    for b in range(B):
        dist = _pairwise_sq(query[b].reshape(C, H * W).T, previous[b].reshape(C, H * W).T)
        lab = labels[b].tolist()
        for y in range(H):
            for x in range(W):
                row = dist[y * W + x]
                for w, window in enumerate(windows):
                    radius = window // atrous
                    best = [math.inf] * num_labels
                    for i in range(-radius, radius + 1):
                        yy = y + i * atrous
                        if yy < 0 or yy >= H:
                            continue
                        for j in range(-radius, radius + 1):
                            xx = x + j * atrous
                            if xx < 0 or xx >= W:
                                continue
                            l = lab[yy][xx]
                            if 0 <= l < num_labels and row[yy * W + xx] < best[l]:
                                best[l] = row[yy * W + xx]
                    scores = [1.0 if best[l] == math.inf else _score(best[l], bb if l == 0 else fb)
                              for l in range(num_labels)]
                    back = _background(scores)
                    for l in range(num_labels):
                        fg[b, l, w, y, x] = scores[l]
                        bg[b, l, w, y, x] = back[l]
    return fg, bg


def _check(name, got: torch.Tensor, expected, dtype):
    expected = torch.as_tensor(expected, dtype=torch.float64)
    assert got.dtype == dtype, f"{name}: dtype {got.dtype}, expected {dtype}"
    assert tuple(got.shape) == tuple(expected.shape), f"{name}: shape {tuple(got.shape)} != {tuple(expected.shape)}"
    torch.testing.assert_close(got.detach().double(), expected, msg=lambda m: f"{name}: {m}", **TOL[dtype])


def _check_all(case, op, reference, brute, dtype):
    """The op's and the reference's (fg, bg) against the brute force and each other; absent labels give
    exactly 1.0 everywhere."""
    for part, got_op, got_ref, expected in zip(("fg", "bg"), op, reference, brute):
        _check(f"op {part} vs brute", got_op, expected, dtype)
        _check(f"reference {part} vs brute", got_ref, expected, dtype)
        torch.testing.assert_close(got_op, got_ref, **TOL[dtype])
    for label in case.absent:
        assert torch.all(op[0][:, label] == 1.0), f"absent label {label} must score exactly 1.0"


# --------------------------------------------------------------------------------------------------
# Sanity of the brute force itself on a hand-made case (so that it cannot silently agree with a bug)
# --------------------------------------------------------------------------------------------------

def test_brute_force_hand_case():
    # One query pixel, reference row of 3 pixels with labels [0, 1, 255], C = 1.
    query = torch.tensor([[[[0.0]]]], dtype=torch.float64)
    reference = torch.tensor([[[[0.1, 0.3, 0.0]]]], dtype=torch.float64)
    labels = torch.tensor([[[0, 1, IGNORE]]])
    fg, bg = brute_global(query, reference, labels, 3, torch.tensor(0.5), torch.tensor(-0.5))
    s0, s1 = 1 - 2 / (1 + math.exp(0.01 - 0.5)), 1 - 2 / (1 + math.exp(0.09 + 0.5))
    assert fg[0, :, 0, 0].tolist() == pytest.approx([s0, s1, 1.0], abs=1e-15)
    assert bg[0, :, 0, 0].tolist() == pytest.approx([s1, s0, s0], abs=1e-15)
    op_fg, op_bg = cfbi_ops.global_match(query, reference, labels, 3, 0.5, -0.5)
    torch.testing.assert_close(op_fg[0, :, 0, 0], torch.tensor([s0, s1, 1.0], dtype=torch.float64))
    torch.testing.assert_close(op_bg[0, :, 0, 0], torch.tensor([s1, s0, s0], dtype=torch.float64))


# --------------------------------------------------------------------------------------------------
# Global matching
# --------------------------------------------------------------------------------------------------

GLOBAL_CASES = {
    "b1-square-L1": dict(B=1, C=3, H=5, W=5, L=1),
    "b2-nonsquare-L2": dict(B=2, C=8, H=6, W=9, L=2),
    "b2-L3-absent2": dict(B=2, C=5, H=7, W=7, L=3, absent=(2,)),
    "b1-L4-refsize": dict(B=1, C=6, H=6, W=8, Hr=9, Wr=5, L=4),
    "b2-L5-absent-bg": dict(B=2, C=4, H=8, W=6, L=5, absent=(0, 3)),
    "b1-L6-C16": dict(B=1, C=16, H=9, W=9, Hr=11, Wr=10, L=6),
    "b1-atrous2": dict(B=1, C=5, H=7, W=9, Hr=9, Wr=11, L=3, atrous=2),
    "b2-atrous3-nonsquare": dict(B=2, C=4, H=6, W=8, Hr=13, Wr=10, L=4, atrous=3),
    # skew: labels of very different sizes, so that atrous_min_pixels keeps some whole, subsamples others.
    "b2-atrous2-minpx3": dict(B=2, C=6, H=7, W=6, Hr=10, Wr=9, L=5, atrous=2, min_pixels=3, skew=0.5),
    "b1-atrous3-minpx1": dict(B=1, C=3, H=8, W=8, Hr=12, Wr=12, L=6, atrous=3, min_pixels=1, skew=0.5),
    "b1-atrous1-minpx5": dict(B=1, C=4, H=5, W=7, L=3, atrous=1, min_pixels=5),
    "T2-b1": dict(B=1, C=4, H=6, W=7, T=2, Hr=7, Wr=5, L=3),
    "T2-b2-atrous2": dict(B=2, C=7, H=5, W=9, T=2, Hr=8, Wr=9, L=4, atrous=2),
    "T2-b2-atrous3-minpx1-absent": dict(B=2, C=3, H=7, W=5, T=2, Hr=10, Wr=7, L=4, atrous=3, min_pixels=1,
                                        absent=(1,), skew=0.4),
    "T1-as-5d": dict(B=2, C=4, H=6, W=6, T=1, Hr=7, Wr=8, L=3, ref_5d=True),
    "uint8-labels": dict(B=2, C=4, H=6, W=7, L=3, atrous=2, label_dtype=torch.uint8),
    "int32-labels-T2": dict(B=1, C=4, H=6, W=7, T=2, L=4, label_dtype=torch.int32),
}


@pytest.mark.parametrize("noncontig", [False, True], ids=["contig", "noncontig"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("name", list(GLOBAL_CASES))
def test_global_match_parity(name, dtype, noncontig):
    params = dict(GLOBAL_CASES[name])
    seed = zlib.crc32(name.encode()) % 1000
    case = make_global_case(dtype=dtype, noncontig=noncontig, seed=seed, requires_grad=False, **params)
    fg, bg = run_global(case)
    rfg, rbg = run_global(case, ref_impl.global_match)
    bfg, bbg = brute_global(case.query, case.reference, case.labels, case.num_labels, case.fg_bias,
                            case.bg_bias, case.atrous, case.atrous_min_pixels)
    _check_all(case, (fg, bg), (rfg, rbg), (bfg, bbg), dtype)


def test_global_match_without_any_candidate_is_one():
    case = make_global_case(B=2, C=4, H=5, W=6, L=3, requires_grad=False)
    labels = torch.full_like(case.labels, IGNORE)
    labels[0, 0, 0] = 7  # >= L: ignored too
    fg, bg = cfbi_ops.global_match(case.query, case.reference, labels, 3, case.fg_bias, case.bg_bias)
    assert torch.equal(fg, torch.ones_like(fg))
    assert torch.equal(bg, torch.ones_like(bg))


@pytest.mark.parametrize("offset", [0.0, 3.0, 10.0, 100.0, 1000.0])
def test_global_float32_selection_is_offset_invariant(offset):
    """float32 selects in a dot-product form; a common offset of query and reference (||q - r|| unchanged) must
    not change the winner: fg within 1e-5 of float64 on the same values (C = 64, sigma = 0.05)."""
    g = generator(int(offset) + 17)
    query = embeddings((1, 64, 9, 11), torch.float64, g, scale=0.05) + offset
    reference = embeddings((1, 2, 64, 8, 10), torch.float64, g, scale=0.05) + offset
    labels = torch.randint(0, 3, (1, 2, 8, 10), generator=g)
    query, reference = query.float(), reference.float()
    fg32, bg32 = cfbi_ops.global_match(query, reference, labels, 3, -0.3, 0.2)
    fg64, bg64 = cfbi_ops.global_match(query.double(), reference.double(), labels, 3, -0.3, 0.2)
    assert (fg32.double() - fg64).abs().max().item() <= 1e-5
    assert (bg32.double() - bg64).abs().max().item() <= 1e-5


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_global_atrous_min_pixels_small_object_keeps_all_pixels(dtype):
    """atrous 2, atrous_min_pixels 1: a label with <= 1 * 2^2 = 4 pixels in a frame keeps all of them
    (also its off-grid ones); a label with 5 or more pixels is subsampled to the (even, even) grid. The
    count is per frame (T = 2: label 1 is small in frame 0 and big in frame 1)."""
    g = generator(5)
    C, Hr, Wr = 4, 9, 9
    labels = torch.zeros(1, 2, Hr, Wr, dtype=torch.int64)
    labels[0, 0, 3:5, 3:5] = 1        # frame 0: label 1 has exactly 4 pixels -> keeps all
    labels[0, 0, 6:8, 0:3] = 2        # frame 0: label 2 has 6 pixels -> subsampled
    labels[0, 0, 0, 5] = 2            # (7 pixels)
    labels[0, 0, 2, 2] = 3            # label 3: 5 pixels, one more than the threshold -> subsampled
    labels[0, 0, 1, 3] = 3
    labels[0, 0, 3, 7] = 3
    labels[0, 0, 5, 7] = 3
    labels[0, 0, 7, 7] = 3
    labels[0, 1, 1:8, 1:8] = 1        # frame 1: label 1 has 49 pixels -> subsampled
    labels[0, 0, 8, 8] = IGNORE
    reference = embeddings((1, 2, C, Hr, Wr), dtype, g)
    query = embeddings((1, C, 3, 4), dtype, g)
    # Query pixels that copy an off-grid reference embedding.
    query[0, :, 0, 0] = reference[0, 0, :, 3, 3]   # label 1 (small, frame 0): must be found at distance 0
    query[0, :, 0, 1] = reference[0, 0, :, 7, 1]   # label 2 (big): (7, 1) is off the grid
    query[0, :, 0, 2] = reference[0, 0, :, 1, 3]   # label 3 (5 px): (1, 3) is off the grid
    query[0, :, 0, 3] = reference[0, 1, :, 3, 5]   # label 1 in frame 1 (big): off the grid
    fg_bias, bg_bias = make_bias(-0.25, dtype, requires_grad=False), make_bias(0.1, dtype, requires_grad=False)
    kwargs = dict(atrous=2, atrous_min_pixels=1)
    fg, bg = cfbi_ops.global_match(query, reference, labels, 4, fg_bias, bg_bias, **kwargs)
    zero_score = _score(0.0, -0.25)
    assert fg[0, 1, 0, 0].item() == pytest.approx(zero_score, abs=1e-6), "small label lost its off-grid pixel"
    assert fg[0, 2, 0, 1].item() > zero_score + 1e-4, "big label kept an off-grid pixel"
    assert fg[0, 3, 0, 2].item() > zero_score + 1e-4, "label with min_pixels*atrous^2 + 1 pixels kept all"
    assert fg[0, 1, 0, 3].item() > zero_score + 1e-4, "label big in frame 1 kept an off-grid pixel there"
    # With atrous_min_pixels = 0 the small label is subsampled as well.
    fg0, _ = cfbi_ops.global_match(query, reference, labels, 4, fg_bias, bg_bias, atrous=2)
    assert fg0[0, 1, 0, 0].item() > zero_score + 1e-4
    for kw, (got_fg, got_bg) in [(kwargs, (fg, bg)), (dict(atrous=2), (fg0, None))]:
        bfg, bbg = brute_global(query, reference, labels, 4, fg_bias, bg_bias, kw["atrous"],
                                kw.get("atrous_min_pixels", 0))
        _check("fg vs brute", got_fg, bfg, dtype)
        if got_bg is not None:
            _check("bg vs brute", got_bg, bbg, dtype)
    rfg, rbg = ref_impl.global_match(query, reference, labels, 4, fg_bias, bg_bias, **kwargs)
    torch.testing.assert_close(fg, rfg, **TOL[dtype])
    torch.testing.assert_close(bg, rbg, **TOL[dtype])


def test_global_atrous_grid_is_per_frame_and_zero_based():
    """With atrous 3 only (y, x) with y % 3 == 0 and x % 3 == 0 of each frame count: a query equal to
    the reference at (3, 6) of frame 1 is found at distance 0, one equal to (4, 6) is not."""
    g = generator(11)
    C = 3
    reference = embeddings((1, 2, C, 7, 8), torch.float64, g)
    labels = torch.ones(1, 2, 7, 8, dtype=torch.int64)
    query = embeddings((1, C, 1, 2), torch.float64, g)
    query[0, :, 0, 0] = reference[0, 1, :, 3, 6]
    query[0, :, 0, 1] = reference[0, 1, :, 4, 6]
    fg, _ = cfbi_ops.global_match(query, reference, labels, 2, 0.0, 0.0, atrous=3)
    assert fg[0, 1, 0, 0].item() == pytest.approx(0.0, abs=1e-12)
    assert fg[0, 1, 0, 1].item() > 1e-4
    assert torch.all(fg[:, 0] == 1.0)  # label 0 has no pixel


# --------------------------------------------------------------------------------------------------
# Local matching
# --------------------------------------------------------------------------------------------------

LOCAL_CASES = {
    "b1-square-L1-default": dict(B=1, C=3, H=7, W=7, L=1),
    "b2-nonsquare-L2": dict(B=2, C=5, H=6, W=9, L=2, windows=(1, 2, 3)),
    "b2-L3-absent": dict(B=2, C=4, H=8, W=7, L=3, windows=(2, 4), absent=(1,)),
    "b1-L4-unsorted": dict(B=1, C=6, H=9, W=8, L=4, windows=(24, 4, 8)),
    "b1-L5-window0": dict(B=1, C=4, H=7, W=6, L=5, windows=(0,)),
    "b2-L6-with0": dict(B=2, C=8, H=6, W=6, L=6, windows=(3, 0, 1)),
    "b1-C16-big": dict(B=1, C=16, H=11, W=13, L=3, windows=(5, 2)),
    "atrous2-default": dict(B=1, C=4, H=9, W=10, L=3, atrous=2),
    "atrous2-k-lt-atrous": dict(B=2, C=3, H=8, W=9, L=4, windows=(1, 0, 3, 4), atrous=2),
    "atrous3-unsorted": dict(B=1, C=5, H=10, W=11, L=3, windows=(24, 2, 6, 7), atrous=3),
    "atrous3-absent-bg": dict(B=2, C=4, H=7, W=7, L=4, windows=(3, 9), atrous=3, absent=(0,)),
    "uint8-labels": dict(B=1, C=4, H=6, W=8, L=3, windows=(2, 5), label_dtype=torch.uint8),
    "int32-labels-atrous2": dict(B=2, C=4, H=6, W=5, L=2, windows=(4, 1), atrous=2, label_dtype=torch.int32),
}


@pytest.mark.parametrize("noncontig", [False, True], ids=["contig", "noncontig"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("name", list(LOCAL_CASES))
def test_local_match_parity(name, dtype, noncontig):
    params = dict(LOCAL_CASES[name])
    seed = zlib.crc32(name.encode()) % 1000 + 1
    default_windows = "windows" not in params
    case = make_local_case(dtype=dtype, noncontig=noncontig, seed=seed, requires_grad=False, **params)
    if default_windows:  # exercise the default argument of the public function
        fg, bg = cfbi_ops.local_match(case.query, case.previous, case.labels, case.num_labels, case.fg_bias,
                                      case.bg_bias, atrous=case.atrous)
    else:
        fg, bg = run_local(case)
    rfg, rbg = run_local(case, ref_impl.local_match)
    bfg, bbg = brute_local(case.query, case.previous, case.labels, case.num_labels, case.fg_bias, case.bg_bias,
                           case.windows, case.atrous)
    _check_all(case, (fg, bg), (rfg, rbg), (bfg, bbg), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_local_window0_is_own_pixel(dtype):
    """Window 0 holds only the pixel itself: fg_l(p) = score(||q_p - prev_p||^2) where prev_labels(p) == l,
    and exactly 1.0 for every other label (also where the pixel is ignored)."""
    case = make_local_case(B=2, C=5, H=6, W=7, L=4, windows=(0,), dtype=dtype, seed=3, requires_grad=False)
    fg, bg = run_local(case)
    assert fg.shape == (2, 4, 1, 6, 7)
    d = ((case.query.double() - case.previous.double()) ** 2).sum(1)  # [B, H, W]
    labels = case.labels
    for l in range(4):
        b = float(case.bg_bias) if l == 0 else float(case.fg_bias)
        expected = torch.where(labels == l, 1 - 2 / (1 + torch.exp(d + b)), torch.ones_like(d))
        torch.testing.assert_close(fg[:, l, 0].double(), expected, **TOL[dtype])
        assert torch.all(fg[:, l, 0][labels != l] == 1.0)


def test_local_windows_are_not_shifted_inwards():
    """At a corner pixel, window 1 holds only the 2x2 in-frame neighbours: a matching embedding two
    pixels away must not be found by window 1, but by window 2."""
    g = generator(21)
    C = 3
    query = embeddings((1, C, 5, 5), torch.float64, g)
    previous = embeddings((1, C, 5, 5), torch.float64, g)
    labels = torch.full((1, 5, 5), IGNORE, dtype=torch.int64)
    labels[0, 2, 2] = 1
    previous[0, :, 2, 2] = query[0, :, 0, 0]
    fg, _ = cfbi_ops.local_match(query, previous, labels, 2, 0.0, 0.0, windows=(1, 2))
    assert fg[0, 1, 0, 0, 0].item() == 1.0       # window 1 at (0, 0): no candidate of label 1
    assert fg[0, 1, 1, 0, 0].item() == pytest.approx(0.0, abs=1e-12)  # window 2 reaches (2, 2)
    assert torch.all(fg[:, 0] == 1.0)


# --------------------------------------------------------------------------------------------------
# CUDA parity smoke test
# --------------------------------------------------------------------------------------------------

@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_cuda_matches_cpu(dtype):
    gcase = make_global_case(B=2, C=8, H=7, W=9, T=2, Hr=8, Wr=6, L=4, atrous=2, min_pixels=1, dtype=dtype,
                             seed=31)
    lcase = make_local_case(B=2, C=8, H=7, W=9, L=4, windows=(24, 2, 0, 5), atrous=2, dtype=dtype, seed=32)
    for case, run in ((gcase, run_global), (lcase, run_local)):
        cpu_out = run(case)
        cpu_grads = torch.autograd.grad(sum((o * (i + 1)).sum() for i, o in enumerate(cpu_out)), case.leaves())
        cuda_leaves = [x.detach().cuda().requires_grad_() for x in case.leaves()]
        fields = dict(case.__dict__)
        names = ["query", "reference" if "reference" in fields else "previous", "fg_bias", "bg_bias"]
        fields.update(dict(zip(names, cuda_leaves)))
        fields["labels"] = case.labels.cuda()
        cuda_case = type(case)(**fields)
        cuda_out = run(cuda_case)
        cuda_grads = torch.autograd.grad(sum((o * (i + 1)).sum() for i, o in enumerate(cuda_out)), cuda_leaves)
        for got, expected in zip(cuda_out, cpu_out):
            assert got.device.type == "cuda"
            torch.testing.assert_close(got.cpu(), expected, **TOL[dtype])
        for got, expected in zip(cuda_grads, cpu_grads):
            tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-10)
            torch.testing.assert_close(got.cpu(), expected, **tol)
