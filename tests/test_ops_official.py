"""cfbi_ops against the authors' formulation of the matching (benchmarks/cases.py `naive_*`: the full distance
matrix with 5e4-padded wrong labels and a masked min for global matching, F.unfold of the padded previous frame
for local matching, their sigmoid and their foreground-to-background min): values in float32 and float64,
gradients in float64 (in float32 their expanded distance ||q||^2 + ||r||^2 - 2 q.r can reorder near-ties, a few ulp
apart, and send a gradient to the other candidate)."""
from __future__ import annotations

import pytest
import torch

from benchmarks.cases import Case, make_inputs, naive_global, naive_local, ours_global, ours_local

CASES = [
    Case("square-a2", 15, 15, 16, 2, (4, 8, 12), 2),
    Case("wide-a1", 9, 21, 8, 1, (2, 4, 6), 1),
    Case("tall-a3", 20, 11, 12, 3, (3, 6, 9), 3),
    Case("windows-below-rate", 12, 13, 8, 2, (1, 4, 2), 2),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("labels", [1, 2, 5])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("op", ["global", "local"])
def test_matches_authors_formulation(op: str, case: Case, labels: int, dtype: torch.dtype) -> None:
    ours, theirs = (ours_global, naive_global) if op == "global" else (ours_local, naive_local)
    x = make_inputs(case, labels, grad=True, seed=labels, dtype=dtype)
    with torch.no_grad():
        x.fg_bias.fill_(0.3)
        x.bg_bias.fill_(-0.2)
    leaves = [x.query, x.reference if op == "global" else x.previous, x.fg_bias, x.bg_bias]
    results = []
    for fn in (ours, theirs):
        fg, bg = fn(case, x)
        weights = torch.linspace(-1, 1, fg.numel(), dtype=dtype).reshape(fg.shape)
        loss = (fg * weights).sum() + (bg * weights.flip(-1)).sum()
        results.append((fg, bg, torch.autograd.grad(loss, leaves, allow_unused=True)))
    (fg, bg, grads), (fg_ref, bg_ref, grads_ref) = results
    torch.testing.assert_close(fg, fg_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(bg, bg_ref, atol=1e-5, rtol=0)
    if dtype != torch.float64:
        return
    for name, got, want in zip(["query", "candidates", "fg_bias", "bg_bias"], grads, grads_ref):
        want = torch.zeros_like(got) if want is None else want
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0, msg=lambda m: f"{name}: {m}")
