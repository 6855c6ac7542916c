"""Video inference with CFBI+ following the authors' evaluation protocol (networks/engine/eval_manager.py,
dataloaders/custom_transforms.py):

* every frame is resized (bicubic) so that its long edge is at most 1040 px (800 px when several scales are
  used), times each scale, with both sides rounded to 16k + 1;
* the labels are nearest-resized from the frame resolution to each feature grid;
* the 4x logits are upsampled bilinearly (align_corners=True) to the frame size, a softmax over the labels
  gives probabilities, which are averaged over scales and flips; the argmax is the prediction;
* objects that first appear in a later frame (YouTube-VOS) are added from that frame's annotation, and the
  frame, with the merged labels, joins the reference set.

The engine owns the object ids (docs/design.md, "Inference"): an annotation may come on any frame, with any ids
in 1..254 (255 ignored); they are mapped to compact labels 0..L-1 for the network and back on output, so the
network sees only the objects that exist and never predicts an id absent from every annotation. Frames before
the first annotation are background; a later annotation of a known object is a correction (the objects it
contains take their annotated masks, the others keep their prediction, and the frame joins the reference set).

Memory stays bounded on long videos: the engine keeps the reference frames' embeddings (the first frame and
the frames that brought annotations) and the previous frame's, nothing else.

    seg = VideoSegmenter(model)
    for index, frame in enumerate(frames):
        result = seg.step(frame, annotations.get(index))   # FramePrediction(index, labels, probs, ids, annotated)
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import IGNORE_LABEL, SINGLE_SCALE_LONG_EDGE, InferenceConfig
from ..errors import InputError
from ..io.masks import read_mask
from ..modeling.matching import one_hot_labels
from ..modeling.network import CFBIPlus, FrameFeatures
from ..modeling.precision import accumulation_dtype, autocast, compute_dtype
from ..modeling.preprocess import preprocess

__all__ = [
    "VideoSegmenter",
    "StepResult",
    "FramePrediction",
    "LabelMap",
    "AnnotationError",
    "inference_size",
    "apply_annotation",
    "read_annotation",
]

MAX_OBJECT_ID = IGNORE_LABEL - 1  # 254: 255 marks ignored pixels


class AnnotationError(InputError, ValueError):
    """An annotation that cannot be used (size, ids, index); the message says which one."""


@dataclass
class StepResult:
    """The network's view of a frame: probs [L, H, W] over the compact labels (float32; float64 for a float64
    model) and labels [H, W] int64 (on the model's device)."""

    probs: Tensor
    labels: Tensor


@dataclass
class FramePrediction:
    """One frame's result; unpacks as (index, labels, probs).

    index: frame index in the video. labels: [H, W] uint8 object ids (those of the annotations).
    probs: [L, H, W] label probabilities (float32; float64 for a float64 model) on the model's device, channel l
    for object ids[l] (ids[0] = 0, background). annotated: the frame had an annotation.
    """

    index: int
    labels: np.ndarray
    probs: Tensor
    ids: tuple[int, ...]
    annotated: bool = False

    def __iter__(self) -> Iterator[Any]:
        return iter((self.index, self.labels, self.probs))


class LabelMap:
    """Object ids of the annotations <-> compact labels 0..L-1 of the network (0 = background stays 0).

    New ids are appended in increasing order as annotations bring them; ids[l] is the object id of label l.
    """

    def __init__(self) -> None:
        self.ids: list[int] = [0]
        self._to_label = np.full(256, -1, np.int64)
        self._to_label[0] = 0
        self._to_label[IGNORE_LABEL] = IGNORE_LABEL

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, mask: np.ndarray) -> list[int]:
        """Register the object ids of an annotation [H, W]; returns the ids that were new."""
        present = [int(v) for v in np.unique(mask) if v not in (0, IGNORE_LABEL)]
        if present and present[-1] > MAX_OBJECT_ID:
            raise AnnotationError(
                f"object id {present[-1]} is above {MAX_OBJECT_ID} ({IGNORE_LABEL} marks ignored pixels)"
            )
        new = [v for v in present if self._to_label[v] < 0]
        for value in new:
            self._to_label[value] = len(self.ids)
            self.ids.append(value)
        return new

    def to_labels(self, mask: np.ndarray) -> np.ndarray:
        """Compact labels [H, W] int64 of an annotation whose ids were added."""
        labels = self._to_label[np.asarray(mask, dtype=np.int64)]
        if (labels < 0).any():
            raise AnnotationError("annotation holds ids that were not added to the label map")
        return labels

    def to_ids(self, labels: np.ndarray | Tensor) -> np.ndarray:
        """Object ids [H, W] uint8 of compact labels."""
        if isinstance(labels, Tensor):
            labels = labels.cpu().numpy()
        lookup = np.zeros(256, np.uint8)  # ignored pixels (255) of an annotated frame are written as background
        lookup[: len(self.ids)] = self.ids
        return lookup[np.asarray(labels, dtype=np.int64)]


