"""End-to-end tests of `cfbi evaluate` on DAVIS-layout palette PNG folders written in tmp_path."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cfbi_model.cli import main
from cfbi_model.config import InferenceConfig

PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0] * (768 - 12)


def write_png(path: Path, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    image = Image.frombytes("P", (labels.shape[1], labels.shape[0]), labels.tobytes())
    image.putpalette(PALETTE)
    image.save(path)


def write_sequence(root: Path, name: str, frames: np.ndarray, skip: tuple[int, ...] = ()) -> None:
    for t, labels in enumerate(frames):
        if t not in skip:
            write_png(root / name / f"{t:05d}.png", labels)


def box(shape, rows, cols):
    m = np.zeros(shape, bool)
    m[rows[0] : rows[1] + 1, cols[0] : cols[1] + 1] = True
    return m


def known_sequence() -> tuple[np.ndarray, np.ndarray]:
    """Same case as tests/test_metrics.py::known_sequence (6x6 frames, radius-1 tolerance):
    first frame holds only id 2 -> objects 1, 2; scored frames 1-3 give
    obj1 J = F = [1, 1, 0] and obj2 J = F = [0, 1, 1]; with n = 3 the decay bins are [0:2] and [2:3]:
    obj1 mean 2/3, recall 2/3, decay 1; obj2 mean 2/3, recall 2/3, decay -0.5."""
    gt = np.zeros((5, 6, 6), np.uint8)
    pred = np.zeros((5, 6, 6), np.uint8)
    corner = box((6, 6), (4, 5), (4, 5))
    sq = box((6, 6), (1, 2), (1, 2))
    gt[:, corner] = 2
    gt[1][sq] = 1
    pred[1][sq] = 1
    pred[2][corner] = 2
    pred[3][corner] = 2
    pred[3][0, 0] = 1
    return gt, pred


def perfect_sequence() -> np.ndarray:
    """7 frames of 9x11 (odd sizes), one object moving right, a 1-px line object 2, void (255) pixels in
    the ground truth: predicted exactly (void predicted as background) -> J = F = 1 for both objects."""
    gt = np.zeros((7, 9, 11), np.uint8)
    for t in range(7):
        gt[t, 2:5, t : t + 3] = 1
        gt[t, 7, 1:9] = 2
        gt[t, 0, 10] = 255
    return gt


@pytest.fixture()
def dataset(tmp_path: Path) -> tuple[Path, Path]:
    gt_root, pred_root = tmp_path / "gt", tmp_path / "pred"
    gt, pred = known_sequence()
    write_sequence(gt_root, "known", gt)
    write_sequence(pred_root, "known", pred, skip=(0, 4))  # first and last frames are not needed
    perfect = perfect_sequence()
    write_sequence(gt_root, "perfect", perfect)
    write_sequence(pred_root, "perfect", np.where(perfect == 255, 0, perfect))
    return gt_root, pred_root


def run_cli(*args: str) -> int:
    return main(["evaluate", *map(str, args)])


def test_end_to_end_json_csv_and_table(dataset, tmp_path, capsys):
    gt_root, pred_root = dataset
    out_json, out_csv = tmp_path / "out" / "r.json", tmp_path / "out" / "r.csv"
    assert run_cli("--gt", gt_root, "--pred", pred_root, "--json", out_json, "--csv", out_csv, "--workers", "1") == 0
    text = capsys.readouterr().out
    for word in ("J&F-Mean", "J-Recall", "F-Decay", "known_1", "known_2", "perfect_2", "Global results"):
        assert word in text

    # Objects: known_1, known_2 (above) and perfect_1, perfect_2 (all 1).
    # J-Mean = (2/3 + 2/3 + 1 + 1) / 4 = 5/6; J-Recall = (2/3 + 2/3 + 1 + 1) / 4 = 5/6;
    # J-Decay = (1 - 0.5 + 0 + 0) / 4 = 0.125; F identical; J&F-Mean = 5/6.
    data = json.loads(out_json.read_text())
    g = data["global"]
    assert g["J-Mean"] == pytest.approx(5 / 6) and g["F-Mean"] == pytest.approx(5 / 6)
    assert g["J&F-Mean"] == pytest.approx(5 / 6)
    assert g["J-Recall"] == pytest.approx(5 / 6) and g["F-Recall"] == pytest.approx(5 / 6)
    assert g["J-Decay"] == pytest.approx(0.125) and g["F-Decay"] == pytest.approx(0.125)
    assert data["num_sequences"] == 2 and data["num_objects"] == 4
    known = data["sequences"][0]
    assert known["name"] == "known" and known["frames"] == ["00001", "00002", "00003"]
    assert [o["J"] for o in known["objects"]] == [[1, 1, 0], [0, 1, 1]]
    assert [o["F"] for o in known["objects"]] == [[1, 1, 0], [0, 1, 1]]
    assert known["objects"][1]["J-Decay"] == pytest.approx(-0.5)
    assert data["sequences"][1]["J-Mean"] == 1.0 and data["sequences"][1]["F-Mean"] == 1.0
    assert data["settings"]["bound_th"] == 0.008

    rows = list(csv.DictReader(out_csv.open()))
    assert [(r["Level"], r["Sequence"], r["Object"]) for r in rows] == [
        ("object", "known", "1"),
        ("object", "known", "2"),
        ("sequence", "known", ""),
        ("object", "perfect", "1"),
        ("object", "perfect", "2"),
        ("sequence", "perfect", ""),
        ("global", "", ""),
    ]
    assert float(rows[0]["J-Decay"]) == pytest.approx(1.0)
    assert float(rows[2]["J-Mean"]) == pytest.approx(2 / 3)
    assert float(rows[-1]["J&F-Mean"]) == pytest.approx(5 / 6)


def test_parallel_workers_give_the_same_results(dataset, tmp_path):
    gt_root, pred_root = dataset
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    assert run_cli("--gt", gt_root, "--pred", pred_root, "--json", one, "--workers", "1") == 0
    assert run_cli("--gt", gt_root, "--pred", pred_root, "--json", two, "--workers", "2") == 0
    assert json.loads(one.read_text())["sequences"] == json.loads(two.read_text())["sequences"]


# ---------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------


def expect_error(capsys, args, *fragments, code=1):
    assert run_cli(*args) == code
    err = capsys.readouterr().err
    assert "cfbi evaluate: error:" in err
    for fragment in fragments:
        assert str(fragment) in err, err
    return err


def test_missing_predicted_frame(dataset, capsys):
    gt_root, pred_root = dataset
    (pred_root / "known" / "00002.png").unlink()
    expect_error(
        capsys,
        ["--gt", gt_root, "--pred", pred_root, "--workers", "1"],
        "missing predicted frame",
        pred_root / "known" / "00002.png",
    )


def test_missing_prediction_folder(dataset, capsys):
    gt_root, pred_root = dataset
    for f in (pred_root / "perfect").iterdir():
        f.unlink()
    (pred_root / "perfect").rmdir()
    expect_error(
        capsys,
        ["--gt", gt_root, "--pred", pred_root, "--workers", "1"],
        "missing prediction folder",
        pred_root / "perfect",
    )


def test_size_mismatch(dataset, capsys):
    gt_root, pred_root = dataset
    write_png(pred_root / "perfect" / "00003.png", np.zeros((9, 10), np.uint8))
    expect_error(
        capsys,
        ["--gt", gt_root, "--pred", pred_root, "--workers", "1"],
        pred_root / "perfect" / "00003.png",
        "10x9",
        "11x9",
    )


def test_ground_truth_size_mismatch(dataset, capsys):
    gt_root, pred_root = dataset
    write_png(gt_root / "perfect" / "00005.png", np.zeros((8, 11), np.uint8))
    expect_error(
        capsys, ["--gt", gt_root, "--pred", pred_root, "--workers", "1"], gt_root / "perfect" / "00005.png", "differs"
    )


def test_predicted_id_absent_from_ground_truth(dataset, capsys):
    gt_root, pred_root = dataset
    labels = np.zeros((9, 11), np.uint8)
    labels[0, 0] = 3
    write_png(pred_root / "perfect" / "00002.png", labels)
    expect_error(
        capsys,
        ["--gt", gt_root, "--pred", pred_root, "--workers", "1"],
        pred_root / "perfect" / "00002.png",
        "id(s) 3",
        "objects: 1, 2",
    )


def test_predicted_void_label_is_an_error(dataset, capsys):
    gt_root, pred_root = dataset
    write_png(pred_root / "perfect" / "00001.png", perfect_sequence()[1])  # still has the 255 pixel
    expect_error(
        capsys,
        ["--gt", gt_root, "--pred", pred_root, "--workers", "1"],
        pred_root / "perfect" / "00001.png",
        "255",
        "void",
    )


def test_unreadable_and_colour_files(dataset, capsys):
    gt_root, pred_root = dataset
    bad = pred_root / "known" / "00001.png"
    bad.write_bytes(b"this is not a png")
    expect_error(capsys, ["--gt", gt_root, "--pred", pred_root, "--workers", "1"], "cannot read", bad)
    Image.new("RGB", (6, 6)).save(bad)
    expect_error(capsys, ["--gt", gt_root, "--pred", pred_root, "--workers", "1"], bad, "'RGB'")


def test_error_inside_a_worker_process(dataset, capsys):
    gt_root, pred_root = dataset
    (pred_root / "known" / "00003.png").unlink()
    expect_error(capsys, ["--gt", gt_root, "--pred", pred_root, "--workers", "2"], pred_root / "known" / "00003.png")


def test_too_short_sequence_and_empty_folders(tmp_path, capsys):
    gt_root, pred_root = tmp_path / "gt", tmp_path / "pred"
    pred_root.mkdir()
    expect_error(capsys, ["--gt", gt_root, "--pred", pred_root], "ground-truth folder not found", gt_root)
    gt_root.mkdir()
    expect_error(capsys, ["--gt", gt_root, "--pred", pred_root], "no sequence folders")
    write_sequence(gt_root, "short", np.ones((2, 4, 4), np.uint8))
    write_sequence(pred_root, "short", np.ones((2, 4, 4), np.uint8))
    expect_error(capsys, ["--gt", gt_root, "--pred", pred_root], gt_root / "short", "at least 3")


def test_all_background_ground_truth(tmp_path, capsys):
    gt_root, pred_root = tmp_path / "gt", tmp_path / "pred"
    write_sequence(gt_root, "empty", np.zeros((3, 4, 4), np.uint8))
    write_sequence(pred_root, "empty", np.zeros((3, 4, 4), np.uint8))
    expect_error(capsys, ["--gt", gt_root, "--pred", pred_root], "no objects")


def test_usage_errors(dataset, capsys):
    gt_root, pred_root = dataset
    expect_error(capsys, ["--gt", gt_root], "--pred is required", code=2)
    expect_error(capsys, ["--pred", pred_root], "--gt (or --data", code=2)
    expect_error(capsys, ["--checkpoint", "model.pth"], "--checkpoint needs --data", code=2)
    expect_error(capsys, ["--pred", pred_root, "--data", "x"], "missing DAVIS split file", code=1)
    with pytest.raises(SystemExit):
        run_cli("--gt", gt_root, "--pred", pred_root, "--workers", "0")


# ---------------------------------------------------------------------------------------------------------
# --checkpoint: the segmenter hook
# ---------------------------------------------------------------------------------------------------------


def test_data_and_split_score_existing_predictions(tmp_path, capsys):
    """`cfbi predict --split val` then `cfbi evaluate --data ROOT --split val --pred DIR`: only the split's
    sequences are scored, the ground truth is ROOT/Annotations/480p."""
    data = tmp_path / "DAVIS"
    perfect = perfect_sequence()
    write_sequence(data / "Annotations" / "480p", "listed", perfect)
    write_sequence(data / "Annotations" / "480p", "not-in-split", perfect)
    (data / "ImageSets" / "2017").mkdir(parents=True)
    (data / "ImageSets" / "2017" / "val.txt").write_text("listed\n")
    pred = tmp_path / "pred"
    write_sequence(pred / "Annotations", "listed", np.where(perfect == 255, 0, perfect))
    out_json = tmp_path / "r.json"
    assert run_cli("--data", data, "--split", "val", "--pred", pred, "--json", out_json, "--workers", "1") == 0
    result = json.loads(out_json.read_text())
    assert [s["name"] for s in result["sequences"]] == ["listed"]
    assert result["global"]["J&F-Mean"] == 1.0
    capsys.readouterr()
    # Without the split, every annotated sequence needs a prediction.
    expect_error(capsys, ["--gt", data / "Annotations" / "480p", "--pred", pred], "not-in-split")


def test_checkpoint_runs_segmenter_then_evaluates(monkeypatch, tmp_path, capsys):
    data = tmp_path / "DAVIS"
    annotations = data / "Annotations" / "480p"
    perfect = perfect_sequence()
    write_sequence(annotations, "listed", perfect)
    write_sequence(annotations, "not-in-split", perfect)
    (data / "ImageSets" / "2017").mkdir(parents=True)
    (data / "ImageSets" / "2017" / "val.txt").write_text("listed\n")
    calls = []

    def segment_split(args, output_dir, inference):
        calls.append((Path(args.checkpoint).name, args.split))
        assert inference == InferenceConfig() and args.config is None
        for t, labels in enumerate(np.where(perfect == 255, 0, perfect)):  # a perfect segmenter of "listed"
            write_png(Path(output_dir) / "listed" / f"{t:05d}.png", labels)

    import cfbi_model.cli.evaluate

    monkeypatch.setattr(cfbi_model.cli.evaluate, "_segment_split", segment_split)
    out_json = tmp_path / "r.json"
    assert run_cli("--checkpoint", tmp_path / "m.pth", "--data", data, "--json", out_json, "--workers", "1") == 0
    assert calls == [("m.pth", "val")]
    result = json.loads(out_json.read_text())
    assert [s["name"] for s in result["sequences"]] == ["listed"]
    assert result["global"]["J&F-Mean"] == 1.0
    assert "listed_2" in capsys.readouterr().out
