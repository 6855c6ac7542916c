"""Mixed precision: the one autocast helper of inference and training (CUDA only)."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import torch

__all__ = ["amp_dtype", "autocast"]


def amp_dtype(enabled: bool) -> torch.dtype:
    """bfloat16 when mixed precision is on and the GPU supports it, else float16 (then needing a grad scaler)."""
    return torch.bfloat16 if enabled and torch.cuda.is_bf16_supported() else torch.float16


def autocast(enabled: bool, dtype: torch.dtype) -> AbstractContextManager:
    """torch.autocast on CUDA with `dtype` when enabled, else a context that does nothing."""
    if enabled:
        return torch.autocast(device_type="cuda", dtype=dtype)
    return contextlib.nullcontext()
