"""Regression tests of the edge semantics (docs/design.md, "The operators") and of the holes found by
calling the ops with generated arguments: window and atrous arguments far beyond the frame, overflowing
products, NaN inputs, C = 0, the bfloat16 bias gradient, huge num_labels and the raw ops' checks. Calls
that crashed the process run in a child interpreter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import requires_extension, run_isolated

import cfbi_ops
from cfbi_ops import reference as ref_impl

ERRORS = (ValueError, RuntimeError)
CPU_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _inputs(dtype=torch.float64, B=1, C=3, H=5, W=6, L=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = (0.1 * torch.randn(B, C, H, W, generator=g, dtype=torch.float64)).to(dtype)
    r = (0.1 * torch.randn(B, C, H, W, generator=g, dtype=torch.float64)).to(dtype)
    lab = torch.randint(0, L, (B, H, W), generator=g)
    lab[:, 0, 1] = 255
    return q, r, lab


# ------------------------------------------------------------------------- windows / atrous beyond the frame
_HUGE_WINDOWS = """
import time, torch, cfbi_ops
for size, dtype, window, backend in {cases}:
    g = torch.Generator().manual_seed(1)
    q = 0.1 * torch.randn(1, 2, size, size, generator=g, dtype=dtype)
    p = 0.1 * torch.randn(1, 2, size, size, generator=g, dtype=dtype)
    lab = torch.randint(0, 2, (1, size, size), generator=g)
    start = time.time()
    fg, bg = cfbi_ops.local_match(q, p, lab, 2, 0., 0., windows=(window, 1), backend=backend)
    seconds = time.time() - start
    # A window covering the frame holds every candidate: the same as window 2 * size.
    efg, ebg = cfbi_ops.local_match(q, p, lab, 2, 0., 0., windows=(2 * size, 1), backend=backend)
    same = torch.equal(fg, efg) and torch.equal(bg, ebg)
    print(size, str(dtype), window, backend, "SAME" if same else "DIFFERENT", f"{{seconds:.2f}}", flush=True)
