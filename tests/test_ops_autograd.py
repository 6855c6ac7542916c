"""Gradients of the ops: vs the reference's autograd, empty labels, the autograd.Function entry points, and
determinism (repeat runs, thread counts, deterministic mode). gradcheck runs in the op harness
(tests/test_ops_harness.py, on every backend)."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    DTYPES,
    GRAD_TOL,
    LEAVES,
    TOL,
    Case,
    call,
    call_function_class,
    dtype_id,
    grads,
    inputs,
    leaf_inputs,
    weighted_loss,
)

import cfbi_ops
from cfbi_ops import reference as ref_impl

GRAD_NAMES_GLOBAL = ["query", "reference", "fg_bias", "bg_bias"]
GRAD_NAMES_LOCAL = ["query", "previous", "fg_bias", "bg_bias"]

GRAD_CASES = [
    Case("global", C=3, H=5, W=6, L=1, seed=7, name="b1-L1"),
    Case("global", B=2, C=6, H=6, W=7, Hr=8, Wr=5, L=3, bias_shape=(1, 1, 1), seed=7, name="b2-L3-refsize"),
    Case(
        "global",
        B=2,
        C=5,
        H=7,
        W=6,
        Hr=9,
        Wr=9,
        L=4,
        atrous=2,
        min_pixels=1,
        absent=(2,),
        seed=7,
        name="b2-L4-atrous2-minpx-absent",
    ),
    Case("global", B=2, C=4, H=6, W=8, T=2, Hr=10, Wr=7, L=5, atrous=3, bias_shape=(), seed=7, name="T2-L5-atrous3"),
    Case("global", C=8, H=7, W=7, L=6, layout="transposed", seed=7, name="b1-L6-noncontig"),
    Case("local", C=3, H=6, W=6, L=1, windows=cfbi_ops.DEFAULT_WINDOWS, seed=8, name="b1-L1-default"),
    Case("local", B=2, C=6, H=7, W=8, L=3, windows=(24, 4, 8), bias_shape=(1, 1, 1), seed=8, name="b2-L3-unsorted"),
    Case(
        "local",
        B=2,
        C=5,
        H=8,
        W=7,
        L=4,
        windows=(1, 4, 0, 6),
        atrous=2,
        absent=(3,),
        seed=8,
        name="b2-L4-atrous2-absent",
    ),
    Case("local", C=4, H=9, W=9, L=5, windows=(2, 9, 3), atrous=3, bias_shape=(), seed=8, name="b1-L5-atrous3"),
    Case("local", C=8, H=6, W=9, L=6, windows=(0, 2), layout="transposed", seed=8, name="b1-L6-noncontig"),
]


def _compare_grads(names, got, expected, dtype):
    for name, g, e in zip(names, got, expected):
        assert g.shape == e.shape, f"grad {name}: shape {tuple(g.shape)} != {tuple(e.shape)}"
        assert g.dtype == e.dtype, f"grad {name}: dtype {g.dtype} != {e.dtype}"
        torch.testing.assert_close(g, e, msg=lambda m, name=name: f"grad {name}: {m}", **GRAD_TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", GRAD_CASES, ids=lambda c: c.id)
def test_grads_match_reference(case, dtype):
    x = leaf_inputs(case, dtype)
    leaves = [x[k] for k in LEAVES]
    fg, bg = call(case, x)
    rfg, rbg = call(case, x, "reference")
    torch.testing.assert_close(fg, rfg, **TOL[dtype])
    torch.testing.assert_close(bg, rbg, **TOL[dtype])
    got = grads(weighted_loss(fg, bg), leaves)
    _compare_grads(LEAVES, got, grads(weighted_loss(rfg, rbg), leaves), dtype)
    # The test must be able to fail: the gradients are not all zero.
    for name, g in zip(LEAVES, got):
        if name == "fg_bias" and case.L == 1:  # no foreground label: fg_bias is unused
            assert torch.count_nonzero(g) == 0, "fg_bias must get no gradient when L == 1"
        else:
            assert torch.count_nonzero(g) > 0, f"grad {name} is identically zero"


@pytest.mark.parametrize("which", ["fg", "bg"])
def test_grads_through_one_output_only(which):
    """Only one of the two outputs used: the other's gradient arrives as None / zeros."""
    for case in (
        Case("global", B=2, C=4, H=5, W=6, L=3, atrous=2, seed=9),
        Case("local", C=4, H=6, W=5, L=3, windows=(2, 5), seed=10),
    ):
        x = leaf_inputs(case, torch.float64)
        leaves = [x[k] for k in LEAVES]
        out = dict(zip(("fg", "bg"), call(case, x)))
        ref_out = dict(zip(("fg", "bg"), call(case, x, "reference")))
        w = torch.linspace(-1, 1, out[which].numel(), dtype=torch.float64).reshape(out[which].shape)
        got = grads((out[which] * w).sum(), leaves)
        expected = grads((ref_out[which] * w).sum(), leaves)
        _compare_grads(LEAVES, got, expected, torch.float64)


