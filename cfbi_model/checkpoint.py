"""Loading CFBI+ checkpoints: the authors' released files (`{'state_dict': ...}`, keys possibly prefixed
`module.` by DataParallel) or a bare state dict, always strictly."""
from __future__ import annotations

import os
from typing import Any, Mapping

import torch
from torch import Tensor, nn

__all__ = ["CheckpointError", "load_checkpoint", "extract_state_dict", "compare_state_dict"]

_PREFIX = "module."


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, or whose keys / shapes do not match the model.

    Attributes: missing, unexpected (key lists) and mismatched ([(key, checkpoint shape, model shape)]).
    """

    def __init__(self, message: str, missing: list[str] | None = None, unexpected: list[str] | None = None,
                 mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] | None = None) -> None:
        super().__init__(message)
        self.missing = missing or []
        self.unexpected = unexpected or []
        self.mismatched = mismatched or []


def extract_state_dict(checkpoint: Any) -> dict[str, Tensor]:
    """The state dict inside a loaded checkpoint, with a leading `module.` stripped from every key."""
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else checkpoint
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise CheckpointError(f"expected a state dict or {{'state_dict': ...}}, got {type(checkpoint).__name__}")
    out = {}
    for key, value in state.items():
        out[key[len(_PREFIX):] if key.startswith(_PREFIX) else key] = value
    return out


def compare_state_dict(model: nn.Module, state: Mapping[str, Any]
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


def load_checkpoint(model: nn.Module, path: str | os.PathLike, *, map_location: Any = "cpu") -> nn.Module:
    """Load a checkpoint into `model` strictly and return the model.

    Accepts `{'state_dict': ...}` (the authors' format) or a bare state dict; a `module.` prefix is
    stripped. Reads with `torch.load(weights_only=True)`. Raises CheckpointError naming the file when it
    cannot be read, and listing the missing, unexpected and mis-shaped keys when it does not match.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # unpickling errors come in many types
        raise CheckpointError(f"cannot read checkpoint {path!r}: {error}") from error
    state = extract_state_dict(checkpoint)
    missing, unexpected, mismatched = compare_state_dict(model, state)
    if missing or unexpected or mismatched:
        parts = [f"checkpoint {path!r} does not match the model:"]
        if missing:
            parts.append(_listing("missing keys", missing))
        if unexpected:
            parts.append(_listing("unexpected keys", unexpected))
        if mismatched:
            parts.append(_listing("mis-shaped keys (checkpoint vs model)",
                                  [f"{k}: {tuple(a) if a is not None else 'not a tensor'} vs {tuple(b)}"
                                   for k, a, b in mismatched]))
        raise CheckpointError("\n".join(parts), missing, unexpected, mismatched)
    model.load_state_dict(state, strict=True)
    return model
