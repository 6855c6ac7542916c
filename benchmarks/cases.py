"""Benchmark cases (the CFBI+ matching shapes) and the peers every case is measured against.

Shared by benchmarks/compare.py (the table and the recorded results) and benchmarks/bench_ops.py
(pytest-benchmark).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

import cfbi_ops

# Padding distance of the authors' code for candidates of another label / outside the frame.
WRONG_LABEL_DISTANCE = 5e4


@dataclass(frozen=True)
class Case:
    """One matching scale: query grid H x W with C channels."""
    name: str
    height: int
    width: int
    channels: int
    global_atrous: int
    windows: tuple[int, ...]
    local_atrous: int


CASES = {
    case.name: case
    for case in [
        # 465 x 465 training crop
        Case("s4", 117, 117, 32, 2, (4, 8, 12, 16, 20, 24), 2),
        Case("s8", 59, 59, 64, 1, (2, 4, 6, 8, 10, 12), 1),
        Case("s16", 30, 30, 128, 1, (2, 4, 6, 8, 10), 1),
        # 480 x 854 DAVIS frame at stride 4
        Case("s4-480p", 120, 214, 32, 2, (4, 8, 12, 16, 20, 24), 2),
        # tiny, for smoke tests of this suite
        Case("tiny", 13, 17, 8, 2, (2, 4), 2),
    ]
}


@dataclass
class Inputs:
    query: torch.Tensor
    reference: torch.Tensor
    ref_labels: torch.Tensor
    previous: torch.Tensor
    prev_labels: torch.Tensor
    fg_bias: torch.Tensor
    bg_bias: torch.Tensor
    num_labels: int


def make_inputs(case: Case, num_labels: int, device: str = "cpu", grad: bool = False, seed: int = 0,
                dtype: torch.dtype = torch.float32) -> Inputs:
    """Embeddings 0.1 * randn (unit variance saturates the sigmoid) and uniformly random labels."""
    gen = torch.Generator().manual_seed(seed)
    shape = (1, case.channels, case.height, case.width)

    def emb() -> torch.Tensor:
        return (0.1 * torch.randn(shape, generator=gen, dtype=dtype)).to(device).requires_grad_(grad)

    def labels() -> torch.Tensor:
        return torch.randint(0, num_labels, (1, case.height, case.width), generator=gen).to(device)

    bias = lambda: torch.zeros(1, device=device, dtype=dtype, requires_grad=grad)  # noqa: E731
    return Inputs(emb(), emb(), labels(), emb(), labels(), bias(), bias(), num_labels)


def outputs_bytes(case: Case, num_labels: int, op: str) -> int:
    """Bytes of fg + bg + the saved int32 argmin of one call."""
    windows = len(case.windows) if op == "local" else 1
    return 3 * 4 * num_labels * windows * case.height * case.width


# ----------------------------------------------------------------------------------------------------------------
# Peers: each returns (fg, bg) for the case's op. `naive_*` follow the authors' public code: a full distance
# matrix with per-object masked minima (global), F.unfold of the padded previous frame (local).
# ----------------------------------------------------------------------------------------------------------------


def ours_global(case: Case, x: Inputs):
    return cfbi_ops.global_match(x.query, x.reference, x.ref_labels, x.num_labels, x.fg_bias, x.bg_bias,
                                 atrous=case.global_atrous)


def ours_local(case: Case, x: Inputs):
    return cfbi_ops.local_match(x.query, x.previous, x.prev_labels, x.num_labels, x.fg_bias, x.bg_bias,
                                windows=case.windows, atrous=case.local_atrous)


def reference_global(case: Case, x: Inputs):
    return cfbi_ops.reference.global_match(x.query, x.reference, x.ref_labels, x.num_labels, x.fg_bias, x.bg_bias,
                                           atrous=case.global_atrous)


def reference_local(case: Case, x: Inputs):
    return cfbi_ops.reference.local_match(x.query, x.previous, x.prev_labels, x.num_labels, x.fg_bias, x.bg_bias,
                                          windows=case.windows, atrous=case.local_atrous)


def _scores(min_dist: torch.Tensor, x: Inputs):
    """min_dist [L, ...] -> (fg, bg) [1, L, ...] with the authors' sigmoid and foreground-to-background min."""
    bias = torch.cat([x.bg_bias, x.fg_bias.expand(x.num_labels - 1)]).reshape((-1,) + (1,) * (min_dist.dim() - 1))
    fg = (torch.sigmoid(min_dist + bias) - 0.5) * 2
    if x.num_labels == 1:
        return fg.unsqueeze(0), fg.unsqueeze(0)
    bg = torch.stack([torch.cat([fg[:l], fg[l + 1:]]).min(0).values for l in range(x.num_labels)])
    return fg.unsqueeze(0), bg.unsqueeze(0)


