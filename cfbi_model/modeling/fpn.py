"""The FPN of CFBI+: pixel embeddings at 4x, 8x and 16x.

Inputs: the DeepLab decoder output (4x), backbone layer2 (8x) and the ASPP output (16x). Lateral 1x1 conv +
GroupNorm to `out_dim`, top-down bilinear (align_corners=True) upsample-and-add, a 3x3 conv + GroupNorm
"smooth" on 8x and 4x, and ReLU on all three outputs.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FPN"]


def _conv_gn(in_dim: int, out_dim: int, kernel_size: int, groups: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_dim, out_dim, kernel_size, padding=kernel_size // 2, bias=False), nn.GroupNorm(groups, out_dim)
    )


class FPN(nn.Module):
    def __init__(self, in_dim_4x: int, in_dim_8x: int, in_dim_16x: int, out_dim: int = 256, groups: int = 32) -> None:
        super().__init__()
        self.toplayer = _conv_gn(in_dim_16x, out_dim, 1, groups)
        self.latlayer1 = _conv_gn(in_dim_8x, out_dim, 1, groups)
        self.latlayer2 = _conv_gn(in_dim_4x, out_dim, 1, groups)
        self.smooth1 = _conv_gn(out_dim, out_dim, 3, groups)
        self.smooth2 = _conv_gn(out_dim, out_dim, 3, groups)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x_4x: Tensor, x_8x: Tensor, x_16x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        top = self.toplayer(x_16x)
        mid = self.latlayer1(x_8x) + F.interpolate(top, size=x_8x.shape[-2:], mode="bilinear", align_corners=True)
        low = self.latlayer2(x_4x) + F.interpolate(mid, size=x_4x.shape[-2:], mode="bilinear", align_corners=True)
        return F.relu(self.smooth2(low)), F.relu(self.smooth1(mid)), F.relu(top)
