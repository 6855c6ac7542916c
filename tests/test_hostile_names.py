"""Names that come from data or arguments are not paths (docs/design.md, "Numerics, files and portability"):
video names in meta.json and split files, `name=`, `--name`, output folders that already exist. Each case checks
that the run is refused with one line and that nothing the program did not create was deleted or written to."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cfbi_model.build import load_model, shipped_weights
from cfbi_model.cli import main
from cfbi_model.inference import MaskFolderWriter, segment_video
from cfbi_model.io.frames import MediaError
from cfbi_model.io.masks import write_mask
from cfbi_model.io.names import plain_name, split_file_name

pytestmark = pytest.mark.usefixtures("single_thread_module")

H, W = 33, 49
HOSTILE = ["..", ".", "", "/abs/path", "../victim", "a/b", "a/../..", "x\0y"]


def _frames(folder: Path, count: int = 3) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for t in range(count):
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(folder / f"{t:05d}.jpg")


def _mask(path: Path) -> np.ndarray:
    labels = np.zeros((H, W), np.uint8)
    labels[5:15, 5:20] = 1
    path.parent.mkdir(parents=True, exist_ok=True)
    write_mask(path, labels, None)
    return labels


def _victim(root: Path) -> Path:
    """A user's folder with frames, a mask and an unrelated file: it must survive every case untouched."""
    victim = root / "victim"
    _frames(victim)
    _mask(victim / "00000.png")
    (victim / "thesis.tex").write_text("years of work")
    return victim


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", HOSTILE)
def test_plain_name_refuses(name):
    with pytest.raises(MediaError, match="plain folder name|must be a string"):
        plain_name(name, "video name")


def test_split_file_lines_are_stripped():
    assert split_file_name("  bear/ \n") == "bear" and split_file_name("\n") == ""
    assert plain_name(split_file_name("bike-packing/")) == "bike-packing"


@pytest.fixture(scope="module")
def model():
    return load_model(shipped_weights())


@pytest.mark.parametrize("name", ["..", "."])
def test_segment_video_name_cannot_reach_out_of_out(model, tmp_path, name):
    frames, out = tmp_path / "frames", tmp_path / "out"
    _frames(frames)
    mask = tmp_path / "first.png"
    _mask(mask)
    out.mkdir()
    (out / "earlier_video").mkdir()
    (out / "earlier_video" / "00000.png").write_bytes(b"earlier results")
    before = _snapshot(tmp_path)
    with pytest.raises(MediaError, match="plain folder name"):
        segment_video(frames, mask, model=model, out=out, name=name)
    assert _snapshot(tmp_path) == before


def test_source_dot_inside_a_frame_folder_names_the_folder(model, tmp_path, monkeypatch):
    frames, out = tmp_path / "walk", tmp_path / "out"
    _frames(frames)
    _mask(tmp_path / "first.png")
    monkeypatch.chdir(frames)
    result = segment_video(".", tmp_path / "first.png", model=model, out=out)
    assert result.folder == out / "walk" and sorted(p.name for p in result.folder.glob("*.png")) == [
        "00000.png",
        "00001.png",
        "00002.png",
    ]
    assert len(list(frames.iterdir())) == 3  # the frame folder is untouched


def test_writer_never_replaces_a_folder_it_did_not_make(tmp_path):
    existing = tmp_path / "clip"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    with pytest.raises(MediaError, match="not written by cfbi"):
        MaskFolderWriter(tmp_path, "clip")
    (tmp_path / "file_clip").write_text("a file")
    with pytest.raises(MediaError, match="not written by cfbi"):
        MaskFolderWriter(tmp_path, "file_clip")
    (tmp_path / "partial_clip.partial").mkdir()
    (tmp_path / "partial_clip.partial" / "keep.txt").write_text("not ours")
    with pytest.raises(MediaError, match="not written by cfbi"):
        MaskFolderWriter(tmp_path, "partial_clip")
    assert (existing / "notes.txt").read_text() == "mine" and (tmp_path / "partial_clip.partial" / "keep.txt").exists()


