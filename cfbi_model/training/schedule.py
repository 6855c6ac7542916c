"""The learning-rate schedule: linear warm-up, then poly decay."""

from __future__ import annotations

__all__ = ["learning_rate_factor"]


def learning_rate_factor(step: int, total: int, warmup: int, power: float, base_lr: float, min_lr: float) -> float:
    """lr(step) / base_lr: linear warm-up, then poly decay [the authors' adjust_learning_rate], floored."""
    if step < warmup:
        lr = base_lr * (step + 1) / warmup
    else:
        lr = base_lr * (1.0 - (step - warmup) / float(max(1, total - warmup) + 1)) ** power
    return max(lr, min_lr) / base_lr
