"""Benchmark cases (the CFBI+ matching shapes) and the peers every case is measured against.

Shared by benchmarks/compare.py (the table and the recorded results) and benchmarks/bench_ops.py
(pytest-benchmark).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

import cfbi_ops
import cfbi_ops.compat
from tests import authors_matching as authors


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
    # n_chunks of the authors' global matching (their CFBI+ training setting per scale).
    authors_chunks: int = 20


CASES = {
    case.name: case
    for case in [
        # 465 x 465 training crop
        Case("s4", 117, 117, 32, 2, (4, 8, 12, 16, 20, 24), 2),
        Case("s8", 59, 59, 64, 1, (2, 4, 6, 8, 10, 12), 1, authors_chunks=10),
        Case("s16", 30, 30, 128, 1, (2, 4, 6, 8, 10), 1, authors_chunks=5),
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


def make_inputs(
    case: Case,
    num_labels: int,
    device: str = "cpu",
    grad: bool = False,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Inputs:
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
# Peers: each returns (fg, bg) for the case's op. `naive_*` run the authors' functions (tests/authors_matching.py:
# a chunked full distance matrix with per-object masked minima for global matching, F.unfold of the padded
# previous frame for local matching); `compat_*` run the same calls through cfbi_ops.compat. Both include the
# conversion to the authors' layout (channels last, one-hot labels, per-label bias).
# ----------------------------------------------------------------------------------------------------------------


def ours_global(case: Case, x: Inputs):
    return cfbi_ops.global_match(
        x.query, x.reference, x.ref_labels, x.num_labels, x.fg_bias, x.bg_bias, atrous=case.global_atrous
    )


def ours_local(case: Case, x: Inputs):
    return cfbi_ops.local_match(
        x.query,
        x.previous,
        x.prev_labels,
        x.num_labels,
        x.fg_bias,
        x.bg_bias,
        windows=case.windows,
        atrous=case.local_atrous,
    )


def reference_global(case: Case, x: Inputs):
    return cfbi_ops.reference.global_match(
        x.query, x.reference, x.ref_labels, x.num_labels, x.fg_bias, x.bg_bias, atrous=case.global_atrous
    )


def reference_local(case: Case, x: Inputs):
    return cfbi_ops.reference.local_match(
        x.query,
        x.previous,
        x.prev_labels,
        x.num_labels,
        x.fg_bias,
        x.bg_bias,
        windows=case.windows,
        atrous=case.local_atrous,
    )


def _scores(min_dist: torch.Tensor, x: Inputs):
    """min_dist [L, ...] -> (fg, bg) [1, L, ...] with the authors' score and foreground-to-background min."""
    bias = torch.cat([x.bg_bias, x.fg_bias.expand(x.num_labels - 1)]).reshape((-1,) + (1,) * (min_dist.dim() - 1))
    fg = (torch.sigmoid(min_dist + bias) - 0.5) * 2
    bg = authors.foreground2background(fg.unsqueeze(1), x.num_labels).squeeze(1)
    return fg.unsqueeze(0), bg.unsqueeze(0)


def naive_global(case: Case, x: Inputs):
    return authors.global_match_op_layout(
        x.query,
        x.reference,
        x.ref_labels,
        x.num_labels,
        x.fg_bias,
        x.bg_bias,
        atrous=case.global_atrous,
        n_chunks=case.authors_chunks,
    )


def naive_local(case: Case, x: Inputs):
    return authors.local_match_op_layout(
        x.query,
        x.previous,
        x.prev_labels,
        x.num_labels,
        x.fg_bias,
        x.bg_bias,
        windows=case.windows,
        atrous=case.local_atrous,
    )


def compat_global(case: Case, x: Inputs):
    return authors.global_match_op_layout(
        x.query,
        x.reference,
        x.ref_labels,
        x.num_labels,
        x.fg_bias,
        x.bg_bias,
        atrous=case.global_atrous,
        impl=cfbi_ops.compat,
    )


def compat_local(case: Case, x: Inputs):
    return authors.local_match_op_layout(
        x.query,
        x.previous,
        x.prev_labels,
        x.num_labels,
        x.fg_bias,
        x.bg_bias,
        windows=case.windows,
        atrous=case.local_atrous,
        impl=cfbi_ops.compat,
    )


def faiss_global(case: Case, x: Inputs):
    """faiss IndexFlatL2 per label, k = 1 (fused L2 + top-1 search): forward only."""
    import faiss  # optional peer

    c = case.channels
    r = x.reference[0, :, :: case.global_atrous, :: case.global_atrous].reshape(c, -1).t().contiguous().numpy()
    labels = x.ref_labels[0, :: case.global_atrous, :: case.global_atrous].reshape(-1).numpy()
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
    "global": {
        "cfbi_ops": ours_global,
        "reference": reference_global,
        "naive": naive_global,
        "compat": compat_global,
        "faiss": faiss_global,
    },
    "local": {"cfbi_ops": ours_local, "reference": reference_local, "naive": naive_local, "compat": compat_local},
}
# Peers without autograd.
FORWARD_ONLY = {"faiss"}
