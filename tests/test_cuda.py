"""CUDA kernels of cfbi_ops: parity with the CPU kernels and cfbi_ops.reference (forward and gradients, every
dtype), gradcheck, opcheck, torch.compile (fullgraph and CUDA graphs), deterministic mode, edge cases and a
full-size 960x540 grid. Every test skips without a CUDA device.

The CUDA and CPU kernels compute the squared distances with the same arithmetic (matching.h, no fused
multiply-add), so for float64 and the 16-bit dtypes they select the same candidates; the float32 CPU search
uses the dot-product form, which may order two near-equal candidates differently (see
_assert_same_selection).
"""

from __future__ import annotations

import random
import zlib

import pytest
import torch
from conftest import (
    GRAD_TOL,
    TOL,
    dtype_id,
    embeddings,
    generator,
    make_global_case,
    make_local_case,
    random_labels,
    requires_cuda,
    run_global,
    run_isolated,
    weighted_loss,
)

import cfbi_ops
from cfbi_ops import reference as ref_impl

pytestmark = [pytest.mark.cuda, requires_cuda]

ALL_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
OPS = ["global_match", "global_match_backward", "local_match", "local_match_backward"]

# CUDA vs CPU kernel: outputs (the 16-bit ones may differ by one rounding of the score) and gradients.
OUT_TOL = {**TOL, torch.float16: dict(rtol=0, atol=2e-3), torch.bfloat16: dict(rtol=0, atol=1.6e-2)}
KERNEL_GRAD_TOL = {**GRAD_TOL, torch.float16: dict(rtol=2e-2, atol=2e-3), torch.bfloat16: dict(rtol=5e-2, atol=2e-2)}
# CUDA (16-bit) vs the reference run in float32 on the same rounded inputs.
REF_TOL_16 = {torch.float16: dict(rtol=0, atol=4e-3), torch.bfloat16: dict(rtol=0, atol=3e-2)}


@pytest.fixture
def deterministic_mode():
    """Yields a setter for torch.use_deterministic_algorithms and restores the mode afterwards."""
    mode = torch.are_deterministic_algorithms_enabled()
    yield torch.use_deterministic_algorithms
    torch.use_deterministic_algorithms(mode)


def _cuda(x):
    return x.detach().cuda().requires_grad_(x.requires_grad) if isinstance(x, torch.Tensor) else x


def _noncontiguous_like(t: torch.Tensor) -> torch.Tensor:
    """A non-contiguous view holding t's values, built on t's device (as conftest.noncontiguous does)."""
    wide = list(t.shape[:-1]) + [2 * t.shape[-1]]
    buf = torch.full(wide, 7, dtype=t.dtype, device=t.device)
    view = buf.transpose(-1, -2).contiguous().transpose(-1, -2)[..., ::2]
    view.copy_(t)
    return view


def _to(case, device, dtype=None):
    """A copy of a GlobalCase / LocalCase on `device` (floating tensors cast to dtype if given), keeping
    non-contiguous inputs non-contiguous."""
    fields = dict(case.__dict__)
    for key, value in fields.items():
        if isinstance(value, torch.Tensor):
            t = value.detach()
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            t = t.to(device)
            if not value.is_contiguous():
                t = _noncontiguous_like(t)
            fields[key] = t.requires_grad_(value.requires_grad)
    return type(case)(**fields)


def _leaves(case):
    return case.leaves()


def _is_global(case):
    return hasattr(case, "reference")


def _raw(case):
    """The raw op's (fg, bg, argmin) for a case, with the canonical 5-D reference."""
    if _is_global(case):
        ref, labels = case.reference, case.labels
        if ref.dim() == 4:
            ref, labels = ref.unsqueeze(1), labels.unsqueeze(1)
        return torch.ops.cfbi.global_match(
            case.query.detach(),
            ref.detach(),
            labels,
            case.num_labels,
            case.fg_bias.detach(),
            case.bg_bias.detach(),
            case.atrous,
            case.atrous_min_pixels,
        )
    return torch.ops.cfbi.local_match(
        case.query.detach(),
        case.previous.detach(),
        case.labels,
        case.num_labels,
        case.fg_bias.detach(),
        case.bg_bias.detach(),
        list(case.windows),
        case.atrous,
    )


