"""Training CFBI+: the trainer, the bootstrapped loss, the learning-rate schedule, checkpoint state
(atomic, checksummed, verified on resume), pretrained initialisation, the run log and the paper's recipes
(training.recipes).

The public names below load on first use, so that the command line's argument parsing can read the recipes
without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ClipConfig": "..config",
    "TrainConfig": "..config",
    "bootstrapped_cross_entropy": ".loss",
    "top_k_fraction": ".loss",
    "learning_rate_factor": ".schedule",
    "save_atomic": ".state",
    "read_training_checkpoint": ".state",
    "initialise_from": ".init",
    "RunLog": ".log",
    "overlay_grid": ".log",
    "Recipe": ".recipes",
    "RECIPES": ".recipes",
    "recipe_train_config": ".recipes",
    "SequentialTrainer": ".trainer",
    "Trainer": ".trainer",
    "TrainingInterrupted": ".trainer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cfbi_model.training' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
