"""`cfbi predict` on generated splits in the DAVIS and YouTube-VOS layouts: scored frames written, objects that
start late, resume, the zip, two processes under torchrun, `cfbi evaluate` on the output, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cfbi_model.build import shipped_weights
from cfbi_model.cli import main
from cfbi_model.data.datasets import DataError
from cfbi_model.data.layouts import davis as davis_split
from cfbi_model.data.layouts import youtube as youtube_split
from cfbi_model.data.synthetic import SyntheticConfig, write_synthetic_davis
from cfbi_model.evaluation.predict import shard

pytestmark = pytest.mark.usefixtures("single_thread_module")

REPO = Path(__file__).resolve().parents[1]
H, W = 48, 64
CHECKPOINT = shipped_weights()


def write_png(path: Path, labels: np.ndarray) -> None:
    from cfbi_model.io.masks import write_mask

    write_mask(path, labels, None)


@pytest.fixture(scope="module")
def davis(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("davis")
    write_synthetic_davis(
        root, num_train=0, num_val=3, seed=5, config=SyntheticConfig(height=H, width=W, num_frames=(5, 7))
    )
    return root


def youtube_frame(t: int) -> np.ndarray:
    rng = np.random.default_rng(t)
    img = rng.integers(0, 50, (H, W, 3), dtype=np.uint8)
    img[6:22, 4 + t : 24 + t] = (230, 40, 40)
    if t >= 5:
        img[28:44, 40:60] = (40, 220, 50)
    return img


FIRST = np.zeros((H, W), np.uint8)
FIRST[6:22, 4:24] = 1
LATE = np.zeros((H, W), np.uint8)
LATE[28:44, 40:60] = 2
LATE[6:22, 9:29] = 1  # object 1 is also drawn here, but meta.json says only object 2 starts at 00005


@pytest.fixture(scope="module")
def youtube(tmp_path_factory) -> Path:
    """valid/: every fifth frame of 15 (00000, 00005, 00010), annotations at 00000 (object 1) and 00005 (object
    2 starts); valid_all_frames/: all 15 frames."""
    root = tmp_path_factory.mktemp("ytvos")
    meta = {"videos": {}}
    for name in ("vid_a", "vid_b"):
        for t in range(15):
            for sub in ["valid", "valid_all_frames"] if t % 5 == 0 else ["valid_all_frames"]:
                folder = root / sub / "JPEGImages" / name
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(youtube_frame(t)).save(folder / f"{t:05d}.jpg", quality=95)
        masks = root / "valid" / "Annotations" / name
        masks.mkdir(parents=True)
        write_png(masks / "00000.png", FIRST)
        write_png(masks / "00005.png", LATE)
        meta["videos"][name] = {
            "objects": {
                "1": {"category": "box", "frames": ["00000", "00005", "00010"]},
                "2": {"category": "box", "frames": ["00005", "00010"]},
            }
        }
    (root / "valid" / "meta.json").write_text(json.dumps(meta))
    return root


def predict(*args) -> int:
    return main(["predict", "--checkpoint", str(CHECKPOINT), "--threads", "1", "--quiet", *map(str, args)])


def read(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


# ------------------------------------------------------------------------------------------------ readers
def test_split_readers(davis, youtube):
    videos = davis_split(davis, "val")
    assert [v.name for v in videos] == [f"synth_val_{i:04d}" for i in range(3)]
    assert all(v.scored == tuple(range(len(v))) and list(v.annotations) == [0] for v in videos)
    sub = youtube_split(youtube, "valid")
    assert [len(v) for v in sub] == [3, 3] and sub[0].annotations.keys() == {0, 1}
    assert sub[0].first_frames == {0: (1,), 1: (2,)}
    full = youtube_split(youtube, "valid", all_frames=True)
    assert len(full[0]) == 15 and full[0].scored == (0, 5, 10) and full[0].annotations.keys() == {0, 5}
    assert full[0].first_frames == {0: (1,), 5: (2,)}


def test_shard_gives_every_video_to_exactly_one_rank(davis):
    videos = davis_split(davis, "val") * 3
    for world in (1, 2, 3, 5):
        parts = [shard(videos, r, world) for r in range(world)]
        assert sorted(id(v) for p in parts for v in p) == sorted(id(v) for v in videos)


# ------------------------------------------------------------------------------------------------ DAVIS layout
def test_davis_predict_evaluate_and_resume(davis, tmp_path, capsys):
    out = tmp_path / "out"
    assert predict("--data", davis, "--out", out) == 0
    captured = capsys.readouterr()
    assert "synth_val_0002" in captured.out and "frames/s" in captured.out
    assert "3 video(s) (0 skipped)" in captured.err
    for video in davis_split(davis, "val"):
        written = sorted(p.name for p in (out / "Annotations" / video.name).glob("*.png"))
        assert written == [Path(f).stem + ".png" for f in video.frames]
        assert np.array_equal(read(out / "Annotations" / video.name / written[0]), read(video.annotations[0]))
    # `cfbi evaluate --pred DIR` reads predict's output as it is.
    assert main(["evaluate", "--gt", str(davis / "Annotations" / "480p"), "--pred", str(out), "--workers", "1"]) == 0
    assert "Global results (3 sequences" in capsys.readouterr().out
    # A second run without --resume refuses; with it, finished videos are skipped and a partial one redone.
    assert predict("--data", davis, "--out", out) == 2
    assert "--resume" in capsys.readouterr().err
    first = out / "Annotations" / "synth_val_0000"
    stamp = first.stat().st_mtime_ns
    redo = out / "Annotations" / "synth_val_0001"
    os.rename(redo, redo.with_name("synth_val_0001.partial"))
    assert predict("--data", davis, "--out", out, "--resume") == 0
    captured = capsys.readouterr()
    assert captured.out.count("skipped") == 2 and "(2 skipped)" in captured.err
    assert first.stat().st_mtime_ns == stamp and redo.is_dir()
    assert not redo.with_name("synth_val_0001.partial").exists()


# ------------------------------------------------------------------------------------------------ YouTube-VOS layout
@pytest.mark.parametrize("all_frames", [False, True])
def test_youtube_late_objects_scored_frames_and_zip(youtube, tmp_path, capsys, all_frames):
    out, archive = tmp_path / "out", tmp_path / "submission.zip"
    extra = ["--all-frames"] if all_frames else []
    assert predict("--data", youtube, "--layout", "youtube", "--out", out, "--zip", archive, *extra) == 0
    frames = "15" if all_frames else "3"
    assert f"vid_a  {frames.rjust(6)}" in capsys.readouterr().out
    for name in ("vid_a", "vid_b"):
        folder = out / "Annotations" / name
        assert sorted(p.name for p in folder.glob("*.png")) == ["00000.png", "00005.png", "00010.png"]
        assert not (read(folder / "00000.png") == 2).any()  # before object 2 starts
        assert np.array_equal(read(folder / "00005.png") == 2, LATE == 2)  # its annotation
        assert set(np.unique(read(folder / "00010.png"))) <= {0, 1, 2}
        # Only object 2 starts at 00005: object 1's pixels there are its prediction, not the drawing in LATE.
        assert np.array_equal(read(folder / "00000.png"), FIRST)
    with zipfile.ZipFile(archive) as handle:
        assert handle.testzip() is None
        assert sorted(handle.namelist()) == [
            f"Annotations/{v}/{t:05d}.png" for v in ("vid_a", "vid_b") for t in (0, 5, 10)
        ]


def test_torchrun_two_processes_write_each_video_once(davis, tmp_path):
    out, archive = tmp_path / "out", tmp_path / "sub.zip"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "cfbi_model.cli",
        "predict",
        "--data",
        str(davis),
        "--checkpoint",
        str(CHECKPOINT),
        "--out",
        str(out),
        "--zip",
        str(archive),
        "--threads",
        "1",
        "--quiet",
        "--device",
        "cpu",
    ]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("synth_val_")]
    assert sorted(r[0] for r in rows) == [f"synth_val_{i:04d}" for i in range(3)]  # each video once
    assert {r[-1] for r in rows} == {"0", "1"}  # both ranks worked
    assert "on 2 process(es)" in done.stderr
    with zipfile.ZipFile(archive) as handle:
        names = handle.namelist()
    expected = sum(len(v) for v in davis_split(davis, "val"))
    assert len(names) == len(set(names)) == expected


def test_torchrun_a_failing_rank_stops_every_rank(davis, tmp_path):
    """A bad frame in one video: every rank reaches the final gather and exits, the error names the file."""
    import shutil

    data = tmp_path / "davis"
    shutil.copytree(davis, data)
    bad = data / "JPEGImages" / "480p" / "synth_val_0001" / "00002.jpg"
    bad.write_bytes(b"not a jpeg")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "cfbi_model.cli",
        "predict",
        "--data",
        str(data),
        "--checkpoint",
        str(CHECKPOINT),
        "--out",
        str(tmp_path / "out"),
        "--zip",
        str(tmp_path / "sub.zip"),
        "--threads",
        "1",
        "--quiet",
    ]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert "00002.jpg" in done.stderr and "cfbi predict: error: rank" in done.stderr
    assert not (tmp_path / "sub.zip").exists()


# ------------------------------------------------------------------------------------------------ bad input
def test_predict_errors(davis, youtube, tmp_path, capsys):
    def fails(*args, code, expect, checkpoint=CHECKPOINT):
        got = main(["predict", "--checkpoint", str(checkpoint), "--quiet", *map(str, args)])
        err = capsys.readouterr().err
        assert got == code, err
        assert len(err.strip().splitlines()) == 1, err
        for text in expect:
            assert text in err, (text, err)

    out = tmp_path / "out"
    fails("--data", davis, "--out", out, "--all-frames", code=2, expect=["--all-frames"])
    fails("--data", davis, "--out", out, "--zip", tmp_path, code=2, expect=["is a folder"])
    fails("--data", davis, "--out", out, "--split", "nope", code=1, expect=["nope.txt"])
    fails("--data", davis, "--layout", "youtube", "--out", out, code=1, expect=["meta.json"])
    fails(
        "--data",
        youtube,
        "--layout",
        "youtube",
        "--split",
        "valid",
        "--all-frames",
        "--out",
        out,
        "--scales",
        "inf",
        code=2,
        expect=["scales"],
    )
    fails("--data", davis, "--out", out, code=1, expect=["does not exist"], checkpoint=tmp_path / "none.pth")
    if not torch.cuda.is_available():
        fails("--data", davis, "--out", out, "--device", "cuda", code=2, expect=["CUDA is not available"])
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"PK\x03\x04 not a checkpoint")
    fails("--data", davis, "--out", out, code=1, expect=["corrupt.pth", "cannot read checkpoint"], checkpoint=corrupt)
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "payload": _Payload()}, evil)
    fails("--data", davis, "--out", out, code=1, expect=["evil.pth", "was not loaded"], checkpoint=evil)
    assert "weights_only=False" not in capsys.readouterr().err
    with pytest.raises(DataError, match="not among its frames"):
        bad = tmp_path / "yt"
        (bad / "valid" / "JPEGImages" / "v").mkdir(parents=True)
        (bad / "valid" / "Annotations" / "v").mkdir(parents=True)
        Image.fromarray(youtube_frame(0)).save(bad / "valid" / "JPEGImages" / "v" / "00000.jpg")
        write_png(bad / "valid" / "Annotations" / "v" / "00000.png", FIRST)
        (bad / "valid" / "meta.json").write_text(json.dumps({"videos": {"v": {"objects": {"1": {"frames": ["9"]}}}}}))
        youtube_split(bad, "valid")


class _Payload:
    """Any class: pickling it makes a file that weights_only loading refuses."""


@pytest.mark.parametrize("command", ["segment", "demo", "evaluate", "predict"])
def test_every_computing_command_has_threads_device_and_inference_options(command):
    import dataclasses

    from cfbi_model import InferenceConfig
    from cfbi_model.cli import build_parser

    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]
    defaults = {a.dest: a.default for a in sub._actions}
    assert defaults["threads"] is None and defaults["device"] is None
    for f in dataclasses.fields(InferenceConfig):
        expected = list(f.default) if isinstance(f.default, tuple) else f.default
        assert defaults[f.name] == expected, (command, f.name)
