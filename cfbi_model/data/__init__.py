"""Training and evaluation data: DAVIS / YouTube-VOS layouts, clip sampling and augmentation, synthetic videos."""

from ..config import ClipConfig
from .clips import ClipDataset, StepSampler, balanced_crop, collate_clips, relabel, sample_frame_indices
from .datasets import DataError, MixedVideos, davis_videos, load_frame, load_mask, youtube_vos_videos

__all__ = [
    "ClipConfig",
    "ClipDataset",
    "StepSampler",
    "balanced_crop",
    "collate_clips",
    "relabel",
    "sample_frame_indices",
    "DataError",
    "MixedVideos",
    "davis_videos",
    "load_frame",
    "load_mask",
    "youtube_vos_videos",
]
