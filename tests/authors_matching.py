"""The CFBI authors' matching functions (z-x-yang/CFBI, `networks/layers/matching.py`), transcribed from their
published semantics. This module is the authors' oracle of the tests (`tests/test_compat.py`,
`tests/test_ops_official.py`) and the `naive` peer of the benchmarks (`benchmarks/cases.py`).

It keeps every numerical choice of the original, because the point is to compare against exactly that:
the expanded distance ||q||^2 + ||r||^2 - 2 q.r, the 5e4 padding added to candidates of another label or
outside the frame, the chunked full distance matrix with a masked minimum per object (global), `F.unfold` of
the padded previous frame (local), the score (sigmoid(d + b) - 0.5) * 2, the in-place subsampling of the
caller's one-hot labels at atrous_rate > 1, and the bilinear / nearest resizing.

Layouts: embeddings [H, W, C] (channels last); labels float one-hot [H, W, L] (a pixel whose row sums to
<= 0.9 is no candidate); dis_bias [L, 1, 1, 1] or one element. Outputs [1, H', W', L, K].

Two deliberate departures, both in the arguments only:
- dis_bias may also be a Python number (the original's default 0. would fail on `.view`);
- allow_parallel=False runs the same `F.unfold` formulation: the original's loop variant reuses the query's
  name as its column counter, so it does not compute the matching it documents.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# Distance given to candidates of another label and to positions outside the frame.
PAD_DISTANCE = 5e4


def foreground2background(dis: Tensor, obj_num: int) -> Tensor:
    """dis [obj_num, K, ...] -> [obj_num, 1, ...]: for object i, the minimum over every other object j and
    every channel k of dis[j, k] (the input itself when obj_num == 1)."""
    if obj_num == 1:
        return dis
    rows = []
    for i in range(obj_num):
        others = torch.cat([dis[j].unsqueeze(0) for j in range(obj_num) if j != i], dim=1)
        rows.append(torch.min(others, dim=1, keepdim=True)[0])
    return torch.cat(rows, dim=0)


def _bias(dis_bias: Tensor | float, like: Tensor) -> Tensor:
    return dis_bias if isinstance(dis_bias, Tensor) else torch.tensor(float(dis_bias), device=like.device)


def _score(min_dist: Tensor, bias: Tensor) -> Tensor:
    return (torch.sigmoid(min_dist + bias) - 0.5) * 2


def _nearest_per_object(reference: Tensor, query: Tensor, labels: Tensor, n_chunks: int) -> Tensor:
    """reference [M, C], query [N, C], labels [M, L] -> [N, L, 1]: per object, the smallest padded distance,
    computed for ceil(N / n_chunks) query rows at a time."""
    penalty_dtype = torch.float16 if reference.dtype == torch.float16 else torch.float32
    wrong_label = (labels < 0.1).t().to(penalty_dtype)  # [L, M]
    reference_sq = reference.pow(2).sum(1)
    query_sq = query.pow(2).sum(1)
    rows = query.shape[0]
    chunk = math.ceil(rows / n_chunks)
    features = []
    for start in range(0, rows, chunk):
        part = query[start : start + chunk]
        dist = (
            query_sq[start : start + chunk].unsqueeze(1)
            + reference_sq.unsqueeze(0)
            - 2.0 * torch.matmul(part, reference.t())
        )
        dist = dist.unsqueeze(1) + wrong_label.unsqueeze(0) * PAD_DISTANCE  # [n, L, M]
        features.append(torch.min(dist, dim=2, keepdim=True)[0])
    return torch.cat(features, dim=0)


def _grid(height: int, width: int, rate: int, device: torch.device) -> Tensor:
    """[height, width, 1] float: 1 where y % rate == 0 and x % rate == 0."""
    ys = torch.arange(height, device=device) % rate == 0
    xs = torch.arange(width, device=device) % rate == 0
    return (ys[:, None] & xs[None, :]).float().unsqueeze(-1)


def _subsample_large_objects_(labels: Tensor, grid: Tensor, rate: int, min_pixels: int) -> None:
    """In place, as the original: every object with more than min_pixels * rate**2 pixels keeps only its
    pixels on the atrous grid."""
    large = labels.sum(dim=(0, 1)) > (min_pixels * rate**2)
    labels[:, :, large] = labels[:, :, large] * grid


def _strided(frame: Tensor, height: int, width: int, rate: int) -> Tensor:
    """frame [h, w, D] -> the pixels with y % rate == 0 and x % rate == 0, after zero-padding the frame to
    multiples of rate of the query's (height, width), as the original's evaluation path does."""
    pad_h, pad_w = (rate - height % rate) % rate, (rate - width % rate) % rate
    if pad_h or pad_w:
        frame = F.pad(frame, (0, 0, 0, pad_w, 0, pad_h))
    frame = frame.reshape((height + pad_h) // rate, rate, (width + pad_w) // rate, rate, -1)
    return frame[:, 0, :, 0, :].contiguous()


def _match_flat(
    reference: Tensor,
    query: Tensor,
    labels: Tensor,
    height: int,
    width: int,
    n_chunks: int,
    dis_bias: Tensor | float,
    ori_size: Sequence[int] | None,
    use_float16: bool,
    cast_after_selection: bool,
) -> Tensor:
    """reference [M, C], query [N, C], labels [M, L] -> [1, H', W', L, 1]."""
    obj_nums = labels.shape[1]
    candidate = labels.sum(dim=1) > 0.9
    labels = labels[candidate]
    if labels.shape[0] == 0:
        return torch.ones(1, height, width, obj_nums, 1, device=candidate.device)
    reference = reference[candidate]
    if use_float16 and cast_after_selection:
        query, reference = query.half(), reference.half()
    features = _nearest_per_object(reference, query, labels, n_chunks).reshape(1, height, width, obj_nums, 1)
    features = _score(features, _bias(dis_bias, features).reshape(1, 1, 1, -1, 1))
    if ori_size is not None:
        maps = features.reshape(height, width, obj_nums, 1).permute(2, 3, 0, 1)
        maps = F.interpolate(maps, size=tuple(ori_size), mode="bilinear", align_corners=True)
        features = maps.permute(2, 3, 0, 1).reshape(1, ori_size[0], ori_size[1], obj_nums, 1)
    if use_float16:
        features = features.float()
    return features


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
) -> Tensor:
    """Global matching of the training path: reference [Hr, Wr, C], query [H, W, C], reference_labels
    [Hr, Wr, L] (modified in place when atrous_rate > 1). Returns [1, H', W', L, 1]."""
    assert reference_embeddings.shape[:2] == reference_labels.shape[:2]
    if use_float16:
        query_embeddings, reference_embeddings = query_embeddings.half(), reference_embeddings.half()
    height, width, channels = query_embeddings.shape
    obj_nums = reference_labels.shape[2]
    if atrous_rate > 1:
        grid = _grid(height, width, atrous_rate, query_embeddings.device)
        _subsample_large_objects_(reference_labels, grid, atrous_rate, atrous_obj_pixel_num)
    return _match_flat(
        reference_embeddings.reshape(-1, channels),
        query_embeddings.reshape(-1, channels),
        reference_labels.reshape(-1, obj_nums),
        height,
        width,
        n_chunks,
        dis_bias,
        ori_size,
        use_float16,
        cast_after_selection=False,
    )


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
) -> Tensor:
    """Global matching of the evaluation path against several reference frames (lists of [Hr, Wr, C] and
    [Hr, Wr, L]); with atrous_obj_pixel_num > 0 and atrous_rate > 1 each frame's labels are subsampled in
    place, otherwise the frames are strided (no side effect). Returns [1, H', W', L, 1]."""
    height, width, channels = query_embeddings.shape
    obj_nums = all_reference_labels[0].shape[2]
    n_chunks *= len(all_reference_labels)
    references, labels = [], []
    if atrous_obj_pixel_num > 0:
        grid = _grid(height, width, atrous_rate, query_embeddings.device) if atrous_rate > 1 else None
        for reference, label in zip(all_reference_embeddings, all_reference_labels):
            if atrous_rate > 1:
                _subsample_large_objects_(label, grid, atrous_rate, atrous_obj_pixel_num)
            references.append(reference.reshape(-1, channels))
            labels.append(label.reshape(-1, obj_nums))
    else:
        for reference, label in zip(all_reference_embeddings, all_reference_labels):
            if atrous_rate > 1:
                reference = _strided(reference, height, width, atrous_rate)
                label = _strided(label, height, width, atrous_rate)
            references.append(reference.reshape(-1, channels))
            labels.append(label.reshape(-1, obj_nums))
    return _match_flat(
        torch.cat(references, 0),
        query_embeddings.reshape(-1, channels),
        torch.cat(labels, 0),
        height,
        width,
        n_chunks,
        dis_bias,
        ori_size,
        use_float16,
        cast_after_selection=True,
    )


def _local_distances(
    query: Tensor, previous: Tensor, max_distance: int, atrous_rate: int, allow_downsample: bool
) -> Tensor:
    """query, previous [H, W, C] -> [h, w, (2 R + 1)^2] expanded distances to every window offset, R =
    max_distance // atrous_rate, row-major over (dy, dx); offsets outside the frame get ||q||^2 + 5e4."""
    full_height, full_width, _ = query.shape
    query = query.permute(2, 0, 1).unsqueeze(0)
    previous = previous.permute(2, 0, 1).unsqueeze(0)
    if allow_downsample:
        size = (int(full_height / 2) + 1, int(full_width / 2) + 1)
        query = F.interpolate(query, size=size, mode="bilinear", align_corners=True)
        previous = F.interpolate(previous, size=size, mode="bilinear", align_corners=True)
    _, channels, height, width = query.shape
    query_sq = query.pow(2).sum(1).reshape(height, width, 1)
    previous_sq = previous.pow(2).sum(1).reshape(1, 1, height, width)
    reach = max_distance - max_distance % atrous_rate
    padded = F.pad(previous, (reach, reach, reach, reach))
    padded_sq = F.pad(previous_sq, (reach, reach, reach, reach), mode="constant", value=PAD_DISTANCE)
    windows = F.unfold(padded, kernel_size=(height, width), stride=(atrous_rate, atrous_rate))
    windows = windows.reshape(channels, height * width, -1).permute(1, 0, 2)  # [hw, C, K^2]
    windows_sq = F.unfold(padded_sq, kernel_size=(height, width), stride=(atrous_rate, atrous_rate))
    windows_sq = windows_sq.reshape(height, width, -1)
    rows = query.reshape(channels, height * width, -1).permute(1, 2, 0)  # [hw, 1, C]
    return query_sq + windows_sq - 2.0 * torch.matmul(rows, windows).reshape(height, width, -1)


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
    """Multi-window local matching: previous, query [H, W, C], prev_frame_labels [H, W, L]. Returns
    [1, H', W', L, K] with the windows in the order (last, first, ..., second to last)."""
    max_distance = multi_local_distance[-1]
    if ori_size is None:
        ori_size = tuple(prev_frame_embedding.shape[:2])
    ori_size = tuple(ori_size)
    obj_num = prev_frame_labels.shape[2]
    pad = torch.ones(1, device=prev_frame_embedding.device) * PAD_DISTANCE
    if use_float16:
        query_embedding, prev_frame_embedding, pad = query_embedding.half(), prev_frame_embedding.half(), pad.half()
    dist = _local_distances(query_embedding, prev_frame_embedding, max_distance, atrous_rate, allow_downsample)
    height, width = dist.shape[:2]
    labels = prev_frame_labels.permute(2, 0, 1).unsqueeze(1)  # [L, 1, H, W]
    if (height, width) != ori_size:
        labels = F.interpolate(labels, size=(height, width), mode="nearest")
    reach = max_distance - max_distance % atrous_rate
    radius = reach // atrous_rate
    labels = F.pad(labels, (reach, reach, reach, reach), mode="constant", value=0)
    masks = F.unfold(labels, kernel_size=(height, width), stride=(atrous_rate, atrous_rate))
    masks = masks.reshape(obj_num, height, width, -1).permute(1, 2, 3, 0) > 0.9  # [h, w, K^2, L]
    masked = torch.where(masks, dist.unsqueeze(-1).expand(-1, -1, -1, obj_num), pad)
    maps = [torch.min(masked, dim=2)[0].permute(2, 0, 1).unsqueeze(1)]
    square = masked.reshape(height, width, 2 * radius + 1, 2 * radius + 1, obj_num)
    for distance in multi_local_distance[:-1]:
        k = distance // atrous_rate
        window = square[:, :, radius - k : radius + k + 1, radius - k : radius + k + 1, :].reshape(
            height, width, -1, obj_num
        )
        maps.append(torch.min(window, dim=2)[0].permute(2, 0, 1).unsqueeze(1))
    maps = _score(torch.cat(maps, dim=1), _bias(dis_bias, dist).reshape(-1, 1, 1, 1))  # [L, K, h, w]
    if use_float16:
        maps = maps.float()
    if (height, width) != ori_size:
        maps = F.interpolate(maps, size=ori_size, mode="bilinear", align_corners=True)
    return maps.permute(2, 3, 0, 1).reshape(1, ori_size[0], ori_size[1], obj_num, -1)


