"""The float32 CPU kernels have a SIMD build per instruction set (AVX2 + FMA where the CPU has it, and a
portable one). Both must agree with the reference on sizes around their tile edges: query counts that are not
multiples of the 6-query tile, label buckets that are not multiples of the 8-candidate block, rows that are
not multiples of 8, L = 1, every atrous sub-grid shape."""
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
print(torch.ops.cfbi.cpu_isa(), worst)
"""


@pytest.mark.parametrize("isa", ["default", "portable"])
def test_simd_builds_match_reference(isa: str) -> None:
    env = dict(os.environ)
    if isa == "portable":
        env["CFBI_CPU_ISA"] = "portable"
    out = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, check=True)
    name, worst = out.stdout.strip().splitlines()[-1].split()
    if isa == "portable":
        assert name == "portable"
    assert float(worst) <= 1e-5
