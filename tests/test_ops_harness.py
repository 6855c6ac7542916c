"""One harness for every backend of cfbi_ops: one case list, one oracle, the backends as a list.

- Cases: `Case` (tests/conftest.py) holds every argument that shapes a call (op, sizes, L, ignored labels, atrous,
  atrous_min_pixels, T reference frames, windows, input layout); `inputs` makes its tensors, `call` and `raw_args`
  the public and raw calls. `CASES` is the fixed list: generated cases, then hand-made ones with a `name` for the
  paths they exist for (CUDA kernel paths, ties, empty sizes, gradcheck, opcheck). tests/test_ops_fuzz.py draws
  `Case`s with hypothesis. To add a case, append a `Case(...)` to CASES.
- Oracle: `oracle(case, inputs)`, an explicit brute force in float64 (every candidate's distance, numpy over
  pixels and window offsets), independent of cfbi_ops.reference.
- Backends: `BACKENDS`, each with a name, the dtypes it runs and how it runs a case (`run(case, inputs)` in this
  process, or `child_env` for a child interpreter, e.g. a CPU instruction set chosen with CFBI_CPU_ISA and checked
  with torch.ops.cfbi.cpu_isa()). To add an instruction set, add its name to CPU_ISAS (and the CPU flags it needs
  to ISA_FLAGS); to add CPU dtypes, add them to CPU_DTYPES (tolerances in TOLERANCE). A backend whose `skip` says
  why is skipped.

Every backend is checked for forward parity with the oracle on every case and dtype; every backend with autograd
for gradcheck and second derivatives; the compiled backends also for gradients against the reference (float64),
opcheck and bit-identical repeated calls. The CUDA kernels (on a device, or the emulation of tools/cuda_emulation)
must select the CPU kernels' candidates, ties included, and on a device give the CPU kernels' gradients in every
dtype. The compiled CPU backends compute float16 / bfloat16 inputs in float32 (docs/design.md): for those dtypes
their raw ops must also equal the float32 op on the same rounded values within one rounding, with the same argmin,
and their backward must equal the float32 backward (`check_16bit`).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import pytest
import torch
from conftest import (
    GRAD_TOL,
    LEAVES,
    REPO_ROOT,
    Case,
    backward_args,
    call,
    call_function_class,
    first_and_second_derivatives,
    grads,
    inputs,
    leaf_inputs,
    raw_args,
    weighted_loss,
)

import cfbi_ops

IGNORED = 255
CPU_ISAS = ["portable", "avx2", "avx512"]
# The /proc/cpuinfo flags each build needs (the same test as cpu_supports() in csrc/cpu/simd_base.cpp).
ISA_FLAGS = {"portable": set(), "avx2": {"avx2", "fma"}, "avx512": {"avx512f", "avx512vl", "avx512bw", "avx512dq"}}
HALF_DTYPES = [torch.float16, torch.bfloat16]
CPU_DTYPES = [torch.float32, torch.float64, *HALF_DTYPES]
CUDA_DTYPES = [torch.float32, torch.float64, *HALF_DTYPES]
# Output tolerance against the float64 oracle, per dtype (the inputs are rounded to the dtype first).
TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}
# float32 with a common offset of query and candidates: the float64 result within 1e-5 (issue 17's target).
OFFSET_TOLERANCE = 1e-5
# 16-bit inputs against the float32 op on the same rounded values: relative to max(|value|, 1), one rounding of
# the output dtype (2^-11 for float16, 2^-8 for bfloat16) with room for the float32 summation order.
ROUNDING = {torch.float16: 1e-3, torch.bfloat16: 8e-3}


def cpu_flags() -> set[str]:
    """The instruction-set flags of this CPU from /proc/cpuinfo (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


CPU_FLAGS = cpu_flags()


def best_isa() -> str:
    """The build the library picks without CFBI_CPU_ISA: the widest one the CPU supports."""
    return next(isa for isa in ("avx512", "avx2", "portable") if ISA_FLAGS[isa] <= CPU_FLAGS)


# ------------------------------------------------------------------------------------------------ the oracle
def _nearest_per_label(d: np.ndarray, labels: np.ndarray, L: int) -> tuple[np.ndarray, np.ndarray]:
    """The smallest of the distances d [P, M] to candidates labelled `labels` [M] (all in [0, L)), per label:
    [L, P], and whether each label has a candidate ([L, 1])."""
    best = np.full((L, len(d)), np.inf)
    found = np.zeros((L, 1), dtype=bool)
    for label in np.unique(labels):
        best[label] = d[:, labels == label].min(1)
        found[label] = True
    return best, found


def _outputs(best: np.ndarray, found: np.ndarray, fb: float, bb: float) -> tuple[np.ndarray, np.ndarray]:
    """fg and bg [L, ...]: the score of each label's smallest distance (1 where the label has no candidate:
    found [L, ...] is False), and the smallest score of the other labels (bg = fg when L == 1)."""
    L = len(best)
    bias = np.where(np.arange(L) == 0, bb, fb).reshape(L, *[1] * (best.ndim - 1))
    # exp(700) is already 1 in the score, in float64; beyond, exp overflows.
    fg = np.where(found, 1.0 - 2.0 / (1.0 + np.exp(np.minimum(best + bias, 700.0))), 1.0)
    if L == 1:
        return fg, fg
    lowest, second = np.sort(fg, axis=0)[:2]
    return fg, np.where(fg == lowest, second, lowest)


def _global_candidates(case: Case, r: np.ndarray, lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings [M, C] and labels [M] of one batch entry's kept candidates (r [T, C, Hr, Wr], lab [T, Hr, Wr]):
    labelled in [0, L), on the atrous grid of their frame, or of a label small enough in that frame."""
    limit = case.min_pixels * case.atrous**2  # a Python int: no overflow for the fuzzer's huge values
    embeddings, labels = [], []
    for t in range(r.shape[0]):
        valid = (lab[t] >= 0) & (lab[t] < case.L)
        counts = np.bincount(lab[t][valid], minlength=case.L)
        small = np.array([case.min_pixels > 0 and int(n) <= limit for n in counts])
        ys, xs = np.indices(lab[t].shape)
        on_grid = (ys % case.atrous == 0) & (xs % case.atrous == 0)
        ys, xs = np.nonzero(valid & (on_grid | small[np.where(valid, lab[t], 0)]))
        embeddings.append(r[t][:, ys, xs].T)
        labels.append(lab[t][ys, xs])
    return np.concatenate(embeddings), np.concatenate(labels)


def _global_oracle(case: Case, q: np.ndarray, r: np.ndarray, lab: np.ndarray, fb: float, bb: float):
    B, C, H, W = q.shape
    fg, bg = np.empty((B, case.L, H, W)), np.empty((B, case.L, H, W))
    for b in range(B):
        cand, cand_labels = _global_candidates(case, r[b], lab[b])
        pixels = q[b].reshape(C, H * W).T
        d = ((pixels[:, None, :] - cand[None, :, :]) ** 2).sum(-1)  # [H * W, M]
        fg_b, bg_b = _outputs(*_nearest_per_label(d, cand_labels, case.L), fb, bb)
        fg[b], bg[b] = fg_b.reshape(case.L, H, W), bg_b.reshape(case.L, H, W)
    return fg, bg


def _local_oracle(case: Case, q: np.ndarray, r: np.ndarray, lab: np.ndarray, fb: float, bb: float):
    """Every window as its offsets (i, j) * atrous, |i|, |j| <= window // atrous (a radius beyond the frame is the
    frame): per offset, the distance of each pixel to the candidate that far from it, where that is in the frame."""
    B, C, H, W = q.shape
    L, K = case.L, len(case.windows)
    fg, bg = np.empty((B, L, K, H, W)), np.empty((B, L, K, H, W))
    label_axis = np.arange(L).reshape(L, 1, 1, 1)
    for w, window in enumerate(case.windows):
        best, found = np.full((L, B, H, W), np.inf), np.zeros((L, B, H, W), dtype=bool)
        radius_y, radius_x = min(window // case.atrous, H), min(window // case.atrous, W)
        for i, j in np.ndindex(2 * radius_y + 1, 2 * radius_x + 1):
            dy, dx = (i - radius_y) * case.atrous, (j - radius_x) * case.atrous
            ys, xs = slice(max(0, -dy), min(H, H - dy)), slice(max(0, -dx), min(W, W - dx))
            if ys.start >= ys.stop or xs.start >= xs.stop:
                continue  # no pixel has a candidate this far away in the frame
            cys, cxs = slice(ys.start + dy, ys.stop + dy), slice(xs.start + dx, xs.stop + dx)
            d = ((q[:, :, ys, xs] - r[:, :, cys, cxs]) ** 2).sum(1)  # [B, h, w]
            of_label = lab[None, :, cys, cxs] == label_axis  # [L, B, h, w]
            best[:, :, ys, xs] = np.minimum(best[:, :, ys, xs], np.where(of_label, d[None], np.inf))
            found[:, :, ys, xs] |= of_label
        fg_w, bg_w = _outputs(best, found, fb, bb)
        fg[:, :, w], bg[:, :, w] = fg_w.transpose(1, 0, 2, 3), bg_w.transpose(1, 0, 2, 3)
    return fg, bg


def oracle(case: Case, x: dict) -> tuple[np.ndarray, np.ndarray]:
    """(fg, bg) in float64 from the candidate rules of docs/design.md ("The operators"), every distance computed
    (no selection shortcut)."""
    q = x["query"].detach().double().cpu().numpy()
    r = x["candidates"].detach().double().cpu().numpy()
    lab = x["labels"].long().cpu().numpy()
    fb, bb = float(x["fg_bias"]), float(x["bg_bias"])
    if case.op == "local":
        return _local_oracle(case, q, r, lab, fb, bb)
    if r.ndim == 4:
        r, lab = r[:, None], lab[:, None]
    return _global_oracle(case, q, r, lab, fb, bb)


# ------------------------------------------------------------------------------------------------ the cases
CASES = [
    Case("global", C=3, H=5, W=5, L=1),
    Case("global", B=2, C=8, H=6, W=9, L=2, layout="channels_last"),
    Case("global", B=2, C=5, H=7, W=7, L=3, absent=(2,), layout="sliced"),
    Case("global", C=6, H=6, W=8, Hr=9, Wr=5, L=4, label_dtype="uint8"),
    Case("global", B=2, C=4, H=8, W=6, L=5, absent=(0, 3), layout="expanded"),
    Case("global", C=5, H=7, W=9, Hr=9, Wr=11, L=3, atrous=2),
    Case("global", B=2, C=6, H=7, W=6, Hr=10, Wr=9, L=5, atrous=2, min_pixels=3, skew=0.5),
    Case("global", C=3, H=8, W=8, Hr=12, Wr=12, L=6, atrous=3, min_pixels=1, skew=0.5, layout="channels_last"),
    Case("global", B=2, C=7, H=5, W=9, T=2, Hr=8, Wr=9, L=4, atrous=2, label_dtype="int32"),
    Case(
        "global",
        B=2,
        C=3,
        H=7,
        W=5,
        T=2,
        Hr=10,
        Wr=7,
        L=4,
        atrous=3,
        min_pixels=1,
        absent=(1,),
        skew=0.4,
        layout="sliced",
    ),
    Case("global", B=2, C=4, H=6, W=6, Hr=7, Wr=8, ref_5d=True, atrous=5, min_pixels=2**62),
    Case("local", C=3, H=7, W=7, L=1, windows=(4, 8, 12, 16, 20, 24)),
    Case("local", B=2, C=5, H=6, W=9, L=2, windows=(1, 2, 3), layout="channels_last"),
    Case("local", B=2, C=4, H=8, W=7, L=3, windows=(2, 4), absent=(1,), layout="sliced"),
    Case("local", C=6, H=9, W=8, L=4, windows=(24, 4, 8), label_dtype="uint8"),
    Case("local", B=2, C=8, H=6, W=6, L=6, windows=(3, 0, 1), layout="expanded"),
    Case("local", B=2, C=3, H=8, W=9, L=4, windows=(1, 0, 3, 4), atrous=2),  # k < atrous
    Case("local", C=5, H=10, W=11, L=3, windows=(24, 2, 6, 7), atrous=3, layout="channels_last"),
    Case("local", B=2, C=4, H=7, W=7, L=4, windows=(3, 9, 10**9), atrous=3, absent=(0,)),  # k > the frame
    Case("local", C=16, H=11, W=13, L=3, windows=(5, 2), label_dtype="int32"),
    # Tile edges of the SIMD builds: query counts not multiples of the 6-query tile, label buckets not multiples of
    # the 8- or 16-candidate block, rows not multiples of 8 or 16, L = 1, atrous sub-grids of unequal shapes.
    Case("global", C=3, H=1, W=1, L=1),
    Case("global", C=9, H=5, W=7, L=2, atrous=2),
    Case("global", C=16, H=6, W=6, L=3),
    Case("global", C=8, H=13, W=8, L=1, atrous=3),
    Case("global", C=5, H=9, W=17, L=4, atrous=2),
    Case("global", C=32, H=16, W=9, L=6, atrous=4),
    Case("global", C=7, H=3, W=25, L=2),
    Case("local", C=3, H=1, W=1, L=1, windows=(1, 3, 5)),
    Case("local", C=9, H=5, W=7, L=2, windows=(1, 3, 5), atrous=2),
    Case("local", C=8, H=13, W=8, L=1, windows=(1, 3, 5), atrous=3),
    Case("local", C=5, H=9, W=17, L=4, windows=(1, 3, 5), atrous=2),
    Case("local", C=32, H=16, W=9, L=6, windows=(1, 3, 5), atrous=4),
    Case("local", C=7, H=3, W=25, L=2, windows=(1, 3, 5)),
    # A common offset of query and candidates (C = 64, sigma = 0.05): the float32 global selection must not cancel.
    *[Case("global", C=64, H=5, W=6, T=2, Hr=6, Wr=7, L=3, sigma=0.05, offset=o) for o in (3.0, 10.0, 100.0, 1000.0)],
    Case("local", C=64, H=6, W=7, L=3, windows=(2, 4), sigma=0.05, offset=1000.0),
    # One outlier element (issue 21): it moves the float32 selection's centre for every pixel, and its rounding bound
    # must send the pixels concerned to exact distances (the outlier itself saturates the scores it reaches).
    *[
        Case("global", C=8, H=12, W=12, L=3, outlier=v, outlier_in=where)
        for where in ("reference", "query")
        for v in (1e2, 1e4, 1e6, 1e30)
    ],
    *[Case("global", C=16, H=9, W=10, T=2, Hr=8, Wr=8, L=4, atrous=2, outlier=v) for v in (-1e10, 1e20)],
    *[
        Case("local", C=8, H=9, W=10, L=3, windows=(2, 4), outlier=v, outlier_in=w)
        for v, w in ((1e6, "reference"), (1e30, "query"))
    ],
    # +-inf candidates: exact distances (inf), never the NaN of the expanded form (issue 21, the reference backend).
    Case("global", C=4, H=7, W=9, L=3, infinite=0.05),
    Case("global", B=2, C=6, H=5, W=6, T=2, Hr=5, Wr=5, L=4, atrous=2, infinite=0.02),
    Case("local", C=4, H=7, W=9, L=3, windows=(1, 3), infinite=0.05),
    # A query of height 0 (or width 0): an empty result of the right shape, on every backend.
    Case("global", C=4, H=0, W=5, Hr=4, Wr=4, L=3),
    Case("global", C=4, H=3, W=0, Hr=4, Wr=4, L=2, T=2),
    Case("local", C=4, H=0, W=5, L=3, windows=(1, 2)),
    # Paths of the CUDA kernels: channels beyond one 32-channel chunk, many labels (L = 60 keeps the per-label
    # state in global memory), window radii beyond 12 (capped at the frame), thin frames, many windows.
    Case("global", B=2, C=8, H=7, W=9, T=2, Hr=8, Wr=6, L=4, atrous=2, min_pixels=1, name="t2_atrous2_min1"),
    Case("global", C=33, H=11, W=13, Hr=5, Wr=7, L=3, name="c33_l3"),
    Case("global", B=2, C=70, H=5, W=30, Hr=9, Wr=10, L=5, atrous=3, min_pixels=2, skew=0.4, name="c70_atrous3_skew"),
    Case("global", B=2, C=3, H=5, W=5, Hr=4, Wr=4, L=1, atrous=2, min_pixels=1, name="l1_atrous2_min1"),
    Case("global", C=5, H=6, W=7, Hr=12, Wr=11, L=40, absent=(0, 3, 39), name="l40_absent"),
    Case("global", B=2, C=6, H=6, W=6, L=3, label_dtype="uint8", name="uint8_labels"),
    Case("global", B=2, C=6, H=6, W=7, T=2, L=3, layout="transposed", name="noncontiguous"),
    Case("local", B=2, C=8, H=13, W=40, L=4, windows=(4, 8, 12, 16, 20, 24), atrous=2, name="default_windows_atrous2"),
    Case("local", B=2, C=8, H=7, W=9, L=4, windows=(24, 2, 0, 5), atrous=2, name="unordered_windows"),
    Case("local", C=33, H=10, W=37, L=3, windows=(1, 3, 2), name="c33"),
    Case("local", C=70, H=6, W=9, L=2, windows=(3, 1), name="c70"),
    Case("local", C=130, H=5, W=6, L=3, windows=(2,), name="c130"),
    Case("local", C=4, H=6, W=35, L=60, windows=(1, 2), name="l60_state_in_global_memory"),
    Case("local", B=2, C=3, H=5, W=5, L=1, windows=(1, 3), name="l1"),
    Case("local", C=4, H=1, W=17, L=3, windows=(0, 2, 30), name="thin_frame"),
    Case("local", C=40, H=9, W=70, L=3, windows=(26, 4, 30, 0), atrous=2, name="radius_over_12_atrous2"),
    Case("local", B=2, C=5, H=6, W=40, L=19, windows=(60, 13, 1), name="radius_capped_over_12"),
    Case("local", B=2, C=6, H=6, W=7, L=3, windows=(2, 1), layout="transposed", name="noncontiguous"),
    # More windows than one CUDA launch's table holds, duplicates, windows larger than the frame.
    Case(
        "local",
        C=3,
        H=5,
        W=6,
        L=3,
        windows=(*(random.Random(7).randint(0, 9) for _ in range(70)), 100, 0, 100),
        name="many_windows",
    ),
    # Integer-valued embeddings: many exact ties, which every backend must give to the lowest candidate index (the
    # second case splits a label's 2400 candidates across the CUDA kernel's blocks).
    Case("global", B=2, C=2, H=5, W=6, T=2, Hr=4, Wr=5, L=3, ignore=0.0, integer=True, name="integer_ties"),
    Case("global", C=3, H=6, W=7, T=2, Hr=30, Wr=40, L=3, ignore=0.0, integer=True, name="integer_ties_many_blocks"),
    Case("local", B=2, C=2, H=9, W=11, L=3, windows=(2, 1, 3), ignore=0.0, integer=True, name="integer_ties"),
    # Empty batch, reference frame or channels (empty query frames above).
    Case("global", B=0, C=3, H=4, W=4, Hr=2, Wr=2, L=3, ref_5d=True, atrous=2, min_pixels=1, name="empty_batch"),
    Case("global", C=3, H=4, W=4, Hr=0, Wr=2, L=3, ref_5d=True, atrous=2, min_pixels=1, name="empty_reference"),
    Case("global", B=2, C=0, H=4, W=4, Hr=3, Wr=2, L=3, ref_5d=True, atrous=2, min_pixels=1, name="no_channels"),
    Case("local", B=0, C=3, H=4, W=4, L=3, windows=(1, 2), name="empty_batch"),
    Case("local", B=2, C=0, H=4, W=5, L=3, windows=(1, 2), name="no_channels"),
    # Gradient cases: the CUDA kernels' gradients against the CPU kernels', in every dtype.
    Case("local", B=2, C=8, H=9, W=11, L=4, windows=(4, 1, 2), name="kernel_gradients"),
    # gradcheck (full mode where the inputs are small, GRADCHECK_FULL_MODE_NUMEL).
    Case("global", C=3, H=4, W=5, L=3, name="gradcheck_l3"),
    Case("global", B=2, C=2, H=4, W=3, T=2, Hr=5, Wr=4, L=4, atrous=2, min_pixels=1, absent=(3,), name="gradcheck_t2"),
    Case("global", C=3, H=3, W=4, Hr=4, Wr=4, L=1, name="gradcheck_l1"),
    Case("global", B=2, C=4, H=6, W=5, T=2, Hr=6, Wr=7, L=5, atrous=2, name="gradcheck_larger"),
    Case("local", C=3, H=4, W=5, L=3, windows=(1, 2), name="gradcheck_l3"),
    Case("local", B=2, C=2, H=5, W=4, L=4, windows=(3, 0, 1), atrous=2, absent=(2,), name="gradcheck_unsorted"),
    Case("local", C=2, H=4, W=4, L=1, windows=(24,), name="gradcheck_l1"),
    Case("local", B=2, C=4, H=6, W=5, L=5, windows=(24, 2, 4), name="gradcheck_larger"),
    # opcheck of the forward and backward ops, float32 and float64, in both dense layouts.
    *[
        Case(
            "global",
            B=2,
            C=4,
            H=5,
            W=6,
            T=2,
            Hr=6,
            Wr=5,
            L=4,
            atrous=2,
            min_pixels=1,
            layout=lay,
            name=f"opcheck_{lay}",
        )
        for lay in ("contiguous", "channels_last")
    ],
    *[
        Case("local", B=2, C=4, H=5, W=6, L=4, windows=(5, 1, 0, 3), atrous=2, layout=lay, name=f"opcheck_{lay}")
        for lay in ("contiguous", "channels_last")
    ],
    # opcheck at the small end: one reference frame, one label, no atrous; one window larger than the frame.
    *[Case("global", T=1, L=1, layout=lay, name=f"opcheck_t1_l1_{lay}") for lay in ("contiguous", "channels_last")],
    *[
        Case("local", H=6, W=5, L=1, windows=(24,), layout=lay, name=f"opcheck_l1_window24_{lay}")
        for lay in ("contiguous", "channels_last")
    ],
]
CASES = [Case(**{**asdict(c), "seed": i}) for i, c in enumerate(CASES)]
assert len({c.id for c in CASES}) == len(CASES), "two cases with the same id"


def named(prefix: str) -> list[Case]:
    """The cases whose name starts with prefix."""
    return [c for c in CASES if c.name.startswith(prefix)]


# ------------------------------------------------------------------------------------------------ backends
@dataclass
class Backend:
    name: str
    dtypes: list
    device: str = "cpu"
    run: Callable | None = None  # run(case, x) -> (fg, bg), in this process
    child_env: dict = field(default_factory=dict)  # else: run in a child interpreter with this environment
    expect_isa: str | None = None  # the child checks torch.ops.cfbi.cpu_isa() == expect_isa
    skip: str | None = None
    compiled: bool = True
    raw_ops: Callable | None = None  # returns the namespace of its raw ops (torch.ops.cfbi), called in this process
    # The dtypes checked on cases with an offset: those whose global selection is centred (README, "Precision"; the
    # CUDA kernel leaves 16-bit uncentred, csrc/cuda/global_match_kernel.cu).
    offset_dtypes: tuple = tuple(CPU_DTYPES)


def _emulation_library() -> str | None:
    path = os.path.join(REPO_ROOT, "build", "cuda_emulation", "cfbi_emu", "cfbi_emu.so")
    return path if os.path.isfile(path) else None


def _emulation_ops():
    """torch.ops.cfbi_emu, the emulated CUDA kernels' raw ops, loaded on first use."""
    if not hasattr(torch.ops.cfbi_emu, "global_match"):
        torch.ops.load_library(_emulation_library())
    return torch.ops.cfbi_emu


def _run_emulation(case: Case, x: dict) -> tuple[torch.Tensor, torch.Tensor]:
    forward, _, args = raw_args(case, x, _emulation_ops())
    fg, bg, _ = forward(*args)
    return fg, bg


def _backends() -> list[Backend]:
    no_ext = None if cfbi_ops.HAS_EXTENSION else f"no compiled extension: {cfbi_ops.EXTENSION_ERROR}"
    found = [Backend("reference", CPU_DTYPES, run=lambda c, x: call(c, x, "reference"), compiled=False)]
    found += [
        Backend(
            f"cpu-{isa}",
            CPU_DTYPES,
            child_env={"CFBI_CPU_ISA": isa},
            expect_isa=isa,
            skip=no_ext
            or (
                None if ISA_FLAGS[isa] <= CPU_FLAGS else f"CPU without {' / '.join(sorted(ISA_FLAGS[isa] - CPU_FLAGS))}"
            ),
        )
        for isa in CPU_ISAS
    ]
    compiled = dict(run=lambda c, x: call(c, x, "compiled"), raw_ops=lambda: torch.ops.cfbi)
    found.append(Backend("cpu", CPU_DTYPES, skip=no_ext, **compiled))
    found.append(
        Backend(
            "cuda",
            CUDA_DTYPES,
            device="cuda",
            offset_dtypes=(torch.float32, torch.float64),
            skip=no_ext or (None if torch.cuda.is_available() else "no CUDA device"),
            **compiled,
        )
    )
    # The emulation builds the CUDA sources, which take every dtype the CUDA backend takes.
    found.append(
        Backend(
            "cuda-emulation",
            CUDA_DTYPES,
            run=_run_emulation,
            raw_ops=_emulation_ops,
            compiled=False,
            offset_dtypes=(torch.float32, torch.float64),
            skip=None if _emulation_library() else "tools/cuda_emulation not built",
        )
    )
    return found


BACKENDS = _backends()


# ------------------------------------------------------------------------------------------------ child runs
_CHILD = """
import sys, torch
sys.path.insert(0, {tests!r})
import test_ops_harness as h
if torch.ops.cfbi.cpu_isa() != {isa!r}:
    print("UNAVAILABLE", torch.ops.cfbi.cpu_isa())
    raise SystemExit(0)
out = {{}}
for case in h.CASES:
    for dtype in h.CPU_DTYPES:
        out[(case.id, str(dtype))] = [t.detach() for t in h.call(case, h.inputs(case, dtype), "compiled")]
for case in h.SIXTEEN_BIT_CASES:
    for dtype in h.HALF_DTYPES:
        out[(case.id, str(dtype), "16bit")] = h.check_16bit(case, dtype)
torch.save(out, {path!r})
print("DONE")
"""


@pytest.fixture(scope="module")
def child_results(tmp_path_factory):
    """Outputs of the backends that run in a child interpreter, per backend name (None: ISA unavailable)."""
    results = {}
    for backend in BACKENDS:
        if backend.run is not None or backend.skip:
            continue
        path = str(tmp_path_factory.mktemp(backend.name) / "out.pt")
        env = dict(os.environ, **backend.child_env, PYTHONPATH=REPO_ROOT, OMP_NUM_THREADS="1")
        code = _CHILD.format(tests=os.path.join(REPO_ROOT, "tests"), isa=backend.expect_isa, path=path)
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{backend.name}: exit code {proc.returncode}\n{proc.stderr[-3000:]}"
        results[backend.name] = torch.load(path) if "DONE" in proc.stdout else proc.stdout.strip()
    return results


# ------------------------------------------------------------------------------------------------ tests
def _skip_unless_runnable(backend: Backend) -> None:
    if backend.skip:
        pytest.skip(backend.skip)


def _autograd_backend(backend: Backend) -> str:
    """The `backend=` of the public functions that a harness backend with autograd runs."""
    return "reference" if backend.name == "reference" else "compiled"


@pytest.fixture(scope="module")
def oracles():
    cache = {}

    def get(case: Case, dtype: torch.dtype):
        key = (case.id, str(dtype))
        if key not in cache:
            cache[key] = oracle(case, inputs(case, dtype))
        return cache[key]

    return get


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_forward_equals_oracle(backend: Backend, case: Case, oracles, child_results, single_thread_module):
    _skip_unless_runnable(backend)
    for dtype in backend.dtypes:
        if case.offset and dtype not in backend.offset_dtypes:
            continue
        if backend.run is None:
            got = child_results[backend.name]
            if isinstance(got, str):
                pytest.skip(f"instruction set not available here ({got})")
            fg, bg = got[(case.id, str(dtype))]
        else:
            fg, bg = backend.run(case, inputs(case, dtype, backend.device))
        efg, ebg = oracles(case, dtype)
        assert fg.dtype == dtype and fg.device.type == backend.device and tuple(fg.shape) == efg.shape
        atol = OFFSET_TOLERANCE if case.offset and dtype == torch.float32 else TOLERANCE[dtype]
        for name, got_, want in (("fg", fg, efg), ("bg", bg, ebg)):
            torch.testing.assert_close(
                got_.detach().double().cpu(),
                torch.from_numpy(want),
                rtol=0,
                atol=atol,
                msg=lambda m, d=dtype, n=name: f"{backend.name} {d} {n}: {m}",
            )


# Backends that run the public functions (so autograd) in this process: the emulation only has raw ops.
AUTOGRAD_BACKENDS = [b for b in BACKENDS if b.run is not None and b.name != "cuda-emulation"]
COMPILED_BACKENDS = [b for b in AUTOGRAD_BACKENDS if b.compiled]
# Gradients: the first small cases, the gradcheck cases and the empty ones (gradients of the right shapes).
GRAD_CASES = [
    *[c for c in CASES if c.B * c.H * c.W <= 120][:8],
    *named("gradcheck"),
    *named("empty"),
    *named("no_channels"),
]
# gradcheck of the compiled backends in full mode (every input element perturbed) up to this many input elements,
# fast mode beyond; the reference's gradients are torch's autograd through its formula, fast mode for all.
GRADCHECK_FULL_MODE_NUMEL = 256


@pytest.mark.parametrize("case", GRAD_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("backend", COMPILED_BACKENDS, ids=lambda b: b.name)
def test_gradients_equal_reference_and_repeat(backend: Backend, case: Case, single_thread_module):
    """Gradients equal the reference's (float64); two calls are bit-identical."""
    _skip_unless_runnable(backend)
    results = []
    for which in ("compiled", "compiled", "reference"):
        x = leaf_inputs(case, torch.float64, backend.device)
        fg, bg = call(case, x, which)
        results.append([fg, bg, *grads(weighted_loss(fg, bg), [x[k] for k in LEAVES])])
    for a, b in zip(results[0], results[1]):
        assert torch.equal(a, b), "two calls differ"
    for a, b in zip(results[0], results[2]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("case", GRAD_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("backend", AUTOGRAD_BACKENDS, ids=lambda b: b.name)
def test_gradcheck(backend: Backend, case: Case, single_thread_module):
    _skip_unless_runnable(backend)
    x = leaf_inputs(case, torch.float64, backend.device)
    leaves = [x[k] for k in LEAVES]

    def fn(*t):
        return call(case, dict(x, **dict(zip(LEAVES, t))), _autograd_backend(backend))

    fast = not backend.compiled or sum(t.numel() for t in leaves) > GRADCHECK_FULL_MODE_NUMEL
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=fast)


def _weighted_grads(case: Case, dtype: torch.dtype, device: str, which: str) -> list[torch.Tensor]:
    """The gradients of a fixed loss of the outputs w.r.t. the LEAVES; which: "compiled" or "reference"."""
    x = leaf_inputs(case, dtype, device)
    return grads(weighted_loss(*call(case, x, which)), [x[k] for k in LEAVES])


# The CUDA kernels' gradients against the CPU kernels': every dtype, atomic and deterministic backward.
KERNEL_GRADIENT_CASES = named("t2_atrous2_min1") + named("kernel_gradients")


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("case", KERNEL_GRADIENT_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("backend", [b for b in COMPILED_BACKENDS if b.device != "cpu"], ids=lambda b: b.name)
def test_gradients_equal_cpu_kernel(backend: Backend, case: Case, deterministic: bool, restore_deterministic):
    _skip_unless_runnable(backend)
    torch.use_deterministic_algorithms(deterministic)
    for dtype in backend.dtypes:
        got = _weighted_grads(case, dtype, backend.device, "compiled")
        on_cpu = _weighted_grads(case, dtype, "cpu", "compiled")
        for name, g, e in zip(LEAVES, got, on_cpu):
            assert g.device.type == backend.device and torch.count_nonzero(e) > 0, f"{dtype}: no gradient for {name}"
            torch.testing.assert_close(g.cpu(), e, msg=lambda m, n=name, d=dtype: f"{d} {n}: {m}", **GRAD_TOL[dtype])
        if dtype in (torch.float32, torch.float64):
            reference = _weighted_grads(case, dtype, backend.device, "reference")
            for name, g, e in zip(LEAVES, got, reference):
                torch.testing.assert_close(g, e, msg=lambda m, n=name: f"{n} vs reference: {m}", **GRAD_TOL[dtype])


def _assert_same_selection(got: torch.Tensor, want: torch.Tensor, exact: bool, max_fraction: float = 1e-3) -> None:
    """argmin of another kernel vs the CPU kernel's: the same where exact (float64, or exact distances such as
    integer embeddings); elsewhere a rare near-tie that a dot-product search (the CPU's float32 one, the GPU's
    global kernel for every type but float64) orders differently (the scores still agree, the forward test says)."""
    got = got.cpu()
    assert torch.equal(got < 0, want < 0), "a label with candidates for one kernel has none for the other"
    mismatch = (got != want).double().mean().item() if got.numel() else 0.0
    assert mismatch <= (0.0 if exact else max_fraction), f"argmin differs at {mismatch:.2%} of the entries"


def _distance_overflows(case: Case, dtype: torch.dtype) -> bool:
    """Whether an outlier's squared distance overflows the type the kernels compute in (float32 below float64).
    There the kernels disagree on whether the label has a candidate (the CPU local kernel: none; the CUDA one: the
    first), with the same score (1) and no gradient either way."""
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    return case.outlier**2 > torch.finfo(compute).max


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b.name.startswith("cuda")], ids=lambda b: b.name)
def test_selection_equals_cpu_kernel(backend: Backend, case: Case, single_thread_module):
    """The raw ops' argmin (which candidate each gradient goes to) on the CUDA kernels, ties included: those of the
    CPU kernels, which give ties to the lowest candidate index."""
    _skip_unless_runnable(backend)
    if not cfbi_ops.HAS_EXTENSION:  # the emulation runs without the extension, the CPU kernels do not
        pytest.skip(f"no compiled CPU kernels to compare with: {cfbi_ops.EXTENSION_ERROR}")
    for dtype in backend.dtypes:
        if case.offset and dtype not in backend.offset_dtypes or _distance_overflows(case, dtype):
            continue
        forward, _, args = raw_args(case, inputs(case, dtype, backend.device), backend.raw_ops())
        cpu_forward, _, cpu_args = raw_args(case, inputs(case, dtype))
        got, want = forward(*args)[2], cpu_forward(*cpu_args)[2]
        assert got.dtype == torch.int32 and got.shape == want.shape
        _assert_same_selection(got, want, exact=dtype == torch.float64 or case.integer)


def opcheck_args(case: Case, dtype: torch.dtype, device: str, op: str, ops=None) -> tuple[Callable, list]:
    """The raw forward or backward op of a case (of torch.ops.cfbi, or of `ops`: tools/cuda_emulation uses it) and
    its arguments (the backward's after a forward)."""
    x = leaf_inputs(case, dtype, device)
    forward, backward, args = raw_args(case, x, ops)
    if op == "forward":
        return forward, args
    detached = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    fg, _, argmin = forward(*detached)
    g = torch.Generator().manual_seed(case.seed)
    grad_fg, grad_bg = (torch.randn(fg.shape, generator=g, dtype=torch.float64).to(fg) for _ in range(2))
    return backward, backward_args(detached, fg, argmin, grad_fg, grad_bg)


# Every third plain case (the forward op, float32), and the opcheck cases (both ops, float32 and float64).
OPCHECKS = [(c, "forward", torch.float32) for c in [c for c in CASES if c.layout != "expanded" and not c.name][::3]]
OPCHECKS += [
    (c, op, d) for c in named("opcheck") for op in ("forward", "backward") for d in (torch.float32, torch.float64)
]


@pytest.mark.parametrize("case, op, dtype", OPCHECKS, ids=lambda v: v.id if isinstance(v, Case) else str(v))
@pytest.mark.parametrize("backend", COMPILED_BACKENDS, ids=lambda b: b.name)
def test_opcheck(backend: Backend, case: Case, op: str, dtype: torch.dtype, single_thread_module):
    _skip_unless_runnable(backend)
    fn, args = opcheck_args(case, dtype, backend.device, op)
    torch.library.opcheck(fn.default, args)


def check_16bit(case: Case, dtype: torch.dtype) -> str | None:
    """The compiled CPU op on float16 / bfloat16 inputs against the float32 op on the same rounded values: the
    same argmin; fg, bg and the backward's four gradients within ROUNDING[dtype] (relative to max(|value|, 1))
    and in the input dtype; public autograd gradients in the input dtype. Returns what differs, None if nothing."""
    x = inputs(case, dtype)
    op, backward, args = raw_args(case, x)
    fg, bg, arg = op(*args)
    wide_args = [a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
    want = op(*wide_args)
    if not torch.equal(arg, want[2]):
        return f"{dtype}: argmin differs from float32 at {int((arg != want[2]).sum())} places"
    g = torch.Generator().manual_seed(case.seed)
    g_fg, g_bg = (torch.randn(fg.shape, generator=g).to(dtype) for _ in range(2))
    grads = backward(*backward_args(args, fg, arg, g_fg, g_bg))
    # The float32 backward given the rounded fg: rounded scores can tie and route a background gradient to another
    # label, as the 16-bit outputs say.
    wide = backward(*backward_args(wide_args, fg.float(), arg, g_fg.float(), g_bg.float()))
    names = ("fg", "bg", "grad_query", "grad_candidates", "grad_fg_bias", "grad_bg_bias")
    for name, a, b in zip(names, [fg, bg, *grads], [want[0], want[1], *wide]):
        if a.dtype != dtype:
            return f"{dtype}: {name} is {a.dtype}"
        err = ((a.float() - b).abs() / b.abs().clamp(min=1)).max().item() if a.numel() else 0.0
        if not err <= ROUNDING[dtype]:
            return f"{dtype}: {name} {err:.3g} from float32 (allowed {ROUNDING[dtype]})"
    x = leaf_inputs(case, dtype)
    fg, bg = call(case, x, "compiled")
    got = torch.autograd.grad(fg.sum() + bg.sum(), [x[k] for k in LEAVES])
    wrong = [str(t.dtype) for t in got if t.dtype != dtype]
    return f"{dtype}: autograd gradients in {wrong}" if wrong else None


# Cases where the 16-bit backward's sums of many terms (bias gradients, wide windows, integer ties) drift more than
# ROUNDING from the float32 backward's: the 16-bit kernel takes each term's slope from the score recomputed in
# float32, the float32 backward it is compared with from the rounded score, one rounding apart per term.
BEYOND_ONE_ROUNDING = {"local-c70", "local-radius_over_12_atrous2", "local-integer_ties"}
SIXTEEN_BIT_CASES = [c for c in CASES if c.id not in BEYOND_ONE_ROUNDING]


@pytest.mark.parametrize("case", SIXTEEN_BIT_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b.name.startswith("cpu")], ids=lambda b: b.name)
def test_16bit_equals_float32_on_rounded_values(backend: Backend, case: Case, child_results, single_thread_module):
    _skip_unless_runnable(backend)
    for dtype in HALF_DTYPES:
        if backend.run is None:
            got = child_results[backend.name]
            if isinstance(got, str):
                pytest.skip(f"instruction set not available here ({got})")
            problem = got[(case.id, str(dtype), "16bit")]
        else:
            problem = check_16bit(case, dtype)
        assert problem is None, f"{backend.name}: {problem}"


# ------------------------------------------------------------------------------------------------ second derivatives
DOUBLE_BACKWARD_CASES = [c for c in CASES if c.B * c.H * c.W <= 50 and not (c.outlier or c.infinite)][:5]


@pytest.mark.parametrize("case", DOUBLE_BACKWARD_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("backend", AUTOGRAD_BACKENDS, ids=lambda b: b.name)
def test_gradgradcheck(backend: Backend, case: Case, single_thread_module):
    """Second derivatives (create_graph=True) are those of finite differences on every backend: through the compiled
    ops they came out as silent zeros (issue 21)."""
    _skip_unless_runnable(backend)
    x = leaf_inputs(case, torch.float64, backend.device)

    def fn(*t):
        return call(case, dict(x, **dict(zip(LEAVES, t))), _autograd_backend(backend))

    # Slow mode: fast mode's random projections disagree with itself on L = 1, where bg is fg (also on the reference).
    assert torch.autograd.gradgradcheck(fn, [x[k] for k in LEAVES], eps=1e-6, atol=1e-5)


@pytest.mark.parametrize(
    "case", DOUBLE_BACKWARD_CASES[:2] + [c for c in DOUBLE_BACKWARD_CASES if c.op == "local"][:2], ids=lambda c: c.id
)
@pytest.mark.parametrize("backend", COMPILED_BACKENDS, ids=lambda b: b.name)
def test_double_backward_of_the_function_classes(backend: Backend, case: Case, single_thread_module):
    """d|grad|^2 / d inputs through GlobalMatchFunction / LocalMatchFunction.apply and the public function equal the
    reference's (float64); the raw backward ops, differentiated again, raise instead of giving zeros."""
    _skip_unless_runnable(backend)
    runs = {
        "function": lambda x: call_function_class(case, x),
        "compiled": lambda x: call(case, x, "compiled"),
        "reference": lambda x: call(case, x, "reference"),
    }
    # First and second derivatives of each way to call the op.
    results = {
        k: first_and_second_derivatives(run, leaf_inputs(case, torch.float64, backend.device))
        for k, run in runs.items()
    }
    second_of_reference = results["reference"][len(LEAVES) :]
    assert any(g.abs().max() > 0 for g in second_of_reference), "the case has no second derivative to compare"
    for which in ("function", "compiled"):
        for a, b in zip(results[which], results["reference"]):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=lambda m, w=which: f"{w}: {m}")
    x = leaf_inputs(case, torch.float64, backend.device)
    op, backward, args = raw_args(case, x)
    fg, bg, argmin = op(*args)
    raw_grads = backward(*backward_args(args, fg, argmin, torch.ones_like(fg), torch.ones_like(bg)))
    with pytest.raises(RuntimeError, match="no derivative"):
        torch.autograd.grad(raw_grads[0].sum(), [x["query"]])


# ------------------------------------------------------------------------------------------------ the shared contract
@pytest.mark.parametrize("case", [c for c in CASES if not (c.offset or c.name)][::2], ids=lambda c: c.id)
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b.name in ("reference", "cpu")], ids=lambda b: b.name)
def test_16bit_computed_in_float32(backend: Backend, case: Case, single_thread_module):
    """float16 / bfloat16 inputs are computed in float32 on every backend (the reference computed in 16 bits, issue
    21): the public result on 16-bit inputs is the float32 result on the same rounded values, rounded to the input
    dtype, bit for bit."""
    _skip_unless_runnable(backend)
    for dtype in HALF_DTYPES:
        x = inputs(case, dtype, backend.device)
        fg, bg = backend.run(case, x)
        want = backend.run(case, {k: (v.float() if v.is_floating_point() else v) for k, v in x.items()})
        for name, a, b in (("fg", fg, want[0]), ("bg", bg, want[1])):
            assert a.dtype == dtype, f"{backend.name}: {name} is {a.dtype}"
            assert torch.equal(a, b.to(dtype)), (
                f"{backend.name} {dtype} {name}: {(a.float() - b).abs().max().item():.3g} from float32"
            )


