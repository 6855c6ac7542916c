"""Registration of the cfbi:: custom ops: the compiled extension is loaded, CPU kernels are registered,
torch.library.opcheck passes on every op, and torch.compile(fullgraph=True) traces through them."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    GRAD_TOL,
    TOL,
    Case,
    embeddings,
    generator,
    in_layout,
    inputs,
    random_labels,
    raw_args,
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


# opcheck of every op: the op harness (tests/test_ops_harness.py, its "opcheck_*" cases) on every backend.


def test_canonical_op_outputs():
    """The raw ops return (fg, bg, argmin) with argmin int32, -1 exactly where fg has no candidate."""
    case = Case("global", B=2, C=4, H=5, W=6, T=2, Hr=6, Wr=5, L=4, atrous=2, min_pixels=1, absent=(3,), seed=50)
    op, _, args = raw_args(case, inputs(case, torch.float64))
    q, r, labels, L = args[:4]
    fg, bg, argmin = op(*args)
    assert fg.shape == bg.shape == argmin.shape == (2, 4, 5, 6)
    assert argmin.dtype == torch.int32
    assert torch.all(argmin[:, 3] == -1) and torch.all(fg[:, 3] == 1.0)
    assert torch.all(argmin[:, :3] >= 0) and torch.all(argmin < r.shape[1] * r.shape[3] * r.shape[4])
    # Every selected candidate carries the label it was selected for.
    flat_labels = labels.reshape(2, -1)
    for label in range(3):
        picked = flat_labels.gather(1, argmin[:, label].reshape(2, -1).long())
        assert torch.all(picked == label)
    case = Case("local", B=2, C=4, H=6, W=5, L=4, windows=(5, 1, 0, 3), atrous=2, seed=51)
    op, _, args = raw_args(case, inputs(case, torch.float64))
    labels, L = args[2:4]
    fg, bg, argmin = op(*args)
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


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_torch_compile_fullgraph_matches_eager(layout):
    """Inductor trusts the fake kernels' output strides: a channels_last input (a conv output) must work."""
    torch._dynamo.reset()
    dtype = torch.float32
    g = generator(60)
    B, C, H, W = 2, 4, 6, 7
    inputs = dict(
        query=in_layout(embeddings((B, C, H, W), dtype, g), layout),
        reference=in_layout(embeddings((B, 2, C, 5, 6), dtype, g), layout),
        ref_labels=random_labels((B, 2, 5, 6), 4, g),
        previous=in_layout(embeddings((B, C, H, W), dtype, g), layout),
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
