"""cfbi_model: the CFBI+ network around cfbi_ops, video inference, training, data and evaluation.

The public names below load on first use, so that light modules (cfbi_model.metrics, the command line's
argument parsing) do not import torch and the network.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "CFBIPlus": "network", "FrameFeatures": "network",
    "CheckpointError": "checkpoint", "load_checkpoint": "checkpoint",
    "ModelConfig": "config", "get_config": "config",
    "StepResult": "inference", "VideoSegmenter": "inference",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cfbi_model' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
