"""The CUDA kernels' logic on the CPU: tools/cuda_emulation compiles csrc/cuda/*.cu with g++ (threads, shared
memory, atomics, wmma and cub emulated) and compares every kernel variant with the CPU kernels. On machines
without a GPU this is the only run the CUDA sources get (besides the harness's cuda-emulation backend); the CUDA
tests on a device stay the reference."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="needs a C++ compiler")
def test_cuda_kernels_match_cpu_kernels_under_emulation() -> None:
    env = dict(os.environ, MAX_JOBS=os.environ.get("MAX_JOBS", "2"))
    run = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "cuda_emulation" / "run.py")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    summary = re.search(r"(\d+) checks, (\d+) failures", run.stdout)
    failures = "\n".join(line for line in run.stdout.splitlines() if line.startswith("FAIL"))
    assert run.returncode == 0 and summary is not None, run.stdout[-3000:] + run.stderr[-3000:]
    assert int(summary.group(2)) == 0, failures
    assert int(summary.group(1)) > 1000  # every case ran
