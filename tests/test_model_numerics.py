"""The model in float64 as the oracle of float32 (docs/design.md, "Numerics").

float32 inference of the shipped weights must agree with float64 inference of the same weights on clips built
to hit the edge cases of the network: probabilities within 1e-3 (float32 rounding gives a few 1e-6 here), labels
at least 99.9 % equal. The attention's complement sum is where float32 went wrong: `total - part` of two
different reductions, divided by a count of 0 + epsilon when one label covers a whole frame.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_config

from cfbi_model.build import load_model, shipped_weights
from cfbi_model.config import TrainConfig
from cfbi_model.data.synthetic import SyntheticConfig, render_video
from cfbi_model.inference.segmenter import VideoSegmenter
from cfbi_model.modeling import attention
from cfbi_model.training.trainer import Trainer

DATA_SEED = 1  # of conftest's data_root fixture
PROB_TOLERANCE = 1e-3
LABEL_AGREEMENT = 0.999


def _pooled_sums_with_the_old_bug(embeddings, masks):
    # The complement as total - part: a sum and a GEMM round differently, and an empty complement keeps
    # their difference.
    pos_sum = torch.einsum("tchw,tlhw->lc", embeddings, masks.to(embeddings.dtype))
    total = embeddings.sum(dim=(0, 2, 3)).unsqueeze(0)
    pos_count = masks.sum(dim=(0, 2, 3)).unsqueeze(1)
    neg_count = (1.0 - masks).sum(dim=(0, 2, 3)).unsqueeze(1)
    return pos_sum, total - pos_sum, pos_count, neg_count


def test_attention_of_an_all_background_previous_frame_matches_float64():
    """480p at 4x (117 x 117), embedding dimension 256, ReLU-like (non-negative) embeddings: the "prev neg" part
    of the background label's vector is exactly 0 and every entry is within float32 rounding of float64."""
    g = torch.Generator().manual_seed(0)
    references = torch.rand(1, 256, 117, 117, generator=g)
    previous = torch.rand(256, 117, 117, generator=g)
    reference_masks = torch.nn.functional.one_hot(torch.randint(0, 3, (1, 117, 117), generator=g), 3)
    reference_masks = reference_masks.permute(0, 3, 1, 2).float()
    previous_mask = torch.zeros(3, 117, 117)
    previous_mask[0] = 1.0  # every object lost: the background covers the frame

    def vectors(dtype):
        return attention.attention_vectors(
            references.to(dtype), reference_masks.to(dtype), previous.to(dtype), previous_mask.to(dtype)
        )

    got, oracle = vectors(torch.float32), vectors(torch.float64)
    assert got.dtype == torch.float32 and oracle.dtype == torch.float64
    assert torch.equal(got[0, 3 * 256 :], torch.zeros(256)), "an empty complement must give exactly 0"
    torch.testing.assert_close(got.double(), oracle, rtol=0, atol=1e-5)


def test_the_old_complement_fails_the_attention_comparison(monkeypatch):
    monkeypatch.setattr(attention, "pooled_sums", _pooled_sums_with_the_old_bug)
    with pytest.raises(AssertionError):
        test_attention_of_an_all_background_previous_frame_matches_float64()


# --------------------------------------------------------------------------------------------- whole model
@pytest.fixture(scope="module")
def models():
    return load_model(shipped_weights()).eval(), load_model(shipped_weights()).eval().double()


def _clip(seed: int, frames: int = 6, height: int = 96, width: int = 128):
    return render_video(seed, SyntheticConfig(height=height, width=width, num_frames=(frames, frames)))


def _every_object_lost():
    frames, labels = _clip(7, height=120, width=160)
    blank = np.full_like(frames[0], 128)  # the objects are gone: the previous frame is all background
    return [frames[0], blank, blank, frames[0], frames[1]], {0: labels[0]}


def _covers_the_frame():
    frames, labels = _clip(3)
    return frames, {0: np.ones_like(labels[0])}


def _one_pixel_object():
    frames, labels = _clip(3)
    first = labels[0].copy()
    first[50, 60] = first.max() + 1
    return frames, {0: first}


def _annotated_later():
    frames, labels = _clip(3)
    first, later = labels[0].copy(), labels[3].copy()
    first[first > 1] = 0
    later[later > 1] = 0
    later[later == 1] = 2  # absent from the reference frame, annotated at frame 3
    return frames, {0: first, 3: later}


def _eleven_objects():
    frames, _ = _clip(7, height=120, width=160)
    grid = np.zeros(frames.shape[1:3], np.uint8)
    for k in range(11):
        y, x = divmod(k, 4)
        grid[8 + 28 * y : 30 + 28 * y, 6 + 38 * x : 38 + 38 * x] = k + 1
    return frames, {0: grid}


CLIPS = {
    "every_object_lost": _every_object_lost,
    "object_covers_the_frame": _covers_the_frame,
    "one_pixel_object": _one_pixel_object,
    "object_annotated_later": _annotated_later,
    "eleven_objects": _eleven_objects,
}


def _segment(model, frames, annotations):
    segmenter = VideoSegmenter(model)
    results = [segmenter.step(frames[0], annotations[0])]
    for index in range(1, len(frames)):
        results.append(segmenter.step(frames[index], annotations.get(index)))
    return results


def _disagreement(models, clip) -> tuple[float, float, list]:
    """(max |p32 - p64|, fraction of equal labels, the float64 results) over a clip."""
    frames, annotations = CLIPS[clip]()
    single, double = (_segment(model, frames, annotations) for model in models)
    assert all(r.probs.dtype == torch.float64 for r in double)
    worst = max(float((a.probs.double() - b.probs).abs().max()) for a, b in zip(single, double))
    equal = sum(int((a.labels == b.labels).sum()) for a, b in zip(single, double))
    return worst, equal / sum(r.labels.size for r in double), double


@pytest.mark.parametrize("clip", sorted(CLIPS))
def test_float32_inference_agrees_with_float64(models, clip):
    worst, agreement, double = _disagreement(models, clip)
    assert worst < PROB_TOLERANCE, f"{clip}: max |p32 - p64| = {worst:.3g}"
    assert agreement >= LABEL_AGREEMENT, f"{clip}: {agreement:.5f} of the labels agree"
    if clip == "every_object_lost":  # the edge case happened: frames predicted all background
        assert [int(r.labels.max()) for r in double[1:3]] == [0, 0]
    if clip == "eleven_objects":
        assert double[0].probs.shape[0] == 12


@pytest.mark.parametrize("clip", ["every_object_lost", "object_covers_the_frame"])
def test_the_oracle_catches_the_old_attention_bug(models, clip, monkeypatch):
    monkeypatch.setattr(attention, "pooled_sums", _pooled_sums_with_the_old_bug)
    worst, _, _ = _disagreement(models, clip)
    assert worst > PROB_TOLERANCE, f"{clip}: the old complement went unnoticed ({worst:.3g})"


def test_a_float64_training_step(data_root, tmp_path):
    from cfbi_model.data.datasets import davis_videos

    config = tiny_config(steps=1, batch_size=2, warmup_steps=0, dtype="float64")
    trainer = Trainer(config, davis_videos(data_root, "train"), str(tmp_path / "run"), progress=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert all(p.dtype == torch.float64 for p in trainer.model.parameters())
    assert np.isfinite(trainer.history[-1]["loss"])
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    with pytest.raises(ValueError, match="dtype"):
        TrainConfig(dtype="float16")
