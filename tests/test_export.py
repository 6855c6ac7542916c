"""`cfbi export` (cfbi_model.inference.export): the AOTInductor packages against eager inference, their Python engine
(load_exported, cfbi segment --exported), the C++ runner examples/cpp/segment_video, and the one-line errors a
deployer meets. One export of the small model (module fixture) serves every test: compiling costs minutes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BLOCK_EXTENSION_CODE, REPO_ROOT, requires_extension

from cfbi_model import VideoSegmenter, build_model, load_exported
from cfbi_model.build import save_model
from cfbi_model.config import ExportBounds
from cfbi_model.inference.export import ExportError, export_model
from cfbi_model.io.masks import read_mask, write_mask

pytestmark = requires_extension  # the packages call the compiled cfbi:: ops

BOUNDS = ExportBounds(max_side=256, max_network_side=257, max_objects=4, max_references=4)


def make_clip(height: int, width: int, objects: int, frames: int = 4, seed: int = 0) -> tuple[list, dict]:
    """Frames (RGB uint8 [H, W, 3]) of blobs drifting over noise, with annotations {0: objects - 1 of them
    (ids 3, 7, ...), 2: all of them}: the last object starts on frame 2, which also corrects the others."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (objects, 3))
    yy, xx = np.mgrid[:height, :width]
    centres = rng.uniform(0.25, 0.75, (objects, 2)) * (height, width)
    clip, masks = [], []
    for t in range(frames):
        image = rng.integers(0, 60, (height, width, 3)).astype(np.uint8)
        mask = np.zeros((height, width), np.uint8)
        for k in range(objects):
            cy, cx = centres[k] + 2.0 * t
            blob = (yy - cy) ** 2 / (0.02 * height**2) + (xx - cx) ** 2 / (0.03 * width**2) < 1
            image[blob] = colours[k]
            mask[blob] = 3 + 4 * k
        clip.append(image)
        masks.append(mask)
    first = np.where(masks[0] == 3 + 4 * (objects - 1), 0, masks[0]).astype(np.uint8)
    return clip, {0: first, 2: masks[2]}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("small").eval()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("exported")
    export_model(model, folder, bounds=BOUNDS)
    return folder


@pytest.mark.parametrize(
    "size, objects",
    [((100, 140), 3), ((72, 120), 2)],  # the export traced 100x140 with 3 objects; 72x120 and 2 differ
)
def test_exported_equals_eager(model, exported, size, objects):
    clip, annotations = make_clip(*size, objects)
    eager, packaged = VideoSegmenter(model), load_exported(exported)
    for index, frame in enumerate(clip):
        want = eager.step(frame, annotations.get(index))
        got = packaged.step(frame, annotations.get(index))
        assert got.ids == want.ids and got.annotated == want.annotated
        assert got.probs.shape == want.probs.shape
        torch.testing.assert_close(got.probs, want.probs, atol=1e-4, rtol=0)
        assert (got.labels == want.labels).mean() >= 0.999
    assert packaged.num_references == eager.num_references == 2


def test_manifest(exported):
    manifest = json.loads((exported / "export.json").read_text())
    assert manifest["torch_version"] == torch.__version__
    assert manifest["max_objects"] == BOUNDS.max_objects and manifest["long_edge_cap"] == 1040
    assert manifest["normalisation"]["channel_order"] == "BGR"
    assert os.path.isfile(manifest["op_library"])


