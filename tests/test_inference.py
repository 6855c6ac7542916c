"""VideoSegmenter: the authors' evaluation protocol on tiny generated clips with the small configuration."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cfbi_model import CFBIPlus, FramePrediction, VideoSegmenter
from cfbi_model.inference import inference_size, preprocess

pytestmark = pytest.mark.usefixtures("single_thread_module")

H, W = 65, 81


@pytest.fixture(scope="module")
def model() -> CFBIPlus:
    torch.manual_seed(0)
    m = CFBIPlus("small").eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-zero GCT gates and distance biases, so that every path matters
        for name, p in m.named_parameters():
            if name.endswith(("gamma", "beta")) or name in ("fg_bias", "bg_bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return m


def make_clip(count: int = 5, size: tuple[int, int] = (H, W), seed: int = 0):
    """Frames with two moving coloured boxes on a noisy background, the first frame's labels, and the label
    map of a third object that appears at frame 2."""
    h, w = size
    rng = np.random.default_rng(seed)
    frames = []
    for t in range(count):
        img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        img[8 + t : 28 + t, 6 + 2 * t : 30 + 2 * t] = (220, 40, 40)
        img[35:55, 40 + t : 70 + t] = (40, 200, 60)
        if t >= 2:
            img[4:14, w - 16 : w - 4] = (30, 30, 230)
        frames.append(img)
    labels = np.zeros((h, w), np.uint8)
    labels[8:28, 6:30] = 1
    labels[35:55, 40:70] = 2
    new_object = np.zeros((h, w), np.uint8)
    new_object[4:14, w - 16 : w - 4] = 3
    return frames, labels, new_object


def run(model, frames, labels, annotations=None, **kwargs) -> list[FramePrediction]:
    seg = VideoSegmenter(model, **kwargs)
    results = [seg.step(frames[0], labels)]
    for t, frame in enumerate(frames[1:], start=1):
        results.append(seg.step(frame, (annotations or {}).get(t)))
    return results


# ---------------------------------------------------------------------------------------------- protocol
def _official_size(h, w, scale, max_size):
    """MultiRestrictSize of the authors' dataloaders/custom_transforms.py, written out with numpy."""
    sc = None
    long_edge = h if h > w else w
    if long_edge > max_size:
        sc = float(max_size) / long_edge
    new_h, new_w = (h, w) if sc is None else (sc * h, sc * w)
    new_h, new_w = int(new_h * scale), int(new_w * scale)
    if (new_h - 1) % 16 != 0:
        new_h = int(np.around((new_h - 1) / 16.0) * 16 + 1)
    if (new_w - 1) % 16 != 0:
        new_w = int(np.around((new_w - 1) / 16.0) * 16 + 1)
    return new_h, new_w


def test_inference_size_matches_official_rule():
    assert inference_size(480, 854) == (481, 849)  # DAVIS 480p
    assert inference_size(1080, 1920) == (577, 1041)  # long edge capped at 1040; 36.5 rounds to even
    rng = np.random.default_rng(0)
    for h, w in rng.integers(40, 2200, (300, 2)):
        for scale, max_size in ((1.0, 1040), (1.3, 800), (0.75, 800), (1.15, 800)):
            expected = _official_size(int(h), int(w), scale, max_size)
            if min(expected) >= 17:
                assert inference_size(int(h), int(w), scale, max_size) == expected, (h, w, scale)


def test_max_long_edge_default(model):
    assert VideoSegmenter(model).config.long_edge_cap == 1040
    assert VideoSegmenter(model, scales=(1.0, 1.3)).config.long_edge_cap == 800
    assert VideoSegmenter(model, scales=(1.0, 1.3), max_long_edge=600).config.long_edge_cap == 600


def test_start_is_a_deprecated_alias_of_reset_and_step(model):
    frames, labels, _ = make_clip(2)
    seg = VideoSegmenter(model)
    seg.step(frames[0], labels)
    with pytest.warns(DeprecationWarning, match="start"):
        again = seg.start(frames[1], labels)
    assert again.index == 0 and seg.num_references == 1 and np.array_equal(again.labels, labels)


