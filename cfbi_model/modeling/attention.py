"""Collaborative instance-level attention (paper section 3.2, Fig. 4).

For every label l the attention vector (length 4 E) is the mean embedding of the reference frames over the
label, over its complement, and the same two for the previous frame; each mean divides by the pixel count
plus epsilon [official]. The ensembler turns it into per-channel gates 1 + tanh(Linear(vector)).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .precision import accumulation_dtype

__all__ = ["IAGate", "attention_vectors", "pooled_sums", "atrous_subsampled"]


class IAGate(nn.Module):
    """Channel gate from the instance-level attention vector: x * (1 + tanh(Linear(head)))."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.IA = nn.Linear(in_dim, out_dim)

    def forward(self, x: Tensor, head: Tensor) -> Tensor:
        gate = 1.0 + torch.tanh(self.IA(head))
        return x * gate.unsqueeze(-1).unsqueeze(-1)


def pooled_sums(embeddings: Tensor, masks: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sums for the masked means, summed over frames.

    Args:
        embeddings: [T, C, H, W] (T frames).
        masks: [T, L, H, W] float one-hot label maps (1 where the pixel belongs to label l).

    Returns:
        (pos_sum [L, C], neg_sum [L, C], pos_count [L, 1], neg_count [L, 1]). The complement is summed over
        (1 - mask) directly, by the same reduction as the label's sum: an empty complement (a label covering
        every pixel) is exactly 0. `total - pos_sum` from two different reductions would leave their rounding
        difference, which the mean then divides by a count of 0 + epsilon.
    """
    masks = masks.to(embeddings.dtype)
    complements = 1.0 - masks
    # "tchw,tlhw->lc" as a batched matmul per frame, summed over frames. Not einsum: it treats any size of 1 as a
    # broadcast, which a traced (exported) number of frames would have to rule out.
    flat = embeddings.flatten(2).transpose(1, 2)  # [T, H W, C]
    pos_sum = torch.bmm(masks.flatten(2), flat).sum(0)
    neg_sum = torch.bmm(complements.flatten(2), flat).sum(0)
    pos_count = masks.sum(dim=(0, 2, 3)).unsqueeze(1)
    neg_count = complements.sum(dim=(0, 2, 3)).unsqueeze(1)
    return pos_sum, neg_sum, pos_count, neg_count


def attention_vectors(
    reference_embeddings: Tensor,
    reference_masks: Tensor,
    previous_embedding: Tensor,
    previous_mask: Tensor,
    epsilon: float = 1e-5,
) -> Tensor:
    """Instance-level attention vectors [L, 4 C].

    Args:
        reference_embeddings: [T, C, H, W] embeddings of the T reference frames.
        reference_masks: [T, L, H, W] float one-hot reference label maps (possibly atrous-subsampled, see
            `atrous_subsampled`).
        previous_embedding: [C, H, W] embedding of the previous frame.
        previous_mask: [L, H, W] float one-hot previous-frame label map.
    """
    # Sums over whole frames: 16-bit inputs are summed in float32, also under autocast (float16 would
    # overflow); float32 and float64 as given.
    dtype = accumulation_dtype(reference_embeddings.dtype)
    with torch.autocast(device_type=reference_embeddings.device.type, enabled=False):
        ref_pos, ref_neg, ref_pos_n, ref_neg_n = pooled_sums(reference_embeddings.to(dtype), reference_masks)
        prev_pos, prev_neg, prev_pos_n, prev_neg_n = pooled_sums(
            previous_embedding.to(dtype).unsqueeze(0), previous_mask.unsqueeze(0)
        )
    return torch.cat(
        [
            ref_pos / (ref_pos_n + epsilon),
            ref_neg / (ref_neg_n + epsilon),
            prev_pos / (prev_pos_n + epsilon),
            prev_neg / (prev_neg_n + epsilon),
        ],
        dim=1,
    )


def atrous_subsampled(masks: Tensor, atrous: int, min_matching_pixels: int = 0) -> Tensor:
    """The label maps the authors' label-masking global matching leaves behind [official quirk].

    A label with more than `min_matching_pixels * atrous**2` pixels in a frame keeps only the pixels with
    y % atrous == 0 and x % atrous == 0; smaller labels keep all their pixels. Returns a new tensor.

    Args:
        masks: [T, L, H, W] float one-hot label maps.
    """
    if atrous <= 1:
        return masks
    height, width = masks.shape[-2:]
    ys = torch.arange(height, device=masks.device) % atrous == 0
    xs = torch.arange(width, device=masks.device) % atrous == 0
    grid = (ys[:, None] & xs[None, :]).to(masks.dtype)
    big = masks.sum(dim=(2, 3), keepdim=True) > min_matching_pixels * atrous**2  # [T, L, 1, 1]
    return torch.where(big, masks * grid, masks)
