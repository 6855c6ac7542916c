"""pytest-benchmark suite of the matching ops on the CFBI+ shapes:

    pytest benchmarks/bench_ops.py --benchmark-columns=median,iqr --benchmark-sort=name
    pytest benchmarks/bench_ops.py -k "s4 and cfbi_ops"

benchmarks/compare.py prints the same cases as one table with ratios, memory and thread scaling.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.cases import CASES, FORWARD_ONLY, PEERS, has_faiss, mm_global_operands, mm_local_operands
from benchmarks.compare import run_peer

BENCH_CASES = ["s4", "s8", "s16", "s4-480p"]


def _peers(op: str) -> list[str]:
    return [p for p in PEERS[op] if p != "faiss" or has_faiss()]


@pytest.mark.parametrize("labels", [2, 4, 11])
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("peer", _peers("global"))
@pytest.mark.parametrize("case", BENCH_CASES)
def test_global(benchmark, case: str, peer: str, mode: str, labels: int) -> None:
    if mode == "fwd+bwd" and peer in FORWARD_ONLY:
        pytest.skip("forward-only peer")
    benchmark(run_peer(CASES[case], "global", peer, labels, mode == "fwd+bwd", "cpu"))


@pytest.mark.parametrize("labels", [2, 4, 11])
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("peer", _peers("local"))
@pytest.mark.parametrize("case", BENCH_CASES)
def test_local(benchmark, case: str, peer: str, mode: str, labels: int) -> None:
    benchmark(run_peer(CASES[case], "local", peer, labels, mode == "fwd+bwd", "cpu"))


@pytest.mark.parametrize("op", ["global", "local"])
@pytest.mark.parametrize("case", BENCH_CASES)
def test_roofline_mm(benchmark, case: str, op: str) -> None:
    a, b = (mm_global_operands if op == "global" else mm_local_operands)(CASES[case])
    benchmark(torch.mm, a, b)
