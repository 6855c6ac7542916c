"""Drop-in replacements for the matching functions of the CFBI authors' code (`networks/layers/matching.py` of
z-x-yang/CFBI), computed by the fused operators `cfbi_ops.global_match` and `cfbi_ops.local_match`.

    # instead of: from networks.layers.matching import <the same four names>
    from cfbi_ops.compat import global_matching, global_matching_for_eval, local_matching, foreground2background

Same names, arguments, defaults, layouts and return shapes as the original: channels-last embeddings
[H, W, C], one-hot float labels [H, W, L] (a pixel whose row is all zero belongs to no object), per-label
`dis_bias` of L elements (e.g. [L, 1, 1, 1]) or one element, outputs [1, H', W', L, K]. The score is
(sigmoid(min distance + dis_bias[l]) - 0.5) * 2; a label without any candidate gives 1.

Side effect, kept by default: at atrous_rate > 1, `global_matching` (and `global_matching_for_eval` when
atrous_obj_pixel_num > 0) zeroes, in the caller's one-hot labels, every pixel off the atrous grid of each
object with more than atrous_obj_pixel_num * atrous_rate**2 pixels, as the original does; CFBI+ then uses
those labels for its instance-level attention. Set `INPLACE_LABELS = False` (module-wide) or pass
`inplace_labels=False` (per call) to leave the labels untouched; the matching result is the same either way.

What differs from the original (README, "Using cfbi_ops in a CFBI-based codebase"):
- distances are exact (||q - r||^2 per candidate) instead of the expanded ||q||^2 + ||r||^2 - 2 q.r, so float32
  results differ by rounding and a near-tie may select the other candidate (and route its gradient there);
- use_float16=True rounds the embeddings to float16 as the original does, then matches in float32;
- n_chunks and allow_parallel are accepted and ignored (the fused ops need no chunking);
- input errors raise ValueError naming the argument, including labels that are not 0 / 1 one-hot.
"""

from __future__ import annotations

import numbers
import operator
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .ops import global_match, local_match

__all__ = ["INPLACE_LABELS", "foreground2background", "global_matching", "global_matching_for_eval", "local_matching"]

# Module-wide default of the `inplace_labels` argument: reproduce the original's in-place label subsampling.
INPLACE_LABELS = True


# ---------------------------------------------------------------------------------------------------------------
# Argument checks and conversions
# ---------------------------------------------------------------------------------------------------------------