"""


@requires_extension
def test_windows_beyond_the_frame_are_clamped():
    """Window 2**61 on a 4x4 frame segfaulted, 2**62 - 1 aborted (double free), 2**62 on 16x16 hung, 10**6
    took 37 s and 2.9 GB and 10**7 raised bad_alloc; each must equal a window covering the frame, quickly."""
    cases = [
        (4, torch.float32, 2**61, "compiled"),
        (4, torch.float32, 2**62 - 1, "compiled"),
        (16, torch.float32, 2**62, "compiled"),
        (16, torch.float32, 10**6, "compiled"),
        (16, torch.float32, 10**7, "compiled"),
        (16, torch.float64, 2**63 - 1, "compiled"),
        (16, torch.float16, 2**62, "compiled"),
        (16, torch.float64, 2**62, "reference"),
    ]
    proc = run_isolated(_HUGE_WINDOWS.format(cases=repr(cases)))
    try:
        out, err = proc.communicate(timeout=120)
    except Exception:  # a hang is a failure
        proc.kill()
        out, err = proc.communicate()
    assert proc.returncode == 0, f"exit code {proc.returncode}; output {out!r}; stderr tail {err[-2000:]}"
    lines = out.splitlines()
    assert len(lines) == len(cases), out
    for line in lines:
        assert "SAME" in line, line
        assert float(line.split()[-1]) < 5.0, f"a clamped window must cost what the frame costs: {line}"


@pytest.mark.parametrize("backend", ["compiled", "reference"])
def test_huge_atrous_keeps_only_the_origin(backend):
    if backend == "compiled" and not cfbi_ops.HAS_EXTENSION:
        pytest.skip("needs the compiled extension")
    q, r, lab = _inputs()
    fg, _ = cfbi_ops.local_match(q, r, lab, 3, 0.0, 0.0, windows=(2**40,), atrous=2**31 - 1, backend=backend)
    efg, _ = cfbi_ops.local_match(q, r, lab, 3, 0.0, 0.0, windows=(0,), backend=backend)
    torch.testing.assert_close(fg, efg, rtol=0, atol=0)
    gfg, _ = cfbi_ops.global_match(q, r, lab, 3, 0.0, 0.0, atrous=2**31 - 1, atrous_min_pixels=2**62, backend=backend)
    assert torch.isfinite(gfg).all()


# ------------------------------------------------------------------------- atrous_min_pixels * atrous**2
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", ["compiled", "reference"])
def test_min_pixels_product_does_not_overflow(dtype, backend):
    """min_pixels 2**62 at atrous 2: min_pixels * 4 overflowed int64 and silently dropped off-grid candidates.
    Every label is smaller than the threshold, so every candidate is kept: the result of atrous 1."""
    if backend == "compiled" and not cfbi_ops.HAS_EXTENSION:
        pytest.skip("needs the compiled extension")
    q, r, lab = _inputs(dtype, H=7, W=6)
    for min_pixels in (2**62, 2**63 - 1, 2**61 + 1):
        fg, bg = cfbi_ops.global_match(q, r, lab, 3, -0.2, 0.1, atrous=2, atrous_min_pixels=min_pixels, backend=backend)
        efg, ebg = cfbi_ops.global_match(q, r, lab, 3, -0.2, 0.1, backend=backend)
        torch.testing.assert_close(fg, efg, rtol=0, atol=0)
        torch.testing.assert_close(bg, ebg, rtol=0, atol=0)


# ------------------------------------------------------------------------- integer bounds name the argument
@pytest.mark.parametrize("value", [2**31, 2**40, 2**63, 2**64])
def test_integer_bounds_name_the_argument(value):
    q, r, lab = _inputs()
    with pytest.raises(ValueError, match="num_labels"):
        cfbi_ops.global_match(q, r, lab, value, 0.0, 0.0)
    with pytest.raises(ValueError, match="num_labels"):
        cfbi_ops.local_match(q, r, lab, value, 0.0, 0.0)
    with pytest.raises(ValueError, match="atrous"):
        cfbi_ops.local_match(q, r, lab, 3, 0.0, 0.0, atrous=value)
    if value > 2**63 - 1:
        with pytest.raises(ValueError, match="atrous_min_pixels"):
            cfbi_ops.global_match(q, r, lab, 3, 0.0, 0.0, atrous=2, atrous_min_pixels=value)
        with pytest.raises(ValueError, match="windows"):
            cfbi_ops.local_match(q, r, lab, 3, 0.0, 0.0, windows=(value,))


@requires_extension
def test_unallocatable_outputs_name_num_labels():
    """num_labels = 2**40 failed with "can't allocate 70368744177664 bytes"; the raw op must name it."""
    q, r, lab = _inputs(torch.float32, H=64, W=64)
    b = torch.zeros(1)
    with pytest.raises(RuntimeError, match="num_labels"):
        torch.ops.cfbi.global_match(q, r[:, None], lab[:, None], 2**40, b, b, 1, 0)
    with pytest.raises(RuntimeError, match="num_labels"):  # within the bound, beyond any memory: 32 TiB
        torch.ops.cfbi.local_match(q, r, lab, 2**31 - 1, b, b, [1], 1)


# ------------------------------------------------------------------------- raw op argument checks
@requires_extension
def test_raw_ops_reject_what_the_public_api_rejects():
    q, r, lab = _inputs(torch.float32)
    b = torch.zeros(1)
    g_args = [q, r[:, None], lab[:, None], 3, b, b, 1, 0]
    l_args = [q, r, lab, 3, b, b, [2], 1]
    cases = {
        "meta reference": (0, 1, r[:, None].to("meta"), "device|meta"),
        "meta query": (0, 0, q.to("meta"), "device|meta"),
        "meta labels": (0, 2, lab[:, None].to("meta"), "device|meta"),
        "int fg_bias": (0, 4, torch.zeros(1, dtype=torch.long), "fg_bias"),
        "bool bg_bias": (0, 5, torch.zeros(1, dtype=torch.bool), "bg_bias"),
        "meta previous": (1, 1, r.to("meta"), "device|meta"),
        "int bg_bias local": (1, 5, torch.zeros(1, dtype=torch.int32), "bg_bias"),
        "meta bias local": (1, 4, b.to("meta"), "device|meta"),
    }
    for name, (which, index, value, pattern) in cases.items():
        args = list(g_args if which == 0 else l_args)
        args[index] = value
        op = torch.ops.cfbi.global_match if which == 0 else torch.ops.cfbi.local_match
        with pytest.raises(RuntimeError, match=pattern):
            op(*args)
            pytest.fail(f"{name}: no error")


# ------------------------------------------------------------------------- the NaN rule
def _nan_expectation_global(q, r, lab, L):
    """fg_l(p) is NaN where p's embedding has a NaN and label l has a candidate, or label l has a NaN candidate."""
    q_nan = q.isnan().any(1)  # [B, H, W]
    r_nan = r.isnan().any(1)
    valid = (lab >= 0) & (lab < L)
    mask = torch.zeros(q.shape[0], L, *q.shape[2:], dtype=torch.bool)
    for label in range(L):
        has = (valid & (lab == label)).flatten(1).any(1)
        has_nan = (r_nan & (lab == label)).flatten(1).any(1)
        mask[:, label] = (q_nan & has[:, None, None]) | has_nan[:, None, None]
    return mask


