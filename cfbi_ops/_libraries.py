"""The CUDA kernels of cfbi_ops: a library of their own (cfbi_ops._C_cuda), beside cfbi_ops._C (op schemas and CPU
kernels), so that a CPU-only torch still loads the CPU kernels.

Both libraries use only the LibTorch stable ABI of torch 2.10, so one build serves every later torch. The CUDA
library needs the CUDA runtime of the major version it was built for (the one torch ships: see README, "Install").
Where it cannot be loaded, CUDA calls of the compiled ops raise a RuntimeError that says why in one line.
"""

from __future__ import annotations

import importlib

import torch

_fallback_library = None  # keeps the one-line CUDA error kernels registered


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def load_cuda_kernels(has_cpu_library: bool) -> tuple[bool, str | None]:
    """Loads cfbi_ops._C_cuda where torch is a CUDA build. Returns (loaded, why not)."""
    if not has_cpu_library:
        return False, "the library cfbi_ops._C (schemas and CPU kernels) is not loaded"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is a build without CUDA"
    try:
        importlib.import_module("cfbi_ops._C_cuda")
        return True, None
    except ImportError as error:
        reason = _first_line(error)
        if "No module named" in reason:
            reason = "this build of cfbi_ops has no CUDA kernels (built without a CUDA toolkit)"
        runtime = f"torch {torch.__version__}, CUDA {torch.version.cuda}"
        reason = f"cfbi_ops: the CUDA kernels are not loaded: {reason} ({runtime})"
        _register_cuda_error(reason)
        return False, reason


def _register_cuda_error(reason: str) -> None:
    """CUDA kernels for the cfbi:: ops that raise `reason` (else the dispatcher's page-long 'could not run')."""
    global _fallback_library

    def fail(*args, **kwargs):
        raise RuntimeError(reason)

    _fallback_library = torch.library.Library("cfbi", "IMPL")
    for name in ("global_match", "global_match_backward", "local_match", "local_match_backward"):
        _fallback_library.impl(name, fail, "CUDA")
