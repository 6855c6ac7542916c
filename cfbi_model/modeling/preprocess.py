"""The network's input format: RGB uint8 frames to normalised BGR tensors, and back for pictures."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "preprocess", "to_rgb"]

# The authors feed BGR frames (cv2.imread) normalised with the RGB ImageNet statistics, channel by channel
# in that (mismatched) order [official]; docs/design.md, "Reproduced behaviours".
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def preprocess(image: np.ndarray | Tensor, device: torch.device | str | None = None) -> Tensor:
    """RGB uint8 image [H, W, 3] -> the network's input [3, H, W] float32: BGR channel order normalised with
    the RGB ImageNet mean / std in that order [official: cv2.imread + MultiToTensor]."""
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.ascontiguousarray(image))
    if not isinstance(image, Tensor):
        raise TypeError(f"image must be a numpy array or a torch.Tensor, got {type(image).__name__}")
    if image.dim() != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be an RGB array [H, W, 3], got shape {tuple(image.shape)}")
    if image.dtype != torch.uint8:
        raise ValueError(f"image must be uint8 (use normalized=True for float input), got {image.dtype}")
    x = image.to(device).permute(2, 0, 1).flip(0).float() / 255.0  # RGB -> BGR, [3, H, W]
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).reshape(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).reshape(3, 1, 1)
    return (x - mean) / std


def to_rgb(x: Tensor) -> np.ndarray:
    """Inverse of preprocess for display: network input [3, H, W] -> RGB uint8 [H, W, 3] (on the CPU)."""
    mean = torch.tensor(IMAGENET_MEAN).reshape(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).reshape(3, 1, 1)
    bgr = x.float().cpu() * std + mean
    return (bgr.flip(0).permute(1, 2, 0).clamp(0, 1) * 255).byte().numpy()