def _embedding(value: object, name: str, like: Tensor | None = None) -> Tensor:
    if not isinstance(value, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() != 3:
        raise ValueError(f"{name} must be [H, W, C], got shape {tuple(value.shape)}")
    if not value.dtype.is_floating_point:
        raise ValueError(f"{name} must be a floating tensor, got {value.dtype}")
    if like is not None:
        if value.shape[2] != like.shape[2]:
            raise ValueError(f"{name} has {value.shape[2]} channels but query_embeddings has {like.shape[2]}")
        if value.dtype != like.dtype:
            raise ValueError(f"{name} has dtype {value.dtype} but query_embeddings has {like.dtype}")
        if value.device != like.device:
            raise ValueError(f"{name} is on {value.device} but query_embeddings is on {like.device}")
    return value


def _label_index(labels: object, name: str, size: Sequence[int] | None, like: Tensor) -> Tensor:
    """One-hot labels [H, W, L] -> [H, W] int64 label index, L where the row is all zero.

    The fused ops take one label per pixel, so anything but 0 / 1 entries with at most one 1 per pixel is
    refused (the original would threshold such values; guessing would risk a silently different result).
    """
    if not isinstance(labels, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dim() != 3:
        raise ValueError(f"{name} must be one-hot [H, W, L], got shape {tuple(labels.shape)}")
    if size is not None and tuple(labels.shape[:2]) != tuple(size):
        raise ValueError(f"{name} must have the spatial size {tuple(size)}, got {tuple(labels.shape[:2])}")
    if labels.shape[2] < 1:
        raise ValueError(f"{name} must hold at least one label (background), got shape {tuple(labels.shape)}")
    if labels.device != like.device:
        raise ValueError(f"{name} is on {labels.device} but the embeddings are on {like.device}")
    hot = labels == 1
    count = hot.sum(-1)
    if not bool((((labels == 0) | hot).all() & (count <= 1).all()).item()):
        raise ValueError(f"{name} must be one-hot: entries 0 or 1, at most one 1 per pixel")
    num_labels = labels.shape[2]
    index = hot.to(torch.uint8).argmax(-1)
    return torch.where(count > 0, index, num_labels)


def _integer(value: object) -> int | None:
    """value as an int if it is an integer of a type the authors' network passes: a Python int, a numpy integer or a
    0-d integer tensor on any device (their `obj_num` is an element of a batch tensor). None otherwise; bools are
    not integers here."""
    if isinstance(value, Tensor):
        if value.dim() != 0 or value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
            return None
        return int(value.item())
    if isinstance(value, bool) or type(value).__name__ == "bool_":  # Python and numpy bools
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _rate(atrous_rate: object) -> int:
    rate = _integer(atrous_rate)
    if rate is None or rate < 1:
        raise ValueError(f"atrous_rate must be an int >= 1, got {atrous_rate!r}")
    return rate


def _min_pixels(atrous_obj_pixel_num: object) -> int:
    min_pixels = _integer(atrous_obj_pixel_num)
    if min_pixels is None or min_pixels < 0:
        raise ValueError(f"atrous_obj_pixel_num must be an int >= 0, got {atrous_obj_pixel_num!r}")
    return min_pixels


def _size(ori_size: object) -> tuple[int, int] | None:
    """None, or (height, width) from a sequence of two integers (torch.Size, tuple, list, 1-d integer tensor)."""
    if ori_size is None:
        return None
    if isinstance(ori_size, Tensor) and ori_size.dim() == 1:
        ori_size = list(ori_size.unbind())
    sizes = [_integer(s) for s in ori_size] if isinstance(ori_size, Sequence) and len(ori_size) == 2 else []
    if len(sizes) != 2 or any(s is None or s <= 0 for s in sizes):
        raise ValueError(f"ori_size must be None or (height, width) of positive ints, got {ori_size!r}")
    return sizes[0], sizes[1]


def _bias_vector(dis_bias: object, num_labels: int, like: Tensor) -> Tensor:
    """dis_bias (a number, or a tensor of 1 or L elements) -> [L]."""
    if isinstance(dis_bias, numbers.Real) and not isinstance(dis_bias, bool):
        return torch.full((num_labels,), float(dis_bias), dtype=like.dtype, device=like.device)
    if not isinstance(dis_bias, Tensor):
        raise ValueError(f"dis_bias must be a number or a tensor, got {type(dis_bias).__name__}")
    if not dis_bias.dtype.is_floating_point:
        raise ValueError(f"dis_bias must be a floating tensor, got {dis_bias.dtype}")
    if dis_bias.numel() not in (1, num_labels):
        raise ValueError(
            f"dis_bias must hold 1 or {num_labels} elements (one per label), got shape {tuple(dis_bias.shape)}"
        )
    if dis_bias.device != like.device:
        raise ValueError(f"dis_bias is on {dis_bias.device} but the embeddings are on {like.device}")
    return dis_bias.reshape(-1).expand(num_labels)


def _inplace(inplace_labels: bool | None) -> bool:
    return INPLACE_LABELS if inplace_labels is None else bool(inplace_labels)


def _dtypes(embedding: Tensor, bias: Tensor, use_float16: bool) -> tuple[torch.dtype, torch.dtype]:
    """(dtype the ops run in, dtype of the result), as the original's promotions give them."""
    if use_float16:
        return torch.float32, torch.float32
    return embedding.dtype, torch.promote_types(embedding.dtype, bias.dtype)


def _prepare(embedding: Tensor, use_float16: bool) -> Tensor:
    # Rounded to float16 as the original does; the ops then run in float32: the CPU kernels' float16 path is
    # scalar (16x / 67x slower than float32 for local / global matching at the stride-4 CFBI+ shape), and
    # float32 loses nothing of the rounded values.
    return embedding.half().float() if use_float16 else embedding


# ---------------------------------------------------------------------------------------------------------------
# Shared core: the fused op, once per distinct foreground bias, and the per-label bias gradient
# ---------------------------------------------------------------------------------------------------------------


def _match_per_bias(
    op: Callable[..., tuple[Tensor, Tensor]], labels: Tensor, num_labels: int, bias: Tensor, compute_dtype: torch.dtype
) -> Tensor:
    """fg [1, L, ...] of `op(labels, num_labels, fg_bias, bg_bias)` with label l scored with bias[l].

    The ops take one background and one foreground bias. When the foreground entries of bias hold several
    values, the labels are split by value and each group is matched in its own call (the other labels
    ignored), so a candidate is still visited once in global matching.
    """
    values = bias.detach().to(compute_dtype)
    groups: dict[float, list[int]] = {}
    for label, value in enumerate(values[1:].tolist(), start=1):
        groups.setdefault(value, []).append(label)
    if len(groups) <= 1:
        fg_value = values[1:2] if num_labels > 1 else values[:1]
        fg, _ = op(labels, num_labels, fg_value, values[:1])
        return fg
    pieces, order = [], [0]
    for i, members in enumerate(groups.values()):
        group_labels = len(members) + 1
        # Old label -> label in this call; group_labels (outside [0, group_labels)) means ignored.
        lookup = torch.full((num_labels + 1,), group_labels, dtype=torch.long, device=labels.device)
        lookup[torch.tensor(members, device=labels.device)] = torch.arange(1, group_labels, device=labels.device)
        if i == 0:
            lookup[0] = 0
        fg, _ = op(lookup[labels], group_labels, values[members[0] : members[0] + 1], values[:1])
        if i == 0:
            pieces.append(fg[:, :1])
        pieces.append(fg[:, 1:])
        order += members
    inverse = torch.empty(num_labels, dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(num_labels)
    return torch.cat(pieces, 1).index_select(1, inverse.to(labels.device))


def _with_bias_gradient(fg: Tensor, bias: Tensor) -> Tensor:
    """fg [1, L, ...] scored with bias.detach(): the same values, with d fg_l / d bias_l = (1 - fg^2) / 2
    (the derivative of 2 sigmoid(z) - 1) per label, so that every element of dis_bias gets its own gradient."""
    if not (bias.requires_grad and torch.is_grad_enabled()):
        return fg
    shape = (1, -1) + (1,) * (fg.dim() - 2)
    bias = bias.to(fg.dtype).reshape(shape)
    slope = ((1 - fg) * (1 + fg) / 2).detach()
    return fg + (bias - bias.detach()) * slope


def _kept_pixels(labels: Tensor, num_labels: int, rate: int, min_pixels: int) -> Tensor:
    """labels [T, H, W] (index, num_labels = none) -> [T, H, W] bool: the candidates after atrous subsampling."""
    valid = labels < num_labels
    if rate == 1:
        return valid
    frames, height, width = labels.shape
    flat = labels.reshape(frames, -1)
    counts = torch.zeros(frames, num_labels + 1, dtype=torch.long, device=labels.device)
    counts.scatter_add_(1, flat, torch.ones_like(flat))
    small = counts <= min_pixels * rate * rate
    small[:, num_labels] = False
    ys = torch.arange(height, device=labels.device) % rate == 0
    xs = torch.arange(width, device=labels.device) % rate == 0
    on_grid = ys[:, None] & xs[None, :]
    return valid & (on_grid | small.gather(1, flat).reshape(labels.shape))


def _global(
    query: Tensor,
    references: Sequence[Tensor],
    labels: Tensor,
    num_labels: int,
    bias: Tensor,
    ori_size: tuple[int, int] | None,
    rate: int,
    min_pixels: int,
    use_float16: bool,
) -> Tensor:
    """query [H, W, C]; references T x [Hr, Wr, C]; labels [T, Hr, Wr] index; bias [L] -> [1, H', W', L, 1]."""
    height, width, _ = query.shape
    if not bool(_kept_pixels(labels, num_labels, rate, min_pixels).any().item()):
        # No candidate at all: the original returns ones at the matching size (ori_size is not applied).
        return torch.ones(1, height, width, num_labels, 1, device=query.device)
    compute_dtype, result_dtype = _dtypes(query, bias, use_float16)
    q = _prepare(query, use_float16).permute(2, 0, 1).unsqueeze(0)
    r = torch.stack([_prepare(ref, use_float16) for ref in references]).permute(0, 3, 1, 2).unsqueeze(0)

    def op(op_labels: Tensor, op_num_labels: int, fg_bias: Tensor, bg_bias: Tensor) -> tuple[Tensor, Tensor]:
        return global_match(
            q, r, op_labels.unsqueeze(0), op_num_labels, fg_bias, bg_bias, atrous=rate, atrous_min_pixels=min_pixels
        )

    fg = _match_per_bias(op, labels, num_labels, bias, compute_dtype).to(result_dtype)
    maps = _with_bias_gradient(fg, bias)[0].unsqueeze(1)  # [L, 1, H, W]
    if use_float16:
        maps = maps.float()
    if ori_size is not None:
        maps = F.interpolate(maps, size=ori_size, mode="bilinear", align_corners=True)
    return maps.permute(2, 3, 0, 1).reshape(1, maps.shape[2], maps.shape[3], num_labels, 1)


def _subsample_labels_(labels: Tensor, index: Tensor, num_labels: int, rate: int, min_pixels: int) -> None:
    """The original's side effect on the caller's one-hot labels [H, W, L]: zero the rows of the pixels that
    atrous subsampling drops (off the grid, of an object larger than min_pixels * rate**2 pixels)."""
    dropped = ~_kept_pixels(index.unsqueeze(0), num_labels, rate, min_pixels)[0]
    labels.masked_fill_(dropped.unsqueeze(-1), 0)


# ---------------------------------------------------------------------------------------------------------------
# The public functions
# ---------------------------------------------------------------------------------------------------------------


def global_matching(
    reference_embeddings: Tensor,
    query_embeddings: Tensor,
    reference_labels: Tensor,
    n_chunks: int = 100,
    dis_bias: Tensor | float = 0.0,
    ori_size: Sequence[int] | None = None,
    atrous_rate: int = 1,
    use_float16: bool = True,
    atrous_obj_pixel_num: int = 0,
    *,
    inplace_labels: bool | None = None,
) -> Tensor:
    """Per-object global matching of the query against one reference frame (the original's training path).

    Args:
        reference_embeddings: [Hr, Wr, C].
        query_embeddings: [H, W, C] (at atrous_rate > 1, Hr, Wr must equal H, W, as in the original).
        reference_labels: [Hr, Wr, L] one-hot; modified in place at atrous_rate > 1 (see the module docstring).
        n_chunks: ignored (accepted for compatibility).
        dis_bias: L elements (e.g. [L, 1, 1, 1]) or one, or a number; label l is scored with dis_bias[l].
        ori_size: (H', W'): the maps are resized bilinearly (align_corners=True) to it.
        atrous_rate: only reference pixels with y % rate == 0 and x % rate == 0 are candidates ...
        use_float16: round the embeddings to float16 before matching (the result is float32).
        atrous_obj_pixel_num: ... except for objects of at most atrous_obj_pixel_num * rate**2 pixels.
        inplace_labels: reproduce the in-place label subsampling (None: the module's INPLACE_LABELS).

    Returns:
        [1, H', W', L, 1] scores (sigmoid(d_l + dis_bias[l]) - 0.5) * 2, d_l the squared distance to the
        nearest candidate of label l; [1, H, W, L, 1] ones when there is no candidate at all, as the original.
    """
    query = _embedding(query_embeddings, "query_embeddings")
    reference = _embedding(reference_embeddings, "reference_embeddings", query)
    index = _label_index(reference_labels, "reference_labels", reference.shape[:2], query)
    rate, min_pixels, size = _rate(atrous_rate), _min_pixels(atrous_obj_pixel_num), _size(ori_size)
    num_labels = reference_labels.shape[2]
    bias = _bias_vector(dis_bias, num_labels, query)
    if rate > 1:
        if reference.shape[:2] != query.shape[:2]:
            raise ValueError(
                f"atrous_rate > 1 needs reference_embeddings of the query's size {tuple(query.shape[:2])},"
                f" got {tuple(reference.shape[:2])}"
            )
        if _inplace(inplace_labels):
            _subsample_labels_(reference_labels, index, num_labels, rate, min_pixels)
    return _global(query, [reference], index.unsqueeze(0), num_labels, bias, size, rate, min_pixels, use_float16)


def global_matching_for_eval(
    all_reference_embeddings: Sequence[Tensor],
    query_embeddings: Tensor,
    all_reference_labels: Sequence[Tensor],
    n_chunks: int = 20,
    dis_bias: Tensor | float = 0.0,
    ori_size: Sequence[int] | None = None,
    atrous_rate: int = 1,
    use_float16: bool = True,
    atrous_obj_pixel_num: int = 0,
    *,
    inplace_labels: bool | None = None,
) -> Tensor:
    """Global matching against several reference frames forming one candidate set (the original's
    evaluation path).

    Args:
        all_reference_embeddings: T frames [Hr, Wr, C] (all the same size; the query's size at atrous_rate > 1).
        query_embeddings: [H, W, C].
        all_reference_labels: T one-hot [Hr, Wr, L]; at atrous_rate > 1 and atrous_obj_pixel_num > 0 each is
            modified in place, per frame (see the module docstring).
        n_chunks: ignored (accepted for compatibility).
        dis_bias, ori_size, atrous_rate, use_float16, inplace_labels: as in global_matching.
        atrous_obj_pixel_num: objects of at most this * rate**2 pixels in a frame keep all their pixels there.

    Returns:
        [1, H', W', L, 1], as global_matching.
    """
    query = _embedding(query_embeddings, "query_embeddings")
    if (
        isinstance(all_reference_embeddings, Tensor)
        or isinstance(all_reference_labels, Tensor)
        or len(all_reference_embeddings) == 0
        or len(all_reference_embeddings) != len(all_reference_labels)
    ):
        raise ValueError("all_reference_embeddings and all_reference_labels must be lists of the same, non-zero length")
    references = [
        _embedding(ref, f"all_reference_embeddings[{t}]", query) for t, ref in enumerate(all_reference_embeddings)
    ]
    size0 = references[0].shape[:2]
    if any(ref.shape[:2] != size0 for ref in references):
        raise ValueError(
            f"all_reference_embeddings must have one spatial size, got {[tuple(ref.shape[:2]) for ref in references]}"
        )
    num_labels = all_reference_labels[0].shape[2] if isinstance(all_reference_labels[0], Tensor) else 0
    indices = []
    for t, labels in enumerate(all_reference_labels):
        index = _label_index(labels, f"all_reference_labels[{t}]", size0, query)
        if labels.shape[2] != num_labels:
            raise ValueError(f"all_reference_labels[{t}] has {labels.shape[2]} labels, frame 0 has {num_labels}")
        indices.append(index)
    rate, min_pixels, size = _rate(atrous_rate), _min_pixels(atrous_obj_pixel_num), _size(ori_size)
    bias = _bias_vector(dis_bias, num_labels, query)
    if rate > 1 and size0 != query.shape[:2]:
        raise ValueError(
            f"atrous_rate > 1 needs reference frames of the query's size {tuple(query.shape[:2])}, got {tuple(size0)}"
        )
    if rate > 1 and min_pixels > 0 and _inplace(inplace_labels):
        for labels, index in zip(all_reference_labels, indices):
            _subsample_labels_(labels, index, num_labels, rate, min_pixels)
    return _global(query, references, torch.stack(indices), num_labels, bias, size, rate, min_pixels, use_float16)


def local_matching(
    prev_frame_embedding: Tensor,
    query_embedding: Tensor,
    prev_frame_labels: Tensor,
    dis_bias: Tensor | float = 0.0,
    multi_local_distance: Sequence[int] = (15,),
    ori_size: Sequence[int] | None = None,
    atrous_rate: int = 1,
    use_float16: bool = True,
    allow_downsample: bool = True,
    allow_parallel: bool = True,
) -> Tensor:
    """Multi-window local matching of the query against the previous frame.

    Args:
        prev_frame_embedding, query_embedding: [H, W, C].
        prev_frame_labels: [H, W, L] one-hot (resized with 'nearest' to the matching size when that differs
            from ori_size).
        dis_bias, use_float16: as in global_matching.
        multi_local_distance: windows; the last is the largest. Window k holds the offsets (i, j) * atrous_rate
            with |i|, |j| <= k // atrous_rate; offsets outside the frame are no candidates.
        ori_size: output size (default (H, W)); the maps are resized bilinearly (align_corners=True) to it.
        atrous_rate: stride of the window offsets.
        allow_downsample: match at (int(H / 2) + 1, int(W / 2) + 1), embeddings resized bilinearly.
        allow_parallel: ignored (accepted for compatibility).

    Returns:
        [1, H', W', L, K] scores, the windows in the original's order: the last of multi_local_distance first,
        then the others in their order.
    """
    query = _embedding(query_embedding, "query_embedding")
    previous = _embedding(prev_frame_embedding, "prev_frame_embedding", query)
    if previous.shape != query.shape:
        raise ValueError(
            f"prev_frame_embedding must have the shape of query_embedding {tuple(query.shape)}, got "
            f"{tuple(previous.shape)}"
        )
    rate = _rate(atrous_rate)
    windows = [_integer(k) for k in multi_local_distance] if isinstance(multi_local_distance, Sequence) else None
    if not windows or not all(k is not None and k >= 0 for k in windows):
        raise ValueError(f"multi_local_distance must be a non-empty list of ints >= 0, got {multi_local_distance!r}")
    if any(k // rate > windows[-1] // rate for k in windows):
        raise ValueError(f"multi_local_distance: the last window must be the largest, got {windows}")
    size = _size(ori_size) or (previous.shape[0], previous.shape[1])
    num_labels = (
        prev_frame_labels.shape[2] if isinstance(prev_frame_labels, Tensor) and prev_frame_labels.dim() == 3 else 0
    )
    index = _label_index(prev_frame_labels, "prev_frame_labels", None, query)
    bias = _bias_vector(dis_bias, num_labels, query)
    compute_dtype, result_dtype = _dtypes(query, bias, use_float16)

    q = _prepare(query, use_float16).permute(2, 0, 1).unsqueeze(0)
    p = _prepare(previous, use_float16).permute(2, 0, 1).unsqueeze(0)
    if allow_downsample:
        down = (int(query.shape[0] / 2) + 1, int(query.shape[1] / 2) + 1)
        q = F.interpolate(q, size=down, mode="bilinear", align_corners=True)
        p = F.interpolate(p, size=down, mode="bilinear", align_corners=True)
    height, width = q.shape[2], q.shape[3]
    if (height, width) != size:
        index = F.interpolate(index[None, None].to(torch.float32), size=(height, width), mode="nearest")[0, 0].long()
    elif tuple(index.shape) != (height, width):
        raise ValueError(f"prev_frame_labels must have the matching size {(height, width)}, got {tuple(index.shape)}")
    # The original puts the largest (last) window first.
    op_windows = [windows[-1]] + windows[:-1]

    def op(op_labels: Tensor, op_num_labels: int, fg_bias: Tensor, bg_bias: Tensor) -> tuple[Tensor, Tensor]:
        return local_match(
            q, p, op_labels.unsqueeze(0), op_num_labels, fg_bias, bg_bias, windows=op_windows, atrous=rate
        )

    fg = _match_per_bias(op, index, num_labels, bias, compute_dtype).to(result_dtype)
    maps = _with_bias_gradient(fg, bias)[0]  # [L, K, h, w]
    if use_float16:
        maps = maps.float()
    if (height, width) != size:
        maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=True)
    return maps.permute(2, 3, 0, 1).reshape(1, size[0], size[1], num_labels, len(windows))


def foreground2background(dis: Tensor, obj_num: int | Tensor) -> Tensor:
    """dis [obj_num, K, ...] -> [obj_num, 1, ...]: for object i the minimum of dis[j, k] over every other object
    j and every channel k; dis itself when obj_num == 1 (obj_num: an int, numpy integer or 0-d integer tensor, as
    the authors' network passes it). The gradient goes to the first minimum in (j, k)
    order, as in the original's concatenate-and-min."""
    if not isinstance(dis, Tensor) or dis.dim() < 2:
        raise ValueError(f"dis must be a tensor [obj_num, K, ...], got {getattr(dis, 'shape', type(dis).__name__)}")
    count = _integer(obj_num)
    if count is None or not 1 <= count <= dis.shape[0]:
        raise ValueError(f"obj_num must be an int in [1, {dis.shape[0]}], got {obj_num!r}")
    obj_num = count
    if obj_num == 1:
        return dis
    # torch.min along a dim returns the first minimum on ties, which is where the original's gradient goes.
    per_object = dis[:obj_num].min(dim=1, keepdim=True).values  # [obj_num, 1, ...]
    first = per_object.min(dim=0, keepdim=True).indices  # the lowest object holding the overall minimum
    others = per_object.scatter(0, first, float("inf"))
    second = others.min(dim=0, keepdim=True).indices  # the lowest object holding the minimum of the others
    objects = torch.arange(obj_num, device=dis.device).reshape((obj_num,) + (1,) * (dis.dim() - 1))
    return per_object.gather(0, torch.where(objects == first, second, first))
