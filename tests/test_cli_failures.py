"""One failure path for the command line (cfbi_model.cli.main): `cfbi <command>: error: <message>` in one line,
exit 2 for a command-line mistake, 1 for bad input, 130 when interrupted; checks that come before any work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cfbi_model.build import shipped_weights
from cfbi_model.cli import main
from cfbi_model.io.masks import write_mask

pytestmark = pytest.mark.usefixtures("single_thread_module")

H, W = 33, 49


def _one_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"cfbi {command}: error: ") and len(err.strip().splitlines()) == 1, err
    return err


@pytest.fixture
def davis(tmp_path) -> Path:
    root = tmp_path / "davis"
    rng = np.random.default_rng(0)
    for name in ("one", "two"):
        frames = root / "JPEGImages" / "480p" / name
        frames.mkdir(parents=True)
        for t in range(4):
            Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(frames / f"{t:05d}.jpg")
        labels = np.zeros((H, W), np.uint8)
        labels[4:20, 6:30] = 1
        (root / "Annotations" / "480p" / name).mkdir(parents=True)
        for t in range(4):
            write_mask(root / "Annotations" / "480p" / name / f"{t:05d}.png", labels, None)
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("one\ntwo\n")
    return root


def _predict(davis: Path, out: Path, *extra: str) -> int:
    args = ["predict", "--checkpoint", shipped_weights(), "--data", str(davis), "--out", str(out), "--quiet"]
    return main([*args, "--threads", "1", *extra])


def test_evaluate_refuses_a_split_that_does_not_exist(davis, tmp_path, capsys):
    assert main(["evaluate", "--data", str(davis), "--split", "vall", "--pred", str(tmp_path)]) == 1
    assert "missing DAVIS split file" in _one_line(capsys, "evaluate")


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf"])
def test_evaluate_bound_th_must_be_positive(davis, tmp_path, capsys, value):
    gt = davis / "Annotations" / "480p"
    assert main(["evaluate", "--gt", str(gt), "--pred", str(gt), "--bound-th", value]) == 2
    assert "--bound-th" in _one_line(capsys, "evaluate")


def test_segment_checks_its_outputs_before_the_run(davis, tmp_path, capsys):
    frames = davis / "JPEGImages" / "480p" / "one"
    mask = davis / "Annotations" / "480p" / "one" / "00000.png"
    out = tmp_path / "out"
    out.mkdir()
    (out / "one").write_text("a file where the masks would go")
    args = ["segment", "--frames", str(frames), "--mask", str(mask), "--out", str(out), "--quiet"]
    assert main([*args, "--checkpoint", shipped_weights()]) == 1
    assert "exists and is not a folder" in _one_line(capsys, "segment")
    overlay = tmp_path / "no" / "such" / "folder" / "x.gif"
    assert main([*args, "--checkpoint", shipped_weights(), "--name", "other", "--overlay", str(overlay)]) == 1
    assert "cannot write the overlay" in _one_line(capsys, "segment")
    assert not (out / "other").exists() and not (out / "other.partial").exists()


def test_ctrl_c_during_predict_is_one_line(davis, tmp_path, capsys, monkeypatch):
    import cfbi_model.evaluation.predict as predict

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(predict, "run_video", interrupted)
    assert _predict(davis, tmp_path / "out") == 130
    err = capsys.readouterr().err
    assert err.strip() == "cfbi predict: interrupted", err


def test_predict_resume_refuses_other_settings(davis, tmp_path, capsys):
    out = tmp_path / "out"
    assert _predict(davis, out) == 0
    capsys.readouterr()
    assert _predict(davis, out, "--resume") == 0
    assert "2 video(s) (2 skipped)" in capsys.readouterr().err
    assert _predict(davis, out, "--resume", "--flip") == 2
    err = _one_line(capsys, "predict")
    assert "other settings" in err and "inference" in err and "--allow-changes" in err
    assert _predict(davis, out, "--resume", "--flip", "--allow-changes") == 0
    assert "2 skipped" in capsys.readouterr().err
