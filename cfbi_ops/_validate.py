"""Argument checks of the public functions: clear errors that name the argument."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _tensor(value: object, name: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _embedding(value: object, name: str, query: Tensor | None = None) -> Tensor:
    value = _tensor(value, name)
    if value.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{name} must be float16, bfloat16, float32 or float64, got {value.dtype}")
    if query is not None:
        if value.dtype != query.dtype:
            raise ValueError(f"{name} has dtype {value.dtype} but query has {query.dtype}")
        if value.device != query.device:
            raise ValueError(f"{name} is on {value.device} but query is on {query.device}")
    return value


def _labels(value: object, name: str, query: Tensor, shape: Sequence[int]) -> Tensor:
    value = _tensor(value, name)
    if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got {value.dtype}")
    if value.device != query.device:
        raise ValueError(f"{name} is on {value.device} but query is on {query.device}")
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(value.shape)}")
    return value


# num_labels and atrous are held in int32 inside the kernels; every other integer is an int64 of the op schema.
MAX_INT32 = 2**31 - 1
MAX_INT64 = 2**63 - 1


def _positive_int(value: object, name: str, minimum: int, maximum: int = MAX_INT64) -> int:
    # A SymInt is a size traced by torch.export / torch.compile (e.g. num_labels from a tensor's shape).
    if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)):
        raise ValueError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def bias(value: object, name: str, query: Tensor) -> Tensor:
    """fg_bias / bg_bias: a one-element tensor (any shape, e.g. [1, 1, 1]) or a Python number."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # torch.full writes the value on the device: no blocking host-to-device copy, and CUDA-graph safe.
        return torch.full((1,), float(value), dtype=query.dtype, device=query.device)
    value = _tensor(value, name)
    if value.numel() != 1:
        raise ValueError(f"{name} must hold exactly one element, got shape {tuple(value.shape)}")
    if not value.dtype.is_floating_point:
        raise ValueError(f"{name} must be a floating tensor, got {value.dtype}")
    if value.device != query.device:
        raise ValueError(f"{name} is on {value.device} but query is on {query.device}")
    return value


def global_args(
    query: object, reference: object, ref_labels: object, num_labels: object, atrous: object, atrous_min_pixels: object
) -> tuple[Tensor, Tensor, Tensor]:
    """Checks global_match's arguments; returns reference [B, T, C, Hr, Wr] and ref_labels [B, T, Hr, Wr]."""
    query = _embedding(query, "query")
    if query.dim() != 4:
        raise ValueError(f"query must be [B, C, H, W], got shape {tuple(query.shape)}")
    reference = _embedding(reference, "reference", query)
    if reference.dim() == 4:
        reference = reference.unsqueeze(1)
        labels_shape = (reference.shape[0], reference.shape[3], reference.shape[4])
        ref_labels = _labels(ref_labels, "ref_labels", query, labels_shape).unsqueeze(1)
    elif reference.dim() == 5:
        labels_shape = (reference.shape[0], reference.shape[1], reference.shape[3], reference.shape[4])
        ref_labels = _labels(ref_labels, "ref_labels", query, labels_shape)
    else:
        raise ValueError(f"reference must be [B, C, Hr, Wr] or [B, T, C, Hr, Wr], got shape {tuple(reference.shape)}")
    if reference.shape[0] != query.shape[0]:
        raise ValueError(f"reference has batch {reference.shape[0]} but query has {query.shape[0]}")
    if reference.shape[2] != query.shape[1]:
        raise ValueError(f"reference has {reference.shape[2]} channels but query has {query.shape[1]}")
    _positive_int(num_labels, "num_labels", 1, MAX_INT32)
    _positive_int(atrous, "atrous", 1, MAX_INT32)
    _positive_int(atrous_min_pixels, "atrous_min_pixels", 0)
    return query, reference, ref_labels


def local_args(
    query: object, previous: object, prev_labels: object, num_labels: object, windows: object, atrous: object
) -> tuple[Tensor, Tensor, Tensor, list[int]]:
    """Checks local_match's arguments; returns them with windows as a list of ints."""
    query = _embedding(query, "query")
    if query.dim() != 4:
        raise ValueError(f"query must be [B, C, H, W], got shape {tuple(query.shape)}")
    previous = _embedding(previous, "previous", query)
    if previous.shape != query.shape:
        raise ValueError(f"previous must have the shape of query {tuple(query.shape)}, got {tuple(previous.shape)}")
    batch, _, height, width = query.shape
    prev_labels = _labels(prev_labels, "prev_labels", query, (batch, height, width))
    _positive_int(num_labels, "num_labels", 1, MAX_INT32)
    _positive_int(atrous, "atrous", 1, MAX_INT32)
    if isinstance(windows, int) or not isinstance(windows, Sequence) or len(windows) == 0:
        raise ValueError(f"windows must be a non-empty sequence of ints, got {windows!r}")
    windows = [_positive_int(w, "windows", 0) for w in windows]
    return query, previous, prev_labels, windows


def raw_op_args(
    query: Tensor, candidates: Tensor, labels: Tensor, num_labels: int, fg_bias: Tensor, bg_bias: Tensor, atrous: int
) -> None:
    """The device / dtype / range checks of csrc/checks.h, for the fake (meta) kernels of the raw ops: a meta
    tensor among real ones dispatches there, and must fail as the real kernels do (RuntimeError)."""
    for name, value in (("candidates", candidates), ("labels", labels), ("fg_bias", fg_bias), ("bg_bias", bg_bias)):
        if value.device != query.device:
            raise RuntimeError(f"{name} is on {value.device} but query is on {query.device}")
    if candidates.dtype != query.dtype:
        raise RuntimeError(f"the reference / previous frame has dtype {candidates.dtype} but query has {query.dtype}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise RuntimeError(f"labels must be an integer tensor, got {labels.dtype}")
    for name, value in (("fg_bias", fg_bias), ("bg_bias", bg_bias)):
        if value.numel() != 1 or not value.dtype.is_floating_point:
            raise RuntimeError(
                f"{name} must be a floating tensor of one element, got {value.dtype} {tuple(value.shape)}"
            )
    if not 1 <= num_labels <= MAX_INT32:
        raise RuntimeError(f"num_labels must be in [1, 2^31), got {num_labels}")
    if not 1 <= atrous <= MAX_INT32:
        raise RuntimeError(f"atrous must be in [1, 2^31), got {atrous}")
