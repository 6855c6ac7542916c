"""Precision: the dtype of sums over whole frames, and the one autocast helper of inference and training (CUDA)."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import torch

__all__ = ["accumulation_dtype", "amp_dtype", "autocast"]


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of sums over whole frames, the loss and the output probabilities: float32 for 16-bit (and
    float32) values, float64 kept as it is (the model in float64 is the tests' oracle; never downcast)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def amp_dtype(enabled: bool) -> torch.dtype:
    """bfloat16 when mixed precision is on and the GPU supports it, else float16 (then needing a grad scaler)."""
    return torch.bfloat16 if enabled and torch.cuda.is_bf16_supported() else torch.float16


def autocast(enabled: bool, dtype: torch.dtype) -> AbstractContextManager:
    """torch.autocast on CUDA with `dtype` when enabled, else a context that does nothing."""
    if enabled:
        return torch.autocast(device_type="cuda", dtype=dtype)
    return contextlib.nullcontext()