# ---------------------------------------------------------------------------------------------------------------
# The same functions called from the layout of cfbi_ops.global_match / local_match (batch of one), so that the
# op tests and the benchmarks compare like for like. `impl` is a module with the authors' function names: this
# one (default) or cfbi_ops.compat.
# ---------------------------------------------------------------------------------------------------------------


def _channels_last(embedding: Tensor) -> Tensor:
    """[1, C, H, W] -> [H, W, C]."""
    assert embedding.dim() == 4 and embedding.shape[0] == 1, "batch of one"
    return embedding[0].permute(1, 2, 0)


def _one_hot(labels: Tensor, num_labels: int, dtype: torch.dtype) -> Tensor:
    """[1, H, W] integer labels -> [H, W, L] one-hot, all-zero rows for labels outside [0, L)."""
    valid = (labels[0] >= 0) & (labels[0] < num_labels)
    return F.one_hot(torch.where(valid, labels[0], 0).long(), num_labels).to(dtype) * valid.unsqueeze(-1)


def _dis_bias(num_labels: int, fg_bias: Tensor, bg_bias: Tensor) -> Tensor:
    """[L, 1, 1, 1]: the background bias, then the foreground bias for every object, as CFBI builds it."""
    return torch.cat([bg_bias.reshape(1), fg_bias.reshape(1).expand(num_labels - 1)]).reshape(-1, 1, 1, 1)


