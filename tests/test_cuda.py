"""CUDA behaviour of cfbi_ops that is not "output equals the reference on some input" (the op harness,
tests/test_ops_harness.py, runs its shared case list on the CUDA backend for that: forward, selection, gradients in
every dtype and deterministic mode, gradcheck, opcheck): kernel registration, torch.compile (fullgraph and CUDA
graphs), bit-identical deterministic mode, side streams, a second device, device-side asserts and a full-size
960x540 grid. Every test skips without a CUDA device.
"""

from __future__ import annotations

import pytest
import torch
from conftest import (
    GRAD_TOL,
    LEAVES,
    TOL,
    Case,
    call,
    dtype_id,
    embeddings,
    generator,
    grads,
    inputs,
    leaf_inputs,
    random_labels,
    requires_cuda,
    run_isolated,
    weighted_loss,
)

import cfbi_ops

pytestmark = [pytest.mark.cuda, requires_cuda]

ALL_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
OPS = ["global_match", "global_match_backward", "local_match", "local_match_backward"]


@pytest.fixture
def deterministic_mode():
    """Yields a setter for torch.use_deterministic_algorithms and restores the mode afterwards."""
    mode = torch.are_deterministic_algorithms_enabled()
    yield torch.use_deterministic_algorithms
    torch.use_deterministic_algorithms(mode)


@pytest.mark.parametrize("name", OPS)
def test_cuda_kernel_registered(name):
    assert cfbi_ops.HAS_EXTENSION, cfbi_ops.EXTENSION_ERROR
    assert "CUDA" in torch._C._dispatch_dump(f"cfbi::{name}")


# --------------------------------------------------------------------------------------------------
# torch.compile, CUDA graphs
# --------------------------------------------------------------------------------------------------


def _channels_last(x):
    if x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


def _both_ops(query, reference, ref_labels, previous, prev_labels, fg_bias, bg_bias, weights):
    gfg, gbg = cfbi_ops.global_match(query, reference, ref_labels, 4, fg_bias, bg_bias, atrous=2, atrous_min_pixels=1)
    lfg, lbg = cfbi_ops.local_match(query, previous, prev_labels, 4, fg_bias, bg_bias, windows=(3, 1, 0), atrous=1)
    outs = (gfg, gbg, lfg, lbg)
    loss = sum((o * w).sum() for o, w in zip(outs, weights))
    return gfg, gbg, lfg, lbg, loss


def _compile_inputs(seed, layout="contiguous"):
    g = generator(seed)
    dtype = torch.float32
    B, C, H, W = 2, 4, 6, 7
    lay = _channels_last if layout == "channels_last" else (lambda x: x)
    inputs = dict(
        query=lay(embeddings((B, C, H, W), dtype, g)),
        reference=lay(embeddings((B, 2, C, 5, 6), dtype, g)),
        ref_labels=random_labels((B, 2, 5, 6), 4, g),
        previous=lay(embeddings((B, C, H, W), dtype, g)),
        prev_labels=random_labels((B, H, W), 4, g),
        fg_bias=torch.full((1, 1, 1), -0.3, dtype=dtype),
        bg_bias=torch.full((1, 1, 1), 0.2, dtype=dtype),
    )
    inputs["weights"] = [torch.randn((B, 4, H, W), generator=g).to(dtype) for _ in range(2)] + [
        torch.randn((B, 4, 3, H, W), generator=g).to(dtype) for _ in range(2)
    ]
    return {k: ([w.cuda() for w in v] if k == "weights" else v.cuda()) for k, v in inputs.items()}


DIFF = ["query", "reference", "previous", "fg_bias", "bg_bias"]


def _compile_step(fn, inputs):
    leaves = {k: (v.detach().clone().requires_grad_() if k in DIFF else v) for k, v in inputs.items()}
    *outs, loss = fn(**leaves)
    loss.backward()
    return [o.detach().clone() for o in outs], [leaves[k].grad.detach().clone() for k in DIFF]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_torch_compile_fullgraph(layout):
    torch._dynamo.reset()
    inputs = _compile_inputs(60, layout)
    eager_out, eager_grads = _compile_step(_both_ops, inputs)
    compiled_out, compiled_grads = _compile_step(torch.compile(_both_ops, fullgraph=True), inputs)
    for got, expected in zip(compiled_out, eager_out):
        torch.testing.assert_close(got, expected, **TOL[torch.float32])
    for name, got, expected in zip(DIFF, compiled_grads, eager_grads):
        assert torch.count_nonzero(got) > 0, f"zero gradient for {name}"
        torch.testing.assert_close(got, expected, **GRAD_TOL[torch.float32])


