"""cfbi_model: the CFBI+ network around cfbi_ops, video inference, training, data and evaluation.

Layout (dependencies point down): cli -> training -> evaluation -> inference, data -> build -> modeling ->
config; io (frames, masks, videos, overlays) and config at the bottom. docs/design.md describes the model.
The public names below load on first use, so that light modules (cfbi_model.evaluation.metrics, the command
line's argument parsing) do not import torch and the network.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "CFBIPlus": "modeling.network",
    "FrameFeatures": "modeling.network",
    "build_model": "build",
    "load_model": "build",
    "save_model": "build",
    "CheckpointError": "build",
    "load_checkpoint": "build",
    "ModelConfig": "config",
    "InferenceConfig": "config",
    "TrainConfig": "config",
    "ClipConfig": "config",
    "get_config": "config",
    "StepResult": "inference.segmenter",
    "VideoSegmenter": "inference.segmenter",
    "FramePrediction": "inference.segmenter",
    "LabelMap": "inference.segmenter",
    "segment_video": "inference.driver",
    "load_exported": "inference.exported",
    "ExportedSegmenter": "inference.exported",
    "export_model": "inference.export",
    "run_video": "inference.driver",
    "VideoResult": "inference.driver",
    "Video": "io.source",
    "open_video": "io.source",
    "InputError": "errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cfbi_model' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
