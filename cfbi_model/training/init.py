"""Starting a training run from pretrained weights (`cfbi train --init PATH`; docs/design.md, "Training").

Supported files, recognised by their key names (read with `torch.load(weights_only=True)`; a `module.`
prefix is stripped; the weights may sit under "state_dict" or "model_state"):

* **torchvision ResNet** (`resnet101-*.pth`, `resnet50-*.pth`, `resnet18-*.pth`: a bare state dict with
  `conv1.weight`, `layer1.0.conv1.weight`, ..., `fc.weight`): loaded into the trunk,
  `feature_extracter.backbone.<same name>`; `fc.*` is not used.
* **DeepLabV3+ in the layout of jfzhang95/pytorch-deeplab-xception** (which the authors' code follows:
  `{"state_dict": ...}` with `backbone.*`, `aspp.aspp1..4.*`, `aspp.global_avg_pool.*`, `aspp.conv1/bn1.*`,
  `decoder.conv1/bn1.*`, `decoder.last_conv.{0,1,4,5}.*`): trunk, ASPP and decoder, names kept after
  `feature_extracter.`; the classifier `decoder.last_conv.8.*` is not used.
* **DeepLabV3+ in the layout of VainF/DeepLabV3Plus-Pytorch** (`{"model_state": ...}` with `backbone.*` as in
  torchvision, `classifier.aspp.convs.0..4`, `classifier.aspp.project`, `classifier.project`,
  `classifier.classifier.{0,1,3}`): trunk, ASPP (`convs.0` -> `aspp1`, `convs.1..3` -> `aspp2..4`, `convs.4`
  -> `global_avg_pool`, `project` -> `conv1` / `bn1`), the decoder's reduction (`classifier.project` ->
  `decoder.conv1` / `bn1`) and its first 3x3 convolution (`classifier.classifier.0/1` -> `last_conv.0/1`, input
  channels reordered: that model concatenates low-level features first, this one the ASPP output first). Its
  decoder has one 3x3 convolution where this one has two: `last_conv.4/5` keep their initialisation.
* **CFBI+** (this package's checkpoints, and the authors' released `{"state_dict": ...}` files): every
  tensor. A file that names its model configuration must name this run's.

`num_batches_tracked` entries are ignored (the backbone's batch norms are frozen). Every mapped tensor must
have the model's shape; a mismatch is a CheckpointError naming both keys.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..build import CheckpointError, checkpoint_config, extract_state_dict, read_checkpoint
from ..config import config_differences
from ..io.files import file_sha256

__all__ = ["LAYOUTS", "detect_layout", "map_state_dict", "initialise_from", "PARTS"]

LAYOUTS = {
    "torchvision-resnet": "torchvision ResNet",
    "deeplabv3plus": "DeepLabV3+, jfzhang95 layout",
    "deeplabv3plus-vainf": "DeepLabV3+, VainF layout",
    "cfbi": "CFBI+",
}

PARTS = (
    ("trunk", "feature_extracter.backbone."),
    ("ASPP", "feature_extracter.aspp."),
    ("decoder", "feature_extracter.decoder."),
    ("head", ""),
)

_TRUNK = "feature_extracter.backbone."
_VAINF_ASPP = [
    (re.compile(r"^classifier\.aspp\.convs\.0\.0\."), "feature_extracter.aspp.aspp1.atrous_conv."),
    (re.compile(r"^classifier\.aspp\.convs\.0\.1\."), "feature_extracter.aspp.aspp1.bn."),
    (re.compile(r"^classifier\.aspp\.convs\.([123])\.0\."), "feature_extracter.aspp.aspp{n}.atrous_conv."),
    (re.compile(r"^classifier\.aspp\.convs\.([123])\.1\."), "feature_extracter.aspp.aspp{n}.bn."),
    (re.compile(r"^classifier\.aspp\.convs\.4\.1\."), "feature_extracter.aspp.global_avg_pool.1."),
    (re.compile(r"^classifier\.aspp\.convs\.4\.2\."), "feature_extracter.aspp.global_avg_pool.2."),
    (re.compile(r"^classifier\.aspp\.project\.0\."), "feature_extracter.aspp.conv1."),
    (re.compile(r"^classifier\.aspp\.project\.1\."), "feature_extracter.aspp.bn1."),
    (re.compile(r"^classifier\.project\.0\."), "feature_extracter.decoder.conv1."),
    (re.compile(r"^classifier\.project\.1\."), "feature_extracter.decoder.bn1."),
    (re.compile(r"^classifier\.classifier\.0\."), "feature_extracter.decoder.last_conv.0."),
    (re.compile(r"^classifier\.classifier\.1\."), "feature_extracter.decoder.last_conv.1."),
]


def _weights(contents: Any) -> dict[str, Tensor]:
    if isinstance(contents, Mapping) and isinstance(contents.get("model_state"), Mapping):
        contents = contents["model_state"]
    return extract_state_dict(contents)


def detect_layout(state: Mapping[str, Any]) -> str:
    """Which of LAYOUTS a state dict (prefixes stripped) is in; CheckpointError when none."""
    keys = list(state)
    if any(k.startswith("feature_extracter.") for k in keys):
        return "cfbi"
    if any(k.startswith("classifier.aspp.convs.") for k in keys):
        return "deeplabv3plus-vainf"
    if any(k.startswith(("aspp.aspp1.", "decoder.last_conv.", "backbone.layer1.")) for k in keys):
        return "deeplabv3plus"
    if "conv1.weight" in state and any(k.startswith("layer1.") for k in keys):
        return "torchvision-resnet"
    shown = ", ".join(keys[:4]) or "no keys"
    raise CheckpointError(
        f"unrecognised weights layout (first keys: {shown}); expected a torchvision ResNet, a "
        "DeepLabV3+ or a CFBI+ checkpoint"
    )


def map_state_dict(state: Mapping[str, Tensor], layout: str) -> tuple[dict[str, tuple[str, Tensor]], list[str]]:
    """({model key: (file key, tensor)}, unused file keys) of a state dict in `layout`, before shape checks.
    num_batches_tracked entries are dropped (neither mapped nor reported)."""
    mapped: dict[str, tuple[str, Tensor]] = {}
    unused: list[str] = []
    low_dim = None
    if layout == "deeplabv3plus-vainf" and "classifier.project.0.weight" in state:
        low_dim = int(state["classifier.project.0.weight"].shape[0])
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        target = None
        if layout == "cfbi":
            target = key
        elif layout == "torchvision-resnet":
            target = None if key.startswith("fc.") else _TRUNK + key
        elif layout == "deeplabv3plus":
            if key.startswith("backbone."):
                target = _TRUNK + key[len("backbone.") :]
            elif key.startswith(("aspp.", "decoder.")) and not key.startswith("decoder.last_conv.8."):
                target = "feature_extracter." + key
        elif layout == "deeplabv3plus-vainf":
            if key.startswith("backbone."):
                target = _TRUNK + key[len("backbone.") :]
            else:
                for pattern, replacement in _VAINF_ASPP:
                    match = pattern.match(key)
                    if match:
                        branch = int(match.group(1)) + 1 if match.groups() else 0
                        target = replacement.format(n=branch) + key[match.end() :]
                        break
            if key == "classifier.classifier.0.weight" and low_dim is not None and value.dim() == 4:
                # [out, low + aspp, 3, 3] -> [out, aspp + low, 3, 3]: the concatenation order of this decoder
                value = torch.cat([value[:, low_dim:], value[:, :low_dim]], dim=1)
        else:
            raise ValueError(f"unknown layout {layout!r}")
        if target is None:
            unused.append(key)
        else:
            mapped[target] = (key, value)
    return mapped, unused


def _part(key: str) -> str:
    return next(name for name, prefix in PARTS if key.startswith(prefix))


def _short(keys: list[str], limit: int = 6) -> str:
    return ", ".join(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def initialise_from(model: nn.Module, path: str | os.PathLike, sha256: str | None = None) -> str:
    """Copy the tensors of a pretrained file (see the module docstring for the layouts) into `model`, in
    place; returns a one-line summary: tensors loaded per part (trunk, ASPP, decoder, head) and what was not
    loaded. CheckpointError (one line) for an unreadable file, an unknown layout, a CFBI+ checkpoint of
    another model configuration, a tensor whose shape differs from the model's, or a file that loads nothing.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointError(f"--init {path!r} is a directory, not a weights file")
    try:
        contents = read_checkpoint(path)
    except CheckpointError as error:
        lines = str(error).strip().splitlines()
        raise CheckpointError(f"--init: {lines[0] if lines else f'cannot read {path!r}'}") from None
    state = _weights(contents)
    layout = detect_layout(state)
    if layout == "cfbi":
        stored = checkpoint_config(contents, path)
        config = getattr(model, "config", None)
        if stored is not None and config is not None and stored != config:
            differences = "; ".join(config_differences(stored, config)[:4])
            raise CheckpointError(
                f"--init {path!r} holds model configuration {stored.name!r}, this run builds "
                f"{config.name!r} ({differences})"
            )
    mapped, unused = map_state_dict(state, layout)
    target = model.state_dict()
    for model_key, (file_key, value) in list(mapped.items()):
        if model_key not in target:
            unused.append(file_key)
            del mapped[model_key]
            continue
        if not isinstance(value, Tensor) or tuple(value.shape) != tuple(target[model_key].shape):
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise CheckpointError(
                f"--init {path!r}: {file_key} has shape {shape} but the model's {model_key} has "
                f"{tuple(target[model_key].shape)}"
            )
    if not mapped:
        raise CheckpointError(f"--init {path!r} ({LAYOUTS[layout]}): no tensor matches the model")
    with torch.no_grad():
        for model_key, (_, value) in mapped.items():
            target[model_key].copy_(value.to(target[model_key].dtype))
    counts = []
    partial = []
    for name, _ in PARTS:
        keys = [k for k in target if _part(k) == name]
        loaded = [k for k in keys if k in mapped]
        counts.append(f"{name} {len(loaded)}/{len(keys)}")
        if loaded and len(loaded) < len(keys):
            partial += [k for k in keys if k not in mapped]
    line = f"--init {path} ({LAYOUTS[layout]}): tensors loaded: {', '.join(counts)}"
    if partial:
        line += f"; not loaded: {_short(partial)}"
    if unused:
        line += f"; unused from the file: {_short(unused)}"
    # The file's SHA-256 records exactly what the run started from (the summary goes to the run's log).
    return line + f"; sha256 {sha256 or file_sha256(path)}"
