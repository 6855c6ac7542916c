"""The training loss: bootstrapped (hard-pixel-mining) cross-entropy and its schedule."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import IGNORE_LABEL
from ..modeling.precision import accumulation_dtype

__all__ = ["bootstrapped_cross_entropy", "top_k_fraction"]


def top_k_fraction(step: int, final: float, mining_steps: int) -> float:
    """Fraction of pixels the bootstrapped loss keeps at `step`: 1 falling linearly to `final`."""
    if mining_steps <= 0:
        return final
    ratio = min(1.0, step / float(mining_steps))
    return ratio * final + (1.0 - ratio)


def bootstrapped_cross_entropy(
    logits: Tensor, target: Tensor, fraction: float, ignore_index: int = IGNORE_LABEL
) -> Tensor:
    """Mean cross-entropy of the hardest `fraction` of the non-ignored pixels.

    logits [L, H, W] (or [B, L, H, W]), target [H, W] (or [B, H, W]) int64. Computed in float32 for 16-bit
    logits, in float64 for float64 ones."""
    if logits.dim() == 3:
        logits, target = logits.unsqueeze(0), target.unsqueeze(0)
    logits = logits.to(accumulation_dtype(logits.dtype))
    losses = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")
    valid = losses[target != ignore_index]
    if valid.numel() == 0:
        return logits.sum() * 0.0
    if fraction >= 1.0:
        return valid.mean()
    k = max(1, int(fraction * valid.numel()))
    return torch.topk(valid, k, sorted=False).values.mean()
