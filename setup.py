"""Build of the cfbi_ops extensions: cfbi_ops._C (op schemas and CPU kernels) and cfbi_ops._C_cuda (CUDA kernels,
when a toolkit is available). Both use only the LibTorch stable ABI (TORCH_TARGET_VERSION 2.10) and the limited
Python API, so one build loads on every torch >= 2.10 and every CPython >= 3.10 (abi3 wheels).

Switches (environment):
  FORCE_CUDA=1            build the CUDA kernels even where no GPU is visible; FORCE_CUDA=0 never builds them.
                          Unset: built when nvcc is found and torch is a CUDA build.
  TORCH_CUDA_ARCH_LIST    GPU architectures; default "7.5;8.0;8.6;8.9;9.0+PTX" when no GPU can be queried.
  MAX_JOBS                parallel compile jobs (read by torch's ninja build).
  CUDA_HOME               toolkit root; derived from the real nvcc binary when unset.
  CFBI_LOCAL_VERSION      a local version label for the wheel (scripts/build_wheels.sh sets e.g. "cu13").
"""

import glob
import os
import re
import shutil

from setuptools import find_packages, setup

DEFAULT_ARCH_LIST = "7.5;8.0;8.6;8.9;9.0+PTX"


def _toolkit_root_from_nvcc() -> str | None:
    """The toolkit root of the nvcc on PATH, looking through wrapper scripts that exec the real one."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    nvcc = os.path.realpath(nvcc)
    try:
        with open(nvcc, "rb") as f:
            head = f.read(4096)
        if head.startswith(b"#!"):
            found = re.search(rb"(/\S+/bin/nvcc)\b", head)
            if found:
                nvcc = os.path.realpath(found.group(1).decode())
    except OSError:
        pass
    root = os.path.dirname(os.path.dirname(nvcc))
    return root if os.path.exists(os.path.join(root, "include", "cuda_runtime.h")) else None


# torch.utils.cpp_extension reads CUDA_HOME when it is imported: set it first.
if not os.environ.get("CUDA_HOME"):
    _root = _toolkit_root_from_nvcc()
    if _root:
        os.environ["CUDA_HOME"] = _root

import torch  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _want_cuda() -> bool:
    force = os.environ.get("FORCE_CUDA")
    if force is not None:
        return force == "1"
    return CUDA_HOME is not None and torch.version.cuda is not None


# The oldest torch the libraries must load on: the stable ABI headers then offer only what 2.10 has.
TORCH_TARGET = ("TORCH_TARGET_VERSION", "0x020a000000000000")


def _extensions():
    # Hidden visibility: the stable ABI's types are hidden, and only PyInit_* (PyMODINIT_FUNC) is exported.
    cxx_flags = ["-O3", "-fvisibility=hidden", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-psabi"]
    include_dirs = [os.path.abspath("csrc")]
    cpu = CppExtension(
        name="cfbi_ops._C",
        sources=["csrc/ops.cpp", "csrc/python_module.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp")),
        include_dirs=include_dirs,
        define_macros=[TORCH_TARGET],
        extra_compile_args={"cxx": cxx_flags},
        py_limited_api=True,
    )
    if not _want_cuda():
        return [cpu]
    if CUDA_HOME is None:
        raise RuntimeError("FORCE_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME or put nvcc on PATH")
    if not torch.cuda.is_available() and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST
    nvcc_flags = ["-O3", "-lineinfo", "--expt-relaxed-constexpr", "-Xcompiler", "-fvisibility=hidden"]
    cuda = CUDAExtension(
        name="cfbi_ops._C_cuda",
        sources=["csrc/python_module_cuda.cpp"]
        + sorted(glob.glob("csrc/cuda/*.cpp"))
        + sorted(glob.glob("csrc/cuda/*.cu")),
        include_dirs=include_dirs,
        define_macros=[TORCH_TARGET],
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
        py_limited_api=True,
    )
    return [cpu, cuda]


def _version() -> str:
    local = os.environ.get("CFBI_LOCAL_VERSION", "")
    return "0.1.0" + (f"+{local}" if local else "")


setup(
    version=_version(),
    packages=find_packages(include=["cfbi_ops", "cfbi_ops.*", "cfbi_model", "cfbi_model.*"]),
    ext_modules=_extensions(),
    cmdclass={"build_ext": BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