def test_torch_compile_reduce_overhead():
    """CUDA graphs: the ops must not synchronise or copy from the host; replays with new inputs must give
    new results."""
    torch._dynamo.reset()
    compiled = torch.compile(_both_ops, mode="reduce-overhead", fullgraph=True)
    for step, seed in enumerate((61, 62, 63, 62)):
        inputs = _compile_inputs(seed)
        torch.compiler.cudagraph_mark_step_begin()
        got_out, got_grads = _compile_step(compiled, inputs)
        eager_out, eager_grads = _compile_step(_both_ops, inputs)
        for got, expected in zip(got_out, eager_out):
            torch.testing.assert_close(
                got, expected, msg=lambda m, step=step: f"step {step}: {m}", **TOL[torch.float32]
            )
        for name, got, expected in zip(DIFF, got_grads, eager_grads):
            torch.testing.assert_close(
                got, expected, msg=lambda m, name=name: f"grad {name}: {m}", **GRAD_TOL[torch.float32]
            )


def test_manual_cuda_graph_capture_with_number_biases():
    """torch.cuda.graph captures both ops, forward and backward, with the biases given as Python numbers (they
    were created by a host-to-device copy, which capture refuses); replays with new inputs give eager results."""
    names = ["query", "reference", "previous"]
    static = _compile_inputs(64)  # on the GPU
    leaves = {k: static[k].detach().clone().requires_grad_() for k in names}

    def step():
        outs = _both_ops(
            leaves["query"],
            leaves["reference"],
            static["ref_labels"],
            leaves["previous"],
            static["prev_labels"],
            -0.3,
            0.2,
            static["weights"],
        )
        grads = torch.autograd.grad(outs[-1], [leaves[k] for k in names])
        return [o.detach() for o in outs[:-1]], grads

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):  # warm-up outside the capture (allocator, lazy initialisation)
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        graph_outs, graph_grads = step()
    for seed in (65, 66):
        fresh = _compile_inputs(seed)
        with torch.no_grad():
            for k in names:
                leaves[k].copy_(fresh[k])
            static["ref_labels"].copy_(fresh["ref_labels"])
            static["prev_labels"].copy_(fresh["prev_labels"])
        graph.replay()
        torch.cuda.synchronize()
        eager_outs, eager_grads = step()
        for got, expected in zip(graph_outs, eager_outs):
            torch.testing.assert_close(got, expected, **TOL[torch.float32])
        for got, expected in zip(graph_grads, eager_grads):
            torch.testing.assert_close(got, expected, **GRAD_TOL[torch.float32])


# --------------------------------------------------------------------------------------------------
# Determinism, streams, devices
# --------------------------------------------------------------------------------------------------


def _outputs_and_grads(case: Case, dtype: torch.dtype) -> list[torch.Tensor]:
    """fg, bg and the gradients of a fixed loss, on the GPU."""
    x = leaf_inputs(case, dtype, "cuda")
    fg, bg = call(case, x)
    return [fg.detach(), bg.detach(), *grads(weighted_loss(fg, bg), [x[k] for k in LEAVES])]


DETERMINISM_CASES = [
    Case("global", B=2, C=16, H=12, W=13, T=2, Hr=10, Wr=9, L=5, seed=20),
    Case("local", B=2, C=16, H=12, W=13, L=5, windows=(4, 8, 2), seed=21),
]


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", DETERMINISM_CASES, ids=lambda c: c.op)
def test_deterministic_mode_bit_identical(case, dtype, deterministic_mode):
    deterministic_mode(True)
    runs = [_outputs_and_grads(case, dtype) for _ in range(3)]
    for later in runs[1:]:
        for a, b in zip(runs[0], later):
            assert torch.equal(a, b)
    # The atomic path agrees up to rounding.
    deterministic_mode(False)
    atomic = _outputs_and_grads(case, dtype)
    for a, b in zip(runs[0][2:], atomic[2:]):
        torch.testing.assert_close(a, b, **GRAD_TOL[dtype])


def test_side_stream_and_bias_dtypes():
    """Runs on the current (non-default) stream; biases of another dtype and shape are accepted."""
    case = Case("global", B=2, C=6, H=6, W=7, T=2, L=3, seed=22)
    x = inputs(case, torch.float32, "cuda")
    expected = call(case, x)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        biases = {k: x[k].double().reshape(1, 1, 1) for k in ("fg_bias", "bg_bias")}
        got = call(case, {**x, **biases})
    torch.cuda.current_stream().wait_stream(stream)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_second_device():
    case = Case("local", C=6, H=8, W=9, L=3, windows=(2, 4), seed=23)
    expected = call(case, inputs(case, torch.float32, "cuda:0"))
    got = call(case, inputs(case, torch.float32, "cuda:1"))
    for g, e in zip(got, expected):
        assert g.device == torch.device("cuda:1")
        torch.testing.assert_close(g.cpu(), e.cpu())


def test_argmin_out_of_range_is_a_device_assert():
    """A corrupt argmin never reads out of bounds: the backward kernel stops with a device-side assert."""
    code = (
        "import torch, cfbi_ops\n"
        "q = torch.randn(1, 2, 3, 3, device='cuda'); p = torch.randn(1, 2, 3, 3, device='cuda')\n"
        "fg = torch.zeros(1, 2, 1, 3, 3, device='cuda'); b = torch.zeros(1, device='cuda')\n"
        "argmin = torch.full((1, 2, 1, 3, 3), 9, dtype=torch.int32, device='cuda')\n"
        "torch.ops.cfbi.local_match_backward(fg, fg, fg, argmin, q, p, b, b)\n"
        "torch.cuda.synchronize()\n"
        "print('no error')\n"
    )
    proc = run_isolated(code)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "no error" not in out
    assert "assert" in err.lower()


