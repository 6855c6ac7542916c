"""Model configurations of CFBI+ as dataclasses.

`get_config("resnet101")` is the released network (DESIGN section 3, the authors' configs/resnet101_cfbip.py);
its state dict matches spec/cfbip_r101_state_dict.txt name for name and shape for shape.
`get_config("small")` is a narrow ResNet-18-like variant with the same structure, for tests and CPU use.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

__all__ = ["BackboneConfig", "HeadConfig", "ModelConfig", "CONFIGS", "get_config", "config_names"]


@dataclass(frozen=True)
class BackboneConfig:
    """DeepLabV3+ feature extractor: ResNet trunk (output stride 16), ASPP and decoder.

    Attributes:
        block: "bottleneck" (ResNet-50/101, expansion 4) or "basic" (ResNet-18/34, expansion 1).
        layers: blocks in layer1..layer3; layer4 has one block per entry of `multi_grid`.
        widths: planes of layer1..layer4 (the block output is planes * expansion).
        stem_width: channels of the 7x7 stem convolution.
        multi_grid: layer4 dilation multipliers (each times 2 at output stride 16).
        aspp_dim: channels of each ASPP branch and of the ASPP output.
        aspp_dilations: dilations of the three 3x3 ASPP branches.
        decoder_low_dim: channels the decoder reduces the layer1 feature to.
        decoder_dim: channels of the decoder output (the 4x input of the FPN).
    """

    block: str = "bottleneck"
    layers: tuple[int, int, int] = (3, 4, 23)
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    stem_width: int = 64
    multi_grid: tuple[int, ...] = (1, 2, 4)
    aspp_dim: int = 256
    aspp_dilations: tuple[int, int, int] = (6, 12, 18)
    decoder_low_dim: int = 48
    decoder_dim: int = 256

    @property
    def expansion(self) -> int:
        return 4 if self.block == "bottleneck" else 1

    @property
    def low_level_dim(self) -> int:
        """Channels of layer1's output (4x)."""
        return self.widths[0] * self.expansion

    @property
    def mid_level_dim(self) -> int:
        """Channels of layer2's output (8x)."""
        return self.widths[1] * self.expansion

    @property
    def out_dim(self) -> int:
        """Channels of layer4's output (16x), the ASPP input."""
        return self.widths[3] * self.expansion


@dataclass(frozen=True)
class HeadConfig:
    """Collaborative ensembler widths (the authors' MODEL_HEAD_EMBEDDING_DIM, MODEL_REFINE_CHANNELS).

    Attributes:
        embed_dim: stage-1 width (stages 2 and 3 use twice that; the ASPP fuses back to embed_dim).
        refine_dim: channels of the decoder skip (GroupNorm with refine_dim // 4 groups).
        aspp_dim: channels of each ensembler ASPP branch (GroupNorm with aspp_dim // 4 groups).
        aspp_dilations: dilations of the three 3x3 ensembler ASPP branches.
        gn_groups: GroupNorm groups of the bottlenecks, the ASPP fuse and the decoder convolutions.
    """

    embed_dim: int = 256
    refine_dim: int = 64
    aspp_dim: int = 128
    aspp_dilations: tuple[int, int, int] = (6, 12, 18)
    gn_groups: int = 32


@dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes the CFBI+ network's structure and its matching settings.

    Attributes:
        name: configuration name.
        backbone: the DeepLabV3+ feature extractor.
        head: the collaborative ensembler.
        embedding_dim: FPN output channels (the pixel embedding, 256 in the paper).
        fpn_gn_groups: GroupNorm groups of the FPN.
        matching_dims: leading embedding channels used for matching at 4x / 8x / 16x.
        global_atrous: global-matching atrous rate per scale (training; inference may override the 4x one).
        local_windows: local-matching window sizes per scale, ascending. The ensembler gets the largest
            window first, then the others in list order (the authors' channel order).
        local_atrous: local-matching atrous rate per scale.
        epsilon: added to the pixel counts of the instance-level attention pooling.
        atrous_attention_quirk: [official] where the 4x global matching subsamples a label atrously through
            the authors' label-masking path (always in training; at inference when min_matching_pixels > 0),
            pool the 4x reference attention over that subsampled label map too. The released weights were
            trained so. False pools over the full label maps.
    """

    name: str = "resnet101"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    embedding_dim: int = 256
    fpn_gn_groups: int = 32
    matching_dims: tuple[int, int, int] = (32, 64, 128)
    global_atrous: tuple[int, int, int] = (2, 1, 1)
    local_windows: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] = (
        (4, 8, 12, 16, 20, 24),
        (2, 4, 6, 8, 10, 12),
        (2, 4, 6, 8, 10),
    )
    local_atrous: tuple[int, int, int] = (2, 1, 1)
    epsilon: float = 1e-5
    atrous_attention_quirk: bool = True

    def __post_init__(self) -> None:
        if self.backbone.block not in ("bottleneck", "basic"):
            raise ValueError(f"backbone.block must be 'bottleneck' or 'basic', got {self.backbone.block!r}")
        if len(self.matching_dims) != 3 or len(self.global_atrous) != 3 or len(self.local_atrous) != 3 \
                or len(self.local_windows) != 3:
            raise ValueError("matching_dims, global_atrous, local_windows and local_atrous need one entry per "
                             "scale (4x, 8x, 16x)")
        for dim in self.matching_dims:
            if not 0 < dim <= self.embedding_dim:
                raise ValueError(f"matching_dims must lie in [1, embedding_dim={self.embedding_dim}], "
                                 f"got {self.matching_dims}")
        for windows in self.local_windows:
            if len(windows) == 0 or list(windows) != sorted(windows):
                raise ValueError(f"local_windows must be non-empty and ascending, got {self.local_windows}")

    @property
    def attention_dim(self) -> int:
        """Length of the instance-level attention vector: 4 pooled embeddings."""
        return 4 * self.embedding_dim

    def ensembler_in_dims(self) -> tuple[int, int, int]:
        """Channels of the per-label ensembler input at 4x / 8x / 16x: 3 embeddings + global fg/bg +
        previous mask + 2 K local maps (783 / 783 / 781 for resnet101)."""
        return tuple(3 * self.embedding_dim + 3 + 2 * len(w) for w in self.local_windows)  # type: ignore

    def local_window_order(self, scale: int) -> tuple[int, ...]:
        """Windows in the ensembler's channel order: the largest (last) first, then the rest in list order."""
        windows = self.local_windows[scale]
        return (windows[-1],) + tuple(windows[:-1])


def _resnet101() -> ModelConfig:
    return ModelConfig()


def _small() -> ModelConfig:
    return ModelConfig(
        name="small",
        backbone=BackboneConfig(block="basic", layers=(1, 1, 1), widths=(16, 32, 64, 128), stem_width=16,
                                multi_grid=(1,), aspp_dim=32, decoder_low_dim=8, decoder_dim=32),
        head=HeadConfig(embed_dim=64, refine_dim=16, aspp_dim=32, gn_groups=4),
        embedding_dim=32,
        fpn_gn_groups=8,
        matching_dims=(8, 16, 32),
    )


CONFIGS = {"resnet101": _resnet101, "small": _small}


def config_names() -> list[str]:
    return sorted(CONFIGS)


def get_config(name: str = "resnet101", **overrides) -> ModelConfig:
    """A named configuration ("resnet101", the released one, or "small"), with optional field overrides."""
    if name not in CONFIGS:
        raise ValueError(f"unknown model configuration {name!r}; known: {', '.join(config_names())}")
    config = CONFIGS[name]()
    return replace(config, **overrides) if overrides else config
