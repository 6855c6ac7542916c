"""The DeepLabV3+ feature extractor of CFBI+: ResNet trunk at output stride 16, ASPP and decoder.

State-dict names follow the authors' `feature_extracter.{backbone,aspp,decoder}.*`. Every batch norm is
frozen (`FrozenBatchNorm2d`) [official: MODEL_FREEZE_BN].
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import BackboneConfig
from .layers import FrozenBatchNorm2d

__all__ = ["ResNet", "ASPP", "Decoder", "DeepLabFeatures", "FeatureExtractor"]


def _conv_init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)


class Bottleneck(nn.Module):
    """ResNet bottleneck (stride on the 3x3 convolution), frozen BN."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = FrozenBatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = FrozenBatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = FrozenBatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convolutions), frozen BN; used by the small configuration."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = FrozenBatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = FrozenBatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ResNet(nn.Module):
    """ResNet at output stride 16: strides (1, 2, 2, 1), layer4 dilated by 2 with a multi-grid unit."""

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        block = Bottleneck if config.block == "bottleneck" else BasicBlock
        self.conv1 = nn.Conv2d(3, config.stem_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = FrozenBatchNorm2d(config.stem_width)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self._inplanes = config.stem_width
        w = config.widths
        self.layer1 = self._make_layer(block, w[0], [1] * config.layers[0], stride=1)
        self.layer2 = self._make_layer(block, w[1], [1] * config.layers[1], stride=2)
        self.layer3 = self._make_layer(block, w[2], [1] * config.layers[2], stride=2)
        self.layer4 = self._make_layer(block, w[3], [2 * g for g in config.multi_grid], stride=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan))

    def _make_layer(self, block: type[nn.Module], planes: int, dilations: list[int], stride: int) -> nn.Sequential:
        out = planes * block.expansion
        downsample = None
        if stride != 1 or self._inplanes != out:
            downsample = nn.Sequential(
                nn.Conv2d(self._inplanes, out, 1, stride=stride, bias=False), FrozenBatchNorm2d(out)
            )
        blocks = [block(self._inplanes, planes, stride, dilations[0], downsample)]
        self._inplanes = out
        blocks += [block(out, planes, 1, d) for d in dilations[1:]]
        return nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Returns (layer4 output at 16x, layer1 output at 4x, layer2 output at 8x)."""
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        low = self.layer1(x)
        mid = self.layer2(low)
        out = self.layer4(self.layer3(mid))
        return out, low, mid


class _ASPPBranch(nn.Module):
    def __init__(self, inplanes: int, planes: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        padding = 0 if kernel_size == 1 else dilation
        self.atrous_conv = nn.Conv2d(inplanes, planes, kernel_size, padding=padding, dilation=dilation, bias=False)
        self.bn = FrozenBatchNorm2d(planes)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.atrous_conv(x)))


class ASPP(nn.Module):
    """DeepLabV3 ASPP: 1x1, three dilated 3x3 and an image-pooling branch, fused by a 1x1 convolution."""

    def __init__(self, inplanes: int, planes: int, dilations: tuple[int, int, int] = (6, 12, 18)) -> None:
        super().__init__()
        self.aspp1 = _ASPPBranch(inplanes, planes, 1, 1)
        self.aspp2 = _ASPPBranch(inplanes, planes, 3, dilations[0])
        self.aspp3 = _ASPPBranch(inplanes, planes, 3, dilations[1])
        self.aspp4 = _ASPPBranch(inplanes, planes, 3, dilations[2])
        self.global_avg_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(inplanes, planes, 1, bias=False), FrozenBatchNorm2d(planes), nn.ReLU()
        )
        self.conv1 = nn.Conv2d(5 * planes, planes, 1, bias=False)
        self.bn1 = FrozenBatchNorm2d(planes)
        self.dropout = nn.Dropout(0.1)
        _conv_init(self)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.global_avg_pool(x)
        pooled = F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=True)
        x = torch.cat([self.aspp1(x), self.aspp2(x), self.aspp3(x), self.aspp4(x), pooled], dim=1)
        return self.dropout(F.relu(self.bn1(self.conv1(x))))


class Decoder(nn.Module):
    """DeepLabV3+ decoder: reduce layer1 to `low_dim`, upsample the ASPP output bilinearly
    (align_corners=True) to 4x, concatenate, two 3x3 conv + BN + ReLU."""

    def __init__(self, low_level_inplanes: int, aspp_dim: int, low_dim: int = 48, out_dim: int = 256) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(low_level_inplanes, low_dim, 1, bias=False)
        self.bn1 = FrozenBatchNorm2d(low_dim)
        # Indices 0..7 as in the authors' Sequential (3 and 7 were empty placeholders there).
        self.last_conv = nn.Sequential(
            nn.Conv2d(aspp_dim + low_dim, out_dim, 3, padding=1, bias=False),
            FrozenBatchNorm2d(out_dim),
            nn.ReLU(),
            nn.Identity(),
            nn.Conv2d(out_dim, out_dim, 3, padding=1, bias=False),
            FrozenBatchNorm2d(out_dim),
            nn.ReLU(),
            nn.Identity(),
        )
        _conv_init(self)

    def forward(self, x: Tensor, low_level: Tensor) -> Tensor:
        low_level = F.relu(self.bn1(self.conv1(low_level)))
        x = F.interpolate(x, size=low_level.shape[-2:], mode="bilinear", align_corners=True)
        return self.last_conv(torch.cat([x, low_level], dim=1))


class DeepLabFeatures(NamedTuple):
    decoder: Tensor  # 4x, decoder_dim channels
    aspp: Tensor  # 16x, aspp_dim channels
    low_level: Tensor  # 4x, backbone layer1
    mid_level: Tensor  # 8x, backbone layer2


class FeatureExtractor(nn.Module):
    """DeepLabV3+ (`feature_extracter` in the authors' state dict)."""

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        self.backbone = ResNet(config)
        self.aspp = ASPP(config.out_dim, config.aspp_dim, config.aspp_dilations)
        self.decoder = Decoder(config.low_level_dim, config.aspp_dim, config.decoder_low_dim, config.decoder_dim)

    def forward(self, images: Tensor) -> DeepLabFeatures:
        x, low, mid = self.backbone(images)
        aspp = self.aspp(x)
        return DeepLabFeatures(self.decoder(aspp, low), aspp, low, mid)
