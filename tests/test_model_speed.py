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
