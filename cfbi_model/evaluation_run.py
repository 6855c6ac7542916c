"""Running a trained model over DAVIS-layout videos: `segment_split` (the hook of `cfbi evaluate --checkpoint`),
`segment_frames` and `evaluate_videos` (the validation of `cfbi train`)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import metrics
from .checkpoint import CheckpointError, load_checkpoint
from .data import VideoEntry, davis_videos, load_frame, load_mask
from .inference import VideoSegmenter
from .media import default_palette, write_mask
from .network import CFBIPlus

__all__ = ["segment_split", "segment_frames", "evaluate_videos", "model_from_checkpoint", "checkpoint_config_name"]


def checkpoint_config_name(path: str | os.PathLike, default: str = "resnet101") -> str:
    """The model configuration a checkpoint written by `cfbi train` names ("model_config"), else default."""
    try:
        checkpoint = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - unpickling errors come in many types
        raise CheckpointError(f"cannot read checkpoint {os.fspath(path)!r}: {error}") from error
    name = checkpoint.get("model_config", default) if isinstance(checkpoint, dict) else default
    return name if isinstance(name, str) else default


def model_from_checkpoint(path: str | os.PathLike, config: str | None = None,
                          device: str | torch.device = "cpu") -> CFBIPlus:
    """A CFBIPlus built with the checkpoint's configuration (or `config`) and loaded strictly, in eval mode."""
    model = CFBIPlus(config or checkpoint_config_name(path))
    load_checkpoint(model, path)
    return model.to(device).eval()


def segment_frames(model: CFBIPlus, frames: Sequence[np.ndarray], first_labels: np.ndarray,
                   **segmenter_options) -> np.ndarray:
    """Predicted labels [T, H, W] uint8 of RGB frames from the first frame's labels (frame 0 = the given one)."""
    segmenter = VideoSegmenter(model, **segmenter_options)
    out = np.zeros((len(frames), *first_labels.shape), np.uint8)
    out[0] = first_labels
    segmenter.start(frames[0], first_labels.astype(np.int64))
    for t in range(1, len(frames)):
        out[t] = segmenter.step(frames[t]).labels.cpu().numpy().astype(np.uint8)
    return out


def evaluate_videos(model: CFBIPlus, videos: Sequence[VideoEntry], max_frames: int | None = None,
                    **segmenter_options) -> metrics.DatasetResult:
    """DAVIS J&F of the model over DAVIS-layout videos (first frame's mask given; objects 1..max id of it)."""
    was_training = model.training
    results = []
    try:
        for video in videos:
            count = len(video) if max_frames is None else min(len(video), max_frames)
            frames = [load_frame(p) for p in video.frames[:count]]
            gt = np.stack([load_mask(p) for p in video.masks[:count]])
            pred = segment_frames(model, frames, gt[0], **segmenter_options)
            results.append(metrics.evaluate_sequence(gt, pred, metrics.davis_object_ids(gt[0]), name=video.name))
    finally:
        model.train(was_training)
    return metrics.DatasetResult(results)


def segment_split(checkpoint: str | os.PathLike, data_root: str | os.PathLike, split: str,
                  output_dir: str | os.PathLike, sequences: Sequence[str] | None = None, *,
                  config: str | None = None, device: str | None = None) -> Path:
    """Segment the sequences of a DAVIS split (or the given ones) from their first-frame masks and write
    palette PNGs output_dir/<sequence>/<frame>.png under the ground truth's file names."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model_from_checkpoint(checkpoint, config, device)
    videos = davis_videos(data_root, split, sequences=sequences)
    output_dir = Path(output_dir)
    for video in videos:
        frames = [load_frame(p) for p in video.frames]
        first = load_mask(video.masks[0])
        palette = None
        try:
            from PIL import Image
            with Image.open(video.masks[0]) as image:
                palette = image.getpalette() if image.mode == "P" else None
        except OSError:
            pass
        pred = segment_frames(model, frames, first, amp=device == "cuda")
        folder = output_dir / video.name
        folder.mkdir(parents=True, exist_ok=True)
        for mask_path, labels in zip(video.masks, pred):
            write_mask(str(folder / os.path.basename(mask_path)), labels, palette or default_palette())
    return output_dir