def _nan_expectation_local(q, r, lab, L, windows, atrous):
    q_nan = q.isnan().any(1).numpy()
    r_nan = r.isnan().any(1).numpy()
    lab = lab.numpy()
    B, _, H, W = q.shape
    mask = np.zeros((B, L, len(windows), H, W), dtype=bool)
    for b in range(B):
        for y in range(H):
            for x in range(W):
                for w, window in enumerate(windows):
                    k = window // atrous
                    for i in range(-k, k + 1):
                        for j in range(-k, k + 1):
                            yy, xx = y + i * atrous, x + j * atrous
                            if 0 <= yy < H and 0 <= xx < W and 0 <= lab[b, yy, xx] < L:
                                if q_nan[b, y, x] or r_nan[b, yy, xx]:
                                    mask[b, lab[b, yy, xx], w, y, x] = True
    return torch.from_numpy(mask)


def _bg_nan(fg_nan):
    L = fg_nan.shape[1]
    if L == 1:
        return fg_nan
    return torch.stack([torch.cat([fg_nan[:, :j], fg_nan[:, j + 1 :]], 1).any(1) for j in range(L)], 1)


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
@pytest.mark.parametrize("backend", ["compiled", "reference"])
@pytest.mark.parametrize("op", ["global", "local"])
def test_nan_propagates_on_every_dtype(op, backend, dtype):
    """A NaN candidate was skipped in float32, poisoned the output in float64 / float16, and the reference did a
    third thing. Rule: NaN propagates to every output it can reach (as torch.min), the rest is unchanged."""
    if backend == "compiled" and not cfbi_ops.HAS_EXTENSION:
        pytest.skip("needs the compiled extension")
    if backend == "reference" and dtype in (torch.float16, torch.bfloat16):
        pytest.skip("the reference runs float16 / bfloat16 through float64 selection like the other dtypes")
    L, windows, atrous = 3, (1, 2, 0), 1
    q, r, lab = _inputs(dtype, H=6, W=7, L=L, seed=3)
    r[0, 1, 2, 3] = float("nan")  # one candidate
    q[0, 0, 5, 6] = float("nan")  # one query pixel
    clean_q, clean_r = q.clone(), r.clone()
    clean_q[0, 0, 5, 6] = 0.0
    clean_r[0, 1, 2, 3] = 0.0

    def run(a, b):
        if op == "global":
            return cfbi_ops.global_match(a, b, lab, L, -0.1, 0.2, backend=backend)
        return cfbi_ops.local_match(a, b, lab, L, -0.1, 0.2, windows=windows, atrous=atrous, backend=backend)

    if op == "global":
        fg_nan = _nan_expectation_global(q, r, lab, L)
    else:
        fg_nan = _nan_expectation_local(q, r, lab, L, windows, atrous)
    fg, bg = run(q, r)
    assert fg_nan.any() and not fg_nan.all()
    assert torch.equal(fg.isnan(), fg_nan), "fg: NaN where it must not be, or missing where it must be"
    assert torch.equal(bg.isnan(), _bg_nan(fg_nan))
    # Outputs a NaN cannot reach are those of the inputs without the NaNs, as long as the NaN candidate did not
    # win there (the clean value 0 of the replaced candidate may win instead).
    cfg, _ = run(clean_q, clean_r)
    assert (cfg == fg)[~fg_nan].float().mean() > 0.8


@pytest.mark.parametrize("backend", ["compiled", "reference"])
def test_nan_gradient_reaches_exactly_the_windows_of_the_nan_candidate(backend):
    """Gradients follow torch autograd: a NaN output has a NaN slope, so its query pixel and its selected (NaN)
    candidate get NaN gradients, and nothing else does."""
    if backend == "compiled" and not cfbi_ops.HAS_EXTENSION:
        pytest.skip("needs the compiled extension")
    q, r, lab = _inputs(torch.float64, H=5, W=5, seed=4)
    lab[:] = 1
    lab[0, :, 3:] = 2
    r[0, 0, 0, 0] = float("nan")  # label 1's candidate at (0, 0)
    q.requires_grad_(True)
    r.requires_grad_(True)
    fg, bg = cfbi_ops.local_match(q, r, lab, 3, 0.0, 0.0, windows=(1,), backend=backend)
    assert fg.isnan().sum() == 4 and fg[0, 1, 0, :2, :2].isnan().all()
    gq, gr = torch.autograd.grad((fg * 0.5).sum() + bg.sum(), (q, r))
    nan_pixels = torch.zeros(5, 5, dtype=torch.bool)
    nan_pixels[:2, :2] = True
    assert torch.equal(gq[0].isnan().any(0), nan_pixels)
    assert torch.equal(gr[0].isnan().any(0), nan_pixels & (torch.arange(5)[:, None] + torch.arange(5) == 0))


