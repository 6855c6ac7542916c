"""Annotations on any frame: objects that start late, background before the first annotation, corrections,
arbitrary object ids mapped to compact labels, the one-call API (propagate, segment_video) and its errors."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cfbi_model
from cfbi_model import CFBIPlus, VideoSegmenter
from cfbi_model.cli import main
from cfbi_model.inference import AnnotationError, LabelMap

pytestmark = pytest.mark.usefixtures("single_thread_module")

H, W = 48, 64
PALETTE = [0, 0, 0] + [200, 30, 30] * 85 + [0, 0, 0] * 0
PALETTE = (PALETTE + [9] * 768)[:768]


@pytest.fixture(scope="module")
def model() -> CFBIPlus:
    torch.manual_seed(0)
    return CFBIPlus("small").eval()


def frames(count: int = 7) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    out = []
    for t in range(count):
        img = rng.integers(0, 50, (H, W, 3), dtype=np.uint8)
        img[6 + t : 22 + t, 4 + t : 24 + t] = (230, 40, 40)
        if t >= 3:
            img[28:44, 40:60] = (40, 220, 50)
        out.append(img)
    return out


def box(value: int, rows: slice, cols: slice) -> np.ndarray:
    labels = np.zeros((H, W), np.uint8)
    labels[rows, cols] = value
    return labels


FIRST = box(7, slice(6, 22), slice(4, 24))  # object 7 from frame 0
LATE = box(200, slice(28, 44), slice(40, 60))  # object 200 from frame 3
CORRECTION = box(7, slice(10, 20), slice(30, 50))  # object 7 re-annotated (moved) at frame 5


def write_png(path: Path, labels: np.ndarray, palette=PALETTE) -> None:
    image = Image.frombytes("P", (labels.shape[1], labels.shape[0]), np.ascontiguousarray(labels, np.uint8).tobytes())
    image.putpalette(palette)
    image.save(path)


# ------------------------------------------------------------------------------------------------ label map
def test_label_map_compacts_ids_and_maps_back():
    label_map = LabelMap()
    assert label_map.add(np.array([[0, 7], [200, 255]], np.uint8)) == [7, 200]
    assert label_map.ids == [0, 7, 200]
    assert label_map.to_labels(np.array([[0, 7], [200, 255]])).tolist() == [[0, 1], [2, 255]]
    assert label_map.add(np.array([[7, 9]])) == [9]
    assert label_map.to_ids(torch.tensor([[3, 2], [1, 0]])).tolist() == [[9, 200], [7, 0]]
    assert label_map.to_ids(np.array([[255]])).tolist() == [[0]]  # ignored pixels are written as background


# ------------------------------------------------------------------------------------------------ propagate
def test_propagate_late_object_correction_and_compact_ids(model):
    segmenter = VideoSegmenter(model)
    results = list(segmenter.propagate(frames(), {0: FIRST, 3: LATE, 5: CORRECTION}))
    assert [r.index for r in results] == list(range(7))
    # ids {0, 7, 200}: three labels, never 201; absent ids are never predicted.
    for r in results:
        assert set(np.unique(r.labels)) <= {0, 7, 200}
        assert r.labels.dtype == np.uint8 and r.labels.shape == (H, W)
        torch.testing.assert_close(r.probs.sum(0), torch.ones(H, W))
    assert results[0].probs.shape == (2, H, W) and results[0].ids == (0, 7)
    assert np.array_equal(results[0].labels, FIRST)
    # The late object is absent before its first annotation, equals it there, and is tracked after it.
    for r in results[:3]:
        assert not (r.labels == 200).any() and r.probs.shape[0] == 2
    assert np.array_equal(results[3].labels == 200, LATE == 200) and results[3].ids == (0, 7, 200)
    assert results[3].annotated and not results[4].annotated
    assert all(r.probs.shape == (3, H, W) for r in results[3:])
    # The correction frame: object 7 is exactly its annotation; object 200 keeps its prediction elsewhere.
    assert np.array_equal(results[5].labels == 7, CORRECTION == 7)
    keep = CORRECTION == 0
    assert np.array_equal((results[5].labels == 200)[keep], (results[5].probs.argmax(0).numpy() == 2)[keep])
    assert segmenter.num_references == 3  # frames 0, 3 and 5
    index, labels, probs = results[6]  # unpacks as (index, labels, probs)
    assert index == 6 and labels.shape == (H, W) and probs.shape == (3, H, W)


def test_background_before_first_annotation(model):
    results = list(VideoSegmenter(model).propagate(iter(frames(5)), {2: FIRST}))
    for r in results[:2]:
        assert not r.labels.any() and r.probs.shape == (1, H, W) and r.ids == (0,)
    assert np.array_equal(results[2].labels, FIRST)
    assert results[4].ids == (0, 7)


def test_ignored_regions_are_neither_objects_nor_written(model):
    first = FIRST.copy()
    first[0:4, :] = 255  # an ignored band (void in DAVIS)
    late = LATE.copy()
    late[44:48, :] = 255
    results = list(VideoSegmenter(model).propagate(frames(5), {0: first, 3: late}))
    assert results[0].ids == (0, 7) and results[3].ids == (0, 7, 200)  # 255 is not an object
    assert not results[0].labels[0:4].any() and np.array_equal(results[0].labels[4:], FIRST[4:])
    assert all(not (r.labels == 255).any() for r in results)


def test_propagate_is_lazy(model):
    consumed = []

    def reader():
        for t, frame in enumerate(frames(6)):
            consumed.append(t)
            yield frame

    stream = VideoSegmenter(model).propagate(reader(), {0: FIRST})
    next(stream)
    assert consumed == [0]
    next(stream)
    assert consumed == [0, 1]


def test_propagate_keeps_no_frame(model):
    """Memory does not grow with the video: a frame is released once the next one is segmented."""
    import gc
    import weakref

    refs = []

    def reader():
        for frame in frames(6):
            tensor = torch.from_numpy(frame)
            refs.append(weakref.ref(tensor))
            yield tensor

    for prediction in VideoSegmenter(model).propagate(reader(), {0: FIRST}):
        gc.collect()
        alive = [i for i, ref in enumerate(refs) if ref() is not None]
        assert alive[0] >= prediction.index - 1, (prediction.index, alive)


def test_propagate_errors(model):
    seg = VideoSegmenter(model)
    with pytest.raises(AnnotationError, match="no annotation"):
        list(seg.propagate(frames(2), {}))
    with pytest.raises(AnnotationError, match="frame 1.*64x40.*64x48"):
        list(seg.propagate(frames(3), {0: FIRST, 1: FIRST[:40]}))
    with pytest.raises(AnnotationError, match="outside 0..254"):
        list(seg.propagate(frames(2), {0: FIRST.astype(np.int32) * 50}))
    with pytest.raises(AnnotationError, match="frame 9 but the video has 3"):
        list(seg.propagate(frames(3), {0: FIRST, 9: LATE}))


# ------------------------------------------------------------------------------------------------ segment_video
def test_segment_video_in_memory_and_to_a_folder(model, tmp_path):
    result = cfbi_model.segment_video(frames(5), {0: FIRST, 3: LATE}, model=model)
    assert result.masks.shape == (5, H, W) and result.frames == 5 and result.objects == (7, 200)
    assert result.folder is None and result.seconds > 0 and "5 frames, 2 object(s)" in result.summary()
    folder = tmp_path / "clip"
    folder.mkdir()
    for t, img in enumerate(frames(5)):
        Image.fromarray(img).save(folder / f"f{t:02d}.png")
    masks = tmp_path / "masks"
    masks.mkdir()
    write_png(masks / "f00.png", FIRST)
    write_png(masks / "f03.png", LATE)
    written = cfbi_model.segment_video(folder, masks, model=model, out=tmp_path / "out", per_object=True)
    assert written.folder == tmp_path / "out" / "clip" and written.masks is None
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["clip"]
    for t in range(5):
        with Image.open(written.folder / f"f{t:02d}.png") as image:
            assert image.mode == "P" and image.getpalette()[:6] == PALETTE[:6]
            assert np.array_equal(np.asarray(image), result.masks[t])
    assert sorted(p.name for p in (written.folder / "objects").iterdir()) == ["007", "200"]
    with Image.open(written.folder / "objects" / "200" / "f03.png") as image:
        assert np.array_equal(np.asarray(image), np.where(LATE == 200, 255, 0))
    assert not (written.folder / "objects" / "200" / "f00.png").exists()  # written from its first frame on


def test_segment_video_annotation_names(model, tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    write_png(masks / "00000.png", FIRST)
    write_png(masks / "nonsense.png", LATE)
    with pytest.raises(AnnotationError, match="nonsense.png.*matches no frame"):
        cfbi_model.segment_video(frames(3), masks, model=model)
    with pytest.raises(ValueError, match="checkpoint or a model"):
        cfbi_model.segment_video(frames(3), FIRST)


# ------------------------------------------------------------------------------------------------ command line
def bomb_png(path: Path, side: int = 30000) -> None:
    """A PNG header announcing side x side pixels (a decompression bomb) with no image data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


