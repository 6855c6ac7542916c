"""Gradients of the ops: vs the reference's autograd, gradcheck, empty labels, the autograd.Function entry
points, and determinism (repeat runs, thread counts, deterministic mode)."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    DTYPES,
    GRAD_TOL,
    TOL,
    dtype_id,
    grads,
    make_global_case,
    make_local_case,
    run_global,
    run_local,
    weighted_loss,
)

import cfbi_ops
from cfbi_ops import reference as ref_impl

GRAD_NAMES_GLOBAL = ["query", "reference", "fg_bias", "bg_bias"]
GRAD_NAMES_LOCAL = ["query", "previous", "fg_bias", "bg_bias"]

GLOBAL_GRAD_CASES = {
    "b1-L1": dict(B=1, C=3, H=5, W=6, L=1),
    "b2-L3-refsize": dict(B=2, C=6, H=6, W=7, Hr=8, Wr=5, L=3, bias_shape=(1, 1, 1)),
    "b2-L4-atrous2-minpx-absent": dict(B=2, C=5, H=7, W=6, Hr=9, Wr=9, L=4, atrous=2, min_pixels=1, absent=(2,)),
    "T2-L5-atrous3": dict(B=2, C=4, H=6, W=8, T=2, Hr=10, Wr=7, L=5, atrous=3, bias_shape=()),
    "b1-L6-noncontig": dict(B=1, C=8, H=7, W=7, L=6, noncontig=True),
}

LOCAL_GRAD_CASES = {
    "b1-L1-default": dict(B=1, C=3, H=6, W=6, L=1),
    "b2-L3-unsorted": dict(B=2, C=6, H=7, W=8, L=3, windows=(24, 4, 8), bias_shape=(1, 1, 1)),
    "b2-L4-atrous2-absent": dict(B=2, C=5, H=8, W=7, L=4, windows=(1, 4, 0, 6), atrous=2, absent=(3,)),
    "b1-L5-atrous3": dict(B=1, C=4, H=9, W=9, L=5, windows=(2, 9, 3), atrous=3, bias_shape=()),
    "b1-L6-noncontig": dict(B=1, C=8, H=6, W=9, L=6, windows=(0, 2), noncontig=True),
}


def _compare_grads(names, got, expected, dtype):
    for name, g, e in zip(names, got, expected):
        assert g.shape == e.shape, f"grad {name}: shape {tuple(g.shape)} != {tuple(e.shape)}"
        assert g.dtype == e.dtype, f"grad {name}: dtype {g.dtype} != {e.dtype}"
        torch.testing.assert_close(g, e, msg=lambda m, name=name: f"grad {name}: {m}", **GRAD_TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("name", list(GLOBAL_GRAD_CASES))
def test_global_grads_match_reference(name, dtype):
    case = make_global_case(dtype=dtype, seed=7, **GLOBAL_GRAD_CASES[name])
    fg, bg = run_global(case)
    rfg, rbg = run_global(case, ref_impl.global_match)
    torch.testing.assert_close(fg, rfg, **TOL[dtype])
    torch.testing.assert_close(bg, rbg, **TOL[dtype])
    got = grads(weighted_loss(fg, bg), case.leaves())
    expected = grads(weighted_loss(rfg, rbg), case.leaves())
    _compare_grads(GRAD_NAMES_GLOBAL, got, expected, dtype)
    # The test must be able to fail: the gradients are not all zero.
    for gname, g in zip(GRAD_NAMES_GLOBAL, got):
        if gname == "fg_bias" and case.num_labels == 1:  # no foreground label: fg_bias is unused
            assert torch.count_nonzero(g) == 0, "fg_bias must get no gradient when L == 1"
        else:
            assert torch.count_nonzero(g) > 0, f"grad {gname} is identically zero"


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("name", list(LOCAL_GRAD_CASES))
def test_local_grads_match_reference(name, dtype):
    case = make_local_case(dtype=dtype, seed=8, **LOCAL_GRAD_CASES[name])
    fg, bg = run_local(case)
    rfg, rbg = run_local(case, ref_impl.local_match)
    torch.testing.assert_close(fg, rfg, **TOL[dtype])
    torch.testing.assert_close(bg, rbg, **TOL[dtype])
    got = grads(weighted_loss(fg, bg), case.leaves())
    expected = grads(weighted_loss(rfg, rbg), case.leaves())
    _compare_grads(GRAD_NAMES_LOCAL, got, expected, dtype)
    for gname, g in zip(GRAD_NAMES_LOCAL, got):
        if gname == "fg_bias" and case.num_labels == 1:
            assert torch.count_nonzero(g) == 0, "fg_bias must get no gradient when L == 1"
        else:
            assert torch.count_nonzero(g) > 0, f"grad {gname} is identically zero"


@pytest.mark.parametrize("which", ["fg", "bg"])
def test_grads_through_one_output_only(which):
    """Only one of the two outputs used: the other's gradient arrives as None / zeros."""
    gcase = make_global_case(B=2, C=4, H=5, W=6, L=3, atrous=2, seed=9)
    lcase = make_local_case(B=1, C=4, H=6, W=5, L=3, windows=(2, 5), seed=10)
    for case, run, impl in ((gcase, run_global, ref_impl.global_match), (lcase, run_local, ref_impl.local_match)):
        out = dict(zip(("fg", "bg"), run(case)))
        ref_out = dict(zip(("fg", "bg"), run(case, impl)))
        w = torch.linspace(-1, 1, out[which].numel(), dtype=torch.float64).reshape(out[which].shape)
        got = grads((out[which] * w).sum(), case.leaves())
        expected = grads((ref_out[which] * w).sum(), case.leaves())
        _compare_grads(["q", "cand", "fg_bias", "bg_bias"], got, expected, torch.float64)


