"""The two compiled libraries: cfbi_ops._C (schemas, CPU kernels) and cfbi_ops._C_cuda (CUDA kernels), loaded where
torch has CUDA. When the CUDA library cannot load, the CPU kernels still work and CUDA calls say why in one line."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import REPO_ROOT, requires_extension

import cfbi_ops


@requires_extension
def test_loaded_backends_says_what_runs():
    info = cfbi_ops.loaded_backends()
    assert info["torch"] == torch.__version__
    assert info["cpu"] == f"compiled ({torch.ops.cfbi.cpu_isa()})"
    if cfbi_ops.HAS_CUDA_KERNELS:
        assert info["cuda"] == "compiled" and cfbi_ops.CUDA_KERNELS_ERROR is None
    else:
        assert info["cuda"] == cfbi_ops.CUDA_KERNELS_ERROR and "\n" not in info["cuda"]
    if torch.version.cuda is None:
        assert not cfbi_ops.HAS_CUDA_KERNELS and "without CUDA" in info["cuda"]


@requires_extension
@pytest.mark.skipif(torch.version.cuda is None, reason="torch without CUDA never loads the CUDA library")
def test_unloadable_cuda_library_leaves_cpu_kernels_and_one_line_error():
    code = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "cfbi_ops._C_cuda":
                    raise ImportError("libcudart.so.99: cannot open shared object file\\nsecond line")
        sys.meta_path.insert(0, Block())
        import torch, cfbi_ops
        assert cfbi_ops.HAS_EXTENSION and not cfbi_ops.HAS_CUDA_KERNELS
        message = cfbi_ops.CUDA_KERNELS_ERROR
        assert "\\n" not in message and "libcudart.so.99" in message and "second line" not in message, message
        # The CPU kernels run; the CUDA dispatch entry is the one-line error.
        q = torch.randn(1, 2, 3, 3)
        cfbi_ops.global_match(q, q, torch.zeros(1, 3, 3, dtype=torch.long), 2, 0.0, 0.0, backend="compiled")
        dump = torch._C._dispatch_dump("cfbi::global_match")
        assert any(line.startswith("CUDA") for line in dump.splitlines()), dump
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
