"""Running a model over DAVIS-layout videos: `segment_split` (what `cfbi evaluate --checkpoint` runs),
`segment_frames` and `evaluate_videos` (the validation of `cfbi train`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..build import load_model
from ..config import InferenceConfig, ModelConfig
from ..data.datasets import VideoEntry, davis_videos, load_frame, load_mask
from ..inference.segmenter import VideoSegmenter
from ..io.masks import default_palette, read_mask, write_mask
from ..modeling.network import CFBIPlus
from . import metrics

__all__ = ["segment_split", "segment_frames", "evaluate_videos"]


def segment_frames(
    model: CFBIPlus, frames: Sequence[np.ndarray], first_labels: np.ndarray, inference: InferenceConfig | None = None
) -> np.ndarray:
    """Predicted labels [T, H, W] uint8 of RGB frames [H, W, 3] from the first frame's labels [H, W] (frame 0 =
    the given one), segmented with `inference` (default InferenceConfig())."""
    segmenter = VideoSegmenter(model, inference)
    out = np.zeros((len(frames), *first_labels.shape), np.uint8)
    out[0] = first_labels
    segmenter.start(frames[0], first_labels.astype(np.int64))
    for t in range(1, len(frames)):
        out[t] = segmenter.step(frames[t]).labels.cpu().numpy().astype(np.uint8)
    return out


def evaluate_videos(
    model: CFBIPlus,
    videos: Sequence[VideoEntry],
    inference: InferenceConfig | None = None,
    max_frames: int | None = None,
) -> metrics.DatasetResult:
    """DAVIS J&F of the model over DAVIS-layout videos (first frame's mask given; objects 1..max id of it)."""
    was_training = model.training
    results = []
    try:
        for video in videos:
            count = len(video) if max_frames is None else min(len(video), max_frames)
            frames = [load_frame(p) for p in video.frames[:count]]
            gt = np.stack([load_mask(p) for p in video.masks[:count]])
            pred = segment_frames(model, frames, gt[0], inference)
            results.append(metrics.evaluate_sequence(gt, pred, metrics.davis_object_ids(gt[0]), name=video.name))
    finally:
        model.train(was_training)
    return metrics.DatasetResult(results)


def segment_split(
    checkpoint: str | os.PathLike,
    data_root: str | os.PathLike,
    split: str,
    output_dir: str | os.PathLike,
    sequences: Sequence[str] | None = None,
    *,
    inference: InferenceConfig | None = None,
    config: ModelConfig | str | None = None,
    device: str | None = None,
) -> Path:
    """Segment the sequences of a DAVIS split (or the given ones) from their first-frame masks and write
    palette PNGs output_dir/<sequence>/<frame>.png under the ground truth's file names (and its palette).

    The model is the checkpoint's own (build.load_model; `config` only for files that hold none)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(checkpoint, config=config, device=device)
    videos = davis_videos(data_root, split, sequences=sequences)
    output_dir = Path(output_dir)
    for video in videos:
        frames = [load_frame(p) for p in video.frames]
        first, palette = read_mask(video.masks[0])
        pred = segment_frames(model, frames, first, inference)
        folder = output_dir / video.name
        folder.mkdir(parents=True, exist_ok=True)
        for mask_path, labels in zip(video.masks, pred):
            write_mask(folder / os.path.basename(mask_path), labels, palette or default_palette())
    return output_dir