# --------------------------------------------------------------------------------------------------
# gradcheck (float64, tiny sizes, small embeddings)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        dict(B=1, C=3, H=4, W=5, L=3, atrous=1),
        dict(B=2, C=2, H=4, W=3, T=2, Hr=5, Wr=4, L=4, atrous=2, min_pixels=1, absent=(3,)),
        dict(B=1, C=3, H=3, W=4, Hr=4, Wr=4, L=1),
    ],
    ids=["L3", "T2-atrous2-minpx", "L1"],
)
def test_global_gradcheck(params, single_thread):
    case = make_global_case(dtype=torch.float64, seed=12, **params)

    def fn(q, r, fb, bb):
        return cfbi_ops.global_match(q, r, case.labels, case.num_labels, fb, bb, **case.kwargs())

    assert torch.autograd.gradcheck(fn, tuple(case.leaves()), eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize(
    "params",
    [
        dict(B=1, C=3, H=4, W=5, L=3, windows=(1, 2)),
        dict(B=2, C=2, H=5, W=4, L=4, windows=(3, 0, 1), atrous=2, absent=(2,)),
        dict(B=1, C=2, H=4, W=4, L=1, windows=(24,)),
    ],
    ids=["L3", "atrous2-unsorted", "L1"],
)
def test_local_gradcheck(params, single_thread):
    case = make_local_case(dtype=torch.float64, seed=13, **params)

    def fn(q, p, fb, bb):
        return cfbi_ops.local_match(q, p, case.labels, case.num_labels, fb, bb, **case.kwargs())

    assert torch.autograd.gradcheck(fn, tuple(case.leaves()), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_gradcheck_fast_mode_larger(single_thread):
    gcase = make_global_case(B=2, C=4, H=6, W=5, T=2, Hr=6, Wr=7, L=5, atrous=2, dtype=torch.float64, seed=14)
    lcase = make_local_case(B=2, C=4, H=6, W=5, L=5, windows=(24, 2, 4), atrous=1, dtype=torch.float64, seed=15)
    assert torch.autograd.gradcheck(
        lambda q, r, fb, bb: cfbi_ops.global_match(q, r, gcase.labels, 5, fb, bb, atrous=2),
        tuple(gcase.leaves()),
        fast_mode=True,
        atol=1e-6,
        rtol=1e-4,
    )
    assert torch.autograd.gradcheck(
        lambda q, p, fb, bb: cfbi_ops.local_match(q, p, lcase.labels, 5, fb, bb, windows=(24, 2, 4)),
        tuple(lcase.leaves()),
        fast_mode=True,
        atol=1e-6,
        rtol=1e-4,
    )


# --------------------------------------------------------------------------------------------------
# A label without candidates: exactly 1.0, zero gradient
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_empty_label_is_one_with_zero_grad(dtype):
    gcase = make_global_case(B=2, C=4, H=5, W=6, L=3, absent=(2,), dtype=dtype, seed=16)
    fg, _ = run_global(gcase)
    assert torch.all(fg[:, 2] == 1.0)
    for name, g in zip(GRAD_NAMES_GLOBAL, grads((fg[:, 2] * 3.0).sum(), gcase.leaves())):
        assert torch.count_nonzero(g) == 0, f"global: grad {name} must be zero"
    # Sanity: the same loss on a present label has non-zero gradients.
    fg, _ = run_global(gcase)
    assert torch.count_nonzero(grads((fg[:, 1] * 3.0).sum(), gcase.leaves())[0]) > 0

    # Local: window 0 holds only the pixel itself, so label l is empty wherever prev_labels != l.
    lcase = make_local_case(B=2, C=4, H=5, W=6, L=3, windows=(0,), dtype=dtype, seed=17)
    fg, _ = run_local(lcase)
    empty = (lcase.labels != 1).unsqueeze(1)  # [B, 1, H, W]
    assert torch.all(fg[:, 1][empty] == 1.0)
    masked = torch.where(empty, fg[:, 1], torch.zeros_like(fg[:, 1]))
    gq, gp, gfb, gbb = grads(masked.sum(), lcase.leaves())
    for name, g in (("query", gq), ("previous", gp), ("fg_bias", gfb), ("bg_bias", gbb)):
        assert torch.count_nonzero(g) == 0, f"local: grad {name} must be zero"


# --------------------------------------------------------------------------------------------------
# torch.autograd.Function entry points
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("ref_5d", [False, True], ids=["ref4d", "ref5d"])
def test_global_function_apply_equals_function(dtype, ref_5d):
    params = dict(B=2, C=5, H=6, W=7, Hr=7, Wr=6, L=4, atrous=2, min_pixels=1, dtype=dtype, seed=18)
    if ref_5d:
        params["T"] = 2
    case = make_global_case(ref_5d=ref_5d, **params)
    fg, bg = run_global(case)
    afg, abg = cfbi_ops.GlobalMatchFunction.apply(
        case.query,
        case.reference,
        case.labels,
        case.num_labels,
        case.fg_bias,
        case.bg_bias,
        case.atrous,
        case.atrous_min_pixels,
    )
    assert torch.equal(fg, afg) and torch.equal(bg, abg)
    expected = grads(weighted_loss(fg, bg), case.leaves())
    got = grads(weighted_loss(afg, abg), case.leaves())
    for name, g, e in zip(GRAD_NAMES_GLOBAL, got, expected):
        assert g.shape == e.shape, name
        assert torch.equal(g, e), f"grad {name} differs between Function.apply and global_match"


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_local_function_apply_equals_function(dtype):
    case = make_local_case(B=2, C=5, H=6, W=7, L=4, windows=(6, 1, 3), atrous=2, dtype=dtype, seed=19)
    fg, bg = run_local(case)
    afg, abg = cfbi_ops.LocalMatchFunction.apply(
        case.query, case.previous, case.labels, case.num_labels, case.fg_bias, case.bg_bias, case.windows, case.atrous
    )
    assert torch.equal(fg, afg) and torch.equal(bg, abg)
    expected = grads(weighted_loss(fg, bg), case.leaves())
    got = grads(weighted_loss(afg, abg), case.leaves())
    for name, g, e in zip(GRAD_NAMES_LOCAL, got, expected):
        assert torch.equal(g, e), f"grad {name} differs between Function.apply and local_match"


def test_function_apply_defaults_and_number_biases():
    gcase = make_global_case(B=1, C=4, H=5, W=5, L=3, seed=20, requires_grad=False)
    fg, bg = cfbi_ops.GlobalMatchFunction.apply(gcase.query, gcase.reference, gcase.labels, 3, -0.3, 0.2)
    efg, ebg = cfbi_ops.global_match(gcase.query, gcase.reference, gcase.labels, 3, -0.3, 0.2)
    assert torch.equal(fg, efg) and torch.equal(bg, ebg)
    lcase = make_local_case(B=1, C=4, H=5, W=5, L=3, seed=21, requires_grad=False)
    fg, bg = cfbi_ops.LocalMatchFunction.apply(lcase.query, lcase.previous, lcase.labels, 3, -0.3, 0.2)
    efg, ebg = cfbi_ops.local_match(lcase.query, lcase.previous, lcase.labels, 3, -0.3, 0.2)
    assert fg.shape == (1, 3, len(cfbi_ops.DEFAULT_WINDOWS), 5, 5)
    assert torch.equal(fg, efg) and torch.equal(bg, ebg)


def test_bias_slice_of_parameter_gets_gradient():
    """The model indexes per-scale biases out of a [3, 1, 1, 1] parameter: gradients reach the parameter."""
    case = make_global_case(B=1, C=4, H=5, W=6, L=3, seed=22)
    fg_param = torch.full((3, 1, 1, 1), -0.3, dtype=torch.float64, requires_grad=True)
    bg_param = torch.full((3, 1, 1, 1), 0.2, dtype=torch.float64, requires_grad=True)
    fg, bg = cfbi_ops.global_match(case.query, case.reference, case.labels, 3, fg_param[1], bg_param[1])
    weighted_loss(fg, bg).backward()
    rfg, rbg = ref_impl.global_match(case.query, case.reference, case.labels, 3, case.fg_bias, case.bg_bias)
    efb, ebb = torch.autograd.grad(weighted_loss(rfg, rbg), [case.fg_bias, case.bg_bias])
    assert fg_param.grad[0].item() == 0 and fg_param.grad[2].item() == 0
    torch.testing.assert_close(fg_param.grad[1].reshape(1), efb, **GRAD_TOL[torch.float64])
    torch.testing.assert_close(bg_param.grad[1].reshape(1), ebb, **GRAD_TOL[torch.float64])


# --------------------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------------------


def _det_cases(dtype):
    # Big enough that at::parallel_for splits the work over two threads (grain 16 pixels).
    gcase = make_global_case(
        B=2, C=16, H=13, W=12, T=2, Hr=11, Wr=13, L=5, atrous=2, min_pixels=1, dtype=dtype, seed=40
    )
    lcase = make_local_case(B=2, C=16, H=13, W=12, L=5, windows=(24, 4, 8, 0), atrous=2, dtype=dtype, seed=41)
    return [(gcase, run_global), (lcase, run_local)]


def _forward_and_grads(case, run):
    fg, bg = run(case)
    return [fg.detach(), bg.detach()] + grads(weighted_loss(fg, bg, seed=5), case.leaves())


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_backward_repeat_is_bit_identical(dtype):
    for case, run in _det_cases(dtype):
        first = _forward_and_grads(case, run)
        second = _forward_and_grads(case, run)
        for a, b in zip(first, second):
            assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_results_independent_of_thread_count(dtype, restore_threads):
    for case, run in _det_cases(dtype):
        torch.set_num_threads(1)
        one = _forward_and_grads(case, run)
        torch.set_num_threads(2)
        two = _forward_and_grads(case, run)
        for name, a, b in zip(["fg", "bg", "query", "candidates", "fg_bias", "bg_bias"], one, two):
            assert torch.equal(a, b), f"{name} differs between 1 and 2 threads"


def test_deterministic_algorithms_mode(restore_deterministic):
    torch.use_deterministic_algorithms(True)
    for case, run in _det_cases(torch.float32):
        first = _forward_and_grads(case, run)
        second = _forward_and_grads(case, run)
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
