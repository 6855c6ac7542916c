"""Precision: the dtype of sums over whole frames, the compute dtype of inference (InferenceConfig.precision),
and the one autocast helper of inference and training."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import torch

__all__ = ["accumulation_dtype", "amp_dtype", "autocast", "compute_dtype"]


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of sums over whole frames, the loss and the output probabilities: float32 for 16-bit (and
    float32) values, float64 kept as it is (the model in float64 is the tests' oracle; never downcast)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def amp_dtype(enabled: bool) -> torch.dtype:
    """bfloat16 when mixed precision is on and the GPU supports it, else float16 (then needing a grad scaler)."""
    return torch.bfloat16 if enabled and torch.cuda.is_bf16_supported() else torch.float16


def autocast(enabled: bool, dtype: torch.dtype, device_type: str = "cuda") -> AbstractContextManager:
    """torch.autocast on `device_type` with `dtype` when enabled, else a context that does nothing."""
    if enabled:
        return torch.autocast(device_type=device_type, dtype=dtype)
    return contextlib.nullcontext()


def compute_dtype(precision: str, device: torch.device, amp: bool = False) -> torch.dtype | None:
    """The autocast dtype of inference for InferenceConfig.precision on `device` (None: none, the model's dtype).

    auto: bfloat16 where the hardware computes it natively (CPUs with AMX or AVX-512-BF16, GPUs with bf16),
    else None. amp (the older CUDA-only switch) counts as auto on CUDA when precision is float32."""
    from ..runtime import cpu_flags  # noqa: PLC0415

    if precision == "float32":
        return amp_dtype(True) if amp and device.type == "cuda" else None
    if precision != "auto":
        return getattr(torch, precision)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if {"amx_bf16", "avx512_bf16"} & cpu_flags() else None