# --------------------------------------------------------------------------------------------------
# A label without candidates: exactly 1.0, zero gradient
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_empty_label_is_one_with_zero_grad(dtype):
    gcase = Case("global", B=2, C=4, H=5, W=6, L=3, absent=(2,), seed=16)
    x = leaf_inputs(gcase, dtype)
    leaves = [x[k] for k in LEAVES]
    fg, _ = call(gcase, x)
    assert torch.all(fg[:, 2] == 1.0)
    for name, g in zip(GRAD_NAMES_GLOBAL, grads((fg[:, 2] * 3.0).sum(), leaves)):
        assert torch.count_nonzero(g) == 0, f"global: grad {name} must be zero"
    # Sanity: the same loss on a present label has non-zero gradients.
    fg, _ = call(gcase, x)
    assert torch.count_nonzero(grads((fg[:, 1] * 3.0).sum(), leaves)[0]) > 0

    # Local: window 0 holds only the pixel itself, so label l is empty wherever prev_labels != l.
    lcase = Case("local", B=2, C=4, H=5, W=6, L=3, windows=(0,), seed=17)
    x = leaf_inputs(lcase, dtype)
    fg, _ = call(lcase, x)
    empty = (x["labels"] != 1).unsqueeze(1)  # [B, 1, H, W]
    assert torch.all(fg[:, 1][empty] == 1.0)
    masked = torch.where(empty, fg[:, 1], torch.zeros_like(fg[:, 1]))
    for name, g in zip(GRAD_NAMES_LOCAL, grads(masked.sum(), [x[k] for k in LEAVES])):
        assert torch.count_nonzero(g) == 0, f"local: grad {name} must be zero"


# --------------------------------------------------------------------------------------------------
# torch.autograd.Function entry points
# --------------------------------------------------------------------------------------------------

