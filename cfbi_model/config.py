"""Every setting of cfbi_model and its one default: the network (ModelConfig), inference (InferenceConfig),
training (TrainConfig) and clip sampling (ClipConfig).

`get_config("resnet101")` is the released network (docs/design.md, "The model"; the authors'
configs/resnet101_cfbip.py); its state dict matches tests/data/cfbip_r101_state_dict.txt name for name and
shape for shape. `get_config("small")` is a narrow ResNet-18-like variant with the same structure, for tests
and CPU use.

This module imports neither torch nor numpy, so that the command line's argument parsing stays light.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = [
    "IGNORE_LABEL",
    "BackboneConfig",
    "HeadConfig",
    "ModelConfig",
    "CONFIGS",
    "get_config",
    "config_names",
    "InferenceConfig",
    "ExportBounds",
    "ClipConfig",
    "TrainConfig",
    "config_differences",
]

IGNORE_LABEL = 255
"""Label value of pixels that belong to no object and are not scored (padding, void regions)."""


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
        if (
            len(self.matching_dims) != 3
            or len(self.global_atrous) != 3
            or len(self.local_atrous) != 3
            or len(self.local_windows) != 3
        ):
            raise ValueError(
                "matching_dims, global_atrous, local_windows and local_atrous need one entry per scale (4x, 8x, 16x)"
            )
        for dim in self.matching_dims:
            if not 0 < dim <= self.embedding_dim:
                raise ValueError(
                    f"matching_dims must lie in [1, embedding_dim={self.embedding_dim}], got {self.matching_dims}"
                )
        for windows in self.local_windows:
            if len(windows) == 0 or list(windows) != sorted(windows):
                raise ValueError(f"local_windows must be non-empty and ascending, got {self.local_windows}")

    @property
    def attention_dim(self) -> int:
        """Length of the instance-level attention vector: 4 pooled embeddings."""
        return 4 * self.embedding_dim

    def to_dict(self) -> dict[str, Any]:
        """The whole configuration as plain Python values (what a checkpoint stores under "model_config")."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Inverse of to_dict (lists are accepted wherever tuples are expected); ValueError on unknown keys."""
        return _from_dict(cls, data)

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
        backbone=BackboneConfig(
            block="basic",
            layers=(1, 1, 1),
            widths=(16, 32, 64, 128),
            stem_width=16,
            multi_grid=(1,),
            aspp_dim=32,
            decoder_low_dim=8,
            decoder_dim=32,
        ),
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


def config_differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Fields where two configurations of the same dataclass differ, as "name: a != b" lines."""
    out = []
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if dataclasses.is_dataclass(x) and dataclasses.is_dataclass(y):
            out += config_differences(x, y, f"{prefix}{f.name}.")
        elif x != y:
            out.append(f"{prefix}{f.name}: {x!r} != {y!r}")
    return out


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def _from_dict(cls: type, data: Mapping[str, Any]) -> Any:
    """A (nested) frozen config dataclass from plain values."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{cls.__name__}: expected a dict, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}")
    values = {}
    for key, value in data.items():
        kind = hints[key]
        nested = dataclasses.is_dataclass(kind) and not isinstance(value, kind)
        values[key] = _from_dict(kind, value) if nested else _tuples(value)
    return cls(**values)


# --------------------------------------------------------------------------------------------------- inference
def _help(text: str) -> dict[str, str]:
    return {"help": text}


MAX_SCALE = 4.0  # an input scale beyond this multiplies the frame's pixels (and memory) by more than 16
SINGLE_SCALE_LONG_EDGE = 1040  # the authors' single-scale TEST_MAX_SIZE (800 * 1.3)
MULTI_SCALE_LONG_EDGE = 800


