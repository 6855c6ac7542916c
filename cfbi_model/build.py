"""Building a CFBI+ model from its configuration, and from a checkpoint file alone.

A checkpoint written here is `{"state_dict": ..., "model_config": ModelConfig.to_dict()}` (plain values, so
`torch.load(weights_only=True)` reads it); `load_model(path)` rebuilds exactly that model. The authors'
released files (`{'state_dict': ...}`, keys possibly prefixed `module.` by DataParallel) and bare state dicts
hold no configuration and load as "resnet101"; files of earlier versions that name their configuration
("model_config": "small") load as that named configuration. Loading is always strict.

    model = build_model(get_config("small", global_atrous=(1, 1, 1)))
    save_model(model, "m.pth")
    same = load_model("m.pth")
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .config import ModelConfig, config_differences, get_config
from .errors import InputError
from .modeling.network import CFBIPlus

__all__ = [
    "shipped_weights",
    "build_model",
    "load_model",
    "save_model",
    "checkpoint_dict",
    "read_checkpoint",
    "checkpoint_config",
    "resolve_config",
    "CheckpointError",
    "load_checkpoint",
    "extract_state_dict",
    "compare_state_dict",
]

_RELEASED_CONFIG = "resnet101"  # the authors' checkpoints hold no configuration

_PREFIX = "module."


class CheckpointError(InputError):
    """A checkpoint that cannot be read, or whose keys / shapes do not match the model.

    Attributes: missing, unexpected (key lists) and mismatched ([(key, checkpoint shape, model shape)]).
    """

    def __init__(
        self,
        message: str,
        missing: list[str] | None = None,
        unexpected: list[str] | None = None,
        mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] | None = None,
    ) -> None:
        super().__init__(message)
        self.missing = missing or []
        self.unexpected = unexpected or []
        self.mismatched = mismatched or []


def shipped_weights() -> str:
    """The shipped small checkpoint, trained on synthetic videos (it holds its configuration)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights", "small_synthetic.pth")


def extract_state_dict(checkpoint: Any) -> dict[str, Tensor]:
    """The state dict inside a loaded checkpoint, with a leading `module.` stripped from every key."""
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else checkpoint
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise CheckpointError(f"expected a state dict or {{'state_dict': ...}}, got {type(checkpoint).__name__}")
    out = {}
    for key, value in state.items():
        out[key[len(_PREFIX) :] if key.startswith(_PREFIX) else key] = value
    return out


def compare_state_dict(
    model: nn.Module, state: Mapping[str, Any]
) -> tuple[list[str], list[str], list[tuple[str, tuple[int, ...], tuple[int, ...]]]]:
    """(missing, unexpected, mismatched) of `state` against the model's state dict."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = []
    for key, value in state.items():
        if key in expected:
            shape = tuple(value.shape) if isinstance(value, Tensor) else None
            if shape != tuple(expected[key].shape):
                mismatched.append((key, shape, tuple(expected[key].shape)))
    return missing, unexpected, mismatched


def _listing(title: str, items: list[str], limit: int = 20) -> str:
    shown = "\n    ".join(items[:limit])
    more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"  {title} ({len(items)}):\n    {shown}{more}"


def read_checkpoint(path: str | os.PathLike, *, map_location: Any = "cpu") -> Any:
    """The loaded contents of a checkpoint file (`torch.load(weights_only=True)`); CheckpointError naming the
    file when it is missing or unreadable."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        with warnings.catch_warnings():  # a corrupt file also makes torch warn about its pickle protocol
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # unpickling errors come in many types
        text = str(error)
        # torch's text for files refused by weights_only suggests weights_only=False, i.e. running whatever code
        # the file holds: never pass that on.
        if "unsupported global" in text.lower():  # "Unsupported global: ...", "... unsupported GLOBAL posix.system"
            raise CheckpointError(
                f"checkpoint {path!r} holds Python objects other than tensors and plain values "
                "(code that unpickling would run); it was not loaded"
            ) from None
        if "WeightsUnpickler error:" in text:
            text = text.split("WeightsUnpickler error:", 1)[1]
        reason = (text.strip().splitlines() or [type(error).__name__])[0]
        raise CheckpointError(f"cannot read checkpoint {path!r}: {reason}") from None


