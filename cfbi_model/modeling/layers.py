"""Small building blocks shared by the network's parts: frozen batch norm and the GCT gate."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .precision import accumulation_dtype

__all__ = ["FrozenBatchNorm2d", "GCT"]


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine parameters (the backbone's BN is frozen [official]).

    All four tensors are buffers, in the state-dict order weight, bias, running_mean, running_var, and there
    is no num_batches_tracked entry, as in the released checkpoints.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1).to(x.dtype) + shift.reshape(1, -1, 1, 1).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


class GCT(nn.Module):
    """Gated channel transformation, l2 mode (Yang et al., CVPR 2020), as the authors use it.

    s_c  = alpha_c * sqrt(sum_{h,w} x_c^2 + eps)
    n_c  = gamma_c * s_c / sqrt(mean_c(s_c^2) + eps)
    out  = x * (1 + tanh(n_c + beta_c))
    """

    def __init__(self, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, num_channels, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, num_channels, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, num_channels, 1, 1))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        # The gate's statistics sum over the whole frame: in float32 for 16-bit x (float16 overflows at 65504),
        # as given for float32 / float64; the gate then scales x in x's dtype.
        stats = x.to(accumulation_dtype(x.dtype))
        strength = (stats.pow(2).sum(dim=(2, 3), keepdim=True) + self.eps).sqrt() * self.alpha
        scale = self.gamma / (strength.pow(2).mean(dim=1, keepdim=True) + self.eps).sqrt()
        return x * (1.0 + torch.tanh(strength * scale + self.beta)).to(x.dtype)
