"""The SIMD CPU kernels have a build per instruction set (AVX-512, AVX2 + FMA, portable), chosen at run time or
forced with CFBI_CPU_ISA. Every build the CPU supports must agree with the reference on sizes around its tile
edges: query counts that are not multiples of the 6-query tile, label buckets that are not multiples of the 8- or
16-candidate block, rows that are not multiples of 8 or 16, L = 1, every atrous sub-grid shape; for float32 and
for float16 / bfloat16 inputs (computed in float32 by the same kernels: outputs and gradients in the input
dtype, within a rounding of the float32 result on the same values)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHECK = r"""
import itertools, torch, cfbi_ops
from cfbi_ops import reference
torch.manual_seed(0)
z = torch.zeros(1)
worst = 0.0
for (h, w, c, labels, atrous) in [(1, 1, 3, 1, 1), (5, 7, 9, 2, 2), (6, 6, 16, 3, 1), (13, 8, 8, 1, 3),
                                   (9, 17, 5, 4, 2), (16, 9, 32, 6, 4), (3, 25, 7, 2, 1)]:
    q, r, p = (0.1 * torch.randn(1, c, h, w) for _ in range(3))
    ref_labels = torch.randint(0, labels + 1, (1, h, w)); ref_labels[ref_labels == labels] = 255
    prev_labels = torch.randint(0, labels, (1, h, w))
    for fn, args, kw in [
        (cfbi_ops.global_match, (q, r, ref_labels), dict(atrous=atrous)),
        (cfbi_ops.local_match, (q, p, prev_labels), dict(windows=(1, 3, 5), atrous=atrous)),
    ]:
        got = fn(*args, labels, z, z, **kw)
        want = getattr(reference, fn.__name__)(*args, labels, z, z, **kw)
        for a, b in zip(got, want):
            worst = max(worst, (a - b).abs().max().item())
        # 16-bit inputs, through the ops: the float32 result on the same (rounded) values, rounded once more, and
        # the same argmin; the backward against the float32 backward given the same fg and argmin (rounded scores
        # can tie and move a background gradient to another label, as the outputs say).
        ops = torch.ops.cfbi
        if fn is cfbi_ops.global_match:
            op, back, extra = ops.global_match, ops.global_match_backward, (atrous, 0)
            lead = (q, r[:, None], ref_labels[:, None])
        else:
            op, back, extra = ops.local_match, ops.local_match_backward, ([1, 3, 5], atrous)
            lead = (q, p, prev_labels)
        for dtype, tol in ((torch.float16, 1e-3), (torch.bfloat16, 8e-3)):
            x, y = lead[0].to(dtype), lead[1].to(dtype)
            fg, bg, arg = op(x, y, lead[2], labels, z.to(dtype), z.to(dtype), *extra)
            want = op(x.float(), y.float(), lead[2], labels, z, z, *extra)
            assert torch.equal(arg, want[2])
            g_fg, g_bg = torch.randn(fg.shape).to(dtype), torch.randn(fg.shape).to(dtype)
            grads = back(g_fg, g_bg, fg, arg, x, y)
            wide = back(g_fg.float(), g_bg.float(), fg.float(), arg, x.float(), y.float())
            for a, b in zip([fg, bg, *grads], [want[0], want[1], *wide]):
                assert a.dtype == dtype, (a.dtype, dtype)
                err = ((a.float() - b).abs() / b.abs().clamp(min=1)).max().item() if a.numel() else 0.0
                worst = max(worst, err * 1e-5 / tol)
            leaves = [v.to(dtype).requires_grad_() for v in args[:2]]  # autograd: gradients in the input dtype
            out = fn(*leaves, args[2], labels, z.to(dtype), z.to(dtype), **kw)
            assert all(g.dtype == dtype for g in torch.autograd.grad(out[0].sum() + out[1].sum(), leaves))
print(torch.ops.cfbi.cpu_isa(), worst)
"""


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


FLAGS = _cpu_flags()
HAS_AVX2 = {"avx2", "fma"} <= FLAGS
HAS_AVX512 = {"avx512f", "avx512vl", "avx512bw", "avx512dq"} <= FLAGS


def _run(isa: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("CFBI_CPU_ISA", None)
    if isa != "default":
        env["CFBI_CPU_ISA"] = isa
    return subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True)


@pytest.mark.parametrize("isa", [
    "default",
    "portable",
    pytest.param("avx2", marks=pytest.mark.skipif(not HAS_AVX2, reason="CPU without AVX2 + FMA")),
    pytest.param("avx512", marks=pytest.mark.skipif(not HAS_AVX512, reason="CPU without AVX-512 F/VL/BW/DQ")),
])
def test_simd_builds_match_reference(isa: str) -> None:
    out = _run(isa)
    assert out.returncode == 0, out.stderr[-3000:]
    name, worst = out.stdout.strip().splitlines()[-1].split()
    expected = isa if isa != "default" else ("avx512" if HAS_AVX512 else "avx2" if HAS_AVX2 else None)
    if expected is not None:
        assert name == expected
    assert float(worst) <= 1e-5


def test_unknown_isa_is_an_error() -> None:
    out = _run("sse9")
    assert out.returncode != 0
    assert "CFBI_CPU_ISA=sse9" in out.stderr
