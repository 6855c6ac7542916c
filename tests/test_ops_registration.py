"""Registration of the cfbi:: custom ops: the compiled extension is loaded, CPU kernels are registered,
torch.library.opcheck passes on every op, and torch.compile(fullgraph=True) traces through them."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    GRAD_TOL,
    TOL,
    dtype_id,
    embeddings,
    generator,
    random_labels,
    requires_compiled,
)

import cfbi_ops

OPS = ["global_match", "local_match", "global_match_backward", "local_match_backward"]
# The compiled ops themselves: skipped without the extension and in the run with the reference forced.
pytestmark = requires_compiled


def test_extension_is_loaded():
    assert cfbi_ops.HAS_EXTENSION, f"compiled extension not loaded: {cfbi_ops.EXTENSION_ERROR}"
    assert cfbi_ops.EXTENSION_ERROR is None
    for name in OPS:
        assert hasattr(torch.ops.cfbi, name), f"torch.ops.cfbi.{name} is not registered"


@pytest.mark.parametrize("name", OPS)
def test_dispatch_has_cpu_kernel(name):
    dump = torch._C._dispatch_dump(f"cfbi::{name}")
    assert "CPU:" in dump, dump
    # The Python fake kernel and autograd registrations are there too.
    if name in ("global_match", "local_match"):
        assert "Autograd" in dump, dump


def test_function_classes_are_autograd_functions():
    assert issubclass(cfbi_ops.GlobalMatchFunction, torch.autograd.Function)
    assert issubclass(cfbi_ops.LocalMatchFunction, torch.autograd.Function)


# --------------------------------------------------------------------------------------------------
# opcheck with canonical arguments
# --------------------------------------------------------------------------------------------------


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """Same values, memory format as asked: 'contiguous' or 'channels_last' (a dense, non-contiguous
    layout such as a channels_last conv output; for 5-D [B, T, C, H, W] the C dim is innermost)."""
    if layout == "contiguous":
        return x.contiguous()
    if x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


LAYOUTS = ["contiguous", "channels_last"]


def _global_args(
    dtype,
    *,
    B=2,
    C=4,
    H=5,
    W=6,
    T=2,
    Hr=6,
    Wr=5,
    L=4,
    atrous=2,
    min_pixels=1,
    seed=50,
    requires_grad=True,
    layout="contiguous",
):
    g = generator(seed)
    query = _layout(embeddings((B, C, H, W), dtype, g), layout).requires_grad_(requires_grad)
    reference = _layout(embeddings((B, T, C, Hr, Wr), dtype, g), layout).requires_grad_(requires_grad)
    labels = random_labels((B, T, Hr, Wr), L, g)
    fg_bias = torch.full((1,), -0.3, dtype=dtype, requires_grad=requires_grad)
    bg_bias = torch.full((1,), 0.2, dtype=dtype, requires_grad=requires_grad)
    return (query, reference, labels, L, fg_bias, bg_bias, atrous, min_pixels)


def _local_args(
    dtype, *, B=2, C=4, H=6, W=5, L=4, windows=(5, 1, 0, 3), atrous=2, seed=51, requires_grad=True, layout="contiguous"
):
    g = generator(seed)
    query = _layout(embeddings((B, C, H, W), dtype, g), layout).requires_grad_(requires_grad)
    previous = _layout(embeddings((B, C, H, W), dtype, g), layout).requires_grad_(requires_grad)
    labels = random_labels((B, H, W), L, g)
    fg_bias = torch.full((1,), -0.3, dtype=dtype, requires_grad=requires_grad)
    bg_bias = torch.full((1,), 0.2, dtype=dtype, requires_grad=requires_grad)
    return (query, previous, labels, L, fg_bias, bg_bias, list(windows), atrous)


def _backward_args(forward_op, args):
    detached = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    fg, _, argmin = forward_op(*detached)
    g = generator(52)
    grad_fg = torch.randn(fg.shape, generator=g, dtype=torch.float64).to(fg.dtype)
    grad_bg = torch.randn(fg.shape, generator=g, dtype=torch.float64).to(fg.dtype)
    return (grad_fg, grad_bg, fg, argmin, detached[0], detached[1], detached[4], detached[5])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
def test_opcheck_global_match(dtype, layout):
    torch.library.opcheck(torch.ops.cfbi.global_match.default, _global_args(dtype, layout=layout))
    # T = 1, L = 1, atrous 1
    torch.library.opcheck(
        torch.ops.cfbi.global_match.default,
        _global_args(dtype, B=1, T=1, L=1, atrous=1, min_pixels=0, seed=53, layout=layout),
    )


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
def test_opcheck_local_match(dtype, layout):
    torch.library.opcheck(torch.ops.cfbi.local_match.default, _local_args(dtype, layout=layout))
    torch.library.opcheck(
        torch.ops.cfbi.local_match.default,
        _local_args(dtype, B=1, L=1, windows=(24,), atrous=1, seed=54, layout=layout),
    )


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
def test_opcheck_global_match_backward(dtype, layout):
    args = _backward_args(torch.ops.cfbi.global_match, _global_args(dtype, layout=layout))
    torch.library.opcheck(torch.ops.cfbi.global_match_backward.default, args)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
def test_opcheck_local_match_backward(dtype, layout):
    args = _backward_args(torch.ops.cfbi.local_match, _local_args(dtype, layout=layout))
    torch.library.opcheck(torch.ops.cfbi.local_match_backward.default, args)


def test_canonical_op_outputs():
    """The raw ops return (fg, bg, argmin) with argmin int32, -1 exactly where fg has no candidate."""
    q, r, labels, L, fb, bb, atrous, min_px = _global_args(torch.float64, requires_grad=False)
    labels = labels.clone()
    labels[labels == 3] = 255  # label 3 absent
    fg, bg, argmin = torch.ops.cfbi.global_match(q, r, labels, L, fb, bb, atrous, min_px)
    assert fg.shape == bg.shape == argmin.shape == (2, 4, 5, 6)
    assert argmin.dtype == torch.int32
    assert torch.all(argmin[:, 3] == -1) and torch.all(fg[:, 3] == 1.0)
    assert torch.all(argmin[:, :3] >= 0) and torch.all(argmin < r.shape[1] * r.shape[3] * r.shape[4])
    # Every selected candidate carries the label it was selected for.
    flat_labels = labels.reshape(2, -1)
    for label in range(3):
        picked = flat_labels.gather(1, argmin[:, label].reshape(2, -1).long())
        assert torch.all(picked == label)
    q, p, labels, L, fb, bb, windows, atrous = _local_args(torch.float64, requires_grad=False)
    fg, bg, argmin = torch.ops.cfbi.local_match(q, p, labels, L, fb, bb, windows, atrous)
    assert fg.shape == bg.shape == argmin.shape == (2, 4, 4, 6, 5)
    assert torch.any(argmin < 0) and torch.all(fg[argmin < 0] == 1.0)
    assert torch.all(fg[argmin >= 0] < 1.0)  # small embeddings: a found label never saturates
    flat_labels = labels.reshape(2, -1)
    for label in range(L):
        sel = argmin[:, label].reshape(2, -1).long()
        picked = flat_labels.gather(1, sel.clamp(min=0))
        assert torch.all((picked == label) | (sel < 0))


# --------------------------------------------------------------------------------------------------
# torch.compile(fullgraph=True)
# --------------------------------------------------------------------------------------------------


def _both_ops(query, reference, ref_labels, previous, prev_labels, fg_bias, bg_bias, weights):
    gfg, gbg = cfbi_ops.global_match(query, reference, ref_labels, 4, fg_bias, bg_bias, atrous=2, atrous_min_pixels=1)
    lfg, lbg = cfbi_ops.local_match(query, previous, prev_labels, 4, fg_bias, bg_bias, windows=(3, 1, 0), atrous=1)
    outs = (gfg, gbg, lfg, lbg)
    loss = sum((o * w).sum() for o, w in zip(outs, weights))
    return gfg, gbg, lfg, lbg, loss


@pytest.mark.parametrize("layout", LAYOUTS)
def test_torch_compile_fullgraph_matches_eager(layout):
    """Inductor trusts the fake kernels' output strides: a channels_last input (a conv output) must work."""
    torch._dynamo.reset()
    dtype = torch.float32
    g = generator(60)
    B, C, H, W = 2, 4, 6, 7
    inputs = dict(
        query=_layout(embeddings((B, C, H, W), dtype, g), layout),
        reference=_layout(embeddings((B, 2, C, 5, 6), dtype, g), layout),
        ref_labels=random_labels((B, 2, 5, 6), 4, g),
        previous=_layout(embeddings((B, C, H, W), dtype, g), layout),
        prev_labels=random_labels((B, H, W), 4, g),
        fg_bias=torch.full((1, 1, 1), -0.3, dtype=dtype),
        bg_bias=torch.full((1, 1, 1), 0.2, dtype=dtype),
    )
    inputs["weights"] = [torch.randn((B, 4, H, W), generator=g).to(dtype) for _ in range(2)] + [
        torch.randn((B, 4, 3, H, W), generator=g).to(dtype) for _ in range(2)
    ]
    diff = ["query", "reference", "previous", "fg_bias", "bg_bias"]

    def run(fn):
        leaves = {k: (v.detach().clone().requires_grad_() if k in diff else v) for k, v in inputs.items()}
        *outs, loss = fn(**leaves)
        loss.backward()
        return outs, [leaves[k].grad for k in diff]

    eager_out, eager_grads = run(_both_ops)
    compiled_out, compiled_grads = run(torch.compile(_both_ops, fullgraph=True))
    for got, expected in zip(compiled_out, eager_out):
        torch.testing.assert_close(got, expected, **TOL[dtype])
    for name, got, expected in zip(diff, compiled_grads, eager_grads):
        assert got is not None, f"no gradient for {name}"
        assert torch.count_nonzero(got) > 0, f"zero gradient for {name}"
        torch.testing.assert_close(got, expected, msg=lambda m, name=name: f"grad {name}: {m}", **GRAD_TOL[dtype])