def _run(case):
    if _is_global(case):
        return run_global(case)
    return cfbi_ops.local_match(
        case.query,
        case.previous,
        case.labels,
        case.num_labels,
        case.fg_bias,
        case.bg_bias,
        windows=case.windows,
        atrous=case.atrous,
    )


def _run_reference(case):
    if _is_global(case):
        return ref_impl.global_match(
            case.query,
            case.reference,
            case.labels,
            case.num_labels,
            case.fg_bias,
            case.bg_bias,
            atrous=case.atrous,
            atrous_min_pixels=case.atrous_min_pixels,
        )
    return ref_impl.local_match(
        case.query,
        case.previous,
        case.labels,
        case.num_labels,
        case.fg_bias,
        case.bg_bias,
        windows=case.windows,
        atrous=case.atrous,
    )


def _assert_same_selection(got, expected, dtype, max_fraction=1e-3):
    """argmin of the CUDA kernel vs the CPU kernel: identical, except a rare near-tie that a dot-product search
    (the CPU's for float32, the GPU's global kernel for every type but float64) orders differently; the scores
    still agree, which the caller checks."""
    got, expected = got.cpu(), expected.cpu()
    assert torch.equal(got < 0, expected < 0)
    if dtype != torch.float64:
        mismatch = (got != expected).double().mean().item()
        assert mismatch <= max_fraction, f"argmin differs at {mismatch:.2%} of the entries"
    else:
        assert torch.equal(got, expected)


def _forward_parity(case, dtype):
    cpu = _raw(case)
    cuda_case = _to(case, "cuda")
    got = _raw(cuda_case)
    for name, g, e in zip(("fg", "bg"), got[:2], cpu[:2]):
        assert g.device.type == "cuda" and g.dtype == dtype
        torch.testing.assert_close(g.cpu(), e, msg=lambda m, name=name: f"{name}: {m}", **OUT_TOL[dtype])
    assert got[2].dtype == torch.int32
    _assert_same_selection(got[2], cpu[2], dtype)
    # The public function against the reference (16-bit: the reference in float32 on the same inputs).
    fg, bg = _run(cuda_case)
    if dtype in (torch.float32, torch.float64):
        ref_fg, ref_bg = _run_reference(cuda_case)
        torch.testing.assert_close(fg, ref_fg, **TOL[dtype])
        torch.testing.assert_close(bg, ref_bg, **TOL[dtype])
    else:
        ref_fg, ref_bg = _run_reference(_to(cuda_case, "cuda", torch.float32))
        torch.testing.assert_close(fg.float(), ref_fg, **REF_TOL_16[dtype])
        torch.testing.assert_close(bg.float(), ref_bg, **REF_TOL_16[dtype])


def _seed(name: str) -> int:
    return zlib.crc32(name.encode()) % 1000


GLOBAL_CASES = {
    "t2_atrous2_min1": dict(B=2, C=8, H=7, W=9, T=2, Hr=8, Wr=6, L=4, atrous=2, min_pixels=1),
    "c33_l3": dict(B=1, C=33, H=11, W=13, Hr=5, Wr=7, L=3),
    "c70_atrous3_skew": dict(B=2, C=70, H=5, W=30, Hr=9, Wr=10, L=5, atrous=3, min_pixels=2, skew=0.4),
    "l1": dict(B=2, C=3, H=5, W=5, Hr=4, Wr=4, L=1, atrous=2, min_pixels=1),
    "l40_absent": dict(B=1, C=5, H=6, W=7, Hr=12, Wr=11, L=40, absent=(0, 3, 39)),
    "uint8_labels": dict(B=2, C=6, H=6, W=6, Hr=6, Wr=6, L=3, label_dtype=torch.uint8),
    "noncontiguous": dict(B=2, C=6, H=6, W=7, T=2, L=3, noncontig=True),
}

