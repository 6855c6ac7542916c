"""cfbi_ops against the authors' formulation of the matching (tests/authors_matching.py: the chunked full
distance matrix with 5e4-padded wrong labels and a masked min for global matching, F.unfold of the padded
previous frame for local matching, their score and their foreground-to-background min), with ignored pixels
among the labels: values in float32 and float64, gradients in float64 (in float32 their expanded distance
||q||^2 + ||r||^2 - 2 q.r can reorder near-ties, a few ulp apart, and send a gradient to the other candidate)."""

from __future__ import annotations

import pytest
import torch
from conftest import LEAVES, Case, call, grads, leaf_inputs, weighted_loss

from tests import authors_matching as authors

# name, H, W, C, global atrous, local windows, local atrous
CASES = [
    ("square-a2", 15, 15, 16, 2, (4, 8, 12), 2),
    ("wide-a1", 9, 21, 8, 1, (2, 4, 6), 1),
    ("tall-a3", 20, 11, 12, 3, (3, 6, 9), 3),
    ("windows-below-rate", 12, 13, 8, 2, (1, 4, 2), 2),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("labels", [1, 2, 5])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
@pytest.mark.parametrize("op", ["global", "local"])
def test_matches_authors_formulation(op: str, case: tuple, labels: int, dtype: torch.dtype) -> None:
    _, height, width, channels, global_atrous, windows, local_atrous = case
    common = dict(C=channels, H=height, W=width, L=labels, seed=labels, fg_bias=0.3, bg_bias=-0.2)
    if op == "global":
        case = Case("global", atrous=global_atrous, **common)
    else:
        case = Case("local", windows=windows, atrous=local_atrous, **common)
    x = leaf_inputs(case, dtype)
    args = [x[k] for k in ("query", "candidates", "labels")] + [labels, x["fg_bias"], x["bg_bias"]]
    ours = call(case, x)
    if op == "global":
        theirs = authors.global_match_op_layout(*args, atrous=global_atrous, n_chunks=3)
    else:
        theirs = authors.local_match_op_layout(*args, windows=windows, atrous=local_atrous)
    for name, got, want in zip(["fg", "bg"], ours, theirs):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0, msg=lambda m, name=name: f"{name}: {m}")
    if dtype != torch.float64:
        return
    for name, got, want in zip(
        ["query", "candidates", "fg_bias", "bg_bias"],
        grads(weighted_loss(*ours), [x[k] for k in LEAVES]),
        grads(weighted_loss(*theirs), [x[k] for k in LEAVES]),
    ):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0, msg=lambda m, name=name: f"{name}: {m}")
