"""cfbi_ops: fused matching operators of CFBI / CFBI+ (CPU and CUDA), with autograd and a reference.

    fg, bg = cfbi_ops.global_match(query, reference, ref_labels, num_labels, fg_bias, bg_bias, atrous=2)
    fg, bg = cfbi_ops.local_match(query, previous, prev_labels, num_labels, fg_bias, bg_bias,
                                  windows=(4, 8, 12, 16, 20, 24), atrous=2)
"""
from . import compat, reference
from .ops import (
    DEFAULT_WINDOWS,
    EXTENSION_ERROR,
    HAS_EXTENSION,
    GlobalMatchFunction,
    LocalMatchFunction,
    global_match,
    local_match,
)

__all__ = [
    "DEFAULT_WINDOWS",
    "EXTENSION_ERROR",
    "HAS_EXTENSION",
    "GlobalMatchFunction",
    "LocalMatchFunction",
    "compat",
    "global_match",
    "local_match",
    "reference",
]
__version__ = "0.1.0"