# Outputs that no allocator can serve: the error names the argument that sized them, on every backend.
UNALLOCATABLE = [
    ("global", dict(num_labels=2**31 - 1), "num_labels"),
    ("local", dict(num_labels=2**31 - 1), "num_labels"),
    ("local", dict(windows=[1] * 10**5), "num_labels|windows"),
]


@pytest.mark.parametrize("op, args, name", UNALLOCATABLE, ids=lambda v: str(v)[:40])
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b.run is not None], ids=lambda b: b.name)
def test_unallocatable_outputs_name_the_argument(backend: Backend, op: str, args: dict, name: str):
    if backend.skip or backend.name == "cuda-emulation":
        pytest.skip(backend.skip or "the emulation's raw ops are checked by tools/cuda_emulation")
    which = "reference" if backend.name == "reference" else "compiled"
    q = torch.zeros(1, 1, 512, 512, device=backend.device)
    lab = torch.zeros(1, 512, 512, dtype=torch.long, device=backend.device)
    num_labels = args.get("num_labels", 3)
    with pytest.raises(RuntimeError, match=f"({name}).*cannot be allocated"):
        if op == "global":
            cfbi_ops.global_match(q, q, lab, num_labels, 0.0, 0.0, backend=which)
        else:
            cfbi_ops.local_match(q, q, lab, num_labels, 0.0, 0.0, windows=args.get("windows", (1,)), backend=which)