def test_writer_replaces_its_own_earlier_output(tmp_path):
    from cfbi_model.inference import FramePrediction

    for run in range(2):
        writer = MaskFolderWriter(tmp_path, "clip")
        labels = np.full((4, 5), run, np.uint8)
        writer.add(FramePrediction(0, labels, None, (0,)), None, "00000")
        writer.finish()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip"]
    assert (tmp_path / "clip" / "00000.png").is_file()


# ---------------------------------------------------------------------------------------------- data sets
def _davis(root: Path, names: list[str]) -> None:
    for name in ("good",):
        _frames(root / "JPEGImages" / "480p" / name)
        _mask(root / "Annotations" / "480p" / name / "00000.png")
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("".join(n + "\n" for n in names))


def _predict(root: Path, out: Path, *extra: str) -> int:
    return main(
        ["predict", "--checkpoint", shipped_weights(), "--data", str(root), "--out", str(out), "--quiet", *extra]
    )


@pytest.mark.parametrize("line", ["../../victim", "/abs/victim", "..", "good/../../victim"])
def test_davis_split_line_that_is_a_path_is_refused(tmp_path, capsys, line):
    victim = _victim(tmp_path)
    line = line.replace("/abs/victim", str(victim))
    root = tmp_path / "davis"
    _davis(root, ["good", line])
    before = _snapshot(victim)
    assert _predict(root, tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert err.startswith("cfbi predict: error: ") and "plain folder name" in err and len(err.splitlines()) == 1
    assert _snapshot(victim) == before and not (tmp_path / "out").exists()


def test_davis_split_line_with_a_trailing_slash(tmp_path, capsys):
    """`ls -d */ > val.txt` writes 'good/': the name is 'good', written to Annotations/good/."""
    root = tmp_path / "davis"
    _davis(root, ["good/  "])
    assert _predict(root, tmp_path / "out") == 0
    written = tmp_path / "out" / "Annotations" / "good"
    assert sorted(p.name for p in written.glob("*.png")) == ["00000.png", "00001.png", "00002.png"]
    assert not list(written.glob("*.partial")) and not (tmp_path / "out" / "Annotations" / "good.partial").exists()


@pytest.mark.parametrize("key", ["../victim", "/abs/victim", ".", ""])
def test_meta_json_key_that_is_a_path_is_refused(tmp_path, capsys, key):
    victim = _victim(tmp_path)
    key = key.replace("/abs/victim", str(victim))
    root = tmp_path / "ytvos"
    _frames(root / "valid" / "JPEGImages" / "good")
    _mask(root / "valid" / "Annotations" / "good" / "00000.png")
    (root / "valid" / "meta.json").write_text(json.dumps({"videos": {"good": {}, key: {}}}))
    before = _snapshot(victim)
    assert _predict(root, tmp_path / "out", "--layout", "youtube") == 1
    err = capsys.readouterr().err
    assert "plain folder name" in err and len(err.splitlines()) == 1
    assert _snapshot(victim) == before


def test_meta_json_with_a_list_of_videos(tmp_path, capsys):
    root = tmp_path / "ytvos"
    (root / "valid").mkdir(parents=True)
    (root / "valid" / "meta.json").write_text(json.dumps({"videos": ["a", "b"]}))
    assert _predict(root, tmp_path / "out", "--layout", "youtube") == 1
    err = capsys.readouterr().err
    assert "corrupt YouTube-VOS meta file" in err and len(err.splitlines()) == 1


def test_predict_output_that_collides_with_a_users_folder(tmp_path, capsys):
    root = tmp_path / "davis"
    _davis(root, ["good"])
    theirs = tmp_path / "out" / "Annotations" / "good"
    theirs.mkdir(parents=True)
    (theirs / "notes.txt").write_text("not masks")
    assert _predict(root, tmp_path / "out") == 1
    assert "not written by cfbi" in capsys.readouterr().err
    assert os.listdir(theirs) == ["notes.txt"]