def test_errors_are_one_line(model, exported, tmp_path):
    # a package from another torch
    other = tmp_path / "other"
    shutil.copytree(exported, other)
    manifest = json.loads((other / "export.json").read_text())
    manifest["torch_version"] = "2.10.0"
    (other / "export.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match=r"exported with torch 2\.10\.0, this is torch") as info:
        load_exported(other)
    assert "\n" not in str(info.value)
    assert load_exported(other, allow_other_torch=True).manifest["torch_version"] == "2.10.0"  # asked for: runs

    engine = load_exported(exported)
    # a frame outside the bounds
    big = np.zeros((BOUNDS.max_side + 1, 64, 3), np.uint8)
    with pytest.raises(ExportError, match="take sides of 17..256") as info:
        engine.step(big, np.zeros(big.shape[:2], np.uint8))
    assert "\n" not in str(info.value)
    # more objects than the bound
    frame = np.zeros((64, 80, 3), np.uint8)
    mask = np.zeros((64, 80), np.uint8)
    mask[0, : BOUNDS.max_objects + 1] = np.arange(1, BOUNDS.max_objects + 2)
    with pytest.raises(ExportError, match="brings the video to 5 objects; .* at most 4") as info:
        engine.step(frame, mask)
    assert "\n" not in str(info.value)


def test_op_library_missing(exported):
    code = BLOCK_EXTENSION_CODE + (
        "import sys\nfrom cfbi_model import load_exported\n"
        "from cfbi_model.inference.export import ExportError\n"
        f"try:\n    load_exported({str(exported)!r})\n"
        "except ExportError as e:\n    print(e)\n    sys.exit(3)\n"
    )
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 3, result.stderr
    message = result.stdout.strip()
    assert "\n" not in message and "cfbi_ops op library is not loaded" in message


def _write_pnm(path: Path, array: np.ndarray) -> None:
    magic = b"P6" if array.ndim == 3 else b"P5"
    path.write_bytes(magic + b"\n%d %d\n255\n" % (array.shape[1], array.shape[0]) + array.tobytes())


def _read_pgm(path: Path) -> np.ndarray:
    data = path.read_bytes()
    _, size, _, pixels = data.split(b"\n", 3)
    width, height = map(int, size.split())
    return np.frombuffer(pixels, np.uint8).reshape(height, width)


@pytest.fixture(scope="module")
def runner(cmake_build: Path) -> Path:
    """examples/cpp/segment_video, built by the project's CMake beside the Python-free op library."""
    program = cmake_build / "segment_video"
    if not program.is_file():
        pytest.skip("this libtorch has no AOTInductor package loader: segment_video was not built")
    return program


def test_cpp_runner_equals_cfbi_segment(model, exported, runner, cmake_build, tmp_path):
    program = runner
    clip, annotations = make_clip(72, 120, 2, frames=5, seed=1)
    first = annotations[0]
    (tmp_path / "png").mkdir()
    (tmp_path / "ppm").mkdir()
    for index, frame in enumerate(clip):
        from PIL import Image  # noqa: PLC0415

        Image.fromarray(frame).save(tmp_path / "png" / f"{index:05d}.png")
        _write_pnm(tmp_path / "ppm" / f"{index:05d}.ppm", frame)
    write_mask(tmp_path / "first.png", first, None)
    _write_pnm(tmp_path / "first.pgm", first)
    checkpoint = tmp_path / "model.pth"
    save_model(model, checkpoint)

    def cfbi(*args: str) -> None:
        env = dict(os.environ, PYTHONPATH=REPO_ROOT)
        done = subprocess.run([sys.executable, "-m", "cfbi_model.cli", *args], capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr

    common = ["segment", "--frames", str(tmp_path / "png"), "--mask", str(tmp_path / "first.png"), "--quiet"]
    cfbi(*common, "--out", str(tmp_path / "eager"), "--checkpoint", str(checkpoint), "--device", "cpu")
    cfbi(*common, "--out", str(tmp_path / "exported"), "--exported", str(exported))
    # The op library: the CMake build's (no Python at all), then the default, export.json's: the Python module
    # cfbi_ops/_C*.so, whose one Python symbol (its module init) the runner never calls.
    for out, ops in (("cpp", ["--ops", str(cmake_build / "libcfbi_ops.so")]), ("cpp-default", [])):
        args = ["--package", str(exported), "--frames", str(tmp_path / "ppm"), "--mask", str(tmp_path / "first.pgm")]
        done = subprocess.run([str(program), *args, "--out", str(tmp_path / out), *ops], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    for index in range(len(clip)):
        eager = read_mask(tmp_path / "eager" / "png" / f"{index:05d}.png")[0]
        python = read_mask(tmp_path / "exported" / "png" / f"{index:05d}.png")[0]
        cpp = _read_pgm(tmp_path / "cpp" / f"{index:05d}.pgm")
        assert (python == eager).mean() >= 0.999 and (cpp == eager).mean() >= 0.999, index
        assert np.array_equal(_read_pgm(tmp_path / "cpp-default" / f"{index:05d}.pgm"), cpp), index

    # The runner's own errors are one line: another torch in the manifest, the op library missing.
    other = tmp_path / "other"
    shutil.copytree(exported, other)
    manifest = json.loads((other / "export.json").read_text())
    manifest["torch_version"] = "2.10.0"
    (other / "export.json").write_text(json.dumps(manifest))
    args = ["--frames", str(tmp_path / "ppm"), "--mask", str(tmp_path / "first.pgm"), "--out", str(tmp_path / "x")]
    done = subprocess.run([str(program), "--package", str(other), *args], capture_output=True, text=True)
    assert done.returncode == 1 and "exported with torch 2.10.0" in done.stderr and done.stderr.count("\n") == 1
    allowed = [str(program), "--package", str(other), *args, "--allow-other-torch"]
    assert subprocess.run(allowed, capture_output=True, text=True).returncode == 0
    cfbi(*common, "--out", str(tmp_path / "other-torch"), "--exported", str(other), "--allow-other-torch")
    missing = ["--ops", str(tmp_path / "nowhere.so")]
    done = subprocess.run([str(program), "--package", str(exported), *args, *missing], capture_output=True, text=True)
    assert done.returncode == 1 and "cannot load the op library" in done.stderr and done.stderr.count("\n") == 1


def test_cli_export_errors(tmp_path, capsys):
    from cfbi_model.cli import main  # noqa: PLC0415

    assert main(["export", "--checkpoint", str(tmp_path / "none.pth"), "--out", str(tmp_path / "o")]) == 1
    assert "does not exist" in capsys.readouterr().err
    checkpoint = tmp_path / "m.pth"
    save_model(build_model("small"), checkpoint)
    out = str(tmp_path / "o")
    assert main(["export", "--checkpoint", str(checkpoint), "--out", out, "--max-network-side", "40"]) == 2
    assert "max_network_side must be 16k + 1" in capsys.readouterr().err


def test_cli_export_in_bfloat16_agrees_with_float32(tmp_path):
    """`cfbi export --dtype bfloat16` of the shipped small weights: the packages run the network under autocast as
    VideoSegmenter(precision="bfloat16") does, and agree with float32 eager inference as 16-bit inference must
    (labels >= 99 %, test_precision.py); probabilities stay float32."""
    from cfbi_model.build import load_model, shipped_weights  # noqa: PLC0415
    from cfbi_model.cli import main  # noqa: PLC0415
    from cfbi_model.data.synthetic import SyntheticConfig, render_video  # noqa: PLC0415

    out = tmp_path / "bf16"
    args = ["export", "--checkpoint", shipped_weights(), "--out", str(out), "--dtype", "bfloat16"]
    assert main([*args, "--max-side", "128", "--max-network-side", "129", "--max-objects", "3"]) == 0
    assert json.loads((out / "export.json").read_text())["dtype"] == "bfloat16"
    frames, labels = render_video(5, SyntheticConfig(height=72, width=96, num_frames=(5, 5), max_objects=3))
    float32, packaged = VideoSegmenter(load_model(shipped_weights())), load_exported(out)
    agreement = []
    for index, frame in enumerate(frames):
        annotation = labels[0] if index == 0 else None
        want, got = float32.step(frame, annotation), packaged.step(frame, annotation)
        assert got.probs.dtype == torch.float32 and torch.isfinite(got.probs).all()
        agreement.append((got.labels == want.labels).mean())
    assert np.mean(agreement) >= 0.99, agreement


@pytest.mark.parametrize(
    "bounds",
    [
        ExportBounds(max_side=17, max_network_side=33, max_objects=1, max_references=1),  # every size fixed
        ExportBounds(max_side=64, max_network_side=97, max_objects=2, max_references=3),
    ],
)
def test_any_bounds_trace(model, bounds, tmp_path, monkeypatch):
    """The traces' example inputs come from the bounds: small or single-valued bounds export (the AOTInductor
    compile, the same for every bound, is left out)."""
    compiled = []

    def compile_nothing(program: torch.export.ExportedProgram, package_path: str) -> None:
        compiled.append(program)
        Path(package_path).touch()

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", compile_nothing)
    export_model(model, tmp_path, bounds=bounds)
    assert len(compiled) == 2
    manifest = json.loads((tmp_path / "export.json").read_text())
    assert (manifest["frame"]["max_side"], manifest["max_objects"]) == (bounds.max_side, bounds.max_objects)


def test_cli_segment_allow_other_torch_needs_exported(tmp_path, capsys):
    from cfbi_model.cli import main  # noqa: PLC0415

    (tmp_path / "frames").mkdir()
    args = ["segment", "--frames", str(tmp_path / "frames"), "--mask", str(tmp_path / "m.png"), "--out", str(tmp_path)]
    assert main([*args, "--allow-random", "--allow-other-torch"]) == 2
    assert "--allow-other-torch applies to --exported packages only" in capsys.readouterr().err
