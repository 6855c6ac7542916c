"""Video inference with CFBI+ following the authors' evaluation protocol (networks/engine/eval_manager.py,
dataloaders/custom_transforms.py):

* every frame is resized (bicubic) so that its long edge is at most 1040 px (800 px when several scales are
  used), times each scale, with both sides rounded to 16k + 1;
* the labels are nearest-resized from the frame resolution to each feature grid;
* the 4x logits are upsampled bilinearly (align_corners=True) to the frame size, a softmax over the labels
  gives probabilities, which are averaged over scales and flips; the argmax is the prediction;
* objects that first appear in a later frame (YouTube-VOS) are added from that frame's annotation, and the
  frame, with the merged labels, joins the reference set.

Memory stays bounded on long videos: the engine keeps the reference frames' embeddings (the first frame and
the frames that brought new objects) and the previous frame's, nothing else.

    seg = VideoSegmenter(model)
    seg.start(first_rgb, first_labels)
    for rgb in frames:
        result = seg.step(rgb)          # StepResult(probs [L, H, W], labels [H, W])
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import IGNORE_LABEL, InferenceConfig
from ..modeling.matching import one_hot_labels
from ..modeling.network import CFBIPlus, FrameFeatures
from ..modeling.precision import accumulation_dtype, amp_dtype, autocast
from ..modeling.preprocess import preprocess
from .propagate import FramePrediction, propagate

__all__ = ["VideoSegmenter", "StepResult", "inference_size"]

_SINGLE_SCALE_MAX_EDGE = 1040  # 800 * 1.3, the authors' TEST_MAX_SIZE for single-scale evaluation
_MULTI_SCALE_MAX_EDGE = 800


@dataclass
class StepResult:
    """probs: [L, H, W] label probabilities (float32; float64 for a float64 model); labels: [H, W] int64
    prediction (on the model's device)."""

    probs: Tensor
    labels: Tensor


def inference_size(
    height: int, width: int, scale: float = 1.0, max_long_edge: float | None = _SINGLE_SCALE_MAX_EDGE
) -> tuple[int, int]:
    """The network input size for a frame [official MultiRestrictSize]: cap the long edge at max_long_edge,
    multiply by scale (truncating), round each side to the nearest 16k + 1 (halves to even)."""
    factor = None
    if max_long_edge is not None and max(height, width) > max_long_edge:
        factor = float(max_long_edge) / max(height, width)
    sides = []
    for side in (height, width):
        value = int((side if factor is None else factor * side) * scale)
        if (value - 1) % 16 != 0:
            value = int(round((value - 1) / 16.0) * 16 + 1)
        sides.append(max(value, 17))
    return sides[0], sides[1]


@dataclass
class _Augmentation:
    """State of one (scale, flip) view of the video."""

    scale: float
    flip: bool
    size: tuple[int, int] = (0, 0)
    references: list[Tensor] = field(default_factory=list)  # per scale [T, C_s, h, w]
    reference_labels: list[Tensor] = field(default_factory=list)  # per scale [T, h, w]
    previous: list[Tensor] = field(default_factory=list)  # per scale [E, h, w]
    previous_labels: list[Tensor] = field(default_factory=list)  # per scale [h, w]


class VideoSegmenter:
    """Semi-supervised video object segmentation with a CFBI+ model (puts the model in eval mode).

    Args:
        model: a CFBIPlus network (weights loaded).
        config: the inference settings (InferenceConfig: global atrous rate, min matching pixels, scales,
            flip, amp, max long edge); default InferenceConfig().
        normalized: frames are already network input, float tensors [3, H, W] (BGR, normalised).
        **overrides: InferenceConfig fields replacing those of `config` (e.g. min_matching_pixels=100).
    """

    def __init__(
        self, model: CFBIPlus, config: InferenceConfig | None = None, *, normalized: bool = False, **overrides: Any
    ) -> None:
        config = config if config is not None else InferenceConfig()
        if overrides:
            config = replace(config, **overrides)
        self.config = config
        self.model = model.eval()
        self.global_atrous = config.global_atrous
        self.min_matching_pixels = config.min_matching_pixels
        self.scales = config.scales
        self.flip = config.flip
        self.normalized = bool(normalized)
        max_long_edge = config.max_long_edge
        if max_long_edge is None:
            max_long_edge = _SINGLE_SCALE_MAX_EDGE if self.scales == (1.0,) else _MULTI_SCALE_MAX_EDGE
        self.max_long_edge = max_long_edge
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.output_dtype = accumulation_dtype(self.dtype)  # probabilities: float64 for a float64 model
        self.amp = config.amp and self.device.type == "cuda"
        if config.amp and not self.amp:
            warnings.warn("VideoSegmenter: amp=True only applies on CUDA; running in float32", stacklevel=2)
        self.amp_dtype = amp_dtype(self.amp)
        self._augs: list[_Augmentation] = []
        self._frame_size: tuple[int, int] | None = None
        self.num_labels = 0
        self.frame_index = -1

    # ------------------------------------------------------------------ public API
    @property
    def num_objects(self) -> int:
        return max(self.num_labels - 1, 0)

    @property
    def num_references(self) -> int:
        return self._augs[0].references[0].shape[0] if self._augs else 0

    def reset(self) -> None:
        self._augs, self._frame_size, self.num_labels, self.frame_index = [], None, 0, -1

    @torch.inference_mode()
    def start(self, image: np.ndarray | Tensor, labels: np.ndarray | Tensor) -> StepResult:
        """Begin a video with its first frame and that frame's labels [H, W] (0 = background, 1..K objects,
        255 = ignored). Returns the given labels as a StepResult (one-hot probabilities)."""
        frame = self._frame(image)
        height, width = frame.shape[-2:]
        labels = self._labels(labels, (height, width))
        self.reset()
        self._frame_size = (height, width)
        self.num_labels = _count_labels(labels)
        for scale in self.scales:
            for flipped in (False, True) if self.flip else (False,):
                size = inference_size(height, width, scale, self.max_long_edge)
                aug = _Augmentation(scale, flipped, size)
                features = self._features(frame, aug)
                view_labels = labels.flip(-1) if flipped else labels
                scaled = self.model.scale_labels(view_labels, features)
                aug.references = [e[:1] for e in self.model.matching_embeddings(features)]
                aug.reference_labels = [lab.unsqueeze(0) for lab in scaled]
                aug.previous = [e[0] for e in features.embeddings]
                aug.previous_labels = scaled
                self._augs.append(aug)
        self.frame_index = 0
        return StepResult(one_hot_labels(labels, self.num_labels, self.output_dtype), labels)

    @torch.inference_mode()
    def step(self, image: np.ndarray | Tensor, labels: np.ndarray | Tensor | None = None) -> StepResult:
        """Segment the next frame. `labels` [H, W] annotates objects in this frame: every object it contains
        (values 1..254) takes exactly its annotated mask there (a new value adds an object, a known one is a
        correction), the prediction of the objects it does not contain is kept, and the frame joins the
        reference set. Label values must be compact (cfbi_model.inference.LabelMap maps arbitrary ids)."""
        if not self._augs:
            raise RuntimeError("VideoSegmenter.step() called before start()")
        frame = self._frame(image)
        if tuple(frame.shape[-2:]) != self._frame_size:
            raise ValueError(f"frame size {tuple(frame.shape[-2:])} differs from the video's {self._frame_size}")
        annotation = None if labels is None else self._labels(labels, self._frame_size)

        probs_sum = None
        all_features = []
        for aug in self._augs:
            features = self._features(frame, aug)
            all_features.append(features)
            with self._autocast():
                logits = self.model.segment(
                    features,
                    [r.unsqueeze(0) for r in aug.references],
                    [r.unsqueeze(0) for r in aug.reference_labels],
                    [p.unsqueeze(0) for p in aug.previous],
                    [p.unsqueeze(0) for p in aug.previous_labels],
                    self.num_labels,
                    global_atrous=self.global_atrous,
                    min_matching_pixels=self.min_matching_pixels,
                )[0]
            logits = F.interpolate(
                logits.unsqueeze(0).to(self.output_dtype), size=self._frame_size, mode="bilinear", align_corners=True
            )
            probs = torch.softmax(logits, dim=1)[0]
            if aug.flip:
                probs = probs.flip(-1)
            probs_sum = probs if probs_sum is None else probs_sum + probs
        probs = probs_sum / len(self._augs)
        prediction = probs.argmax(dim=0)

        if annotation is not None:
            annotated = (annotation > 0) & (annotation != IGNORE_LABEL)
            contained = torch.unique(annotation[annotated])
            # A contained object's predicted pixels outside its annotation become background: the annotation
            # is its whole mask in this frame.
            dropped = torch.isin(prediction, contained) & ~annotated
            prediction = torch.where(annotated, annotation, torch.where(dropped, 0, prediction))
            new_count = max(self.num_labels, _count_labels(annotation))
            if new_count > self.num_labels:
                probs = torch.cat([probs, probs.new_zeros((new_count - self.num_labels,) + probs.shape[1:])])
            one_hot = one_hot_labels(prediction, new_count, probs.dtype)
            probs = torch.where((annotated | dropped).unsqueeze(0), one_hot, probs)
            self.num_labels = new_count

        for aug, features in zip(self._augs, all_features):
            view_labels = prediction.flip(-1) if aug.flip else prediction
            scaled = self.model.scale_labels(view_labels, features)
            aug.previous = [e[0] for e in features.embeddings]
            aug.previous_labels = scaled
            if annotation is not None:
                new_refs = self.model.matching_embeddings(features)
                aug.references = [torch.cat([old, new[:1].to(old.dtype)]) for old, new in zip(aug.references, new_refs)]
                aug.reference_labels = [
                    torch.cat([old, new.unsqueeze(0)]) for old, new in zip(aug.reference_labels, scaled)
                ]
        self.frame_index += 1
        return StepResult(probs, prediction)

    def propagate(
        self, frames: Iterable[np.ndarray | Tensor], annotations: Mapping[int, Any]
    ) -> Iterator[FramePrediction]:
        """Segment a whole video lazily: yields (index, labels, probs) per frame of `frames` (any iterable:
        a list, a folder reader, a video reader), from annotations {frame index: label map [H, W] of object
        ids, or a mask file}. Objects start at their first annotation, frames before the first annotation are
        background, later annotations of known objects are corrections; ids are mapped to compact labels and
        back (cfbi_model.inference.propagate)."""
        return propagate(self, frames, annotations)

    # ------------------------------------------------------------------ helpers
    def _autocast(self):
        return autocast(self.amp, self.amp_dtype)

    def _frame(self, image: np.ndarray | Tensor) -> Tensor:
        if self.normalized:
            if (
                not isinstance(image, Tensor)
                or not image.dtype.is_floating_point
                or image.dim() != 3
                or image.shape[0] != 3
            ):
                raise ValueError(
                    "with normalized=True a frame must be a float tensor [3, H, W], got "
                    f"{type(image).__name__} {tuple(getattr(image, 'shape', ()))}"
                )
            return image.to(self.device, self.dtype)
        return preprocess(image, self.device).to(self.dtype)

    def _labels(self, labels: np.ndarray | Tensor, size: tuple[int, int]) -> Tensor:
        if isinstance(labels, np.ndarray):
            labels = torch.from_numpy(np.ascontiguousarray(labels))
        if not isinstance(labels, Tensor):
            raise TypeError(f"labels must be a numpy array or a torch.Tensor, got {type(labels).__name__}")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"labels must be an integer array, got {labels.dtype}")
        if tuple(labels.shape) != tuple(size):
            raise ValueError(f"labels have shape {tuple(labels.shape)} but the frame is {tuple(size)}")
        labels = labels.to(self.device, torch.long)
        if bool((labels < 0).any()):
            raise ValueError("labels must be non-negative")
        return labels

    def _features(self, frame: Tensor, aug: _Augmentation) -> FrameFeatures:
        x = frame.unsqueeze(0)
        if tuple(x.shape[-2:]) != aug.size:
            x = F.interpolate(x, size=aug.size, mode="bicubic", align_corners=False)
        if aug.flip:
            x = x.flip(-1)
        with self._autocast():
            return self.model.extract_features(x)


def _count_labels(labels: Tensor) -> int:
    """L = largest object id + 1 (255 = ignored does not count)."""
    valid = labels[labels != IGNORE_LABEL]
    return int(valid.max().item()) + 1 if valid.numel() else 1