def checkpoint_config(checkpoint: Any, path: str | os.PathLike = "checkpoint") -> ModelConfig | None:
    """The model configuration a loaded checkpoint holds: a dict (this version), a configuration name (earlier
    versions) or nothing (the authors' files, bare state dicts: None)."""
    stored = checkpoint.get("model_config") if isinstance(checkpoint, Mapping) else None
    if stored is None:
        return None
    try:
        if isinstance(stored, str):
            return get_config(stored)
        return ModelConfig.from_dict(stored)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint {os.fspath(path)!r} holds an invalid model_config: {error}") from None


def resolve_config(
    stored: ModelConfig | None, requested: ModelConfig | str | None, path: str | os.PathLike = "checkpoint"
) -> ModelConfig:
    """The configuration to build for a checkpoint: the one it holds; else `requested`; else "resnet101".
    A requested configuration that differs from the stored one is a CheckpointError listing the fields."""
    wanted = get_config(requested) if isinstance(requested, str) else requested
    if stored is None:
        return wanted if wanted is not None else get_config(_RELEASED_CONFIG)
    if wanted is not None and wanted != stored:
        differences = "; ".join(config_differences(stored, wanted)[:6])
        raise CheckpointError(
            f"checkpoint {os.fspath(path)!r} holds model configuration {stored.name!r}, which "
            f"disagrees with the requested {wanted.name!r} ({differences}); the checkpoint "
            "names its own configuration, so leave the configuration out"
        )
    return stored


def build_model(config: ModelConfig | str = "resnet101") -> CFBIPlus:
    """A CFBI+ network with freshly initialised weights for a configuration (or a configuration name)."""
    return CFBIPlus(config)


def load_model(
    checkpoint: str | os.PathLike, *, config: ModelConfig | str | None = None, device: str | torch.device = "cpu"
) -> CFBIPlus:
    """The model a checkpoint file describes, weights loaded strictly, on `device`, in eval mode.

    The configuration comes from the file (see resolve_config); `config` is only needed for files that hold
    none (the authors' releases load as "resnet101" without it), and must agree with the file otherwise.
    """
    contents = read_checkpoint(checkpoint)
    model = build_model(resolve_config(checkpoint_config(contents, checkpoint), config, checkpoint))
    _load_state(model, contents, os.fspath(checkpoint))
    return model.to(device).eval()


def checkpoint_dict(model: CFBIPlus) -> dict[str, Any]:
    """What a model checkpoint holds: {"state_dict": ..., "model_config": the whole configuration as a dict}."""
    return {"state_dict": model.state_dict(), "model_config": model.config.to_dict()}


def save_model(model: CFBIPlus, path: str | os.PathLike) -> None:
    """Write checkpoint_dict(model) to `path` (readable by load_model and by torch.load(weights_only=True))."""
    torch.save(checkpoint_dict(model), os.fspath(path))


def load_checkpoint(model: nn.Module, path: str | os.PathLike, *, map_location: Any = "cpu") -> nn.Module:
    """Load a checkpoint's weights into `model` strictly and return the model.

    Accepts `{'state_dict': ...}` (the authors' format, and this package's) or a bare state dict; a `module.`
    prefix is stripped. Reads with `torch.load(weights_only=True)`. Raises CheckpointError naming the file
    when it cannot be read, and listing the missing, unexpected and mis-shaped keys when it does not match.
    """
    return _load_state(model, read_checkpoint(path, map_location=map_location), os.fspath(path))


def _load_state(model: nn.Module, checkpoint: Any, path: str) -> nn.Module:
    state = extract_state_dict(checkpoint)
    missing, unexpected, mismatched = compare_state_dict(model, state)
    if missing or unexpected or mismatched:
        parts = [f"checkpoint {path!r} does not match the model:"]
        if missing:
            parts.append(_listing("missing keys", missing))
        if unexpected:
            parts.append(_listing("unexpected keys", unexpected))
        if mismatched:
            parts.append(
                _listing(
                    "mis-shaped keys (checkpoint vs model)",
                    [f"{k}: {tuple(a) if a is not None else 'not a tensor'} vs {tuple(b)}" for k, a, b in mismatched],
                )
            )
        raise CheckpointError("\n".join(parts), missing, unexpected, mismatched)
    model.load_state_dict(state, strict=True)
    return model