# --------------------------------------------------------------------------------------------------
# Full-size grid
# --------------------------------------------------------------------------------------------------


def _brute_global(query, reference, labels, num_labels, fb, bb, pixels):
    """fg [L, len(pixels)] in float64 for query pixels (flat indices); reference [1, C, Hr, Wr], atrous 1."""
    C = query.shape[1]
    q = query[0].reshape(C, -1)[:, pixels].double().t()  # [P, C]
    r = reference[0].reshape(C, -1).double().t()  # [M, C]
    d = (q * q).sum(1, keepdim=True) + (r * r).sum(1)[None] - 2 * q @ r.t()
    flat = labels[0].reshape(-1).long()
    out = torch.ones(num_labels, len(pixels), dtype=torch.float64, device=query.device)
    for label in range(num_labels):
        mask = flat == label
        if mask.any():
            dmin = d[:, mask].min(1).values
            b = bb if label == 0 else fb
            out[label] = 1 - 2 / (1 + torch.exp(dmin + b))
    return out


def _brute_local(query, previous, labels, num_labels, fb, bb, windows, atrous, pixels):
    """fg [L, K, len(pixels)] in float64 for query pixels (flat indices)."""
    _, C, H, W = query.shape
    out = torch.ones(num_labels, len(windows), len(pixels), dtype=torch.float64, device=query.device)
    for n, p in enumerate(pixels):
        y, x = divmod(int(p), W)
        for k, window in enumerate(windows):
            rad = window // atrous
            ys = torch.arange(y - rad * atrous, y + rad * atrous + 1, atrous, device=query.device)
            xs = torch.arange(x - rad * atrous, x + rad * atrous + 1, atrous, device=query.device)
            ys, xs = ys[(ys >= 0) & (ys < H)], xs[(xs >= 0) & (xs < W)]
            cand = previous[0][:, ys][:, :, xs].reshape(C, -1).double()
            lab = labels[0][ys][:, xs].reshape(-1).long()
            d = ((cand - query[0, :, y, x].double()[:, None]) ** 2).sum(0)
            for label in range(num_labels):
                mask = lab == label
                if mask.any():
                    b = bb if label == 0 else fb
                    out[label, k, n] = 1 - 2 / (1 + torch.exp(d[mask].min() + b))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
def test_full_size_grid_960x540(deterministic, deterministic_mode):
    """A 960x540 grid, L = 11, C = 32: both ops forward and backward, checked at sampled pixels against a
    brute force (int64 indexing, many blocks, large candidate sets)."""
    deterministic_mode(deterministic)
    g = torch.Generator(device="cuda")
    g.manual_seed(25)
    B, C, H, W, L = 1, 32, 540, 960, 11
    query = (0.1 * torch.randn(B, C, H, W, device="cuda", generator=g)).requires_grad_()
    reference = (0.1 * torch.randn(B, C, H, W, device="cuda", generator=g)).requires_grad_()
    previous = (0.1 * torch.randn(B, C, H, W, device="cuda", generator=g)).requires_grad_()
    ref_labels = torch.randint(0, L, (B, H, W), device="cuda", generator=g)
    prev_labels = torch.randint(0, L, (B, H, W), device="cuda", generator=g)
    fb = torch.tensor([-0.3], device="cuda", requires_grad=True)
    bb = torch.tensor([0.2], device="cuda", requires_grad=True)
    windows = (4, 8, 12, 16, 20, 24)

    gfg, gbg = cfbi_ops.global_match(query, reference, ref_labels, L, fb, bb)
    lfg, lbg = cfbi_ops.local_match(query, previous, prev_labels, L, fb, bb, windows=windows, atrous=2)
    loss = gfg.sum() + gbg.sum() + lfg.sum() + lbg.sum()
    loss.backward()
    torch.cuda.synchronize()
    assert gfg.shape == (B, L, H, W) and lfg.shape == (B, L, len(windows), H, W)
    for t in (gfg, gbg, lfg, lbg, query.grad, reference.grad, previous.grad, fb.grad, bb.grad):
        assert torch.isfinite(t).all()
    assert torch.count_nonzero(reference.grad) > 0 and torch.count_nonzero(previous.grad) > 0

    pixels = torch.randint(0, H * W, (48,), device="cuda", generator=g)
    pixels = torch.cat([pixels, torch.tensor([0, W - 1, (H - 1) * W, H * W - 1], device="cuda")])
    with torch.no_grad():
        expected = _brute_global(query, reference, ref_labels, L, -0.3, 0.2, pixels)
        got = gfg[0].reshape(L, -1)[:, pixels].double()
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        expected = _brute_local(query, previous, prev_labels, L, -0.3, 0.2, windows, 2, pixels)
        got = lfg[0].reshape(L, len(windows), -1)[:, :, pixels].double()
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