Annotation = np.ndarray | Tensor | str | os.PathLike


def read_annotation(value: Annotation, index: int, size: tuple[int, int]) -> np.ndarray:
    """Frame `index`'s annotation (a label map [H, W] of object ids, or a mask file) as uint8 ids [H, W];
    AnnotationError for a non-integer map, ids outside 0..254 (and 255) or a size other than the frame's."""
    array = _annotation_ids(value, index)
    if array.shape != size:
        where = f" ({os.fspath(value)})" if isinstance(value, (str, os.PathLike)) else ""
        raise AnnotationError(
            f"annotation of frame {index}{where} is {array.shape[1]}x{array.shape[0]} (WxH) but the frame "
            f"is {size[1]}x{size[0]}"
        )
    return array


def _annotation_ids(value: Annotation, index: int) -> np.ndarray:
    if isinstance(value, (str, os.PathLike)):
        return read_mask(value)[0]
    if isinstance(value, Tensor):
        value = value.cpu().numpy()
    array = np.asarray(value)
    if array.ndim != 2 or not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        raise AnnotationError(
            f"annotation of frame {index} must be an integer array [H, W], got {array.dtype} {array.shape}"
        )
    if array.size and (array.min() < 0 or array.max() > IGNORE_LABEL):
        raise AnnotationError(
            f"annotation of frame {index} holds ids outside 0..{MAX_OBJECT_ID} "
            f"(and {IGNORE_LABEL} for ignored pixels): {int(array.min())}..{int(array.max())}"
        )
    return array.astype(np.uint8)


