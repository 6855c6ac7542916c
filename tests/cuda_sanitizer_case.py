"""Runs every kernel variant of the cfbi_ops CUDA ops forward and backward on small inputs, for the
compute-sanitizer tools (scripts/gpu_check.sh runs the first three):

    compute-sanitizer --tool memcheck  python tests/cuda_sanitizer_case.py
    compute-sanitizer --tool racecheck python tests/cuda_sanitizer_case.py
    compute-sanitizer --tool synccheck python tests/cuda_sanitizer_case.py
    compute-sanitizer --tool initcheck python tests/cuda_sanitizer_case.py

Under memcheck set PYTORCH_NO_CUDA_MEMORY_CACHING=1: with torch's caching allocator an access past the end of a
tensor usually lands in another block of the same allocation and is not reported.

The variants and what selects them (csrc/cuda/*.cu):
- global_match: CUDA-core tiles for float32 / float64, tensor-core (wmma) tiles for float16 / bfloat16;
  channels in one or several staged chunks (16 / 8 / 32 channels per chunk for float32 / float64 / 16-bit);
  candidates split across blockIdx.y when the query blocks are fewer than twice the multiprocessors and there
  is more than one 64-candidate tile (candidate_splits), or a single split when the query blocks fill the
  device; packed buffers sized by the atrous grid (atrous > 1, no small-label rule) or by the whole
  reference, with the per-frame label counts of the small-label rule (atrous > 1, min_pixels > 0); no
  candidate at all; many labels.
- local_match: per-label row minima in shared memory while L x 128 threads fit beside the strips
  (L <= 17 for float32 / 16-bit, L <= 11 for float64: local_match_state_in_shared), else in a global
  workspace; channels in one or several chunks (32 / 16 per chunk); radii over 12 (several segments, left
  and right strips); more than 64 windows (several launches); atrous sub-grids; one-row frames.
- backward: atomic candidate gradient (directly into the output for float32 / float64, through a float buffer
  and a cast for the 16-bit types) and, under torch.use_deterministic_algorithms, the sorted one (32-bit
  keys; the 64-bit keys need more than 2^31 entries and are not driven here); bias reduction over one and
  several blocks (more than 16384 entries).

Prints one line per call and "ok" at the end; not collected by pytest. `--device cpu` runs the same calls
on the CPU kernels (a check of this driver without a GPU).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cfbi_ops  # noqa: E402

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

# local_match_state_in_shared (csrc/cuda/local_match_kernel.cu): the largest L whose row minima stay in
# shared memory, per accumulation type.
SHARED_STATE_MAX_LABELS = {torch.float64: 11, "float": 17}


def _shared_limit(dtype: torch.dtype) -> int:
    return SHARED_STATE_MAX_LABELS[torch.float64] if dtype == torch.float64 else SHARED_STATE_MAX_LABELS["float"]


class Driver:
    """Builds inputs on one device and runs an op forward and backward on them."""

    def __init__(self, device: str, seed: int = 0) -> None:
        self.device = device
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        self.calls = 0

    def embeddings(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """0.1 * randn of `shape` (small: the scores do not saturate, so every gradient is non-zero)."""
        x = 0.1 * torch.randn(shape, generator=self.generator, device=self.device)
        return x.to(dtype).requires_grad_()

    def labels(self, shape: tuple[int, ...], num_labels: int) -> torch.Tensor:
        """Labels in [0, num_labels), about 1 / (L + 1) of them 255 (ignored)."""
        labels = torch.randint(0, num_labels + 1, shape, generator=self.generator, device=self.device)
        labels[labels == num_labels] = 255
        return labels

    def bias(self, value: float, dtype: torch.dtype) -> torch.Tensor:
        return torch.full((1,), value, dtype=dtype, device=self.device, requires_grad=True)

    def backward(self, outputs, leaves) -> None:
        loss = sum((o.float() * (i + 1)).sum() for i, o in enumerate(outputs))
        torch.autograd.grad(loss, leaves)
        self.calls += 1

    def global_case(
        self, dtype: torch.dtype, *, B=2, C=8, H=7, W=9, T=2, Hr=8, Wr=6, L=4, atrous=2, min_pixels=1
    ) -> None:
        """global_match forward and backward: query [B, C, H, W], reference [B, T, C, Hr, Wr]."""
        query = self.embeddings((B, C, H, W), dtype)
        reference = self.embeddings((B, T, C, Hr, Wr), dtype)
        labels = self.labels((B, T, Hr, Wr), L)
        fb, bb = self.bias(-0.3, dtype), self.bias(0.2, dtype)
        out = cfbi_ops.global_match(query, reference, labels, L, fb, bb, atrous=atrous, atrous_min_pixels=min_pixels)
        self.backward(out, [query, reference, fb, bb])

    def local_case(self, dtype: torch.dtype, *, B=2, C=8, H=9, W=37, L=4, windows=(4, 8, 12), atrous=2) -> None:
        """local_match forward and backward: query and previous [B, C, H, W]."""
        query = self.embeddings((B, C, H, W), dtype)
        previous = self.embeddings((B, C, H, W), dtype)
        labels = self.labels((B, H, W), L)
        fb, bb = self.bias(-0.3, dtype), self.bias(0.2, dtype)
        out = cfbi_ops.local_match(query, previous, labels, L, fb, bb, windows=windows, atrous=atrous)
        self.backward(out, [query, previous, fb, bb])


def multiprocessors(device: str) -> int:
    """Multiprocessors of the CUDA device (what candidate_splits divides by); 4 on the CPU."""
    return torch.cuda.get_device_properties(0).multi_processor_count if device == "cuda" else 4


def cases(device: str) -> list[tuple[str, Callable[[Driver, torch.dtype], None], bool]]:
    """(name, run(driver, dtype), also run in deterministic mode) of every variant."""
    sms = multiprocessors(device)
    return [
        # ---- global_match
        ("global: 2 frames, atrous 2, small-label rule (frame counts)", lambda d, t: d.global_case(t), True),
        (
            "global: packed by the atrous grid (atrous 4, no small-label rule)",
            lambda d, t: d.global_case(t, B=1, C=20, H=9, W=11, T=1, Hr=13, Wr=15, L=3, atrous=4, min_pixels=0),
            False,
        ),
        (
            "global: 70 channels (several chunks), L = 1",
            lambda d, t: d.global_case(t, C=70, T=1, L=1, atrous=1, min_pixels=0),
            False,
        ),
        (
            "global: one query block, about 16 candidate tiles (candidate splits)",
            lambda d, t: d.global_case(t, B=1, C=33, H=8, W=8, T=1, Hr=34, Wr=34, L=5, atrous=1, min_pixels=0),
            True,
        ),
        (
            f"global: {2 * sms} x 128 queries (query blocks fill the device: one split)",
            lambda d, t: d.global_case(t, B=1, C=8, H=2 * sms, W=128, T=1, Hr=9, Wr=16, L=3, atrous=1, min_pixels=0),
            False,
        ),
        ("global: no candidate at all", lambda d, t: d.global_case(t, B=1, Hr=0, L=3), False),
        (
            "global: 40 labels, atrous 3, small-label rule",
            lambda d, t: d.global_case(t, B=1, C=5, L=40, atrous=3, min_pixels=2),
            False,
        ),
        # ---- local_match
        ("local: row state in shared memory (L = 4), atrous 2", lambda d, t: d.local_case(t), True),
        (
            "local: row state in shared memory at its limit (L = 17, float64 11)",
            lambda d, t: d.local_case(t, B=1, C=8, H=6, W=35, L=_shared_limit(t), windows=(1, 3), atrous=1),
            False,
        ),
        (
            "local: row state in global memory (L = 18, float64 12)",
            lambda d, t: d.local_case(t, B=1, C=8, H=6, W=35, L=_shared_limit(t) + 1, windows=(1, 3), atrous=1),
            True,
        ),
        (
            "local: row state in global memory (L = 60)",
            lambda d, t: d.local_case(t, B=1, C=4, H=5, W=35, L=60, windows=(1, 2), atrous=1),
            False,
        ),
        ("local: 50 channels (two chunks)", lambda d, t: d.local_case(t, C=50, windows=(1, 2), atrous=1), False),
        (
            "local: 130 channels (five chunks)",
            lambda d, t: d.local_case(t, B=1, C=130, H=5, W=6, windows=(2,), atrous=1),
            False,
        ),
        (
            "local: radius 15 (two segments, left and right strips), atrous 2",
            lambda d, t: d.local_case(t, B=1, C=6, H=9, W=70, L=3, windows=(26, 4, 30, 0), atrous=2),
            False,
        ),
        (
            "local: radius 40 (four segments)",
            lambda d, t: d.local_case(t, B=1, C=3, H=7, W=90, L=2, windows=(40, 13), atrous=1),
            False,
        ),
        (
            "local: 71 windows (two launches)",
            lambda d, t: d.local_case(t, B=1, C=3, H=5, W=6, L=3, windows=tuple(range(70)) + (100,), atrous=1),
            False,
        ),
        (
            "local: one-row frame, window 0",
            lambda d, t: d.local_case(t, B=1, C=3, H=1, W=9, L=1, windows=(0, 3), atrous=1),
            False,
        ),
        (
            "local: atrous 3, frame not a multiple of 3",
            lambda d, t: d.local_case(t, B=1, C=8, H=10, W=11, L=3, windows=(3, 6, 9), atrous=3),
            False,
        ),
        (
            "local: 38400 entries (bias reduction over several blocks)",
            lambda d, t: d.local_case(t, B=1, C=8, H=40, W=40, L=4, windows=(2, 4, 6, 8, 10, 12), atrous=1),
            True,
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--device",
        default="cuda",
        choices=["cuda", "cpu"],
        help="cpu: the same calls on the CPU kernels (checks this driver without a GPU)",
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 0
    if not cfbi_ops.HAS_EXTENSION:
        print(f"cfbi_ops extension not built: {cfbi_ops.EXTENSION_ERROR}")
        return 1
    driver = Driver(args.device)
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        for mode in (False, True):
            torch.use_deterministic_algorithms(mode)
            for name, run, in_deterministic in cases(args.device):
                if mode and not in_deterministic:
                    continue
                for dtype in DTYPES:
                    run(driver, dtype)
                    print(f"{'deterministic' if mode else 'atomic':13s} {str(dtype)[6:]:8s} {name}", flush=True)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    if args.device == "cuda":
        torch.cuda.synchronize()
    print(f"ok: {driver.calls} forward + backward calls")
    return 0


if __name__ == "__main__":
    sys.exit(main())