def test_preprocess_is_bgr_with_rgb_statistics():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    x = preprocess(img)
    assert x.shape == (3, 5, 7) and x.dtype == torch.float32
    bgr = img[:, :, ::-1].astype(np.float64) / 255.0
    for c, (mean, std) in enumerate(zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))):
        np.testing.assert_allclose(x[c].numpy(), (bgr[:, :, c] - mean) / std, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(preprocess(torch.from_numpy(img)), x)
    with pytest.raises(ValueError, match="uint8"):
        preprocess(img.astype(np.float32))
    with pytest.raises(ValueError, match="RGB"):
        preprocess(img[:, :, 0])


@pytest.mark.parametrize("size", [(H, W), (60, 70)])
def test_step_equals_manual_protocol(model, size):
    """Step 1 = resize (bicubic) to 16k+1, nearest labels per scale, 4x logits upsampled bilinearly
    (align_corners=True) to the frame size, softmax."""
    frames, labels, _ = make_clip(2, size)
    got = run(model, frames, labels)[1]
    h, w = size
    net = inference_size(h, w)
    with torch.no_grad():
        x0, x1 = (
            F.interpolate(preprocess(f)[None], size=net, mode="bicubic", align_corners=False)
            if net != size
            else preprocess(f)[None]
            for f in frames
        )
        f0, f1 = model.extract_features(x0), model.extract_features(x1)
        lab = torch.from_numpy(labels.astype(np.int64))[None]
        scaled = [F.interpolate(lab[None].float(), size=e.shape[-2:], mode="nearest")[0].long() for e in f0.embeddings]
        logits = model.segment(
            f1,
            [e[:, None] for e in model.matching_embeddings(f0)],
            [s[:, None] for s in scaled],
            list(f0.embeddings),
            scaled,
            3,
            global_atrous=2,
        )[0]
        probs = torch.softmax(F.interpolate(logits[None], size=size, mode="bilinear", align_corners=True), 1)[0]
    torch.testing.assert_close(got.probs, probs)
    assert np.array_equal(got.labels, probs.argmax(0).numpy())


# ---------------------------------------------------------------------------------------------- engine
def test_clip_with_new_object(model):
    frames, labels, new_object = make_clip(5)
    seg = VideoSegmenter(model)
    first = seg.step(frames[0], labels)
    assert np.array_equal(first.labels, labels) and first.annotated and first.ids == (0, 1, 2)
    assert first.probs.shape == (3, H, W) and seg.num_labels == 3 and seg.num_objects == 2
    r1 = seg.step(frames[1])
    assert r1.probs.shape == (3, H, W) and r1.labels.shape == (H, W) and r1.labels.dtype == np.uint8
    torch.testing.assert_close(r1.probs.sum(0), torch.ones(H, W))
    assert int(r1.labels.max()) <= 2
    # Object 3 appears at frame 2: its pixels are taken from the annotation, the frame becomes a reference.
    r2 = seg.step(frames[2], new_object)
    assert seg.num_labels == 4 and seg.num_references == 2
    assert r2.probs.shape == (4, H, W)
    annotated = new_object > 0
    assert (r2.labels[annotated] == 3).all() and r2.index == 2 and r2.ids == (0, 1, 2, 3)
    mask = torch.from_numpy(annotated)
    assert (r2.probs[3][mask] == 1).all() and (r2.probs[3][~mask] == 0).all()
    torch.testing.assert_close(r2.probs.sum(0), torch.ones(H, W))
    r3 = seg.step(frames[3])
    assert r3.probs.shape == (4, H, W) and seg.num_references == 2
    torch.testing.assert_close(r3.probs.sum(0), torch.ones(H, W))
    # The reference set holds frame 0 and frame 2 with the merged labels.
    aug = seg._augs[0]
    assert aug.references[0].shape[0] == 2 and aug.reference_labels[0].shape[0] == 2
    assert int(aug.reference_labels[0][1].max()) == 3


def test_memory_bounded_without_annotations(model):
    frames, labels, _ = make_clip(6)
    seg = VideoSegmenter(model)
    seg.step(frames[0], labels)
    shapes = None
    for frame in frames[1:]:
        seg.step(frame)
        state = [
            tuple(t.shape)
            for aug in seg._augs
            for t in aug.references + aug.reference_labels + aug.previous + aug.previous_labels
        ]
        assert shapes is None or state == shapes
        shapes = state
    assert seg.num_references == 1


def test_flip_averages_the_mirrored_video(model):
    frames, labels, _ = make_clip(2)
    both = run(model, frames, labels, flip=True)[1]
    plain = run(model, frames, labels)[1]
    mirrored = run(model, [np.ascontiguousarray(f[:, ::-1]) for f in frames], np.ascontiguousarray(labels[:, ::-1]))[1]
    torch.testing.assert_close(both.probs, 0.5 * (plain.probs + mirrored.probs.flip(-1)))
    assert np.array_equal(both.labels, both.probs.argmax(0).numpy())


def test_multi_scale_averages_the_scales(model):
    frames, labels, _ = make_clip(2)
    both = run(model, frames, labels, scales=(1.0, 0.6), max_long_edge=1040)[1]
    one = run(model, frames, labels, scales=(1.0,), max_long_edge=1040)[1]
    small = run(model, frames, labels, scales=(0.6,), max_long_edge=1040)[1]
    torch.testing.assert_close(both.probs, 0.5 * (one.probs + small.probs))
    # Flip + multi-scale + a new object: four views, all kept in step.
    frames, labels, new_object = make_clip(3)
    results = run(model, frames, labels, {1: new_object}, scales=(1.0, 0.6), flip=True)
    assert [r.probs.shape[0] for r in results] == [3, 4, 4]
    for r in results:
        torch.testing.assert_close(r.probs.sum(0), torch.ones(H, W))


def test_normalized_and_tensor_inputs_match_uint8(model):
    frames, labels, new_object = make_clip(3)
    ref = run(model, frames, labels, {1: new_object})
    norm = run(model, [preprocess(f) for f in frames], labels, {1: new_object}, normalized=True)
    tens = run(
        model, [torch.from_numpy(f) for f in frames], torch.from_numpy(labels), {1: torch.from_numpy(new_object)}
    )
    for a, b, c in zip(ref, norm, tens):
        torch.testing.assert_close(a.probs, b.probs)
        torch.testing.assert_close(a.probs, c.probs)
        assert np.array_equal(a.labels, b.labels) and np.array_equal(a.labels, c.labels)


def test_min_matching_pixels_and_atrous_options(model):
    frames, labels, _ = make_clip(3)
    a = run(model, frames, labels, min_matching_pixels=100)
    b = run(model, frames, labels, global_atrous=1)
    for r in a + b:
        torch.testing.assert_close(r.probs.sum(0), torch.ones(H, W))
    assert not torch.allclose(a[1].probs, run(model, frames, labels)[1].probs)


def test_ignored_pixels_in_first_mask(model):
    frames, labels, _ = make_clip(2)
    labels = labels.copy()
    labels[:4, :4] = 255
    seg = VideoSegmenter(model)
    seg.step(frames[0], labels)
    assert seg.num_labels == 3
    assert seg.step(frames[1]).probs.shape == (3, H, W)


def test_amp_on_cpu_warns_and_runs(model):
    frames, labels, _ = make_clip(2)
    with pytest.warns(UserWarning, match="amp"):
        seg = VideoSegmenter(model, amp=True)
    seg.step(frames[0], labels)
    assert seg.step(frames[1]).probs.dtype == torch.float32


def test_errors(model):
    frames, labels, _ = make_clip(2)
    seg = VideoSegmenter(model)
    before = seg.step(frames[0])  # before the first annotation: background
    assert before.ids == (0,) and not before.labels.any() and seg.num_labels == 0
    with pytest.raises(ValueError, match="annotation of frame 1 is"):
        seg.step(frames[0], labels[:-1])
    with pytest.raises(ValueError, match="integer"):
        seg.step(frames[0], labels.astype(np.float32))
    with pytest.raises(ValueError, match="above 254|outside"):
        seg.step(frames[0], np.full(labels.shape, 300))
    seg.reset()
    seg.step(frames[0], labels)
    with pytest.raises(ValueError, match="frame size"):
        seg.step(frames[1][:-2])
    with pytest.raises(ValueError, match="float tensor"):
        VideoSegmenter(model, normalized=True).step(frames[0], labels)
    for kwargs in (dict(global_atrous=0), dict(min_matching_pixels=-1), dict(scales=()), dict(scales=(0.0,))):
        with pytest.raises(ValueError):
            VideoSegmenter(model, **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("amp", [False, True])
def test_cuda_matches_cpu(model, amp):
    frames, labels, new_object = make_clip(4)
    cpu = run(model, frames, labels, {2: new_object})
    gpu_model = CFBIPlus("small").eval()
    gpu_model.load_state_dict(model.state_dict())
    gpu = run(gpu_model.cuda(), frames, labels, {2: new_object}, amp=amp)
    tol = dict(rtol=5e-2, atol=5e-2) if amp else dict(rtol=1e-3, atol=1e-3)
    for a, b in zip(cpu, gpu):
        assert b.probs.is_cuda
        torch.testing.assert_close(b.probs.cpu(), a.probs, **tol)