@pytest.fixture
def clip_dir(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "walk"
    folder.mkdir()
    for t, img in enumerate(frames(6)):
        Image.fromarray(img).save(folder / f"{t:05d}.jpg", quality=95)
    masks = tmp_path / "masks"
    masks.mkdir()
    write_png(masks / "00000.png", FIRST)
    write_png(masks / "00003.png", LATE)
    write_png(masks / "00005.png", CORRECTION)
    return {"root": tmp_path, "frames": folder, "masks": masks, "out": tmp_path / "out"}


def segment(*args) -> int:
    return main(["segment", *map(str, args)])


def test_cli_masks_folder_late_object_and_correction(clip_dir, capsys):
    args = [
        "--frames",
        clip_dir["frames"],
        "--masks",
        clip_dir["masks"],
        "--out",
        clip_dir["out"],
        "--config",
        "small",
        "--allow-random",
        "--quiet",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--per-object",
    ]
    assert segment(*args) == 0
    err = capsys.readouterr().err
    assert "6 frames, 2 object(s)" in err and "frames/s" in err
    out = clip_dir["out"] / "walk"
    assert sorted(p.name for p in (out / "objects").iterdir()) == ["007", "200"]
    assert len(list((out / "objects" / "007").iterdir())) == 6
    assert segment(*args, "--name", "renamed") == 0 and (clip_dir["out"] / "renamed" / "00005.png").is_file()
    assert segment(*args, "--name", "a/b") == 2 and "is not a plain folder name" in capsys.readouterr().err
    labels = [np.asarray(Image.open(out / f"{t:05d}.png")) for t in range(6)]
    assert all(set(np.unique(lab)) <= {0, 7, 200} for lab in labels)
    assert not any((lab == 200).any() for lab in labels[:3])
    assert np.array_equal(labels[3] == 200, LATE == 200)
    assert np.array_equal(labels[5] == 7, CORRECTION == 7)


def test_cli_annotation_errors_come_before_any_output(clip_dir, capsys):
    base = ["--frames", clip_dir["frames"], "--out", clip_dir["out"], "--config", "small", "--allow-random", "--quiet"]

    def fails(*extra, expect, code=1):  # 1: bad input, 2: a bad option (cfbi_model.cli.main)
        got = segment(*base, *extra)
        err = capsys.readouterr().err
        assert got == code, err
        assert len(err.strip().splitlines()) == 1, err
        for text in expect:
            assert text in err, (text, err)
        assert not clip_dir["out"].exists()

    write_png(clip_dir["masks"] / "00009.png", LATE)
    fails("--masks", clip_dir["masks"], expect=["00009.png", "matches no frame"])
    (clip_dir["masks"] / "00009.png").unlink()
    write_png(clip_dir["masks"] / "00002.png", LATE[:40])
    fails("--masks", clip_dir["masks"], expect=["00002.png", "64x40", "64x48"])
    (clip_dir["masks"] / "00002.png").unlink()
    wide = clip_dir["root"] / "wide.png"
    Image.fromarray(np.full((H, W), 300, np.uint16)).save(wide)
    fails("--mask", wide, expect=["wide.png", "above 255"])
    bomb = clip_dir["root"] / "bomb.png"
    bomb_png(bomb)
    fails("--mask", bomb, expect=["bomb.png", "decompression bomb"])
    saved = (clip_dir["frames"] / "00004.jpg").read_bytes()
    bomb_png(clip_dir["frames"] / "00004.jpg")  # Pillow goes by the content, not the extension
    fails("--masks", clip_dir["masks"], expect=["00004.jpg", "decompression bomb"])
    (clip_dir["frames"] / "00004.jpg").write_bytes(saved)
    fails("--masks", clip_dir["masks"], "--scales", "nan", expect=["scales"], code=2)
    fails("--masks", clip_dir["masks"], "--scales", "1e6", expect=["scales"], code=2)


def test_cli_truncated_frame_leaves_a_recognisable_partial_folder(clip_dir, capsys):
    path = clip_dir["frames"] / "00004.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])  # the header is intact, the image data is not
    code = segment(
        "--frames",
        clip_dir["frames"],
        "--masks",
        clip_dir["masks"],
        "--out",
        clip_dir["out"],
        "--config",
        "small",
        "--allow-random",
        "--quiet",
    )
    err = capsys.readouterr().err
    assert code == 1 and "00004.jpg" in err
    assert sorted(p.name for p in clip_dir["out"].iterdir()) == ["walk.partial"]
    gt = clip_dir["root"] / "gt" / "walk"
    gt.mkdir(parents=True)
    for t in range(6):
        write_png(gt / f"{t:05d}.png", FIRST)
    assert main(["evaluate", "--gt", str(gt.parent), "--pred", str(clip_dir["out"]), "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert "walk" in err and "interrupted" in err