def inference_size(
    height: int, width: int, scale: float = 1.0, max_long_edge: float | None = SINGLE_SCALE_LONG_EDGE
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
        config: the inference settings, held whole (InferenceConfig: global atrous rate, min matching pixels,
            scales, flip, amp, long-edge cap); default InferenceConfig().
        normalized: frames are already network input, float tensors [3, H, W] (BGR, normalised).
        **overrides: InferenceConfig fields replacing those of `config` (e.g. min_matching_pixels=100).
    """

    def __init__(
        self, model: CFBIPlus, config: InferenceConfig | None = None, *, normalized: bool = False, **overrides: Any
    ) -> None:
        config = config if config is not None else InferenceConfig()
        self.config = replace(config, **overrides) if overrides else config
        self.model = model.eval()
        self.normalized = bool(normalized)
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.output_dtype = accumulation_dtype(self.dtype)  # probabilities: float64 for a float64 model
        if self.config.amp and self.device.type != "cuda" and self.config.precision == "float32":
            warnings.warn("VideoSegmenter: amp=True only applies on CUDA; running in float32", stacklevel=2)
        # The network's compute dtype under autocast (None: the model's own). 16-bit on the CPU runs channels-last,
        # which oneDNN's bf16 / fp16 convolutions want.
        self.compute_dtype = compute_dtype(self.config.precision, self.device, self.config.amp)
        self.channels_last = self.compute_dtype is not None and self.device.type == "cpu"
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self._extract_features, self._segment = (
            compiled(model) if self.config.compile else (model.extract_features, model.segment)
        )
        self.reset()

    # ------------------------------------------------------------------ public API
    @property
    def num_objects(self) -> int:
        return max(self.num_labels - 1, 0)

    @property
    def num_references(self) -> int:
        return self._augs[0].references[0].shape[0] if self._augs else 0

    @property
    def ids(self) -> tuple[int, ...]:
        """The object ids of the labels so far (ids[0] = 0, background)."""
        return tuple(self.label_map.ids)

    def reset(self) -> None:
        """Forget the video: the next step() is its first frame."""
        self._augs: list[_Augmentation] = []
        self._frame_size: tuple[int, int] | None = None
        self.label_map = LabelMap()
        self.num_labels = 0
        self.frame_index = -1

    @torch.inference_mode()
    def step(self, frame: np.ndarray | Tensor, annotation: Annotation | None = None) -> FramePrediction:
        """Segment the next frame of the video.

        frame: RGB uint8 [H, W, 3] (or, with normalized=True, network input [3, H, W]).
        annotation: a label map [H, W] of object ids (0 background, 1..254 objects, 255 ignored) or a mask
            file. Every object it contains takes exactly its annotated mask in this frame (a new id adds an
            object, a known one is a correction); the other objects keep their prediction; the frame joins the
            reference set. Frames before the first annotation are background.
        Returns the frame's FramePrediction (labels in the annotations' ids).
        """
        index = self.frame_index + 1
        image = self._frame(frame)
        size = tuple(image.shape[-2:])
        labels = None
        if annotation is not None:
            mask = read_annotation(annotation, index, size)
            self.label_map.add(mask)
            labels = self._labels(self.label_map.to_labels(mask), size)
        if not self._augs and labels is None:  # before the first annotation: background
            self.frame_index = index
            probs = torch.ones((1, *size), device=self.device, dtype=self.output_dtype)
            return FramePrediction(index, np.zeros(size, np.uint8), probs, (0,))
        result = self._begin(image, labels) if not self._augs else self._advance(image, labels)
        self.frame_index = index
        return FramePrediction(index, self.label_map.to_ids(result.labels), result.probs, self.ids, labels is not None)

    def start(self, image: np.ndarray | Tensor, labels: Annotation) -> FramePrediction:
        """Deprecated alias, kept for one release: reset() and step(image, labels)."""
        warnings.warn(
            "VideoSegmenter.start() is deprecated: call reset() and step(frame, annotation)",
            DeprecationWarning,
            stacklevel=2,
        )
        self.reset()
        return self.step(image, labels)

    def propagate(
        self, frames: Iterable[np.ndarray | Tensor], annotations: Mapping[int, Any]
    ) -> Iterator[FramePrediction]:
        """Segment a whole video lazily: yields a FramePrediction per frame of `frames` (any iterable), from
        annotations {frame index: label map of object ids, or a mask file} (cfbi_model.inference.driver)."""
        from .driver import propagate  # noqa: PLC0415 - the driver builds on the engine

        return propagate(self, frames, annotations)

    # ------------------------------------------------------------------ the network
    def _begin(self, frame: Tensor, labels: Tensor) -> StepResult:
        """The first annotated frame (network input [3, H, W]): its labels are the result and the first
        reference."""
        height, width = frame.shape[-2:]
        self._frame_size = (height, width)
        self.num_labels = _count_labels(labels)
        cap = self.config.long_edge_cap
        for scale in self.config.scales:
            for flipped in (False, True) if self.config.flip else (False,):
                aug = _Augmentation(scale, flipped, inference_size(height, width, scale, cap))
                features = self._features(frame, aug)
                view_labels = labels.flip(-1) if flipped else labels
                scaled = self.model.scale_labels(view_labels, features)
                aug.references = [e[:1] for e in self.model.matching_embeddings(features)]
                aug.reference_labels = [lab.unsqueeze(0) for lab in scaled]
                aug.previous = [e[0] for e in features.embeddings]
                aug.previous_labels = scaled
                self._augs.append(aug)
        return StepResult(one_hot_labels(labels, self.num_labels, self.output_dtype), labels)

    def _advance(self, frame: Tensor, annotation: Tensor | None) -> StepResult:
        """A later frame (network input [3, H, W]) with its annotation's compact labels, if any."""
        if tuple(frame.shape[-2:]) != self._frame_size:
            raise ValueError(f"frame size {tuple(frame.shape[-2:])} differs from the video's {self._frame_size}")
        probs_sum = None
        all_features = []
        for aug in self._augs:
            features = self._features(frame, aug)
            all_features.append(features)
            with self._autocast():
                logits = self._segment(
                    features,
                    [r.unsqueeze(0) for r in aug.references],
                    [r.unsqueeze(0) for r in aug.reference_labels],
                    [p.unsqueeze(0) for p in aug.previous],
                    [p.unsqueeze(0) for p in aug.previous_labels],
                    self.num_labels,
                    global_atrous=self.config.global_atrous,
                    min_matching_pixels=self.config.min_matching_pixels,
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
            probs, prediction = apply_annotation(probs, prediction, annotation, self.num_labels)
            self.num_labels = probs.shape[0]

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
        return StepResult(probs, prediction)

    # ------------------------------------------------------------------ helpers
    def _autocast(self):
        return autocast(self.compute_dtype is not None, self.compute_dtype, self.device.type)

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

    def _labels(self, labels: np.ndarray, size: tuple[int, int]) -> Tensor:
        if tuple(labels.shape) != tuple(size):
            raise ValueError(f"labels have shape {tuple(labels.shape)} but the frame is {tuple(size)}")
        return torch.from_numpy(np.ascontiguousarray(labels)).to(self.device, torch.long)

    def _features(self, frame: Tensor, aug: _Augmentation) -> FrameFeatures:
        x = frame.unsqueeze(0)
        if tuple(x.shape[-2:]) != aug.size:
            x = F.interpolate(x, size=aug.size, mode="bicubic", align_corners=False)
        if aug.flip:
            x = x.flip(-1)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            return self._extract_features(x)


def compiled(model: CFBIPlus) -> tuple[Any, Any]:
    """torch.compile'd (extract_features, segment) of `model`, made once per model and process and kept on it, so
    that every VideoSegmenter and every video of a process reuses them (a predict run over a split compiles once).

    Shapes: torch's automatic dynamic shapes; the first frame size and object count compile static graphs, the
    next different ones recompile parts with symbolic sizes (measured: the second and third sizes), later ones
    reuse those. On the CPU the weights
    are frozen into the graphs (inductor's freezing: constant folding, weight pre-packing for oneDNN)."""
    cached = model.__dict__.get("_cfbi_compiled")
    if cached is None:
        options = {"freezing": True} if next(model.parameters()).device.type == "cpu" else None
        cached = (
            torch.compile(model.extract_features, options=options),
            torch.compile(model.segment, options=options),
        )
        model.__dict__["_cfbi_compiled"] = cached
    return cached


def apply_annotation(probs: Tensor, prediction: Tensor, annotation: Tensor, num_labels: int) -> tuple[Tensor, Tensor]:
    """A later frame's annotation (compact labels [H, W]) over the network's probs [L, H, W] and prediction [H, W]:
    every object it contains takes exactly its annotated mask, the others keep their prediction. Returns probs
    [L', H, W] (L' = L + the objects it brings; one-hot where the annotation decided) and the labels [H, W]."""
    annotated = (annotation > 0) & (annotation != IGNORE_LABEL)
    contained = torch.unique(annotation[annotated])
    # A contained object's predicted pixels outside its annotation become background: the annotation is its whole
    # mask in this frame.
    dropped = torch.isin(prediction, contained) & ~annotated
    prediction = torch.where(annotated, annotation, torch.where(dropped, 0, prediction))
    new_count = max(num_labels, _count_labels(annotation))
    if new_count > num_labels:
        probs = torch.cat([probs, probs.new_zeros((new_count - num_labels,) + probs.shape[1:])])
    one_hot = one_hot_labels(prediction, new_count, probs.dtype)
    probs = torch.where((annotated | dropped).unsqueeze(0), one_hot, probs)
    return probs, prediction


def _count_labels(labels: Tensor) -> int:
    """L = largest object id + 1 (255 = ignored does not count)."""
    valid = labels[labels != IGNORE_LABEL]
    return int(valid.max().item()) + 1 if valid.numel() else 1