@dataclass(frozen=True)
class InferenceConfig:
    """How a model segments a video; the one default of the Python API, `cfbi segment`, `cfbi demo`,
    `cfbi evaluate --checkpoint` and the validation of `cfbi train`.

    min_matching_pixels defaults to 0 (every object subsampled by the 4x global-matching atrous rate, and the
    reference attention pooled over the full label maps). That is how the networks trained here are trained
    (training subsamples every object: the clip sampler's objects are never exempt) and what the shipped
    small checkpoint is validated with. The authors' released evaluation uses 100 (their
    TEST_GLOBAL_MATCHING_MIN_PIXEL), which also switches on their attention quirk (see
    ModelConfig.atrous_attention_quirk): pass 100 to reproduce their numbers with the released weights.
    """

    global_atrous: int = field(
        default=2, metadata=_help("atrous rate of the 4x global matching (the authors' released evaluation uses 2)")
    )
    min_matching_pixels: int = field(
        default=0,
        metadata=_help(
            "with --global-atrous > 1, objects with at most this many pixels (times atrous^2) in a reference frame "
            "keep all their pixels; 0 subsamples every object, 100 is the authors' released evaluation setting "
            "(docs/design.md)"
        ),
    )
    scales: tuple[float, ...] = field(
        default=(1.0,),
        metadata=_help(
            "input scales whose probabilities are averaged (the authors' multi-scale evaluation: 1.0 1.15 1.3)"
        ),
    )
    flip: bool = field(default=False, metadata=_help("also average horizontally flipped views"))
    amp: bool = field(
        default=False,
        metadata=_help(
            "autocast on CUDA (bfloat16 where supported, else float16); ignored with a warning on the CPU (the older "
            "form of --precision, which takes precedence when not float32)"
        ),
    )
    precision: str = field(
        default="float32",
        metadata={
            **_help(
                "float32; bfloat16 or float16 (the network under autocast, channels-last on the CPU; sums over frames, "
                "the softmax and the output stay float32); auto: bfloat16 on CPUs with AMX or AVX-512-BF16 and on "
                "GPUs with bf16, else float32"
            ),
            "choices": ("float32", "bfloat16", "float16", "auto"),
        },
    )
    compile: bool = field(
        default=False,
        metadata=_help(
            "torch.compile the per-frame work (with freezing on the CPU), once per model and process: later videos "
            "reuse it; the first new frame sizes recompile parts with dynamic shapes, later sizes reuse them"
        ),
    )
    max_long_edge: float | None = field(
        default=None,
        metadata=_help(
            "cap of a frame's long edge before scaling (None: 1040, the authors' single-scale TEST_MAX_SIZE, for "
            "scales == (1.0,), else 800)"
        ),
    )

    @property
    def long_edge_cap(self) -> float:
        """The cap of a frame's long edge before scaling: max_long_edge, else 1040 (the authors' single-scale
        TEST_MAX_SIZE, 800 * 1.3) for scales == (1.0,) and 800 with several scales."""
        if self.max_long_edge is not None:
            return self.max_long_edge
        return SINGLE_SCALE_LONG_EDGE if self.scales == (1.0,) else MULTI_SCALE_LONG_EDGE

    def __post_init__(self) -> None:
        if int(self.global_atrous) < 1:
            raise ValueError(f"global_atrous must be >= 1, got {self.global_atrous}")
        if int(self.min_matching_pixels) < 0:
            raise ValueError(f"min_matching_pixels must be >= 0, got {self.min_matching_pixels}")
        scales = tuple(float(s) for s in self.scales)
        if not scales or any(not math.isfinite(s) or not 0 < s <= MAX_SCALE for s in scales):
            raise ValueError(f"scales must be a non-empty sequence of numbers in (0, {MAX_SCALE}], got {scales}")
        if self.max_long_edge is not None and not (math.isfinite(self.max_long_edge) and self.max_long_edge >= 17):
            raise ValueError(f"max_long_edge must be a number >= 17 (or None), got {self.max_long_edge}")
        object.__setattr__(self, "global_atrous", int(self.global_atrous))
        object.__setattr__(self, "min_matching_pixels", int(self.min_matching_pixels))
        object.__setattr__(self, "scales", scales)
        object.__setattr__(self, "flip", bool(self.flip))
        object.__setattr__(self, "amp", bool(self.amp))
        object.__setattr__(self, "compile", bool(self.compile))
        choices = self.__dataclass_fields__["precision"].metadata["choices"]
        if self.precision not in choices:
            raise ValueError(f"precision must be one of {', '.join(choices)}, got {self.precision!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------------- export
# Network sizes are 16k + 1; k = 2 (33 px) is the smallest the exported packages take.
MIN_GRID_STEPS = 2


@dataclass(frozen=True)
class ExportBounds:
    """The ranges of the dynamic sizes of the packages of `cfbi export` (cfbi_model.inference.export); the hosts
    check them.

    Attributes:
        max_side: longest frame side in pixels (frames are resized inside the encode package).
        max_network_side: longest side of the network input (16k + 1; 1041 holds the default long-edge cap 1040).
        max_objects: objects per video.
        max_references: reference frames (the first annotated frame and each later annotated one).
    """

    max_side: int = field(default=4096, metadata={"help": "longest frame side (pixels)", "minimum": 1})
    max_network_side: int = field(
        default=1041, metadata={"help": "longest side of the network input (16k + 1, at least 33)", "minimum": 1}
    )
    max_objects: int = field(default=16, metadata={"help": "objects per video", "minimum": 1})
    max_references: int = field(
        default=16, metadata={"help": "reference frames (the annotated ones) per video", "minimum": 1}
    )

    def __post_init__(self) -> None:
        smallest = 16 * MIN_GRID_STEPS + 1
        if self.max_network_side < smallest or (self.max_network_side - 1) % 16:
            raise ValueError(f"max_network_side must be 16k + 1 and at least {smallest}, got {self.max_network_side}")
        if self.max_side < 17:
            raise ValueError(f"max_side must be at least 17, got {self.max_side}")
        if self.max_objects < 1 or self.max_references < 1:
            raise ValueError(f"max_objects and max_references must be at least 1, got {self}")


# ---------------------------------------------------------------------------------------------------- training
def _option(text: str, **spelling: Any) -> dict[str, Any]:
    """Metadata of a TrainConfig / ClipConfig field: its help, and how `cfbi train` spells its flag where that is
    not the plain --field-name with the field's type (cfbi_model.cli._options.add_config_arguments): flag
    (another name), metavar, choices, minimum (an int at least this), zero_is_none (0 gives None) and square
    (one number n gives (n, n))."""
    return {"help": text, **spelling}


@dataclass(frozen=True)
class ClipConfig:
    """Clip sampling and augmentation.

    Attributes:
        num_current: current frames per clip (the authors' TRAIN_CURR_SEQ_LEN = 3).
        max_gap: largest gap between consecutive sampled frames (previous -> current -> current ...).
        reverse_probability: chance of playing the video backwards.
        crop_size: (height, width) of the crop; multiples of 16 plus 1 keep the feature grids aligned.
        scale_range: random scale of every frame of a clip.
        short_edge: frames are first resized so that their short edge is this many pixels (the authors' 480
            for DAVIS and YouTube-VOS), then scaled; None: scale the original size.
        min_object_pixels: the reference crop must hold an object larger than this (balanced crop).
        crop_retries: crops tried before taking the one with the largest object.
        max_objects: objects kept per clip (the rest become background).
        flip_probability: chance of a horizontal flip.
        clip_retries: clips drawn (video, frames, crop) until the reference crop holds an object.
    """

    num_current: int = field(default=3, metadata=_option("current frames per clip (N)", minimum=1))
    max_gap: int = field(default=3, metadata=_option("largest gap between consecutive sampled frames"))
    reverse_probability: float = field(default=0.5, metadata=_option("chance of playing a video backwards"))
    crop_size: tuple[int, int] = field(
        default=(465, 465), metadata=_option("square crop size (16k + 1)", flag="crop", square=True, minimum=1)
    )
    scale_range: tuple[float, float] = field(
        default=(1.0, 1.3), metadata=_option("random scale of a clip", metavar=("MIN", "MAX"))
    )
    short_edge: int | None = field(
        default=480,
        metadata=_option(
            "resize frames to this short edge before the random scale (0: keep the size)", zero_is_none=True
        ),
    )
    min_object_pixels: int = field(
        default=100, metadata=_option("the reference crop must hold an object larger than this (balanced crop)")
    )
    crop_retries: int = field(default=20, metadata=_option("crops tried before taking the one with the largest object"))
    max_objects: int = field(default=5, metadata=_option("objects kept per clip", minimum=1))
    flip_probability: float = field(default=0.5, metadata=_option("chance of a horizontal flip"))
    clip_retries: int = field(
        default=5, metadata=_option("clips drawn (video, frames, crop) until the reference crop holds an object")
    )


TRAIN_DTYPES = ("float32", "float64")


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in every checkpoint).

    Attributes:
        model: the network's configuration; a configuration name (get_config) is accepted and looked up, as
            checkpoints written before it was a ModelConfig store it.
        steps: optimizer steps in total.
        batch_size: clips per step and process.
        lr: base learning rate; momentum, weight_decay: SGD; warmup_steps: linear warm-up from 0;
        poly_power: decay (1 - t / T) ** power after the warm-up; min_lr: floor of the learning rate.
        clip_grad_norm: gradient-norm clip (None: off).
        top_k_percent: final fraction of the hardest pixels in the bootstrapped cross-entropy.
        hard_mining_steps: steps over which that fraction falls from 1 (None: half of `steps`).
        sequential_start: step from which the previous mask is the model's own prediction (None: half).
        clip: clip sampling and augmentation.
        seed: seeds the model initialisation and the clip sampling.
        num_workers: data-loader worker processes.
        checkpoint_every, log_every, val_every: intervals in steps (0: never; a checkpoint is always written at
            the end).
        val_max_frames: frames per validation video (None: all).
        amp: autocast on CUDA (bfloat16 where supported, else float16 with a gradient scaler).
        accumulate: micro-batches of `batch_size` clips per optimizer step (gradient accumulation): the
            global batch is processes x batch_size x accumulate.
        keep_checkpoints: numbered checkpoints (checkpoint-STEP.pth) kept besides checkpoint.pth (0: none).
        youtube_ratio: fraction of the clips drawn from YouTube-VOS when it is given (DAVIS the rest).
        init: weights the run starts from (cfbi_model.training.init; None: random initialisation).
        recipe: name of the preset the run started from (cfbi_model.training.recipes; None: none).
        dtype: "float32", or "float64" for a run that serves as an exact oracle (tests comparing differently
            decomposed runs: batch against accumulation, processes, resume).

    The metadata of each field gives its `cfbi train` flag (see _option); `clip` and `recipe` have none of their
    own.
    """

    model: ModelConfig = field(
        default_factory=ModelConfig,
        metadata=_option("model configuration", flag="config", choices=tuple(sorted(CONFIGS))),
    )
    steps: int = field(default=100_000, metadata=_option("total optimizer steps", minimum=1))
    batch_size: int = field(
        default=8,
        metadata=_option(
            "clips per micro-batch and process (with a recipe: its global batch / (processes x --accumulate))",
            minimum=1,
        ),
    )
    lr: float = field(default=0.01, metadata=_option("base learning rate (given: not scaled)"))
    momentum: float = field(default=0.9, metadata=_option("SGD momentum"))
    weight_decay: float = field(default=1.5e-4, metadata=_option("SGD weight decay"))
    warmup_steps: int = field(default=1000, metadata=_option("warm-up steps", flag="warmup"))
    poly_power: float = field(default=0.9, metadata=_option("power of the poly decay after the warm-up"))
    min_lr: float = field(default=1e-5, metadata=_option("floor of the learning rate"))
    clip_grad_norm: float | None = field(
        default=5.0, metadata=_option("gradient-norm clip (0: off)", zero_is_none=True)
    )
    top_k_percent: float = field(
        default=0.15, metadata=_option("final fraction of the hardest pixels in the bootstrapped loss")
    )
    hard_mining_steps: int | None = field(
        default=None,
        metadata=_option("steps over which the bootstrapped loss goes from 100%% to --top-k-percent (None: steps / 2)"),
    )
    sequential_start: int | None = field(
        default=None,
        metadata=_option("step from which the previous mask is the model's prediction (None: steps / 2)"),
    )
    clip: ClipConfig = field(default_factory=ClipConfig)
    seed: int = field(default=0, metadata=_option("seeds the initial weights and the clips"))
    num_workers: int = field(default=2, metadata=_option("data-loader processes", flag="workers"))
    checkpoint_every: int = field(
        default=1000, metadata=_option("write the checkpoint every N steps (and at the end)", metavar="N")
    )
    log_every: int = field(default=10, metadata=_option("log every N steps", metavar="N"))
    val_every: int = field(default=0, metadata=_option("validate every N steps (0: never)", metavar="N"))
    val_max_frames: int | None = field(
        default=None, metadata=_option("frames per validation video (None: all)", metavar="N")
    )
    amp: bool = field(default=True, metadata=_option("autocast on CUDA"))
    accumulate: int = field(
        default=1,
        metadata=_option(
            "micro-batches per optimizer step (gradient accumulation; the same clips as a K-times-larger --batch-size)",
            metavar="K",
            minimum=1,
        ),
    )
    keep_checkpoints: int = field(
        default=0,
        metadata=_option("also keep the last N checkpoints as checkpoint-STEP.pth", flag="keep", metavar="N"),
    )
    youtube_ratio: float = field(
        default=0.5,
        metadata=_option("fraction of the clips drawn from YouTube-VOS when --data-youtube is given"),
    )
    init: str | None = field(
        default=None,
        metadata=_option(
            "start from these weights: a torchvision ResNet, a DeepLabV3+ (jfzhang95 or VainF layout) or a CFBI+ "
            "checkpoint (README, 'Training'); ignored when resuming",
            metavar="PATH",
        ),
    )
    recipe: str | None = None  # its flag, --recipe, lists the recipes (cfbi_model.cli.train)
    dtype: str = field(
        default="float32",
        metadata=_option(
            "parameter and computation dtype (float64: an exact oracle for comparing runs)", choices=TRAIN_DTYPES
        ),
    )

    def __post_init__(self) -> None:
        if self.dtype not in TRAIN_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(TRAIN_DTYPES)}, got {self.dtype!r}")
        if isinstance(self.model, str):
            self.model = get_config(self.model)
        elif isinstance(self.model, Mapping):
            self.model = ModelConfig.from_dict(self.model)
        if isinstance(self.clip, Mapping):
            self.clip = _from_dict(ClipConfig, self.clip)
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}")
        if self.accumulate < 1:
            raise ValueError(f"accumulate must be >= 1, got {self.accumulate}")
        if self.keep_checkpoints < 0:
            raise ValueError(f"keep_checkpoints must be >= 0, got {self.keep_checkpoints}")
        if not 0.0 <= self.youtube_ratio <= 1.0:
            raise ValueError(f"youtube_ratio must lie in [0, 1], got {self.youtube_ratio}")
        if not 0 < self.top_k_percent <= 1:
            raise ValueError(f"top_k_percent must lie in (0, 1], got {self.top_k_percent}")

    @property
    def hard_mining_end(self) -> int:
        return self.steps // 2 if self.hard_mining_steps is None else self.hard_mining_steps

    @property
    def sequential_from(self) -> int:
        return self.steps // 2 if self.sequential_start is None else self.sequential_start

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Inverse of to_dict (lists accepted for tuples); ValueError on unknown keys. Fields added since a
        checkpoint was written take their defaults; `model` may be a configuration name (older checkpoints)."""
        if isinstance(data, Mapping) and isinstance(data.get("model"), str):
            data = {**data, "model": get_config(data["model"])}
        return _from_dict(cls, data)
