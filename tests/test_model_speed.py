"""benchmarks/model_speed.py runs on a tiny frame and writes its table (the timers restore what they wrap)."""

from __future__ import annotations

from pathlib import Path

import pytest

import cfbi_model.modeling.matching as matching_module
import cfbi_ops
from benchmarks import model_speed

pytestmark = pytest.mark.usefixtures("single_thread_module")


def test_model_speed_smoke(tmp_path: Path) -> None:
    out = tmp_path / "model.md"
    global_match, local_match = cfbi_ops.global_match, cfbi_ops.local_match
    code = model_speed.main(
        [
            "--configs",
            "small",
            "--height",
            "60",
            "--width",
            "70",
            "--frames",
            "1",
            "--warmup",
            "0",
            "--output",
            str(out),
        ]
    )
    assert code == 0
    text = out.read_text()
    assert "| small |" in text and "| 65x65 |" in text and "torch " in text and "matching share" in text
    assert matching_module.cfbi_ops.global_match is global_match and cfbi_ops.local_match is local_match


def test_precision_sensitivity_smoke(tmp_path: Path) -> None:
    """benchmarks.precision_sensitivity on a tiny clip: every variant of the random and the shipped small model, and
    a --checkpoint; float32 is float64's to within float32 rounding on the shipped weights."""
    import json  # noqa: PLC0415

    from benchmarks import precision_sensitivity  # noqa: PLC0415
    from cfbi_model.build import shipped_weights  # noqa: PLC0415

    out = tmp_path / "sensitivity.json"
    args = ["--configs", "small", "--size", "40", "64", "--frames", "1", "--checkpoint", shipped_weights()]
    assert precision_sensitivity.main([*args, "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 3 * len(precision_sensitivity.VARIANTS)
    shipped = {r["variant"]: r for r in rows if r["model"] == "small (shipped weights)"}
    assert shipped["float64"]["agreement_float64"] == 1.0 and shipped["float32"]["agreement_float64"] >= 0.999
    assert shipped["float32"]["max_prob_diff_float64"] < 1e-3