FUNCTION_CASES = [
    Case("global", B=2, C=5, H=6, W=7, Hr=7, Wr=6, L=4, atrous=2, min_pixels=1, seed=18, name="ref4d"),
    Case("global", B=2, C=5, H=6, W=7, T=2, Hr=7, Wr=6, L=4, atrous=2, min_pixels=1, seed=18, name="ref5d"),
    Case("local", B=2, C=5, H=6, W=7, L=4, windows=(6, 1, 3), atrous=2, seed=19, name="atrous2"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", FUNCTION_CASES, ids=lambda c: c.id)
def test_function_apply_equals_function(case, dtype):
    x = leaf_inputs(case, dtype)
    leaves = [x[k] for k in LEAVES]
    fg, bg = call(case, x)
    afg, abg = call_function_class(case, x)
    assert torch.equal(fg, afg) and torch.equal(bg, abg)
    expected = grads(weighted_loss(fg, bg), leaves)
    got = grads(weighted_loss(afg, abg), leaves)
    for name, g, e in zip(LEAVES, got, expected):
        assert g.shape == e.shape, name
        assert torch.equal(g, e), f"grad {name} differs between Function.apply and the function"


def test_function_apply_defaults_and_number_biases():
    g = inputs(Case("global", C=4, H=5, W=5, L=3, seed=20), torch.float64)
    fg, bg = cfbi_ops.GlobalMatchFunction.apply(g["query"], g["candidates"], g["labels"], 3, -0.3, 0.2)
    efg, ebg = cfbi_ops.global_match(g["query"], g["candidates"], g["labels"], 3, -0.3, 0.2)
    assert torch.equal(fg, efg) and torch.equal(bg, ebg)
    loc = inputs(Case("local", C=4, H=5, W=5, L=3, seed=21), torch.float64)
    fg, bg = cfbi_ops.LocalMatchFunction.apply(loc["query"], loc["candidates"], loc["labels"], 3, -0.3, 0.2)
    efg, ebg = cfbi_ops.local_match(loc["query"], loc["candidates"], loc["labels"], 3, -0.3, 0.2)
    assert fg.shape == (1, 3, len(cfbi_ops.DEFAULT_WINDOWS), 5, 5)
    assert torch.equal(fg, efg) and torch.equal(bg, ebg)


def test_bias_slice_of_parameter_gets_gradient():
    """The model indexes per-scale biases out of a [3, 1, 1, 1] parameter: gradients reach the parameter."""
    x = leaf_inputs(Case("global", C=4, H=5, W=6, L=3, seed=22), torch.float64)
    fg_param = torch.full((3, 1, 1, 1), -0.3, dtype=torch.float64, requires_grad=True)
    bg_param = torch.full((3, 1, 1, 1), 0.2, dtype=torch.float64, requires_grad=True)
    fg, bg = cfbi_ops.global_match(x["query"], x["candidates"], x["labels"], 3, fg_param[1], bg_param[1])
    weighted_loss(fg, bg).backward()
    rfg, rbg = ref_impl.global_match(x["query"], x["candidates"], x["labels"], 3, x["fg_bias"], x["bg_bias"])
    efb, ebb = torch.autograd.grad(weighted_loss(rfg, rbg), [x["fg_bias"], x["bg_bias"]])
    assert fg_param.grad[0].item() == 0 and fg_param.grad[2].item() == 0
    torch.testing.assert_close(fg_param.grad[1].reshape(1), efb, **GRAD_TOL[torch.float64])
    torch.testing.assert_close(bg_param.grad[1].reshape(1), ebb, **GRAD_TOL[torch.float64])


# --------------------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------------------

# Big enough that at::parallel_for splits the work over two threads (grain 16 pixels).
DETERMINISM_CASES = [
    Case("global", B=2, C=16, H=13, W=12, T=2, Hr=11, Wr=13, L=5, atrous=2, min_pixels=1, seed=40),
    Case("local", B=2, C=16, H=13, W=12, L=5, windows=(24, 4, 8, 0), atrous=2, seed=41),
]


def _forward_and_grads(case: Case, x: dict) -> list[torch.Tensor]:
    fg, bg = call(case, x)
    return [fg.detach(), bg.detach()] + grads(weighted_loss(fg, bg, seed=5), [x[k] for k in LEAVES])


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_backward_repeat_is_bit_identical(dtype):
    for case in DETERMINISM_CASES:
        x = leaf_inputs(case, dtype)
        first = _forward_and_grads(case, x)
        second = _forward_and_grads(case, x)
        for a, b in zip(first, second):
            assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_results_independent_of_thread_count(dtype, restore_threads):
    for case in DETERMINISM_CASES:
        x = leaf_inputs(case, dtype)
        torch.set_num_threads(1)
        one = _forward_and_grads(case, x)
        torch.set_num_threads(2)
        two = _forward_and_grads(case, x)
        for name, a, b in zip(["fg", "bg", *LEAVES], one, two):
            assert torch.equal(a, b), f"{name} differs between 1 and 2 threads"


def test_deterministic_algorithms_mode(restore_deterministic):
    torch.use_deterministic_algorithms(True)
    for case in DETERMINISM_CASES:
        x = leaf_inputs(case, torch.float32)
        first = _forward_and_grads(case, x)
        second = _forward_and_grads(case, x)
        for a, b in zip(first, second):
            assert torch.equal(a, b)


# --------------------------------------------------------------------------------------------------
# Ties: the lowest flattened candidate index wins, and only it receives gradient
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_global_tie_goes_to_lowest_candidate_index(dtype):
    """Two identical reference embeddings of label 1 (frame 0 at (1, 2) and frame 1 at (11, 12)) are the
    nearest candidates of every query pixel: all gradient must go to the one with the lower index
    (t * Hr * Wr + y * Wr + x), none to the other; the reference implementation agrees."""
    g = torch.Generator().manual_seed(80)
    C, Hr, Wr = 5, 13, 13
    reference = (1.0 + 0.1 * torch.randn(1, 2, C, Hr, Wr, generator=g, dtype=torch.float64)).to(dtype)
    twin = (0.05 * torch.randn(C, generator=g, dtype=torch.float64)).to(dtype)
    reference[0, 0, :, 1, 2] = twin
    reference[0, 1, :, 11, 12] = twin
    reference.requires_grad_()
    labels = torch.ones(1, 2, Hr, Wr, dtype=torch.int64)
    query = (0.05 * torch.randn(1, C, 4, 5, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()
    fg_bias = torch.zeros(1, dtype=dtype, requires_grad=True)
    bg_bias = torch.zeros(1, dtype=dtype, requires_grad=True)
    leaves = [query, reference, fg_bias, bg_bias]
    fg, bg = cfbi_ops.global_match(query, reference, labels, 2, fg_bias, bg_bias)
    got = grads(fg[:, 1].sum(), leaves)
    grad_ref = got[1]
    assert torch.count_nonzero(grad_ref[0, 0, :, 1, 2]) == C, "the lower-index twin must get the gradient"
    assert torch.count_nonzero(grad_ref[0, 1, :, 11, 12]) == 0, "the higher-index twin must get no gradient"
    mask = torch.ones_like(grad_ref, dtype=torch.bool)
    mask[0, 0, :, 1, 2] = False
    assert torch.count_nonzero(grad_ref[mask]) == 0
    rfg, _ = ref_impl.global_match(query, reference, labels, 2, fg_bias, bg_bias)
    expected = grads(rfg[:, 1].sum(), leaves)
    _compare_grads(GRAD_NAMES_GLOBAL, got, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_local_tie_goes_to_lowest_candidate_index(dtype):
    """previous holds the same embedding at (1, 1) and (5, 9), far from everything else: for a query pixel
    whose window holds both, the gradient goes to (1, 1) (lower y * W + x) only."""
    g = torch.Generator().manual_seed(81)
    C, H, W = 4, 7, 11
    previous = (1.0 + 0.1 * torch.randn(1, C, H, W, generator=g, dtype=torch.float64)).to(dtype)
    twin = (0.05 * torch.randn(C, generator=g, dtype=torch.float64)).to(dtype)
    previous[0, :, 1, 1] = twin
    previous[0, :, 5, 9] = twin
    previous.requires_grad_()
    labels = torch.ones(1, H, W, dtype=torch.int64)
    query = (0.05 * torch.randn(1, C, H, W, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()
    fg_bias = torch.zeros(1, dtype=dtype, requires_grad=True)
    bg_bias = torch.zeros(1, dtype=dtype, requires_grad=True)
    leaves = [query, previous, fg_bias, bg_bias]
    fg, _ = cfbi_ops.local_match(query, previous, labels, 2, fg_bias, bg_bias, windows=(24,))
    got = grads(fg[0, 1, 0, 3, 5], leaves)  # (3, 5): both twins inside the window
    assert torch.count_nonzero(got[1][0, :, 1, 1]) == C
    assert torch.count_nonzero(got[1][0, :, 5, 9]) == 0
    rfg, _ = ref_impl.local_match(query, previous, labels, 2, fg_bias, bg_bias, windows=(24,))
    _compare_grads(GRAD_NAMES_LOCAL, got, grads(rfg[0, 1, 0, 3, 5], leaves), dtype)


@pytest.mark.parametrize("shape", [(0, 4, 5, 6), (2, 0, 5, 6)], ids=["batch-0", "channels-0"])
def test_empty_batch_or_channels_backward(shape) -> None:
    """Degenerate sizes: forward and backward run and give empty / zero gradients (no reshape error)."""
    import cfbi_ops

    query = torch.zeros(shape, requires_grad=True)
    other = torch.zeros(shape, requires_grad=True)
    labels = torch.zeros(shape[0], shape[2], shape[3], dtype=torch.long)
    bias = torch.zeros(1, requires_grad=True)
    for fn, kwargs in [(cfbi_ops.global_match, {}), (cfbi_ops.local_match, {"windows": (2,)})]:
        fg, bg = fn(query, other, labels, 3, bias, bias, **kwargs)
        grads = torch.autograd.grad((fg.sum() + bg.sum(),), [query, other], allow_unused=True)
        for grad, like in zip(grads, [query, other]):
            assert grad is None or (grad.shape == like.shape and not grad.any())
