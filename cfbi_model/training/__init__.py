"""Training CFBI+: the trainer, the bootstrapped loss, the learning-rate schedule, checkpoint state
(atomic, checksummed, verified on resume), pretrained initialisation and the paper's recipes."""

from ..config import ClipConfig, TrainConfig
from .init import initialise_from
from .log import RunLog, overlay_grid
from .loss import bootstrapped_cross_entropy, top_k_fraction
from .schedule import learning_rate_factor
from .state import read_training_checkpoint, save_atomic
from .trainer import SequentialTrainer, Trainer, TrainingInterrupted

__all__ = [
    "ClipConfig",
    "TrainConfig",
    "bootstrapped_cross_entropy",
    "top_k_fraction",
    "learning_rate_factor",
    "save_atomic",
    "read_training_checkpoint",
    "initialise_from",
    "SequentialTrainer",
    "Trainer",
    "TrainingInterrupted",
    "RunLog",
    "overlay_grid",
]