# ------------------------------------------------------------------------- C = 0
@pytest.mark.parametrize("backend", ["compiled", "reference"])
@pytest.mark.parametrize("op", ["global", "local"])
def test_zero_channels_bias_gradient(op, backend):
    """With C = 0 every distance is 0 and fg = 2 sigmoid(b) - 1 where a label has a candidate; the compiled
    backward returned a zero bias gradient (query.numel() == 0 was taken for an empty problem)."""
    if backend == "compiled" and not cfbi_ops.HAS_EXTENSION:
        pytest.skip("needs the compiled extension")
    q, r, lab = _inputs(torch.float64, C=0, H=4, W=5)
    fb = torch.full((1,), -0.4, dtype=torch.float64, requires_grad=True)
    bb = torch.full((1,), 0.3, dtype=torch.float64, requires_grad=True)
    if op == "global":
        fg, bg = cfbi_ops.global_match(q, r, lab, 3, fb, bb, backend=backend)
    else:
        fg, bg = cfbi_ops.local_match(q, r, lab, 3, fb, bb, windows=(1, 3), backend=backend)
    found = fg != 1.0
    bias = torch.tensor([0.3, -0.4, -0.4], dtype=torch.float64).reshape((1, 3) + (1,) * (fg.dim() - 2))
    expected = torch.where(found, 2 * torch.sigmoid(bias) - 1, torch.ones_like(fg))
    torch.testing.assert_close(fg.detach(), expected)
    loss = (fg * 1.5).sum() + bg.sum()
    gfb, gbb = torch.autograd.grad(loss, (fb, bb))
    # The same loss written with torch ops on the biases.
    fb2, bb2 = fb.detach().clone().requires_grad_(), bb.detach().clone().requires_grad_()
    bias2 = torch.cat([bb2, fb2, fb2]).reshape(bias.shape)
    fg2 = torch.where(found, 2 * torch.sigmoid(bias2) - 1, torch.ones_like(fg))
    bg2 = ref_impl.background_maps(fg2)
    efb, ebb = torch.autograd.grad((fg2 * 1.5).sum() + bg2.sum(), (fb2, bb2))
    assert gfb.abs().item() > 0.1
    torch.testing.assert_close(gfb, efb)
    torch.testing.assert_close(gbb, ebb)


# ------------------------------------------------------------------------- bfloat16 slope
@requires_extension
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("op", ["global", "local"])
def test_low_precision_bias_gradient_uses_the_float_score(op, dtype):
    """At fg_bias = -5 the score is close to -1, where bfloat16 keeps few bits of 1 + s: a slope computed from
    the rounded score was 12.6% off (plain bfloat16 autograd: 0.3%). The slope must come from the float score."""
    q, r, lab = _inputs(torch.float64, C=8, H=9, W=9, L=3, seed=5)
    q, r = q.to(dtype).double(), r.to(dtype).double()  # the low-precision values, exactly
    grads = {}
    for d in (dtype, torch.float64):
        fb = torch.full((1,), -5.0, dtype=d, requires_grad=True)
        bb = torch.full((1,), -4.0, dtype=d, requires_grad=True)
        if op == "global":
            fg, bg = cfbi_ops.global_match(q.to(d), r.to(d), lab, 3, fb, bb)
        else:
            fg, bg = cfbi_ops.local_match(q.to(d), r.to(d), lab, 3, fb, bb, windows=(2, 4))
        grads[d] = [g.double() for g in torch.autograd.grad(fg.sum(), (fb, bb))]
    for got, expected in zip(grads[dtype], grads[torch.float64]):
        assert abs(got.item() / expected.item() - 1) < 0.02, (got.item(), expected.item())


# ------------------------------------------------------------------------- B = 0 on the reference backend
@pytest.mark.parametrize("op", ["global", "local"])
def test_reference_empty_batch(op):
    """Found by the CI run with the reference forced: B = 0 failed in torch.stack / reshape(-1)."""
    q = torch.zeros(0, 3, 4, 5, requires_grad=True)
    lab = torch.zeros(0, 4, 5, dtype=torch.long)
    bias = torch.zeros(1, requires_grad=True)
    if op == "global":
        fg, bg = cfbi_ops.global_match(q, q, lab, 3, bias, bias, backend="reference")
    else:
        fg, bg = cfbi_ops.local_match(q, q, lab, 3, bias, bias, windows=(1, 2), backend="reference")
    assert fg.shape == bg.shape == ((0, 3, 4, 5) if op == "global" else (0, 3, 2, 4, 5))
    (grad,) = torch.autograd.grad(fg.sum() + bg.sum(), [bias])
    assert grad.shape == (1,) and not grad.any()