def global_match_op_layout(
    query: Tensor,
    reference: Tensor,
    ref_labels: Tensor,
    num_labels: int,
    fg_bias: Tensor,
    bg_bias: Tensor,
    *,
    atrous: int = 1,
    n_chunks: int = 1,
    impl=None,
) -> tuple[Tensor, Tensor]:
    """query, reference [1, C, H, W]; ref_labels [1, H, W] -> (fg, bg) [1, L, H, W] via impl.global_matching
    (float32 / float64, no float16) and impl.foreground2background."""
    impl = sys.modules[__name__] if impl is None else impl
    out = impl.global_matching(
        _channels_last(reference),
        _channels_last(query),
        _one_hot(ref_labels, num_labels, query.dtype),
        n_chunks=n_chunks,
        dis_bias=_dis_bias(num_labels, fg_bias, bg_bias),
        atrous_rate=atrous,
        use_float16=False,
    )
    fg = out[0, :, :, :, 0].permute(2, 0, 1).unsqueeze(1)  # [L, 1, H, W]
    return fg.transpose(0, 1), impl.foreground2background(fg, num_labels).transpose(0, 1)


def local_match_op_layout(
    query: Tensor,
    previous: Tensor,
    prev_labels: Tensor,
    num_labels: int,
    fg_bias: Tensor,
    bg_bias: Tensor,
    *,
    windows: Sequence[int],
    atrous: int = 1,
    impl=None,
) -> tuple[Tensor, Tensor]:
    """query, previous [1, C, H, W]; prev_labels [1, H, W] -> (fg, bg) [1, L, K, H, W], windows in the order
    given, via impl.local_matching (windows sorted: the authors' largest window is the last) and
    impl.foreground2background."""
    impl = sys.modules[__name__] if impl is None else impl
    ordered = sorted(windows)
    produced = [ordered[-1]] + ordered[:-1]  # the largest window comes out first
    out = impl.local_matching(
        _channels_last(previous),
        _channels_last(query),
        _one_hot(prev_labels, num_labels, query.dtype),
        dis_bias=_dis_bias(num_labels, fg_bias, bg_bias),
        multi_local_distance=ordered,
        atrous_rate=atrous,
        use_float16=False,
        allow_downsample=False,
    )
    pick = torch.tensor([produced.index(w) for w in windows], device=out.device)
    fg = out[0].permute(2, 3, 0, 1).index_select(1, pick)  # [L, K, H, W]
    bg = impl.foreground2background(fg.permute(0, 2, 3, 1).unsqueeze(1), num_labels)  # [L, 1, H, W, K]
    return fg.unsqueeze(0), bg[:, 0].permute(0, 3, 1, 2).unsqueeze(0)
