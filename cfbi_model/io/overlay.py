"""Drawing label maps over frames."""

from __future__ import annotations

import numpy as np

from .masks import default_palette

__all__ = ["colorize", "overlay"]


def colorize(labels: np.ndarray, palette: list[int] | None) -> np.ndarray:
    """RGB uint8 [H, W, 3] of labels [H, W] through a palette (default: the DAVIS one)."""
    table = np.asarray((palette or default_palette()) + [0] * 768, dtype=np.uint8)[:768].reshape(256, 3)
    return table[np.asarray(labels, dtype=np.uint8)]


def overlay(image: np.ndarray, labels: np.ndarray, palette: list[int] | None, alpha: float = 0.5) -> np.ndarray:
    """Blend the coloured labels [H, W] over the RGB frame [H, W, 3] (background left untouched)."""
    colours = colorize(labels, palette).astype(np.float32)
    blend = image.astype(np.float32) * (1 - alpha) + colours * alpha
    out = np.where((np.asarray(labels) > 0)[:, :, None], blend, image.astype(np.float32))
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
