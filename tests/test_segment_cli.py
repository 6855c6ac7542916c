"""`cfbi segment` on generated frame folders and video files (small configuration, random or saved weights)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cfbi_model import CFBIPlus
from cfbi_model.cli import main

pytestmark = pytest.mark.usefixtures("single_thread_module")

H, W = 64, 80  # even sides (libx264); not 16k + 1, so the engine's resizing path runs too
PALETTE = [0, 0, 0, 250, 10, 10, 10, 250, 10, 10, 10, 250] + [7] * (768 - 12)
HAS_FFMPEG = importlib.util.find_spec("imageio") is not None and importlib.util.find_spec("imageio_ffmpeg") is not None


def clip(count: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    frames = []
    for t in range(count):
        img = rng.integers(0, 50, (H, W, 3), dtype=np.uint8)
        img[10 + t : 30 + t, 8 + 2 * t : 36 + 2 * t] = (230, 40, 40)
        img[40:58, 44:70] = (40, 220, 50)
        frames.append(img)
    return frames


def write_palette_png(path: Path, labels: np.ndarray, palette=PALETTE) -> None:
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    image = Image.frombytes("P", (labels.shape[1], labels.shape[0]), labels.tobytes())
    image.putpalette(palette)
    image.save(path)


def first_labels() -> np.ndarray:
    labels = np.zeros((H, W), np.uint8)
    labels[10:30, 8:36] = 1
    labels[40:58, 44:70] = 2
    return labels


@pytest.fixture
def data(tmp_path: Path) -> dict[str, Path]:
    frames = tmp_path / "frames"
    frames.mkdir()
    for t, img in enumerate(clip()):
        Image.fromarray(img).save(frames / f"frame_{t:03d}.{'png' if t % 2 else 'jpg'}")
    (frames / "notes.txt").write_text("not a frame")
    mask = tmp_path / "first.png"
    write_palette_png(mask, first_labels())
    return {
        "root": tmp_path,
        "frames": frames,
        "mask": mask,
        "out": tmp_path / "out",
        "written": tmp_path / "out" / "frames",
    }


def segment(*args: str | Path) -> int:
    return main(["segment", *map(str, args)])


def small_args(data) -> list:
    return ["--frames", data["frames"], "--mask", data["mask"], "--out", data["out"], "--config", "small", "--quiet"]


def test_frame_folder_with_random_weights_and_gif_overlay(data, capsys):
    overlay = data["root"] / "overlay.gif"
    assert segment(*small_args(data), "--allow-random", "--overlay", overlay) == 0
    err = capsys.readouterr().err
    assert "RANDOM weights" in err and "4 frames, 2 object(s)" in err and "frames/s" in err
    assert sorted(p.name for p in data["out"].iterdir()) == ["frames"]  # no .partial folder left
    names = sorted(p.name for p in data["written"].glob("*.png"))
    assert names == [f"frame_{t:03d}.png" for t in range(4)]
    for name in names:
        with Image.open(data["written"] / name) as image:
            assert image.mode == "P" and image.size == (W, H)
            assert image.getpalette()[:12] == PALETTE[:12]
            labels = np.asarray(image)
            assert labels.max() <= 2
    with Image.open(data["written"] / names[0]) as image:
        assert np.array_equal(np.asarray(image), first_labels())
    with Image.open(overlay) as gif:
        assert gif.n_frames == 4 and gif.size == (W, H)


def test_saved_checkpoint_and_options(data, tmp_path, capsys):
    model = CFBIPlus("small")
    ckpt = tmp_path / "small.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, ckpt)
    code = segment(
        *small_args(data),
        "--checkpoint",
        ckpt,
        "--flip",
        "--scales",
        "1.0",
        "0.75",
        "--min-matching-pixels",
        "100",
        "--global-atrous",
        "1",
        "--device",
        "cpu",
    )
    assert code == 0
    assert "RANDOM" not in capsys.readouterr().err
    assert len(list(data["written"].glob("*.png"))) == 4


@pytest.mark.skipif(not HAS_FFMPEG, reason="needs imageio and imageio-ffmpeg")
def test_video_file_with_mp4_overlay(data, capsys):
    import imageio.v3 as iio

    video = data["root"] / "clip.mp4"
    iio.imwrite(video, np.stack(clip(5)), fps=5, codec="libx264", macro_block_size=1)
    overlay = data["root"] / "overlay.mp4"
    args = ["--video", video, "--mask", data["mask"], "--out", data["out"], "--config", "small", "--quiet"]
    assert segment(*args, "--allow-random", "--overlay", overlay) == 0
    assert sorted(p.name for p in (data["out"] / "clip").glob("*.png")) == [f"{t:05d}.png" for t in range(5)]
    frames = iio.imread(overlay)
    assert frames.shape[0] == 5 and frames.shape[1:3] == (H, W)


# ---------------------------------------------------------------------------------------------- errors
def _fails(capsys, *args, expect: list[str], code: int, one_line: bool = True) -> None:
    """`cfbi segment: error: ...` (one line, unless it lists a checkpoint's keys) and the exit code of
    cfbi_model.cli.main: 2 for a command-line mistake, 1 for bad input."""
    got = segment(*args)
    err = capsys.readouterr().err
    assert got == code, err
    assert err.startswith("cfbi segment: error: ") and (len(err.strip().splitlines()) == 1 or not one_line), err
    for text in expect:
        assert text in err, (text, err)


def test_refuses_random_weights_without_flag(data, capsys):
    _fails(capsys, *small_args(data), expect=["no --checkpoint", "--allow-random"], code=2)
    assert not data["out"].exists()


def test_missing_and_mismatched_checkpoint(data, tmp_path, capsys):
    missing = tmp_path / "nope.pth"
    _fails(capsys, *small_args(data), "--checkpoint", missing, expect=["nope.pth", "does not exist"], code=1)
    state = CFBIPlus("small").state_dict()
    state.pop("fg_bias")
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    _fails(
        capsys,
        *small_args(data),
        "--checkpoint",
        bad,
        expect=["bad.pth", "missing keys", "fg_bias"],
        code=1,
        one_line=False,
    )


def test_mask_errors(data, tmp_path, capsys):
    small_mask = tmp_path / "small_mask.png"
    write_palette_png(small_mask, first_labels()[:-4])
    args = small_args(data)
    args[args.index("--mask") + 1] = small_mask
    _fails(capsys, *args, "--allow-random", expect=["small_mask.png", "80x60", "80x64"], code=1)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x89PNG not really")
    args[args.index("--mask") + 1] = garbage
    _fails(capsys, *args, "--allow-random", expect=["garbage.png", "cannot read mask"], code=1)
    rgb = tmp_path / "rgb.png"
    Image.fromarray(clip(1)[0]).save(rgb)
    args[args.index("--mask") + 1] = rgb
    _fails(capsys, *args, "--allow-random", expect=["rgb.png", "palette or greyscale"], code=1)


def test_frame_errors(data, tmp_path, capsys):
    (data["frames"] / "frame_002.jpg").write_bytes(b"corrupt")
    _fails(capsys, *small_args(data), "--allow-random", expect=["frame_002.jpg", "cannot read frame"], code=1)
    empty = tmp_path / "empty"
    empty.mkdir()
    args = small_args(data)
    args[args.index("--frames") + 1] = empty
    _fails(capsys, *args, "--allow-random", expect=["empty", "no image files"], code=1)
    args[args.index("--frames") + 1] = tmp_path / "absent"
    _fails(capsys, *args, "--allow-random", expect=["absent", "does not exist"], code=1)


def test_frame_size_change_and_output_folder(data, capsys):
    Image.fromarray(clip(1)[0][:40]).save(data["frames"] / "frame_009.jpg")
    _fails(capsys, *small_args(data), "--allow-random", expect=["frame_009.jpg", "80x40"], code=1)
    assert not data["out"].exists()  # every frame's size is checked before anything is written
    Image.fromarray(clip(1)[0]).save(data["frames"] / "frame_009.jpg")
    args = small_args(data)
    args[args.index("--out") + 1] = data["root"]  # root/frames is the frame folder
    _fails(capsys, *args, "--allow-random", expect=["frame folder"], code=2)
    Image.fromarray(clip(1)[0]).save(data["frames"] / "frame_009.png")  # same stem as frame_009.jpg
    _fails(capsys, *small_args(data), "--allow-random", expect=["'frame_009'", "overwrite"], code=1)


def test_bad_engine_options(data, capsys):
    _fails(capsys, *small_args(data), "--allow-random", "--scales", "0", expect=["scales"], code=2)
    _fails(capsys, *small_args(data), "--allow-random", "--global-atrous", "0", expect=["global_atrous"], code=2)


def test_video_errors(data, tmp_path, capsys):
    args = ["--mask", data["mask"], "--out", data["out"], "--config", "small", "--quiet", "--allow-random"]
    _fails(capsys, "--video", tmp_path / "absent.mp4", *args, expect=["absent.mp4", "does not exist"], code=1)
    if HAS_FFMPEG:
        broken = tmp_path / "broken.mp4"
        broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 garbage")
        _fails(capsys, "--video", broken, *args, expect=["broken.mp4", "cannot read video"], code=1)
        code = segment("--video", broken, *args)
        err = capsys.readouterr().err
        assert code == 1 and len(err.strip().splitlines()) == 1 and "ffmpeg version" not in err, err


def test_overlay_extension_and_usage(data, capsys):
    _fails(
        capsys,
        *small_args(data),
        "--allow-random",
        "--overlay",
        data["root"] / "x.avi",
        expect=["x.avi", ".mp4 or .gif"],
        code=2,
    )
    with pytest.raises(SystemExit) as info:  # --frames and --video are exclusive
        segment("--frames", data["frames"], "--video", "v.mp4", "--mask", data["mask"], "--out", data["out"])
    assert info.value.code != 0
    with pytest.raises(SystemExit) as info:
        segment("--help")
    assert info.value.code == 0
    assert "--allow-random" in capsys.readouterr().out


def test_checkpoint_brings_its_own_config(data, capsys):
    """The shipped small checkpoint names its configuration: no --config needed; a disagreeing one is refused."""
    from cfbi_model.build import shipped_weights

    args = ["--frames", data["frames"], "--mask", data["mask"], "--out", data["out"], "--quiet"]
    assert segment(*args, "--checkpoint", shipped_weights()) == 0
    assert len(list(data["written"].glob("*.png"))) == 4
    capsys.readouterr()
    _fails(
        capsys,
        *args,
        "--checkpoint",
        shipped_weights(),
        "--config",
        "resnet101",
        expect=["small_synthetic.pth", "'small'", "disagrees", "'resnet101'"],
        code=1,
    )
    assert segment(*args, "--checkpoint", shipped_weights(), "--config", "small") == 0  # agreeing is fine
