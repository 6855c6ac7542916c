"""Clip sampling with the authors' augmentations (docs/design.md, "Training"; the authors'
dataloaders/datasets.py and custom_transforms.py).

A training sample is a clip of one video: a reference frame, the previous frame and N current frames, chosen
with random gaps (and the frame order reversed with probability 0.5), all scaled by one random factor in
[1.0, 1.3], cropped at one place (a balanced crop: retried until the reference crop holds an object of more
than 100 pixels; at most 5 objects, relabelled 1..K, the others become background), flipped together, and
normalised like the network's inference input (BGR, ImageNet mean/std: `cfbi_model.modeling.preprocess`).

Sampling is a pure function of (seed, sample index): a run that resumes at step s draws exactly the clips the
uninterrupted run would have drawn, whatever the number of loader workers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from ..config import IGNORE_LABEL, ClipConfig
from ..io.source import Video
from ..modeling.preprocess import preprocess
from .datasets import DataError, MixedVideos, load_frame, load_mask

__all__ = ["ClipDataset", "StepSampler", "collate_clips", "sample_frame_indices", "balanced_crop", "relabel"]


def _resize(array: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    height, width = size
    if array.shape[:2] == (height, width):
        return array
    return np.asarray(Image.fromarray(array).resize((width, height), Image.NEAREST if nearest else Image.BILINEAR))


def sample_frame_indices(
    length: int, num_current: int, max_gap: int, rng: np.random.Generator, reverse: bool
) -> tuple[int, int, list[int]]:
    """(reference, previous, currents) frame indices of a video of `length` frames: previous and currents follow
    each other with gaps in [1, max_gap] (shrunk when the video is short), in play order (reversed when asked);
    the reference is any frame (the authors' choice: any annotated frame)."""
    order = list(range(length))[::-1] if reverse else list(range(length))
    span_needed = num_current  # gaps after the previous frame
    gaps = rng.integers(1, max(1, max_gap) + 1, size=num_current)
    while gaps.sum() > length - 1 and gaps.max() > 1:
        gaps[int(np.argmax(gaps))] -= 1
    if gaps.sum() > length - 1:  # too short even with gaps of 1: repeat the last frame
        positions = [min(i, length - 1) for i in range(span_needed + 1)]
    else:
        start = int(rng.integers(0, length - int(gaps.sum())))
        positions = [start] + list(start + np.cumsum(gaps))
    reference = int(rng.integers(length))
    return order[reference], order[positions[0]], [order[p] for p in positions[1:]]


def balanced_crop(
    ref_label: np.ndarray, crop: tuple[int, int], min_pixels: int, retries: int, rng: np.random.Generator
) -> tuple[int, int]:
    """Top-left (y, x) of a crop of `crop` size in a label map (already padded to at least that size): the
    first random crop whose largest object has more than min_pixels pixels, else the best of `retries`."""
    height, width = ref_label.shape
    ch, cw = crop
    best, best_area = (0, 0), -1
    for _ in range(max(1, retries)):
        y = int(rng.integers(0, height - ch + 1))
        x = int(rng.integers(0, width - cw + 1))
        window = ref_label[y : y + ch, x : x + cw]
        counts = np.bincount(window.ravel(), minlength=256)
        counts[0] = counts[IGNORE_LABEL] = 0
        area = int(counts.max())
        if area > min_pixels:
            return y, x
        if area > best_area:
            best, best_area = (y, x), area
    return best


def relabel(
    ref_label: np.ndarray, labels: Sequence[np.ndarray], max_objects: int, rng: np.random.Generator
) -> tuple[list[np.ndarray], int]:
    """Keep at most max_objects of the objects present in the reference (a random choice when more), relabelled
    1..K in increasing order of their ids; every other object id becomes background (255 stays ignored)."""
    ids = [int(i) for i in np.unique(ref_label) if i not in (0, IGNORE_LABEL)]
    if len(ids) > max_objects:
        ids = sorted(int(i) for i in rng.choice(ids, size=max_objects, replace=False))
    table = np.zeros(256, np.uint8)
    table[IGNORE_LABEL] = IGNORE_LABEL
    for new, old in enumerate(ids, start=1):
        table[old] = new
    return [table[lab] for lab in labels], len(ids)


class ClipDataset(torch.utils.data.Dataset):
    """Map-style dataset of random clips: item k is a pure function of (seed, k); its length is arbitrary
    (`length`), use StepSampler to read items from a given step on.

    Each item: dict with "ref_image", "prev_image" [3, h, w], "cur_images" [N, 3, h, w] (float32 network input),
    "ref_label", "prev_label" [h, w], "cur_labels" [N, h, w] (int64; 255 = ignore, in padding), "num_labels"
    (K + 1) and "video" (its name)."""

    def __init__(
        self,
        videos: Sequence[Video] | MixedVideos,
        config: ClipConfig = ClipConfig(),
        seed: int = 0,
        length: int = 10**9,
    ) -> None:
        self.videos = videos if isinstance(videos, MixedVideos) else MixedVideos([videos])
        self.config = config
        self.seed = int(seed)
        self.length = int(length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, int(index)])
        for _ in range(self.config.clip_retries):  # redraw clips whose reference crop holds no object
            clip = self.make_clip(self.videos.draw(rng), rng)
            if clip["num_labels"] > 1:
                break
        return clip

    def make_clip(self, video: Video, rng: np.random.Generator) -> dict:
        cfg = self.config
        reverse = rng.random() < cfg.reverse_probability
        ref, prev, currents = sample_frame_indices(len(video), cfg.num_current, cfg.max_gap, rng, reverse)
        indices = [ref, prev, *currents]
        images = [load_frame(video.frames[i]) for i in indices]
        labels = [load_mask(video.masks[i]) for i in indices]
        for i, (image, label) in zip(indices, zip(images, labels)):
            if image.shape[:2] != label.shape:
                raise DataError(
                    f"mask {video.masks[i]} is {label.shape[1]}x{label.shape[0]} but its frame "
                    f"{video.frames[i]} is {image.shape[1]}x{image.shape[0]}"
                )
        # Random scale (one factor per clip), after the optional short-edge normalisation.
        height, width = images[0].shape[:2]
        base = 1.0 if cfg.short_edge is None else cfg.short_edge / min(height, width)
        factor = base * float(rng.uniform(*cfg.scale_range))
        size = (max(1, int(round(height * factor))), max(1, int(round(width * factor))))
        images = [_resize(im, size, nearest=False) for im in images]
        labels = [_resize(lab, size, nearest=True) for lab in labels]
        # Pad to the crop size (images with 0, labels with ignore), then the balanced crop.
        ch, cw = cfg.crop_size
        pad_h, pad_w = max(0, ch - size[0]), max(0, cw - size[1])
        if pad_h or pad_w:
            images = [np.pad(im, ((0, pad_h), (0, pad_w), (0, 0))) for im in images]
            labels = [np.pad(lab, ((0, pad_h), (0, pad_w)), constant_values=IGNORE_LABEL) for lab in labels]
        y, x = balanced_crop(labels[0], (ch, cw), cfg.min_object_pixels, cfg.crop_retries, rng)
        images = [im[y : y + ch, x : x + cw] for im in images]
        labels = [lab[y : y + ch, x : x + cw] for lab in labels]
        labels, num_objects = relabel(labels[0], labels, cfg.max_objects, rng)
        if rng.random() < cfg.flip_probability:
            images = [im[:, ::-1] for im in images]
            labels = [lab[:, ::-1] for lab in labels]
        tensors = [preprocess(np.ascontiguousarray(im)) for im in images]
        label_tensors = [torch.from_numpy(np.ascontiguousarray(lab)).long() for lab in labels]
        return {
            "ref_image": tensors[0],
            "ref_label": label_tensors[0],
            "prev_image": tensors[1],
            "prev_label": label_tensors[1],
            "cur_images": torch.stack(tensors[2:]),
            "cur_labels": torch.stack(label_tensors[2:]),
            "num_labels": num_objects + 1,
            "video": video.name,
            "frame_indices": indices,
        }


def collate_clips(items: list[dict]) -> dict:
    out = {
        key: torch.stack([item[key] for item in items])
        for key in ("ref_image", "ref_label", "prev_image", "prev_label", "cur_images", "cur_labels")
    }
    out["num_labels"] = [int(item["num_labels"]) for item in items]
    out["video"] = [item["video"] for item in items]
    return out


class StepSampler(torch.utils.data.Sampler):
    """Indices of the samples of steps start_step..end_step-1 for one rank: sample i of step s on rank r is
    item (s * world_size + r) * batch_size + i, so resuming and changing the worker count change nothing."""

    def __init__(self, start_step: int, end_step: int, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        self.start_step, self.end_step = int(start_step), int(end_step)
        self.batch_size, self.rank, self.world_size = int(batch_size), int(rank), int(world_size)

    def __iter__(self):
        for step in range(self.start_step, self.end_step):
            base = (step * self.world_size + self.rank) * self.batch_size
            yield from range(base, base + self.batch_size)

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step) * self.batch_size
