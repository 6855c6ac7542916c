"""Training data: synthetic generator, DAVIS / YouTube-VOS readers, clip sampling and augmentation."""

from __future__ import annotations

import filecmp
import json
import os
import shutil

import numpy as np
import pytest
import torch

from cfbi_model.data import (
    ClipConfig,
    ClipDataset,
    DataError,
    MixedVideos,
    StepSampler,
    balanced_crop,
    collate_clips,
    davis_videos,
    load_frame,
    relabel,
    sample_frame_indices,
    youtube_vos_videos,
)
from cfbi_model.data.synthetic import SyntheticConfig, render_video, write_synthetic_davis
from cfbi_model.inference import preprocess

TINY = SyntheticConfig(height=72, width=96, num_frames=(8, 10), max_objects=3)


@pytest.fixture(scope="module")
def davis_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_davis(root, num_train=3, num_val=1, seed=1, config=TINY)
    return root


def test_synthetic_generator_is_deterministic(tmp_path):
    a_frames, a_labels = render_video(11, TINY)
    b_frames, b_labels = render_video(11, TINY)
    assert np.array_equal(a_frames, b_frames) and np.array_equal(a_labels, b_labels)
    c_frames, _ = render_video(12, TINY)
    assert a_frames.shape != c_frames.shape or not np.array_equal(a_frames, c_frames)
    # every object is visible in the first frame, and the objects move
    ids = np.unique(a_labels[0])
    assert set(ids) == set(range(int(a_labels.max()) + 1))
    assert not np.array_equal(a_labels[0], a_labels[-1])
    # the same files from the same seed
    write_synthetic_davis(tmp_path / "a", 2, 1, seed=3, config=TINY)
    write_synthetic_davis(tmp_path / "b", 2, 1, seed=3, config=TINY)
    cmp = filecmp.dircmp(tmp_path / "a", tmp_path / "b")
    stack = [cmp]
    while stack:
        d = stack.pop()
        assert not d.left_only and not d.right_only
        _, mismatch, errors = filecmp.cmpfiles(d.left, d.right, d.common_files, shallow=False)
        assert not mismatch and not errors
        stack.extend(d.subdirs.values())


def test_synthetic_videos_have_occlusion_exits_and_distractors():
    cfg = SyntheticConfig(height=72, width=96, num_frames=(20, 20), max_objects=3, exit_probability=1.0)
    exits = 0
    for seed in range(6):
        frames, labels = render_video(seed, cfg)
        for k in range(1, int(labels.max()) + 1):
            areas = (labels == k).reshape(len(labels), -1).sum(1)
            exits += int(areas.min() < 0.3 * areas[0])  # left (partly or fully) the frame or got occluded
    assert exits > 0


def test_davis_reader_and_errors(davis_root, tmp_path):
    videos = davis_videos(davis_root, "train")
    assert [v.name for v in videos] == ["synth_train_0000", "synth_train_0001", "synth_train_0002"]
    assert all(len(v.frames) == len(v.masks) >= 8 for v in videos)
    with pytest.raises(DataError, match="test.txt"):
        davis_videos(davis_root, "test")
    broken = tmp_path / "broken"
    shutil.copytree(davis_root, broken)
    mask = broken / "Annotations" / "480p" / "synth_train_0001" / "00003.png"
    os.remove(mask)
    with pytest.raises(DataError, match="00003.png"):
        davis_videos(broken, "train")
    # a corrupt frame names the file when a clip reads it
    frame = broken / "JPEGImages" / "480p" / "synth_train_0000" / "00002.jpg"
    frame.write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match="00002.jpg"):
        load_frame(str(frame))
    videos = davis_videos(broken, "train", sequences=["synth_train_0000"])
    data = ClipDataset(videos, ClipConfig(num_current=7, max_gap=1, crop_size=(65, 65), short_edge=None))
    with pytest.raises(DataError, match="00002.jpg"):
        for k in range(20):
            data[k]
    with pytest.raises(DataError, match="missing frame"):
        load_frame(str(tmp_path / "nope.jpg"))


def test_youtube_reader_and_mix(davis_root, tmp_path):
    base = tmp_path / "yt" / "train"
    meta = {"videos": {}}
    for name in ("vid_a", "vid_b"):
        src = davis_root / "JPEGImages" / "480p" / "synth_train_0000"
        shutil.copytree(src, base / "JPEGImages" / name)
        (base / "Annotations" / name).mkdir(parents=True)
        for i, png in enumerate(sorted((davis_root / "Annotations" / "480p" / "synth_train_0000").iterdir())):
            if i % 5 == 0:  # YouTube-VOS annotates every fifth frame
                shutil.copy(png, base / "Annotations" / name / png.name)
        meta["videos"][name] = {"objects": {"1": {"category": "thing", "frames": ["00000", "00005"]}}}
    (base / "meta.json").write_text(json.dumps(meta))
    videos = youtube_vos_videos(tmp_path / "yt")
    assert [v.name for v in videos] == ["vid_a", "vid_b"]
    assert all(len(v) == 2 for v in videos)  # only the annotated frames
    with pytest.raises(DataError, match="meta.json"):
        youtube_vos_videos(tmp_path / "nowhere")
    mix = MixedVideos([davis_videos(davis_root, "train"), videos], [0.25, 0.75])
    rng = np.random.default_rng(0)
    draws = [mix.draw(rng).name.startswith("vid_") for _ in range(4000)]
    assert abs(np.mean(draws) - 0.75) < 0.03