LOCAL_CASES = {
    "default_windows_atrous2": dict(B=2, C=8, H=13, W=40, L=4, windows=(4, 8, 12, 16, 20, 24), atrous=2),
    "unordered_windows": dict(B=2, C=8, H=7, W=9, L=4, windows=(24, 2, 0, 5), atrous=2),
    "c33": dict(B=1, C=33, H=10, W=37, L=3, windows=(1, 3, 2)),
    "c70": dict(B=1, C=70, H=6, W=9, L=2, windows=(3, 1)),
    "c130": dict(B=1, C=130, H=5, W=6, L=3, windows=(2,)),
    "l60_state_in_global_memory": dict(B=1, C=4, H=6, W=35, L=60, windows=(1, 2)),
    "l1": dict(B=2, C=3, H=5, W=5, L=1, windows=(1, 3)),
    "thin_frame": dict(B=1, C=4, H=1, W=17, L=3, windows=(0, 2, 30)),
    "radius_over_12_atrous2": dict(B=1, C=40, H=9, W=70, L=3, windows=(26, 4, 30, 0), atrous=2),
    "radius_capped_over_12": dict(B=2, C=5, H=6, W=40, L=19, windows=(60, 13, 1)),
    "noncontiguous": dict(B=2, C=6, H=6, W=7, L=3, windows=(2, 1), noncontig=True),
}


@pytest.mark.parametrize("name", OPS)
def test_cuda_kernel_registered(name):
    assert cfbi_ops.HAS_EXTENSION, cfbi_ops.EXTENSION_ERROR
    assert "CUDA" in torch._C._dispatch_dump(f"cfbi::{name}")


@pytest.mark.parametrize("name", list(GLOBAL_CASES))
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=dtype_id)
def test_global_forward_parity(name, dtype):
    case = make_global_case(dtype=dtype, requires_grad=False, seed=_seed(name), **GLOBAL_CASES[name])
    _forward_parity(case, dtype)


@pytest.mark.parametrize("name", list(LOCAL_CASES))
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=dtype_id)
def test_local_forward_parity(name, dtype):
    case = make_local_case(dtype=dtype, requires_grad=False, seed=_seed(name), **LOCAL_CASES[name])
    _forward_parity(case, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
def test_local_many_windows(dtype):
    """More windows than one launch's table holds, duplicates and windows larger than the frame."""
    rng = random.Random(7)
    windows = tuple(rng.randint(0, 9) for _ in range(70)) + (100, 0, 100)
    case = make_local_case(B=1, C=3, H=5, W=6, L=3, windows=windows, dtype=dtype, requires_grad=False, seed=8)
    _forward_parity(case, dtype)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=dtype_id)
def test_ties_go_to_lowest_index(dtype):
    """Integer-valued embeddings (exact in every dtype): many exact ties, all resolved to the lowest candidate
    index like the CPU, also when a label's candidates span many tiles and blocks (the second global case:
    2400 candidates for 42 queries, so the candidates are split across blocks)."""
    g = generator(9)
    fb, bb = torch.tensor([0.1], dtype=dtype), torch.tensor([-0.2], dtype=dtype)
    for q_shape, r_shape in [((2, 2, 5, 6), (2, 2, 2, 4, 5)), ((1, 3, 6, 7), (1, 2, 3, 30, 40))]:
        q = torch.randint(-1, 2, q_shape, generator=g).to(dtype)
        r = torch.randint(-1, 2, r_shape, generator=g).to(dtype)
        labels = torch.randint(0, 3, (r_shape[0], r_shape[1], r_shape[3], r_shape[4]), generator=g)
        cpu = torch.ops.cfbi.global_match(q, r, labels, 3, fb, bb, 1, 0)
        got = torch.ops.cfbi.global_match(*(_cuda(x) for x in (q, r, labels, 3, fb, bb, 1, 0)))
        assert torch.equal(got[2].cpu(), cpu[2])
    p = torch.randint(-1, 2, (2, 2, 9, 11), generator=g).to(dtype)
    q2 = torch.randint(-1, 2, (2, 2, 9, 11), generator=g).to(dtype)
    labels2 = torch.randint(0, 3, (2, 9, 11), generator=g)
    cpu = torch.ops.cfbi.local_match(q2, p, labels2, 3, fb, bb, [2, 1, 3], 1)
    got = torch.ops.cfbi.local_match(*(_cuda(x) for x in (q2, p, labels2, 3, fb, bb)), [2, 1, 3], 1)
    assert torch.equal(got[2].cpu(), cpu[2])


