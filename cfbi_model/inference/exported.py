"""Video inference with the packages of `cfbi export` (cfbi_model.inference.export): the VideoSegmenter interface, the
network replaced by the two AOTInductor packages, everything else (the loop, the annotations, the object ids, the
state) here on the host, as examples/cpp/segment_video.cpp does it in C++.

    seg = cfbi_model.load_exported("exported/")
    for index, frame in enumerate(frames):
        result = seg.step(frame, annotations.get(index))   # FramePrediction(index, labels, probs, ids, annotated)

Single scale, no flip (multi-scale / flip test-time augmentation stays in VideoSegmenter).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..config import IGNORE_LABEL, InferenceConfig
from ..modeling.matching import one_hot_labels, resize_labels
from .export import FORMAT_VERSION, MANIFEST, ExportError
from .segmenter import (
    Annotation,
    FramePrediction,
    LabelMap,
    apply_annotation,
    inference_size,
    read_annotation,
)

__all__ = ["ExportedSegmenter", "load_exported", "read_manifest"]


def _release(version: str) -> str:
    return version.split("+")[0]


def read_manifest(folder: str | os.PathLike, *, allow_other_torch: bool = False) -> dict[str, Any]:
    """The export.json of an export folder, checked against this torch release unless allow_other_torch;
    ExportError (one line) otherwise."""
    path = os.path.join(folder, MANIFEST)
    try:
        with open(path) as handle:
            manifest = json.load(handle)
    except FileNotFoundError:
        raise ExportError(f"{os.fspath(folder)!r} holds no {MANIFEST}: not a folder written by `cfbi export`") from None
    except (OSError, ValueError) as error:
        raise ExportError(f"cannot read {path!r}: {error}") from None
    if manifest.get("format") != "cfbi-export" or manifest.get("format_version") != FORMAT_VERSION:
        raise ExportError(f"{path!r} is not a cfbi export of format version {FORMAT_VERSION}")
    # AOTInductor packages hold code compiled against one torch. Another release may load and run them (a 2.14.1
    # package ran under 2.13.0 here, results equal), but nothing promises it: the caller opts in.
    exported_with = str(manifest.get("torch_version"))
    if _release(exported_with) != _release(torch.__version__) and not allow_other_torch:
        raise ExportError(
            f"{os.fspath(folder)!r} was exported with torch {exported_with}, this is torch {torch.__version__}: "
            "export it again with this torch (cfbi export), or allow another torch (--allow-other-torch)"
        )
    return manifest


def _require_ops() -> None:
    """The packages call cfbi::global_match / local_match through the dispatcher: the op library must be loaded."""
    import cfbi_ops  # noqa: PLC0415 - loads the op library

    if not cfbi_ops.HAS_EXTENSION:
        raise ExportError(
            "the exported packages call the cfbi:: custom ops, but the cfbi_ops op library is not loaded "
            f"({cfbi_ops.EXTENSION_ERROR}); build it (scripts/setup.sh) or load it before the packages"
        )


def load_exported(
    folder: str | os.PathLike, *, device: str | torch.device | None = None, allow_other_torch: bool = False
) -> ExportedSegmenter:
    """An ExportedSegmenter running the packages of `cfbi export` in `folder` (on the device they were exported
    for, unless `device` says another of the same type, e.g. cuda:1). allow_other_torch: run packages exported
    with another torch release (refused by default; a package that does not load is still an ExportError)."""
    return ExportedSegmenter(folder, device=device, allow_other_torch=allow_other_torch)


class ExportedSegmenter:
    """VideoSegmenter's step / reset / ids with the exported packages; see the module docstring."""

    def __init__(
        self, folder: str | os.PathLike, *, device: str | torch.device | None = None, allow_other_torch: bool = False
    ) -> None:
        self.folder = os.fspath(folder)
        self.manifest = manifest = read_manifest(folder, allow_other_torch=allow_other_torch)
        _require_ops()
        self.device = torch.device(device if device is not None else manifest["device"])
        self.config = InferenceConfig(
            global_atrous=manifest["inference"]["global_atrous"],
            min_matching_pixels=manifest["inference"]["min_matching_pixels"],
            max_long_edge=manifest["long_edge_cap"],
        )
        self.output_dtype = torch.float32
        packages = {}
        for name in ("encode", "segment"):
            path = os.path.join(self.folder, manifest["packages"][name])
            if not os.path.isfile(path):
                raise ExportError(f"package {path!r} is missing")
            try:
                packages[name] = torch._inductor.aoti_load_package(path)
            except Exception as error:  # noqa: BLE001 - the loader's errors are many-lined RuntimeErrors
                first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise ExportError(f"cannot load {path!r}: {first}") from None
        self._encode, self._segment = packages["encode"], packages["segment"]
        self.reference_channels = list(manifest["reference_channels"])
        self.reset()

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(self.label_map.ids)

    @property
    def num_objects(self) -> int:
        return max(self.num_labels - 1, 0)

    @property
    def num_references(self) -> int:
        return self._references[0].shape[0] if self._references else 0

    def reset(self) -> None:
        """Forget the video: the next step() is its first frame."""
        self.label_map = LabelMap()
        self.num_labels = 0
        self.frame_index = -1
        self._frame_size: tuple[int, int] | None = None
        self._network_size: tuple[int, int] | None = None
        self._references: list[Tensor] = []  # per scale [T, C_s, h_s, w_s]
        self._reference_labels: list[Tensor] = []  # per scale [T, h_s, w_s]
        self._previous: list[Tensor] = []  # per scale [E, h_s, w_s]
        self._previous_labels: list[Tensor] = []  # per scale [h_s, w_s]

    @torch.inference_mode()
    def step(self, frame: np.ndarray | Tensor, annotation: Annotation | None = None) -> FramePrediction:
        """As VideoSegmenter.step: frame RGB uint8 [H, W, 3]; annotation a label map of object ids or a mask file.
        ExportError when the frame or the object count is outside the packages' bounds."""
        index = self.frame_index + 1
        image = self._frame(frame)
        size = (int(image.shape[0]), int(image.shape[1]))
        labels = None
        if annotation is not None:
            mask = read_annotation(annotation, index, size)
            known = set(self.label_map.ids)
            count = len(known | {int(v) for v in np.unique(mask) if v != IGNORE_LABEL}) - 1
            if count > self.manifest["max_objects"]:
                raise ExportError(
                    f"frame {index}'s annotation brings the video to {count} objects; the packages in "
                    f"{self.folder!r} take at most {self.manifest['max_objects']} (cfbi export --max-objects)"
                )
            self.label_map.add(mask)
            labels = torch.from_numpy(self.label_map.to_labels(mask)).to(self.device)
        if self._frame_size is None and labels is None:  # before the first annotation: background
            self.frame_index = index
            probs = torch.ones((1, *size), device=self.device, dtype=self.output_dtype)
            return FramePrediction(index, np.zeros(size, np.uint8), probs, (0,))
        if self._frame_size is not None and size != self._frame_size:
            raise ValueError(f"frame size {size} differs from the video's {self._frame_size}")
        if labels is not None and self.num_references + 1 > self.manifest["max_references"]:
            raise ExportError(
                f"frame {index}'s annotation would be reference frame {self.num_references + 1}; the packages in "
                f"{self.folder!r} take at most {self.manifest['max_references']} (cfbi export --max-references)"
            )
        features = self._encode_frame(image)
        if self._frame_size is None:
            self._frame_size = size
            self.num_labels = len(self.label_map)
            probs = one_hot_labels(labels, self.num_labels, self.output_dtype)
            prediction = labels
        else:
            if self.num_labels == 1:  # background only: the softmax over one label
                probs = torch.ones((1, *size), device=self.device, dtype=self.output_dtype)
                prediction = torch.zeros(size, dtype=torch.long, device=self.device)
            else:
                ids = torch.tensor(self.label_map.ids[: self.num_labels], device=self.device)
                grid = torch.empty((*size, 0), dtype=torch.uint8, device=self.device)
                probs, prediction = self._segment(
                    *features,
                    *self._references,
                    *self._reference_labels,
                    *self._previous,
                    *self._previous_labels,
                    ids,
                    grid,
                )
            if labels is not None:
                probs, prediction = apply_annotation(probs, prediction, labels, self.num_labels)
                self.num_labels = probs.shape[0]
        self._update(features, prediction, labels is not None)
        self.frame_index = index
        return FramePrediction(index, self.label_map.to_ids(prediction), probs, self.ids, labels is not None)

    # ------------------------------------------------------------------ helpers
    def _frame(self, frame: np.ndarray | Tensor) -> Tensor:
        image = torch.from_numpy(np.ascontiguousarray(frame)) if isinstance(frame, np.ndarray) else frame
        if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[-1] != 3 or image.dtype != torch.uint8:
            raise ValueError(
                f"a frame must be an RGB uint8 array [H, W, 3], got {type(frame).__name__} "
                f"{getattr(frame, 'dtype', '')} {tuple(getattr(frame, 'shape', ()))}"
            )
        low, high = self.manifest["frame"]["min_side"], self.manifest["frame"]["max_side"]
        if not (low <= image.shape[0] <= high and low <= image.shape[1] <= high):
            raise ExportError(
                f"frame {self.frame_index + 1} is {image.shape[1]}x{image.shape[0]} (WxH); the packages in "
                f"{self.folder!r} take sides of {low}..{high} pixels (cfbi export --max-side)"
            )
        return image.to(self.device).contiguous()

    def _encode_frame(self, image: Tensor) -> tuple[Tensor, ...]:
        if self._network_size is None:
            size = inference_size(image.shape[0], image.shape[1], 1.0, self.manifest["long_edge_cap"])
            low, high = self.manifest["min_network_side"], self.manifest["max_network_side"]
            if not (low <= min(size) and max(size) <= high):
                raise ExportError(
                    f"the network size of a {image.shape[1]}x{image.shape[0]} frame is {size[1]}x{size[0]}; the "
                    f"packages in {self.folder!r} take sides of {low}..{high} (cfbi export --max-network-side)"
                )
            self._network_size = size
        grid = torch.empty((*self._network_size, 0), dtype=torch.uint8, device=self.device)
        # The packages read their inputs with the strides they were traced with (contiguous) and do not check them;
        # encode may hand its outputs back channels-last.
        return tuple(t.contiguous() for t in self._encode(image, grid))

    def _update(self, features: tuple[Tensor, ...], labels: Tensor, annotated: bool) -> None:
        """The previous frame becomes this one; an annotated frame also joins the references."""
        embeddings = features[:3]
        scaled = [resize_labels(labels, e.shape[-2:]) for e in embeddings]
        self._previous = [e[0] for e in embeddings]
        self._previous_labels = scaled
        if annotated:
            new = [e[:, :c] for e, c in zip(embeddings, self.reference_channels)]
            if self._references:
                self._references = [torch.cat([old, n]) for old, n in zip(self._references, new)]
                self._reference_labels = [torch.cat([old, s[None]]) for old, s in zip(self._reference_labels, scaled)]
            else:
                self._references = [n.contiguous() for n in new]
                self._reference_labels = [s[None] for s in scaled]
