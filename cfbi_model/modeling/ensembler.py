"""The multi-scale collaborative ensembler of CFBI+ (`dynamic_seghead` in the authors' state dict).

Labels form the batch dimension. Every block is preceded by an instance-level attention gate (IAGate) fed
with the 4x attention vector. Stage 1 works at 4x on the 4x matching input; stage 2 downsamples to 8x and
concatenates the 8x input; stage 3 downsamples to 16x and concatenates the 16x input; then an ASPP, a decoder
back to 4x (bicubic, align_corners=True) with a skip from cat(backbone layer1, stage-1 output), and per-label
dynamic 1x1 convolutions for the foreground and background logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import HeadConfig
from .attention import IAGate
from .layers import GCT

__all__ = ["GCTBottleneck", "EnsemblerASPP", "CollaborativeEnsembler"]


class GCTBottleneck(nn.Module):
    """Bottleneck with a GCT gate in front and GroupNorm after each convolution (planes = out_dim / 4).

    The shortcut (1x1 conv + GroupNorm when the shape changes) takes the un-gated input.
    """

    def __init__(self, in_dim: int, out_dim: int, stride: int = 1, dilation: int = 1, groups: int = 32) -> None:
        super().__init__()
        planes = out_dim // 4
        self.GCT1 = GCT(in_dim)
        self.conv1 = nn.Conv2d(in_dim, planes, 1, bias=False)
        self.bn1 = nn.GroupNorm(groups, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.GroupNorm(groups, planes)
        self.conv3 = nn.Conv2d(planes, out_dim, 1, bias=False)
        self.bn3 = nn.GroupNorm(groups, out_dim)
        self.downsample = None
        if stride != 1 or in_dim != out_dim:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_dim, out_dim, 1, stride=stride, bias=False), nn.GroupNorm(groups, out_dim)
            )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(self.GCT1(x))))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class _GCTASPPBranch(nn.Module):
    def __init__(self, in_dim: int, planes: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.GCT = GCT(in_dim)
        padding = 0 if kernel_size == 1 else dilation
        self.atrous_conv = nn.Conv2d(in_dim, planes, kernel_size, padding=padding, dilation=dilation, bias=False)
        self.bn = nn.GroupNorm(planes // 4, planes)
        nn.init.kaiming_normal_(self.atrous_conv.weight)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.atrous_conv(self.GCT(x))))


class EnsemblerASPP(nn.Module):
    """ASPP of the ensembler: GCT-gated branches with GroupNorm (image pooling: conv + ReLU, no norm),
    then GCT + 1x1 fuse + GroupNorm + ReLU."""

    def __init__(
        self, in_dim: int, planes: int, out_dim: int, dilations: tuple[int, int, int] = (6, 12, 18), groups: int = 32
    ) -> None:
        super().__init__()
        self.aspp1 = _GCTASPPBranch(in_dim, planes, 1, 1)
        self.aspp2 = _GCTASPPBranch(in_dim, planes, 3, dilations[0])
        self.aspp3 = _GCTASPPBranch(in_dim, planes, 3, dilations[1])
        self.aspp4 = _GCTASPPBranch(in_dim, planes, 3, dilations[2])
        self.global_avg_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_dim, planes, 1, bias=False), nn.ReLU()
        )
        self.GCT = GCT(5 * planes)
        self.conv1 = nn.Conv2d(5 * planes, out_dim, 1, bias=False)
        self.bn1 = nn.GroupNorm(groups, out_dim)
        nn.init.kaiming_normal_(self.global_avg_pool[1].weight)
        nn.init.kaiming_normal_(self.conv1.weight)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.global_avg_pool(x)
        pooled = F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=True)
        x = torch.cat([self.aspp1(x), self.aspp2(x), self.aspp3(x), self.aspp4(x), pooled], dim=1)
        return F.relu(self.bn1(self.conv1(self.GCT(x))))


class CollaborativeEnsembler(nn.Module):
    """CFBI+'s multi-scale collaborative ensembler.

    forward(inputs, head, low_level) with inputs = (x_4x [L, C4, h, w], x_8x [L, C8, h/2, w/2],
    x_16x [L, C16, h/4, w/4]), head = the 4x attention vectors [L, A] and low_level = backbone layer1 of the
    current frame [1, C1, h, w]; returns logits [L, h, w] (label 0 augmented with the objects' bg logits).
    """

    def __init__(
        self,
        in_dim_4x: int,
        in_dim_8x: int,
        in_dim_16x: int,
        attention_dim: int,
        low_level_dim: int,
        config: HeadConfig,
    ) -> None:
        super().__init__()
        d, g, a = config.embed_dim, config.gn_groups, attention_dim
        # Stage 1 (4x).
        self.S1_IA1 = IAGate(a, in_dim_4x)
        self.S1_layer1 = GCTBottleneck(in_dim_4x, d, groups=g)
        self.S1_IA2 = IAGate(a, d)
        self.S1_layer2 = GCTBottleneck(d, d, 1, 2, groups=g)
        # Stage 2 (8x).
        self.S2_IA1 = IAGate(a, d)
        self.S2_layer1 = GCTBottleneck(d, 2 * d, 2, groups=g)
        self.S2_IA2 = IAGate(a, 2 * d + in_dim_8x)
        self.S2_layer2 = GCTBottleneck(2 * d + in_dim_8x, 2 * d, 1, 2, groups=g)
        self.S2_IA3 = IAGate(a, 2 * d)
        self.S2_layer3 = GCTBottleneck(2 * d, 2 * d, 1, 4, groups=g)
        # Stage 3 (16x).
        self.S3_IA1 = IAGate(a, 2 * d)
        self.S3_layer1 = GCTBottleneck(2 * d, 2 * d, 2, groups=g)
        self.S3_IA2 = IAGate(a, 2 * d + in_dim_16x)
        self.S3_layer2 = GCTBottleneck(2 * d + in_dim_16x, 2 * d, 1, 2, groups=g)
        self.S3_IA3 = IAGate(a, 2 * d)
        self.S3_layer3 = GCTBottleneck(2 * d, 2 * d, 1, 4, groups=g)
        # ASPP.
        self.ASPP_IA = IAGate(a, 2 * d)
        self.ASPP = EnsemblerASPP(2 * d, config.aspp_dim, d, config.aspp_dilations, groups=g)
        # Decoder.
        r = config.refine_dim
        self.GCT_sc = GCT(low_level_dim + d)
        self.conv_sc = nn.Conv2d(low_level_dim + d, r, 1, bias=False)
        self.bn_sc = nn.GroupNorm(r // 4, r)
        self.IA10 = IAGate(a, d + r)
        self.conv1 = nn.Conv2d(d + r, d // 2, 3, padding=1, bias=False)
        self.bn1 = nn.GroupNorm(g, d // 2)
        self.IA11 = IAGate(a, d // 2)
        self.conv2 = nn.Conv2d(d // 2, d // 2, 3, padding=1, bias=False)
        self.bn2 = nn.GroupNorm(g, d // 2)
        # Output: per-label dynamic 1x1 convolutions (d/2 weights + 1 bias each).
        self.IA_final_fg = nn.Linear(a, d // 2 + 1)
        self.IA_final_bg = nn.Linear(a, d // 2 + 1)
        for conv in (self.conv_sc, self.conv1, self.conv2):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, inputs: tuple[Tensor, Tensor, Tensor], head: Tensor, low_level: Tensor) -> Tensor:
        x_4x, x_8x, x_16x = inputs
        x = self.S1_layer1(self.S1_IA1(x_4x, head))
        x = self.S1_layer2(self.S1_IA2(x, head))
        skip = torch.cat([low_level.expand(x.shape[0], -1, -1, -1), x], dim=1)

        x = self.S2_layer1(self.S2_IA1(x, head))
        x = self.S2_layer2(self.S2_IA2(torch.cat([x, x_8x], dim=1), head))
        x = self.S2_layer3(self.S2_IA3(x, head))

        x = self.S3_layer1(self.S3_IA1(x, head))
        x = self.S3_layer2(self.S3_IA2(torch.cat([x, x_16x], dim=1), head))
        x = self.S3_layer3(self.S3_IA3(x, head))

        x = self.ASPP(self.ASPP_IA(x, head))
        x = self._decode(x, skip, head)

        fg = self._dynamic_logit(x, head, self.IA_final_fg)
        bg = self._dynamic_logit(x, head, self.IA_final_bg)
        return self._augment_background(fg, bg)

    def _decode(self, x: Tensor, skip: Tensor, head: Tensor) -> Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bicubic", align_corners=True)
        skip = F.relu(self.bn_sc(self.conv_sc(self.GCT_sc(skip))))
        x = F.relu(self.bn1(self.conv1(self.IA10(torch.cat([x, skip], dim=1), head))))
        return F.relu(self.bn2(self.conv2(self.IA11(x, head))))

    @staticmethod
    def _dynamic_logit(x: Tensor, head: Tensor, linear: nn.Linear) -> Tensor:
        """Per-label 1x1 convolution whose weights and bias come from the attention vector: [L, h, w]."""
        params = linear(head)  # [L, C + 1]
        channels = x.shape[1]
        weight, bias = params[:, :channels], params[:, -1]
        return torch.einsum("lchw,lc->lhw", x, weight.to(x.dtype)) + bias.to(x.dtype)[:, None, None]

    @staticmethod
    def _augment_background(fg: Tensor, bg: Tensor) -> Tensor:
        """Label 0's logit += min over the objects of their background logits (when there are objects)."""
        if fg.shape[0] == 1:
            return fg
        extra = bg[1:].min(dim=0).values
        return torch.cat([fg[:1] + extra, fg[1:]], dim=0)
