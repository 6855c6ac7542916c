"""Forward parity on hand-made cases (the harness in tests/test_ops_harness.py runs the generated case list on
every backend): the oracle itself on a case computed by hand, atrous_min_pixels on labels around the threshold,
the per-frame atrous grid, window 0 and windows that are not shifted inwards."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import DTYPES, IGNORE, TOL, Case, call, dtype_id, embeddings, generator, inputs, make_bias
from test_ops_harness import oracle

import cfbi_ops
from cfbi_ops import reference as ref_impl


def _score(d: float, b: float) -> float:
    return 1.0 - 2.0 / (1.0 + math.exp(d + b))


def brute_global(query, reference, labels, num_labels, fg_bias, bg_bias, atrous=1, min_pixels=0):
    """The harness oracle on explicit tensors: (fg, bg) as float64 numpy arrays [B, L, H, W]."""
    case = Case("global", L=num_labels, atrous=atrous, min_pixels=min_pixels)
    return oracle(
        case,
        dict(
            query=query,
            candidates=reference,
            labels=labels,
            fg_bias=torch.as_tensor(fg_bias),
            bg_bias=torch.as_tensor(bg_bias),
        ),
    )


def _check(name, got: torch.Tensor, expected, dtype):
    expected = torch.as_tensor(expected, dtype=torch.float64)
    assert got.dtype == dtype, f"{name}: dtype {got.dtype}, expected {dtype}"
    assert tuple(got.shape) == tuple(expected.shape), f"{name}: shape {tuple(got.shape)} != {tuple(expected.shape)}"
    torch.testing.assert_close(got.detach().double(), expected, msg=lambda m: f"{name}: {m}", **TOL[dtype])


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


def test_global_match_without_any_candidate_is_one():
    x = inputs(Case("global", B=2, C=4, H=5, W=6, L=3), torch.float64)
    labels = torch.full_like(x["labels"], IGNORE)
    labels[0, 0, 0] = 7  # >= L: ignored too
    fg, bg = cfbi_ops.global_match(x["query"], x["candidates"], labels, 3, x["fg_bias"], x["bg_bias"])
    assert torch.equal(fg, torch.ones_like(fg))
    assert torch.equal(bg, torch.ones_like(bg))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_global_atrous_min_pixels_small_object_keeps_all_pixels(dtype):
    """atrous 2, atrous_min_pixels 1: a label with <= 1 * 2^2 = 4 pixels in a frame keeps all of them
    (also its off-grid ones); a label with 5 or more pixels is subsampled to the (even, even) grid. The
    count is per frame (T = 2: label 1 is small in frame 0 and big in frame 1)."""
    g = generator(5)
    C, Hr, Wr = 4, 9, 9
    labels = torch.zeros(1, 2, Hr, Wr, dtype=torch.int64)
    labels[0, 0, 3:5, 3:5] = 1  # frame 0: label 1 has exactly 4 pixels -> keeps all
    labels[0, 0, 6:8, 0:3] = 2  # frame 0: label 2 has 6 pixels -> subsampled
    labels[0, 0, 0, 5] = 2  # (7 pixels)
    labels[0, 0, 2, 2] = 3  # label 3: 5 pixels, one more than the threshold -> subsampled
    labels[0, 0, 1, 3] = 3
    labels[0, 0, 3, 7] = 3
    labels[0, 0, 5, 7] = 3
    labels[0, 0, 7, 7] = 3
    labels[0, 1, 1:8, 1:8] = 1  # frame 1: label 1 has 49 pixels -> subsampled
    labels[0, 0, 8, 8] = IGNORE
    reference = embeddings((1, 2, C, Hr, Wr), dtype, g)
    query = embeddings((1, C, 3, 4), dtype, g)
    # Query pixels that copy an off-grid reference embedding.
    query[0, :, 0, 0] = reference[0, 0, :, 3, 3]  # label 1 (small, frame 0): must be found at distance 0
    query[0, :, 0, 1] = reference[0, 0, :, 7, 1]  # label 2 (big): (7, 1) is off the grid
    query[0, :, 0, 2] = reference[0, 0, :, 1, 3]  # label 3 (5 px): (1, 3) is off the grid
    query[0, :, 0, 3] = reference[0, 1, :, 3, 5]  # label 1 in frame 1 (big): off the grid
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
        bfg, bbg = brute_global(
            query, reference, labels, 4, fg_bias, bg_bias, kw["atrous"], kw.get("atrous_min_pixels", 0)
        )
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


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_local_window0_is_own_pixel(dtype):
    """Window 0 holds only the pixel itself: fg_l(p) = score(||q_p - prev_p||^2) where prev_labels(p) == l,
    and exactly 1.0 for every other label (also where the pixel is ignored)."""
    case = Case("local", B=2, C=5, H=6, W=7, L=4, windows=(0,), seed=3)
    x = inputs(case, dtype)
    fg, bg = call(case, x)
    assert fg.shape == (2, 4, 1, 6, 7)
    d = ((x["query"].double() - x["candidates"].double()) ** 2).sum(1)  # [B, H, W]
    labels = x["labels"]
    for label in range(4):
        b = case.bg_bias if label == 0 else case.fg_bias
        expected = torch.where(labels == label, 1 - 2 / (1 + torch.exp(d + b)), torch.ones_like(d))
        torch.testing.assert_close(fg[:, label, 0].double(), expected, **TOL[dtype])
        assert torch.all(fg[:, label, 0][labels != label] == 1.0)


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
    assert fg[0, 1, 0, 0, 0].item() == 1.0  # window 1 at (0, 0): no candidate of label 1
    assert fg[0, 1, 1, 0, 0].item() == pytest.approx(0.0, abs=1e-12)  # window 2 reaches (2, 2)
    assert torch.all(fg[:, 0] == 1.0)