# --------------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------------


def _grads(case):
    fg, bg = _run(case)
    loss = weighted_loss(fg, bg)
    return torch.autograd.grad(loss, _leaves(case))


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("op", ["global", "local"])
def test_backward_parity(op, dtype, deterministic, deterministic_mode):
    if op == "global":
        case = make_global_case(B=2, C=8, H=7, W=9, T=2, Hr=8, Wr=6, L=4, atrous=2, min_pixels=1, dtype=dtype, seed=11)
    else:
        case = make_local_case(B=2, C=8, H=9, W=11, L=4, windows=(4, 1, 2), atrous=1, dtype=dtype, seed=12)
    deterministic_mode(deterministic)
    expected = _grads(case)
    cuda_case = _to(case, "cuda")
    got = _grads(cuda_case)
    names = ["query", "candidates", "fg_bias", "bg_bias"]
    for name, g, e in zip(names, got, expected):
        assert g.device.type == "cuda" and g.shape == e.shape
        assert torch.count_nonzero(e) > 0, f"test case gives no gradient to {name}"
        torch.testing.assert_close(g.cpu(), e, msg=lambda m, name=name: f"grad {name}: {m}", **KERNEL_GRAD_TOL[dtype])
    if dtype in (torch.float32, torch.float64):
        leaves = _leaves(cuda_case)
        fg, bg = _run_reference(cuda_case)
        ref = torch.autograd.grad(weighted_loss(fg, bg), leaves)
        for name, g, e in zip(names, got, ref):
            torch.testing.assert_close(
                g, e, msg=lambda m, name=name: f"grad {name} vs reference: {m}", **GRAD_TOL[dtype]
            )


GRADCHECK_CASES = {
    "global_L3": dict(B=1, C=3, H=4, W=5, L=3, atrous=1),
    "global_T2_atrous2_minpx": dict(B=2, C=2, H=4, W=3, T=2, Hr=5, Wr=4, L=4, atrous=2, min_pixels=1, absent=(3,)),
    "global_L1": dict(B=1, C=3, H=3, W=4, Hr=4, Wr=4, L=1),
    "local_L3": dict(B=1, C=3, H=4, W=5, L=3, windows=(1, 2)),
    "local_atrous2_unsorted": dict(B=2, C=2, H=5, W=4, L=4, windows=(3, 0, 1), atrous=2, absent=(2,)),
    "local_L1": dict(B=1, C=2, H=4, W=4, L=1, windows=(24,)),
}


@pytest.mark.parametrize("name", list(GRADCHECK_CASES))
def test_gradcheck_float64(name):
    params = GRADCHECK_CASES[name]
    if name.startswith("global"):
        case = _to(make_global_case(dtype=torch.float64, seed=12, **params), "cuda")

        def fn(q, r, fb, bb):
            return cfbi_ops.global_match(q, r, case.labels, case.num_labels, fb, bb, **case.kwargs())
    else:
        case = _to(make_local_case(dtype=torch.float64, seed=13, **params), "cuda")

        def fn(q, p, fb, bb):
            return cfbi_ops.local_match(q, p, case.labels, case.num_labels, fb, bb, **case.kwargs())

    assert torch.autograd.gradcheck(fn, tuple(_leaves(case)), eps=1e-6, atol=1e-6, rtol=1e-4)


