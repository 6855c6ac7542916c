"""Choosing the SIMD build of the CPU kernels (AVX-512, AVX2 + FMA, portable): the widest one the CPU supports
unless CFBI_CPU_ISA forces one, and an error for a name that is not a build. Each build's results are checked
by the op harness (tests/test_ops_harness.py, the backends cpu-<isa>)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from test_ops_harness import best_isa

import cfbi_ops

pytestmark = pytest.mark.skipif(not cfbi_ops.HAS_EXTENSION, reason="needs the compiled extension")


def _isa_of_child(isa: str | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("CFBI_CPU_ISA", None)
    if isa is not None:
        env["CFBI_CPU_ISA"] = isa
    code = "import torch, cfbi_ops; print(torch.ops.cfbi.cpu_isa())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


def test_default_isa_is_the_widest_the_cpu_supports() -> None:
    out = _isa_of_child(None)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == best_isa()


def test_unknown_isa_is_an_error() -> None:
    out = _isa_of_child("sse9")
    assert out.returncode != 0
    assert "CFBI_CPU_ISA=sse9" in out.stderr
