"""Training CFBI+: the trainer, the bootstrapped loss, the learning-rate schedule and checkpoint state."""
from ..config import ClipConfig, TrainConfig
from .loss import bootstrapped_cross_entropy, top_k_fraction
from .schedule import learning_rate_factor
from .state import save_atomic
from .trainer import SequentialTrainer, Trainer, overlay_grid

__all__ = ["ClipConfig", "TrainConfig", "bootstrapped_cross_entropy", "top_k_fraction", "learning_rate_factor",
           "save_atomic", "SequentialTrainer", "Trainer", "overlay_grid"]