# --------------------------------------------------------------------------------------------------
# opcheck, torch.compile
# --------------------------------------------------------------------------------------------------


def _channels_last(x):
    if x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


def _op_args(op, dtype, layout, requires_grad=True):
    g = generator(50)
    shape = (2, 4, 5, 6)
    lay = _channels_last if layout == "channels_last" else (lambda x: x.contiguous())
    query = lay(embeddings(shape, dtype, g)).cuda().requires_grad_(requires_grad)
    fb = torch.full((1,), -0.3, dtype=dtype, device="cuda", requires_grad=requires_grad)
    bb = torch.full((1,), 0.2, dtype=dtype, device="cuda", requires_grad=requires_grad)
    if op.startswith("global"):
        reference = lay(embeddings((2, 2, 4, 6, 5), dtype, g)).cuda().requires_grad_(requires_grad)
        labels = random_labels((2, 2, 6, 5), 4, g).cuda()
        args = (query, reference, labels, 4, fb, bb, 2, 1)
        forward = torch.ops.cfbi.global_match
    else:
        previous = lay(embeddings(shape, dtype, g)).cuda().requires_grad_(requires_grad)
        labels = random_labels((2, 5, 6), 4, g).cuda()
        args = (query, previous, labels, 4, fb, bb, [5, 1, 0, 3], 2)
        forward = torch.ops.cfbi.local_match
    if not op.endswith("backward"):
        return args
    detached = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    fg, _, argmin = forward(*detached)
    grad_fg = torch.randn(fg.shape, generator=g, dtype=torch.float64).to(fg.dtype).cuda()
    grad_bg = torch.randn(fg.shape, generator=g, dtype=torch.float64).to(fg.dtype).cuda()
    return (grad_fg, grad_bg, fg, argmin, detached[0], detached[1], detached[4], detached[5])  # + fg / bg bias


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
@pytest.mark.parametrize("op", OPS)
def test_opcheck(op, dtype, layout):
    torch.library.opcheck(getattr(torch.ops.cfbi, op).default, _op_args(op, dtype, layout))


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
# Determinism, streams, devices, layouts
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("op", ["global", "local"])
def test_deterministic_mode_bit_identical(op, dtype, deterministic_mode):
    deterministic_mode(True)
    if op == "global":
        case = make_global_case(B=2, C=16, H=12, W=13, T=2, Hr=10, Wr=9, L=5, dtype=dtype, seed=20)
    else:
        case = make_local_case(B=2, C=16, H=12, W=13, L=5, windows=(4, 8, 2), dtype=dtype, seed=21)
    case = _to(case, "cuda")
    runs = []
    for _ in range(3):
        fg, bg = _run(case)
        runs.append((fg.detach(), bg.detach(), *torch.autograd.grad(weighted_loss(fg, bg), _leaves(case))))
    for later in runs[1:]:
        for a, b in zip(runs[0], later):
            assert torch.equal(a, b)
    # The atomic path agrees up to rounding.
    deterministic_mode(False)
    fg, bg = _run(case)
    atomic = torch.autograd.grad(weighted_loss(fg, bg), _leaves(case))
    for a, b in zip(runs[0][2:], atomic):
        torch.testing.assert_close(a, b, **KERNEL_GRAD_TOL[dtype])


