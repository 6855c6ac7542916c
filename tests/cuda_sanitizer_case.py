"""Runs every CUDA op of cfbi_ops forward and backward on small inputs, for the compute-sanitizer tools:

    compute-sanitizer --tool memcheck  python tests/cuda_sanitizer_case.py
    compute-sanitizer --tool racecheck python tests/cuda_sanitizer_case.py
    compute-sanitizer --tool initcheck python tests/cuda_sanitizer_case.py
    compute-sanitizer --tool synccheck python tests/cuda_sanitizer_case.py

Covers every dtype, the atomic and the deterministic backward, the kernel variants (channels held in
registers or read from memory, per-label state in shared or global memory, several window tables per launch)
and the degenerate sizes (no candidate, one label). Prints "ok" at the end; not collected by pytest.
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cfbi_ops  # noqa: E402

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _embeddings(shape, dtype, g):
    return (0.1 * torch.randn(shape, generator=g, device="cuda")).to(dtype).requires_grad_()


def _labels(shape, num_labels, g):
    labels = torch.randint(0, num_labels + 1, shape, generator=g, device="cuda")
    labels[labels == num_labels] = 255  # ignored pixels
    return labels


def _backward(outputs, leaves):
    loss = sum((o.float() * (i + 1)).sum() for i, o in enumerate(outputs))
    return torch.autograd.grad(loss, leaves)


def global_case(dtype, g, *, B=2, C=8, H=7, W=9, T=2, Hr=8, Wr=6, L=4, atrous=2, min_pixels=1):
    query = _embeddings((B, C, H, W), dtype, g)
    reference = _embeddings((B, T, C, Hr, Wr), dtype, g)
    labels = _labels((B, T, Hr, Wr), L, g)
    fb = torch.full((1,), -0.3, dtype=dtype, device="cuda", requires_grad=True)
    bb = torch.full((1,), 0.2, dtype=dtype, device="cuda", requires_grad=True)
    out = cfbi_ops.global_match(query, reference, labels, L, fb, bb, atrous=atrous, atrous_min_pixels=min_pixels)
    _backward(out, [query, reference, fb, bb])


def local_case(dtype, g, *, B=2, C=8, H=9, W=37, L=4, windows=(4, 8, 12), atrous=2):
    query = _embeddings((B, C, H, W), dtype, g)
    previous = _embeddings((B, C, H, W), dtype, g)
    labels = _labels((B, H, W), L, g)
    fb = torch.full((1,), -0.3, dtype=dtype, device="cuda", requires_grad=True)
    bb = torch.full((1,), 0.2, dtype=dtype, device="cuda", requires_grad=True)
    out = cfbi_ops.local_match(query, previous, labels, L, fb, bb, windows=windows, atrous=atrous)
    _backward(out, [query, previous, fb, bb])


def main():
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return
    g = torch.Generator(device="cuda")
    g.manual_seed(0)
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        for mode in (False, True):
            torch.use_deterministic_algorithms(mode)
            for dtype in DTYPES:
                global_case(dtype, g)
                global_case(dtype, g, C=70, T=1, L=1, atrous=1, min_pixels=0)   # channels over two chunks
                global_case(dtype, g, B=1, Hr=0, L=3)                              # no candidate at all
                global_case(dtype, g, B=1, C=5, L=40, atrous=3, min_pixels=2)      # many labels
                local_case(dtype, g)                                               # registers, 32 channels
                local_case(dtype, g, C=50, windows=(1, 2), atrous=1)               # registers, 64 channels
                local_case(dtype, g, C=130, H=5, W=6, windows=(2,), atrous=1)      # channels read from memory
                local_case(dtype, g, C=4, H=5, W=35, L=60, windows=(1, 2), atrous=1)  # state in global memory
                local_case(dtype, g, C=3, H=5, W=6, L=3, windows=tuple(range(70)) + (100,), atrous=1)
                local_case(dtype, g, C=3, H=1, W=9, L=1, windows=(0, 3), atrous=1)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    torch.cuda.synchronize()
    print("ok")


if __name__ == "__main__":
    main()