def naive_global(case: Case, x: Inputs):
    c = case.channels
    r = x.reference[0, :, ::case.global_atrous, ::case.global_atrous].reshape(c, -1).t()
    labels = x.ref_labels[0, ::case.global_atrous, ::case.global_atrous].reshape(-1)
    q = x.query[0].reshape(c, -1).t()
    dist = (q * q).sum(1, keepdim=True) + (r * r).sum(1) - 2 * q @ r.t()  # [N, M]
    one_hot = F.one_hot(labels, x.num_labels).t().to(dist.dtype)  # [L, M]
    min_dist = torch.stack([(dist + (1 - one_hot[l]) * WRONG_LABEL_DISTANCE).min(1).values
                            for l in range(x.num_labels)])
    return _scores(min_dist.reshape(x.num_labels, case.height, case.width), x)


def naive_local(case: Case, x: Inputs):
    h, w, c, rate = case.height, case.width, case.channels, case.local_atrous
    reach = max(case.windows) - max(case.windows) % rate
    q = x.query[0]
    padded = F.pad(x.previous, (reach,) * 4)
    patches = F.unfold(padded, kernel_size=(h, w), stride=rate).view(c, h * w, -1).permute(1, 0, 2)  # [N, C, K^2]
    prev_sq = F.pad((x.previous * x.previous).sum(1, keepdim=True), (reach,) * 4, value=WRONG_LABEL_DISTANCE)
    prev_sq = F.unfold(prev_sq, kernel_size=(h, w), stride=rate).view(h * w, -1)
    qf = q.reshape(c, -1).t()
    dist = (qf * qf).sum(1, keepdim=True) + prev_sq - 2 * torch.bmm(qf.unsqueeze(1), patches).squeeze(1)  # [N, K^2]
    one_hot = F.one_hot(x.prev_labels[0], x.num_labels).permute(2, 0, 1).unsqueeze(1).to(dist.dtype)
    masks = F.unfold(F.pad(one_hot, (reach,) * 4), kernel_size=(h, w), stride=rate).view(x.num_labels, h * w, -1) > 0.5
    side = 2 * (reach // rate) + 1
    grid = torch.where(masks, dist.unsqueeze(0), torch.full_like(dist, WRONG_LABEL_DISTANCE).unsqueeze(0))
    grid = grid.view(x.num_labels, h * w, side, side)
    centre = reach // rate
    mins = []
    for window in (max(case.windows),) + tuple(case.windows):
        k = window // rate
        mins.append(grid[:, :, centre - k:centre + k + 1, centre - k:centre + k + 1].reshape(x.num_labels, h * w, -1)
                    .min(-1).values)
    min_dist = torch.stack(mins[1:], 1).reshape(x.num_labels, len(case.windows), h, w)
    return _scores(min_dist, x)


def faiss_global(case: Case, x: Inputs):
    """faiss IndexFlatL2 per label, k = 1 (fused L2 + top-1 search): forward only."""
    import faiss  # optional peer

    c = case.channels
    r = x.reference[0, :, ::case.global_atrous, ::case.global_atrous].reshape(c, -1).t().contiguous().numpy()
    labels = x.ref_labels[0, ::case.global_atrous, ::case.global_atrous].reshape(-1).numpy()
    q = x.query[0].reshape(c, -1).t().contiguous().numpy()
    mins = []
    for label in range(x.num_labels):
        index = faiss.IndexFlatL2(c)
        index.add(r[labels == label])
        dist, _ = index.search(q, 1)
        mins.append(torch.from_numpy(dist[:, 0]))
    return _scores(torch.stack(mins).reshape(x.num_labels, case.height, case.width), x)


def mm_global_operands(case: Case, device: str = "cpu"):
    n = case.height * case.width
    m = (-(-case.height // case.global_atrous)) * (-(-case.width // case.global_atrous))
    return torch.randn(n, case.channels, device=device), torch.randn(case.channels, m, device=device)


def mm_local_operands(case: Case, device: str = "cpu"):
    """The bare GEMM with the multiply-add count of the local search: N x C x (2 R + 1)^2."""
    side = 2 * (max(case.windows) // case.local_atrous) + 1
    n = case.height * case.width
    return torch.randn(n, case.channels, device=device), torch.randn(case.channels, side * side, device=device)


def has_faiss() -> bool:
    try:
        import faiss  # noqa: F401
        return True
    except ImportError:
        return False


PEERS: dict[str, dict[str, Callable]] = {
    "global": {"cfbi_ops": ours_global, "reference": reference_global, "naive": naive_global, "faiss": faiss_global},
    "local": {"cfbi_ops": ours_local, "reference": reference_local, "naive": naive_local},
}
# Peers without autograd.
FORWARD_ONLY = {"faiss"}
