"""Plain-PyTorch implementation of the cfbi_ops contract (docs/design.md, "The operators").

It is the oracle of the tests and the fallback when the compiled extension cannot be loaded. Work is
chunked over query pixels so that no [all queries x all candidates] or [pixels x C x window] tensor is
built. Gradients flow through the selected (argmin) candidate only; ties go to the lowest flattened
candidate index, as in the compiled kernels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

# Chunk size: query pixels x candidates per distance block.
_BLOCK_ELEMENTS = 1 << 22
_HALF = (torch.float16, torch.bfloat16)


def _wide(dtype: torch.dtype) -> torch.dtype:
    """The dtype a computation runs in: float16 / bfloat16 inputs in float32, as the kernels (outputs keep the
    input dtype)."""
    return torch.float32 if dtype in _HALF else dtype


def _in_float32(op, query: Tensor, candidates: Tensor, labels: Tensor, num_labels: int, fg_bias, bg_bias, **options):
    """`op` (global_match / local_match) on 16-bit inputs computed in float32, outputs back in the input dtype."""
    wide = _wide(query.dtype)
    fg, bg = op(query.to(wide), candidates.to(wide), labels, num_labels, fg_bias.to(wide), bg_bias.to(wide), **options)
    return fg.to(query.dtype), bg.to(query.dtype)


def _outputs_fit(shape: tuple, like: Tensor, what: str) -> None:
    """Allocates the outputs' worth of memory once, so that a size no allocator can serve fails here with a
    message naming the argument that sized it (as csrc/checks.h, empty_output), not deep inside."""
    try:
        torch.empty(shape, dtype=like.dtype, device=like.device)
    except (RuntimeError, MemoryError, OverflowError) as error:
        raise RuntimeError(f"{what}: the outputs of shape {tuple(shape)} cannot be allocated ({error})") from None


def _scores(min_dist: Tensor, found: Tensor, fg_bias: Tensor, bg_bias: Tensor) -> Tensor:
    """Eq. (1) after the min. min_dist, found: [B, L, ...]. Labels without a candidate give exactly 1."""
    num_labels = min_dist.shape[1]
    bias_shape = (1, num_labels) + (1,) * (min_dist.dim() - 2)
    bias = torch.cat([bg_bias.reshape(1), fg_bias.reshape(1).expand(num_labels - 1)]).to(min_dist.dtype)
    score = torch.sigmoid(min_dist + bias.reshape(bias_shape)) * 2 - 1
    return torch.where(found, score, torch.ones_like(score))


def background_source(fg: Tensor) -> Tensor:
    """The label each background map is taken from: [B, L, ...] int64, source_l = the lowest label j != l holding
    the minimum of fg over j != l (source = l when there is one label). The kernels' rule (csrc/matching.h,
    background_source), NaN scores ordered first."""
    num_labels = fg.shape[1]
    labels = torch.arange(num_labels, device=fg.device).reshape((1, num_labels) + (1,) * (fg.dim() - 2))
    if num_labels == 1:
        return labels.expand_as(fg)
    # The NaN rule: a NaN score orders before every number (scores are never -inf, so -inf stands for it).
    key = torch.where(fg.isnan(), float("-inf"), fg)
    first_val = key.min(dim=1, keepdim=True).values
    # torch.min's index on ties is not specified: recompute the lowest label attaining the minimum.
    first = torch.where(key == first_val, labels, num_labels).amin(dim=1, keepdim=True)
    others = key.masked_fill(labels == first, float("inf"))
    second_val = others.min(dim=1, keepdim=True).values
    second = torch.where(others == second_val, labels, num_labels).amin(dim=1, keepdim=True)
    return torch.where(labels == first, second, first).expand_as(fg)


def background_maps(fg: Tensor) -> Tensor:
    """bg_l = min over j != l of fg_j along dim 1 (bg = fg when there is one label).

    Written with the two smallest values so that ties pick the lowest label, as the kernels do.
    """
    if fg.shape[1] == 1:
        return fg
    return fg.gather(1, background_source(fg.detach()))


def _select(dist: Tensor, cand_labels: Tensor, num_labels: int) -> tuple[Tensor, Tensor]:
    """Per-label argmin over candidates. dist [n, M], cand_labels [M] -> (index [L, n], found [L, n]).

    The NaN rule: a NaN distance wins (torch.min propagates it); among NaNs the lowest index."""
    n, m = dist.shape
    order = torch.arange(m, device=dist.device)
    index, found = [], []
    for label in range(num_labels):
        is_label = (cand_labels == label).unsqueeze(0)
        masked = dist.masked_fill(~is_label, float("inf"))
        best = masked.min(dim=1, keepdim=True).values
        hit = ((masked == best) | (masked.isnan() & best.isnan())) & is_label
        index.append(torch.where(hit, order, m).amin(dim=1))
        found.append(hit.any(dim=1))
    index, found = torch.stack(index), torch.stack(found)
    return index.clamp(max=m - 1), found


def _global_candidate_labels(labels: Tensor, num_labels: int, atrous: int, min_pixels: int) -> Tensor:
    """labels [T, Hr, Wr] -> [T*Hr*Wr] with -1 for every pixel that is not a candidate."""
    frames, height, width = labels.shape
    labels = labels.long()
    valid = (labels >= 0) & (labels < num_labels)
    keep = valid.clone()
    if atrous > 1:
        ys = torch.arange(height, device=labels.device).remainder(atrous) == 0
        xs = torch.arange(width, device=labels.device).remainder(atrous) == 0
        on_grid = ys[:, None] & xs[None, :]
        safe = torch.where(valid, labels, 0)
        counts = torch.zeros(frames, num_labels, dtype=torch.long, device=labels.device)
        counts.scatter_add_(1, safe.reshape(frames, -1), valid.reshape(frames, -1).long())
        label_pixels = counts.gather(1, safe.reshape(frames, -1)).reshape(frames, height, width)
        # Capped at the frame size: min_pixels * atrous**2 may not fit int64, and no label has more pixels.
        threshold = min(min_pixels * atrous * atrous, height * width)
        small = (label_pixels <= threshold) if min_pixels > 0 else torch.zeros_like(valid)
        keep = valid & (on_grid.unsqueeze(0) | small)
    return torch.where(keep, labels, -1).reshape(-1)


def global_match(
    query: Tensor,
    reference: Tensor,
    ref_labels: Tensor,
    num_labels: int,
    fg_bias: Tensor,
    bg_bias: Tensor,
    *,
    atrous: int = 1,
    atrous_min_pixels: int = 0,
) -> tuple[Tensor, Tensor]:
    """Reference global matching. query [B, C, H, W]; reference [B, C, Hr, Wr] or [B, T, C, Hr, Wr];
    ref_labels [B, Hr, Wr] or [B, T, Hr, Wr]. Returns (fg, bg), each [B, L, H, W]."""
    if reference.dim() == 4:
        reference, ref_labels = reference.unsqueeze(1), ref_labels.unsqueeze(1)
    batch, channels, height, width = query.shape
    _outputs_fit((batch, num_labels, height, width), query, f"num_labels = {num_labels}")
    if query.dtype in _HALF:
        options = dict(atrous=atrous, atrous_min_pixels=atrous_min_pixels)
        return _in_float32(global_match, query, reference, ref_labels, num_labels, fg_bias, bg_bias, **options)
    fgs = []
    for b in range(batch):
        # Explicit sizes: with C = 0 a -1 would be ambiguous.
        q = query[b].reshape(channels, height * width).t()  # [N, C]
        r = reference[b].transpose(0, 1).reshape(channels, ref_labels[b].numel()).t()  # [M, C], order (t, y, x)
        cand = _global_candidate_labels(ref_labels[b], num_labels, atrous, atrous_min_pixels)
        min_dist, found = _nearest(q, r, cand, num_labels)
        fgs.append((min_dist, found))
    if not fgs:  # B = 0
        fgs = [
            (
                query.new_zeros(0, num_labels, height * width),
                torch.zeros(0, num_labels, height * width, dtype=torch.bool, device=query.device),
            )
        ]
        min_dist, found = fgs[0]
    else:
        min_dist, found = torch.stack([m for m, _ in fgs]), torch.stack([f for _, f in fgs])
    min_dist = min_dist.reshape(batch, num_labels, height, width)
    found = found.reshape(batch, num_labels, height, width)
    fg = _scores(min_dist, found, fg_bias, bg_bias)
    return fg, background_maps(fg)


def _exact_distances(q: Tensor, r: Tensor) -> Tensor:
    """||q_i - r_j||^2 in float64 by direct differences: q [n, C], r [m, C] -> [n, m] (n * m * C elements)."""
    return ((q.double().unsqueeze(1) - r.double().unsqueeze(0)) ** 2).sum(-1)


def _nearest(q: Tensor, r: Tensor, cand_labels: Tensor, num_labels: int) -> tuple[Tensor, Tensor]:
    """Differentiable per-label nearest distance. q [N, C], r [M, C] -> (min_dist [L, N], found [L, N])."""
    n, m = q.shape[0], r.shape[0]
    if m == 0 or n == 0:
        empty = torch.zeros(num_labels, n, dtype=q.dtype, device=q.device)
        return empty, torch.zeros(num_labels, n, dtype=torch.bool, device=q.device)
    chunk = max(1, _BLOCK_ELEMENTS // max(m, 1))
    mins, founds = [], []
    with torch.no_grad():
        r_sq = (r.double() ** 2).sum(1)
        # Non-finite candidates get exact distances, as in the kernels' exact scan: in the expanded form an inf
        # gives inf - inf = NaN, which would win under the NaN rule.
        bad_cols = (~torch.isfinite(r).all(1)).nonzero().squeeze(1)
    for start in range(0, n, chunk):
        qc = q[start : start + chunk]
        with torch.no_grad():
            # Selection in float64 so that float32 inputs pick the candidate the kernels pick.
            dist = (qc.double() ** 2).sum(1, keepdim=True) + r_sq.unsqueeze(0) - 2 * qc.double() @ r.double().t()
            if bad_cols.numel():
                dist[:, bad_cols] = _exact_distances(qc, r[bad_cols])
            bad_rows = (~torch.isfinite(qc).all(1)).nonzero().squeeze(1)
            for row in bad_rows.tolist():  # a non-finite query: its whole row exactly
                dist[row] = _exact_distances(qc[row : row + 1], r)[0]
            index, found = _select(dist, cand_labels, num_labels)
        # Exact distance to the selected candidate, differentiable in q and r. Labels without a candidate get
        # a zero difference, so that a NaN at the stand-in index cannot leak into the gradients.
        diff = torch.where(found.unsqueeze(-1), qc.unsqueeze(0) - r[index], 0.0)
        mins.append((diff**2).sum(-1))
        founds.append(found)
    return torch.cat(mins, 1), torch.cat(founds, 1)


def local_match(
    query: Tensor,
    previous: Tensor,
    prev_labels: Tensor,
    num_labels: int,
    fg_bias: Tensor,
    bg_bias: Tensor,
    *,
    windows: Sequence[int] = (4, 8, 12, 16, 20, 24),
    atrous: int = 1,
) -> tuple[Tensor, Tensor]:
    """Reference local matching. query, previous [B, C, H, W]; prev_labels [B, H, W].
    Returns (fg, bg), each [B, L, K, H, W] with K = len(windows), windows in the order given."""
    batch, channels, height, width = query.shape
    _outputs_fit(
        (batch, num_labels, len(windows), height, width),
        query,
        f"num_labels = {num_labels}, windows of length {len(windows)}",
    )
    if query.dtype in _HALF:
        options = dict(windows=windows, atrous=atrous)
        return _in_float32(local_match, query, previous, prev_labels, num_labels, fg_bias, bg_bias, **options)
    # Radii clamped to the frame (docs/design.md, "The operators"): larger windows hold the same candidates.
    reach = max((max(height, width) - 1) // atrous, 0)
    radii = [min(w // atrous, reach) for w in windows]
    max_radius = max(radii)
    labels = prev_labels.long()
    shape = (batch, num_labels, len(windows), height, width)
    best = torch.full(shape, float("inf"), dtype=torch.float64, device=query.device)
    index = torch.full(shape, -1, dtype=torch.long, device=query.device)
    ys = torch.arange(height, device=query.device).reshape(height, 1)
    xs = torch.arange(width, device=query.device).reshape(1, width)
    label_ids = torch.arange(num_labels, device=query.device).reshape(1, num_labels, 1, 1)
    with torch.no_grad():
        # Offsets in row-major order: candidate indices increase, so a strict "<" keeps the lowest on ties.
        for i in range(-max_radius, max_radius + 1):
            for j in range(-max_radius, max_radius + 1):
                yy, xx = ys + i * atrous, xs + j * atrous
                inside = (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
                yc, xc = yy.clamp(0, height - 1), xx.clamp(0, width - 1)
                cand = (yc * width + xc).expand(height, width)
                dist = ((query.double() - previous.double()[:, :, yc, xc]) ** 2).sum(1)  # [B, H, W]
                lab = labels[:, yc, xc]
                is_label = (lab.unsqueeze(1) == label_ids) & inside  # [B, L, H, W]
                ring = max(abs(i), abs(j))
                for w, radius in enumerate(radii):
                    if ring > radius:
                        continue
                    d, current = dist.unsqueeze(1), best[:, :, w]
                    # The NaN rule: a NaN distance beats every number; the first one (lowest index) stays.
                    better = is_label & ((d < current) | (d.isnan() & ~current.isnan()))
                    best[:, :, w] = torch.where(better, dist.unsqueeze(1), best[:, :, w])
                    index[:, :, w] = torch.where(better, cand, index[:, :, w])
    found = index >= 0
    # Exact, differentiable distance to the selected candidate.
    flat_prev = previous.reshape(batch, channels, 1, height * width)
    count = num_labels * len(windows) * height * width
    sel = index.clamp(min=0).reshape(batch, 1, count).expand(batch, channels, count)
    chosen = flat_prev.squeeze(2).gather(2, sel).reshape(batch, channels, num_labels, len(windows), height, width)
    diff = torch.where(found.unsqueeze(1), query.unsqueeze(2).unsqueeze(2) - chosen, 0.0)
    min_dist = (diff**2).sum(1)
    fg = _scores(min_dist, found, fg_bias, bg_bias)
    return fg, background_maps(fg)