def test_frame_sampling_gaps_and_reversal():
    rng = np.random.default_rng(0)
    directions = set()
    for _ in range(300):
        reverse = bool(rng.random() < 0.5)
        ref, prev, cur = sample_frame_indices(30, 3, 4, rng, reverse)
        seq = [prev, *cur]
        steps = np.diff(seq)
        assert 0 <= ref < 30 and all(0 <= i < 30 for i in seq)
        assert np.all(np.abs(steps) >= 1) and np.all(np.abs(steps) <= 4)
        assert np.all(np.sign(steps) == (-1 if reverse else 1))
        directions.add(reverse)
    assert directions == {True, False}
    # a video shorter than the clip still gives valid indices
    _, prev, cur = sample_frame_indices(2, 3, 3, rng, False)
    assert all(0 <= i < 2 for i in [prev, *cur])


def test_balanced_crop_and_relabel():
    rng = np.random.default_rng(0)
    label = np.zeros((200, 200), np.uint8)
    label[150:165, 20:35] = 3  # 225 px object in a corner
    for _ in range(20):
        y, x = balanced_crop(label, (65, 65), 100, 50, rng)
        window = label[y : y + 65, x : x + 65]
        assert (window == 3).sum() > 100
    many = np.arange(8, dtype=np.uint8).repeat(4)[None].repeat(3, 0)  # objects 1..7
    many[0, 0] = 255
    (ref, other), count = relabel(many, [many, many.copy()], 5, rng)
    assert count == 5
    assert set(np.unique(ref)) == {0, 1, 2, 3, 4, 5, 255}
    assert np.array_equal(ref, other)


def test_clip_dataset_properties(davis_root):
    videos = davis_videos(davis_root, "train")
    cfg = ClipConfig(num_current=3, max_gap=2, crop_size=(65, 65), short_edge=None, max_objects=2)
    data = ClipDataset(videos, cfg, seed=5)
    balanced = 0
    for k in range(12):
        item = data[k]
        assert item["ref_image"].shape == (3, 65, 65) and item["cur_images"].shape == (3, 3, 65, 65)
        assert item["cur_labels"].shape == (3, 65, 65) and item["cur_labels"].dtype == torch.int64
        n = item["num_labels"]
        assert 2 <= n <= 3  # at least one object, at most max_objects
        for lab in (item["ref_label"], item["prev_label"], *item["cur_labels"]):
            values = set(lab.unique().tolist())
            assert values <= set(range(n)) | {255}
        counts = torch.bincount(item["ref_label"].flatten(), minlength=256)
        balanced += int(counts[1:255].max() > 100)
    assert balanced >= 10  # balanced crop (objects partly out of these tiny frames may stay below 100 px)
    a, b = data[7], ClipDataset(videos, cfg, seed=5)[7]
    assert torch.equal(a["cur_images"], b["cur_images"]) and torch.equal(a["ref_label"], b["ref_label"])
    batch = collate_clips([data[0], data[1]])
    assert batch["cur_images"].shape == (2, 3, 3, 65, 65) and len(batch["num_labels"]) == 2


def test_clip_normalisation_matches_inference(davis_root):
    videos = davis_videos(davis_root, "train", sequences=["synth_train_0000"])
    cfg = ClipConfig(
        crop_size=(72, 96), scale_range=(1.0, 1.0), short_edge=None, flip_probability=0.0, min_object_pixels=0
    )
    item = ClipDataset(videos, cfg, seed=0)[0]
    ref = item["frame_indices"][0]
    expected = preprocess(load_frame(videos[0].frames[ref]))
    assert torch.allclose(item["ref_image"], expected)


def test_step_sampler_resumes_and_splits_ranks():
    full = list(StepSampler(0, 4, 3))
    assert full == list(range(12))
    assert list(StepSampler(2, 4, 3)) == full[6:]
    r0, r1 = list(StepSampler(0, 2, 2, 0, 2)), list(StepSampler(0, 2, 2, 1, 2))
    assert not set(r0) & set(r1) and sorted(r0 + r1) == list(range(8))
