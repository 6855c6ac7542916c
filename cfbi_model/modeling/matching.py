"""Per-scale foreground-background pixel-level matching around cfbi_ops, forming the ensembler input.

For one sample, one scale and L labels (background included), `ensembler_input` returns [L, C_in, h, w] with
the channels in the authors' order:

    global fg (1), local fg (K), previous mask (1), local bg (K), global bg (1),
    current embedding (E), previous embedding * mask (E), previous embedding * (1 - mask) (E)

with the K local channels ordered [largest window, then the others in list order] (e.g. 24, 4, 8, 12, 16,
20). Only the first `matching_dim` embedding channels take part in the matching.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

import cfbi_ops

__all__ = ["resize_labels", "one_hot_labels", "global_matching", "local_matching", "ensembler_input"]


def resize_labels(labels: Tensor, size: Sequence[int]) -> Tensor:
    """Nearest resize of integer label maps [..., H, W] to `size` (PyTorch's 'nearest', as the authors do)."""
    size = (int(size[0]), int(size[1]))
    if tuple(labels.shape[-2:]) == size:
        return labels.long()
    lead = labels.shape[:-2]
    flat = labels.reshape(-1, 1, *labels.shape[-2:]).float()
    return F.interpolate(flat, size=size, mode="nearest").long().reshape(*lead, *size)


def one_hot_labels(labels: Tensor, num_labels: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """[..., H, W] integer labels -> [..., L, H, W] float one-hot; values outside [0, L) give all zeros."""
    ids = torch.arange(num_labels, device=labels.device).reshape(num_labels, 1, 1)
    return (labels.unsqueeze(-3) == ids).to(dtype)


def global_matching(
    query: Tensor,
    references: Tensor,
    reference_labels: Tensor,
    num_labels: int,
    fg_bias: Tensor,
    bg_bias: Tensor,
    *,
    atrous: int = 1,
    min_matching_pixels: int = 0,
) -> tuple[Tensor, Tensor]:
    """Global fg/bg maps of one sample: query [C, h, w], references [T, C, h, w], reference_labels [T, h, w]
    -> (fg, bg), each [L, h, w]. The T reference frames form one candidate set."""
    references = references.to(query.dtype)
    fg, bg = cfbi_ops.global_match(
        query.unsqueeze(0),
        references.unsqueeze(0),
        reference_labels.unsqueeze(0),
        num_labels,
        fg_bias,
        bg_bias,
        atrous=atrous,
        atrous_min_pixels=min_matching_pixels,
    )
    return fg[0], bg[0]


def local_matching(
    query: Tensor,
    previous: Tensor,
    previous_labels: Tensor,
    num_labels: int,
    fg_bias: Tensor,
    bg_bias: Tensor,
    *,
    windows: Sequence[int],
    atrous: int = 1,
) -> tuple[Tensor, Tensor]:
    """Local fg/bg maps of one sample: query, previous [C, h, w], previous_labels [h, w] -> (fg, bg), each
    [L, K, h, w] with the windows in the order given."""
    previous = previous.to(query.dtype)
    fg, bg = cfbi_ops.local_match(
        query.unsqueeze(0),
        previous.unsqueeze(0),
        previous_labels.unsqueeze(0),
        num_labels,
        fg_bias,
        bg_bias,
        windows=tuple(windows),
        atrous=atrous,
    )
    return fg[0], bg[0]


def ensembler_input(
    current: Tensor,
    references: Tensor,
    reference_labels: Tensor,
    previous: Tensor,
    previous_labels: Tensor,
    num_labels: int,
    fg_bias: Tensor,
    bg_bias: Tensor,
    *,
    matching_dim: int,
    windows: Sequence[int],
    local_atrous: int,
    global_atrous: int,
    min_matching_pixels: int = 0,
) -> Tensor:
    """Matching maps and embeddings of one sample at one scale, in the ensembler's channel order.

    Args:
        current: [E, h, w] current-frame embedding.
        references: [T, >= matching_dim, h, w] reference embeddings (only the first matching_dim channels
            are read).
        reference_labels: [T, h, w] integer reference labels at this scale.
        previous: [E, h, w] previous-frame embedding.
        previous_labels: [h, w] integer previous-frame labels at this scale.
        windows: local windows in channel order (largest first, see ModelConfig.local_window_order).

    Returns:
        [L, 3 + 2 K + 3 E, h, w].
    """
    query = current[:matching_dim]
    global_fg, global_bg = global_matching(
        query,
        references[:, :matching_dim],
        reference_labels,
        num_labels,
        fg_bias,
        bg_bias,
        atrous=global_atrous,
        min_matching_pixels=min_matching_pixels,
    )
    local_fg, local_bg = local_matching(
        query,
        previous[:matching_dim],
        previous_labels,
        num_labels,
        fg_bias,
        bg_bias,
        windows=windows,
        atrous=local_atrous,
    )
    prev_mask = one_hot_labels(previous_labels, num_labels, current.dtype).unsqueeze(1)  # [L, 1, h, w]
    dtype = current.dtype
    size = (num_labels,) + tuple(current.shape)
    return torch.cat(
        [
            global_fg.unsqueeze(1).to(dtype),
            local_fg.to(dtype),
            prev_mask,
            local_bg.to(dtype),
            global_bg.unsqueeze(1).to(dtype),
            current.unsqueeze(0).expand(size),
            previous.unsqueeze(0) * prev_mask,
            previous.unsqueeze(0) * (1.0 - prev_mask),
        ],
        dim=1,
    )
