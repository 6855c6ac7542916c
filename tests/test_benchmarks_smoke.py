"""The benchmark suite runs (tiny case, one repeat) and writes its table, and every peer it measures
computes the same maps as cfbi_ops, so the recorded comparisons are like for like."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import compare
from benchmarks.cases import CASES, PEERS, has_faiss, make_inputs


def test_compare_quick_writes_results(tmp_path: Path) -> None:
    stem = tmp_path / "bench"
    assert compare.main(["--cases", "tiny", "--labels", "2", "--quick", "--out", str(stem)]) == 0
    data = json.loads(stem.with_suffix(".json").read_text())
    peers = {(r["op"], r["peer"], r["mode"]) for r in data["rows"]}
    assert ("global", "cfbi_ops", "fwd+bwd") in peers and ("local", "naive", "fwd") in peers
    assert {(s["op"], s["mode"]) for s in data["compat_speedups"]} == {
        (op, mode) for op in ("global", "local") for mode in ("fwd", "fwd+bwd")
    }
    assert all(r["ms"] > 0 for r in data["rows"])
    assert "| tiny | global | 2 | fwd | cfbi_ops |" in stem.with_suffix(".md").read_text()


def test_compare_cpu_rows_of_16_bit_inputs_and_offsets(tmp_path: Path) -> None:
    stem = tmp_path / "bench"
    assert compare.main(["--cases", "tiny", "--labels", "4", "--peers", "cfbi_ops", "--quick", "--out", str(stem)]) == 0
    data = json.loads(stem.with_suffix(".json").read_text())
    peers = {(r["op"], r["peer"], r["mode"]) for r in data["rows"]}
    for op in ("global", "local"):
        assert (op, "cfbi_ops[bfloat16]", "fwd+bwd") in peers and (op, "cfbi_ops[float16]", "fwd") in peers
        assert f"tiny {op} fwd L=4 float16 / float32" in data["ratios"]
    assert data["machine"]["isa"] == torch.ops.cfbi.cpu_isa()
    assert max(o["max_abs_fg_diff"] for o in data["offset_robustness"]) <= 1e-5


@pytest.mark.parametrize("op", ["global", "local"])
@pytest.mark.parametrize("labels", [1, 3])
def test_peers_agree(op: str, labels: int) -> None:
    case = CASES["tiny"]
    x = make_inputs(case, labels, seed=3)
    expected = PEERS[op]["cfbi_ops"](case, x)
    for peer, fn in PEERS[op].items():
        if peer == "faiss" and not has_faiss():
            continue
        for got, want in zip(fn(case, x), expected):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0, msg=f"{op} {peer}")
