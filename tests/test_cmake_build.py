"""The CMake build for C++ users: configure, build (CPU kernels) and run examples/cpp/match_example,
whose results must equal the Python op on the same random inputs."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import cfbi_ops
from tests.test_stable_abi import forbidden_imports


def test_cmake_build_runs_example(cmake_build: Path) -> None:
    out = subprocess.run([str(cmake_build / "match_example")], check=True, capture_output=True, text=True).stdout
    sums = [float(x) for x in re.findall(r"sum (\S+)", out)]

    torch.manual_seed(0)  # the example draws its inputs the same way
    query = torch.randn(1, 32, 30, 40) * 0.1
    reference = torch.randn(1, 1, 32, 30, 40) * 0.1
    labels = torch.randint(0, 3, (1, 1, 30, 40))
    zero = torch.zeros(1)
    fg, _ = cfbi_ops.global_match(query, reference, labels, 3, zero, zero, atrous=2)
    local_fg, _ = cfbi_ops.local_match(
        query, reference[:, 0], labels[:, 0], 3, zero, zero, windows=(4, 8, 12), atrous=2
    )
    assert "global fg [1, 3, 30, 40]" in out and "local fg [1, 3, 3, 30, 40]" in out
    assert sums == pytest.approx([fg.sum().item(), local_fg.sum().item()], rel=1e-5)
    # The library is stable ABI too: no C++ symbol of libtorch imported.
    library = cmake_build / "libcfbi_ops.so"
    if shutil.which("nm") and shutil.which("c++filt"):
        assert forbidden_imports(library) == []
