"""cfbi_ops: fused matching operators of CFBI / CFBI+ (CPU and CUDA), with autograd and a reference.

    fg, bg = cfbi_ops.global_match(query, reference, ref_labels, num_labels, fg_bias, bg_bias, atrous=2)
    fg, bg = cfbi_ops.local_match(query, previous, prev_labels, num_labels, fg_bias, bg_bias,
                                  windows=(4, 8, 12, 16, 20, 24), atrous=2)

Without the compiled extension (or with ``backend="reference"`` / ``CFBI_OPS_BACKEND=reference``) the same calls
run on the plain-PyTorch implementation in ``cfbi_ops.reference``; importing warns once and says why.
"""

from . import compat, reference
from .ops import (
    BACKENDS,
    CUDA_KERNELS_ERROR,
    DEFAULT_BACKEND,
    DEFAULT_WINDOWS,
    EXTENSION_ERROR,
    HAS_CUDA_KERNELS,
    HAS_EXTENSION,
    GlobalMatchFunction,
    LocalMatchFunction,
    global_match,
    local_match,
    resolve_backend,
)

__all__ = [
    "BACKENDS",
    "CUDA_KERNELS_ERROR",
    "DEFAULT_BACKEND",
    "DEFAULT_WINDOWS",
    "EXTENSION_ERROR",
    "HAS_CUDA_KERNELS",
    "HAS_EXTENSION",
    "GlobalMatchFunction",
    "LocalMatchFunction",
    "compat",
    "global_match",
    "loaded_backends",
    "local_match",
    "reference",
    "resolve_backend",
]
__version__ = "0.1.0"


def loaded_backends() -> dict[str, str]:
    """What this installation runs on, one line each: {"torch": ..., "cpu": ..., "cuda": ...}.

    ``python -c "import cfbi_ops; print(cfbi_ops.loaded_backends())"`` checks an installed wheel.
    """
    import torch

    cpu = f"compiled ({torch.ops.cfbi.cpu_isa()})" if HAS_EXTENSION else f"reference only: {EXTENSION_ERROR}"
    return {"torch": torch.__version__, "cpu": cpu, "cuda": "compiled" if HAS_CUDA_KERNELS else str(CUDA_KERNELS_ERROR)}
