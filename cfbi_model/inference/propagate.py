"""Propagating annotations through a video in one call: annotations on any frame, arbitrary object ids.

    for index, labels, probs in segmenter.propagate(frames, {0: first_mask, 40: late_object_mask}):
        ...   # labels [H, W] uint8 in the annotations' ids; probs [L, H, W] (channel l = object ids[l])

Rules (docs/design.md, "Inference"):

* an object starts at the first annotated frame that contains it; frames before the first annotation are
  background;
* a later annotation of a known object is a correction: in that frame the objects it contains take their
  annotated masks, the others keep their prediction, and the frame joins the reference set;
* object ids are mapped to a compact label set (ids {0, 7, 200} -> labels 0, 1, 2) and back on output, so
  the network sees only the objects that exist and never predicts an id absent from every annotation;
  255 marks ignored pixels.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..config import IGNORE_LABEL
from ..io.masks import read_mask

__all__ = ["LabelMap", "FramePrediction", "AnnotationError", "propagate"]

MAX_OBJECT_ID = IGNORE_LABEL - 1  # 254: 255 marks ignored pixels


class AnnotationError(ValueError):
    """An annotation that cannot be used (size, ids, index); the message says which one."""


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


@dataclass
class FramePrediction:
    """One frame's result; unpacks as (index, labels, probs).

    index: frame index in the video. labels: [H, W] uint8 object ids (those of the annotations).
    probs: [L, H, W] label probabilities (float32; float64 for a float64 model) on the model's device,
    channel l for object ids[l]
    (ids[0] = 0, background). annotated: the frame had an annotation.
    """

    index: int
    labels: np.ndarray
    probs: Tensor
    ids: tuple[int, ...]
    annotated: bool = False

    def __iter__(self) -> Iterator[Any]:
        return iter((self.index, self.labels, self.probs))


AnnotationValue = np.ndarray | Tensor | str | os.PathLike


def _load_annotation(value: AnnotationValue, index: int) -> np.ndarray:
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


def propagate(
    segmenter: Any, frames: Iterable[np.ndarray | Tensor], annotations: Mapping[int, AnnotationValue]
) -> Iterator[FramePrediction]:
    """Segment `frames` (any iterable, consumed lazily) with `segmenter` (a VideoSegmenter) from annotations
    {frame index: label map [H, W] or a mask file path}; yields one FramePrediction per frame, in order.

    Annotation files are read when their frame comes. AnnotationError for an annotation whose size differs
    from its frame, ids above 254, no annotation at all, or indices beyond the last frame (raised after the
    last frame).
    """
    annotations = dict(annotations)
    if not annotations:
        raise AnnotationError("no annotation: give at least one frame's label map")
    bad = [k for k in annotations if not isinstance(k, (int, np.integer)) or k < 0]
    if bad:
        raise AnnotationError(f"annotation keys must be frame indices >= 0, got {bad[0]!r}")
    label_map = LabelMap()
    started = False
    count = 0
    for index, frame in enumerate(frames):
        count = index + 1
        height, width = frame.shape[-2:] if segmenter.normalized else frame.shape[:2]
        value = annotations.pop(index, None)
        mask = None
        if value is not None:
            mask = _load_annotation(value, index)
            if mask.shape != (height, width):
                where = f" ({os.fspath(value)})" if isinstance(value, (str, os.PathLike)) else ""
                raise AnnotationError(
                    f"annotation of frame {index}{where} is {mask.shape[1]}x{mask.shape[0]} "
                    f"(WxH) but the frame is {width}x{height}"
                )
            label_map.add(mask)
            mask = label_map.to_labels(mask)
        if not started and mask is None:  # before the first annotation: background
            probs = torch.ones((1, height, width), device=segmenter.device, dtype=segmenter.output_dtype)
            yield FramePrediction(index, np.zeros((height, width), np.uint8), probs, (0,))
            continue
        if not started:
            result = segmenter.start(frame, mask)
            started = True
        else:
            result = segmenter.step(frame, mask)
        yield FramePrediction(
            index, label_map.to_ids(result.labels), result.probs, tuple(label_map.ids), mask is not None
        )
    if annotations:
        first = min(annotations)
        raise AnnotationError(f"annotation of frame {first} but the video has {count} frame(s)")
