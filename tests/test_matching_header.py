"""Direct tests of csrc/matching.h arithmetic that only the CUDA kernels use (the rest runs in the CPU kernels):
a plain C++ program built against the header alone."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CXX = shutil.which("g++") or shutil.which("c++")


@pytest.mark.skipif(CXX is None, reason="needs a C++ compiler")
@pytest.mark.parametrize(
    "program",
    [
        "selection_key_test",  # selection_key orders like the tie rule
        "selection_bound_test",  # the rounding bound of the float32 selection holds (issue 21)
    ],
)
def test_matching_header(tmp_path: Path, program: str) -> None:
    binary = tmp_path / program
    subprocess.run(
        [
            CXX,
            "-std=c++17",
            "-O1",
            "-Wall",
            "-Wextra",
            "-Werror",
            f"-I{ROOT / 'csrc'}",
            str(ROOT / "tests" / "cpp" / f"{program}.cpp"),
            "-o",
            str(binary),
        ],
        check=True,
    )
    run = subprocess.run([str(binary)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout
    assert " 0 failures" in run.stdout
