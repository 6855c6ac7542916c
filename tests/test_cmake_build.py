"""The CMake build for C++ users: configure, build (CPU kernels) and run examples/cpp/match_example,
whose results must equal the Python op on the same random inputs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cfbi_ops
from tests.test_stable_abi import forbidden_imports

ROOT = Path(__file__).resolve().parents[1]
CMAKE = shutil.which("cmake", path=str(Path(sys.executable).parent)) or shutil.which("cmake")


@pytest.mark.skipif(CMAKE is None, reason="cmake not installed")
def test_cmake_build_runs_example(tmp_path: Path) -> None:
    site_packages = Path(torch.__file__).resolve().parents[1]
    configure = [
        CMAKE,
        "-S",
        str(ROOT),
        "-B",
        str(tmp_path),
        "-DCFBI_WITH_CUDA=OFF",
        f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
    ]
    if torch.version.cuda is not None:  # Torch's CMake config of a CUDA build looks for these.
        nvrtc = site_packages / "nvidia" / "cu13" / "lib" / "libnvrtc.so.13"
        toolkit = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
        configure += [f"-DCUDA_TOOLKIT_ROOT_DIR={toolkit}", f"-DCUDA_nvrtc_LIBRARY={nvrtc}"]
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        TORCH_CUDA_ARCH_LIST=os.environ.get("TORCH_CUDA_ARCH_LIST", "8.0"),
    )
    subprocess.run(configure, check=True, env=env, capture_output=True)
    subprocess.run([CMAKE, "--build", str(tmp_path), "-j", "2"], check=True, env=env, capture_output=True)
    out = subprocess.run([str(tmp_path / "match_example")], check=True, capture_output=True, text=True).stdout
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
    library = tmp_path / "libcfbi_ops.so"
    if shutil.which("nm") and shutil.which("c++filt"):
        assert forbidden_imports(library) == []
