"""`cfbi demo`: the shipped small checkpoint segments a synthetic clip offline."""

from __future__ import annotations

import os

import pytest

from cfbi_model.build import shipped_weights


@pytest.mark.skipif(not os.path.isfile(shipped_weights()), reason="shipped weights not built")
def test_demo_writes_masks_gif_and_prints_jf(tmp_path, capsys):
    import torch

    from cfbi_model.cli import main

    torch.set_num_threads(1)
    assert os.path.getsize(shipped_weights()) <= 20 * 2**20
    assert (
        main(["demo", "--out", str(tmp_path), "--frames", "8", "--seed", "7", "--threads", "1", "--device", "cpu"]) == 0
    )
    captured = capsys.readouterr()
    out = captured.out
    assert "demo: 100%" in captured.err and "8/8" in captured.err  # the progress bar
    assert "J&F" in out and "copying the first mask" in out
    assert len(os.listdir(tmp_path / "masks")) == 8 and (tmp_path / "overlay.gif").stat().st_size > 0
