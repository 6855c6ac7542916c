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
    DEFAULT_BACKEND,
    DEFAULT_WINDOWS,
    EXTENSION_ERROR,
    HAS_EXTENSION,
    GlobalMatchFunction,
    LocalMatchFunction,
    global_match,
    local_match,
    resolve_backend,
)

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "DEFAULT_WINDOWS",
    "EXTENSION_ERROR",
    "HAS_EXTENSION",
    "GlobalMatchFunction",
    "LocalMatchFunction",
    "compat",
    "global_match",
    "local_match",
    "reference",
    "resolve_backend",
]
__version__ = "0.1.0"