def test_side_stream_and_bias_dtypes():
    """Runs on the current (non-default) stream; biases of another dtype and shape are accepted."""
    case = _to(make_global_case(B=2, C=6, H=6, W=7, T=2, L=3, dtype=torch.float32, seed=22), "cuda")
    expected = _run(case)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fb = case.fg_bias.detach().double().reshape(1, 1, 1)
        bb = case.bg_bias.detach().double().reshape(1, 1, 1)
        got = cfbi_ops.global_match(case.query, case.reference, case.labels, case.num_labels, fb, bb, **case.kwargs())
    torch.cuda.current_stream().wait_stream(stream)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_second_device():
    case = make_local_case(B=1, C=6, H=8, W=9, L=3, windows=(2, 4), dtype=torch.float32, seed=23)
    expected = _run(_to(case, "cuda:0"))
    got = _run(_to(case, "cuda:1"))
    for g, e in zip(got, expected):
        assert g.device == torch.device("cuda:1")
        torch.testing.assert_close(g.cpu(), e.cpu())


def test_raw_op_edge_cases():
    """Empty batch / frame / candidate sets / channels behave like the CPU kernels."""
    fb, bb = torch.tensor([0.1]), torch.tensor([-0.2])
    g = generator(24)
    global_cases = [
        (torch.randn(0, 3, 4, 4), torch.randn(0, 1, 3, 2, 2), torch.zeros(0, 1, 2, 2, dtype=torch.long)),
        (torch.randn(1, 3, 0, 4), torch.randn(1, 1, 3, 2, 2), torch.zeros(1, 1, 2, 2, dtype=torch.long)),
        (torch.randn(1, 3, 4, 4), torch.randn(1, 1, 3, 0, 2), torch.zeros(1, 1, 0, 2, dtype=torch.long)),
        (torch.randn(2, 0, 4, 4), torch.randn(2, 1, 0, 3, 2), torch.randint(0, 3, (2, 1, 3, 2), generator=g)),
    ]
    for q, r, labels in global_cases:
        cpu = torch.ops.cfbi.global_match(q, r, labels, 3, fb, bb, 2, 1)
        got = torch.ops.cfbi.global_match(q.cuda(), r.cuda(), labels.cuda(), 3, fb.cuda(), bb.cuda(), 2, 1)
        for a, b in zip(got, cpu):
            assert a.shape == b.shape
            torch.testing.assert_close(a.cpu(), b)
        grads = torch.ops.cfbi.global_match_backward(
            got[0], got[0], got[0], got[2], q.cuda(), r.cuda(), fb.cuda(), bb.cuda()
        )
        expected = torch.ops.cfbi.global_match_backward(cpu[0], cpu[0], cpu[0], cpu[2], q, r, fb, bb)
        assert [x.shape for x in grads] == [q.shape, r.shape, (1,), (1,)]
        for a, b in zip(grads, expected):  # zero, except the bias gradients with C = 0
            torch.testing.assert_close(a.cpu(), b)
    local_cases = [
        (torch.randn(0, 3, 4, 4), torch.zeros(0, 4, 4, dtype=torch.long)),
        (torch.randn(1, 3, 0, 4), torch.zeros(1, 0, 4, dtype=torch.long)),
        (torch.randn(2, 0, 4, 5), torch.randint(0, 3, (2, 4, 5), generator=g)),
    ]
    for q, labels in local_cases:
        cpu = torch.ops.cfbi.local_match(q, q, labels, 3, fb, bb, [1, 2], 1)
        got = torch.ops.cfbi.local_match(q.cuda(), q.cuda(), labels.cuda(), 3, fb.cuda(), bb.cuda(), [1, 2], 1)
        for a, b in zip(got, cpu):
            assert a.shape == b.shape
            torch.testing.assert_close(a.cpu(), b)
        grads = torch.ops.cfbi.local_match_backward(
            got[0], got[0], got[0], got[2], q.cuda(), q.cuda(), fb.cuda(), bb.cuda()
        )
        expected = torch.ops.cfbi.local_match_backward(cpu[0], cpu[0], cpu[0], cpu[2], q, q, fb, bb)
        assert [x.shape for x in grads] == [q.shape, q.shape, (1,), (1,)]
        for a, b in zip(grads, expected):
            torch.testing.assert_close(a.cpu(), b)


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
