"""InferenceConfig.precision and .compile: 16-bit inference agrees with float32 (labels >= 99 %), outputs stay
float32, auto follows the hardware, and compiled graphs are made once per model and process."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cfbi_model import InferenceConfig
from cfbi_model.build import load_model, shipped_weights
from cfbi_model.data.synthetic import SyntheticConfig, render_video
from cfbi_model.inference import VideoSegmenter
from cfbi_model.inference.segmenter import compiled
from cfbi_model.modeling import precision

pytestmark = pytest.mark.usefixtures("single_thread_module")


def _segment(model, frames, labels, **config):
    segmenter = VideoSegmenter(model, **config)
    return [segmenter.step(frames[0], labels[0])] + [segmenter.step(frame) for frame in frames[1:]]


@pytest.fixture(scope="module")
def clip():
    return render_video(5, SyntheticConfig(height=72, width=96, num_frames=(5, 5), max_objects=3))


@pytest.fixture(scope="module")
def float32_results(clip):
    return _segment(load_model(shipped_weights()), *clip)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_16_bit_inference_agrees_with_float32(clip, float32_results, dtype):
    model = load_model(shipped_weights())
    results = _segment(model, *clip, precision=dtype)
    agreement = np.mean([np.mean(a.labels == b.labels) for a, b in zip(results, float32_results)])
    assert agreement >= 0.99, agreement
    assert all(r.probs.dtype == torch.float32 and torch.isfinite(r.probs).all() for r in results)
    assert next(model.parameters()).dtype == torch.float32  # weights stay float32; autocast computes in 16 bits
    assert model.feature_extracter.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_auto_follows_the_hardware(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr("cfbi_model.runtime.cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    assert precision.compute_dtype("auto", cpu) == torch.bfloat16
    monkeypatch.setattr("cfbi_model.runtime.cpu_flags", lambda: frozenset({"avx2", "amx_bf16"}))
    assert precision.compute_dtype("auto", cpu) == torch.bfloat16
    monkeypatch.setattr("cfbi_model.runtime.cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert precision.compute_dtype("auto", cpu) is None  # float32 where bf16 has no hardware support
    assert precision.compute_dtype("float32", cpu, amp=True) is None  # amp is CUDA-only
    assert precision.compute_dtype("float16", cpu) == torch.float16
    with pytest.raises(ValueError, match="precision must be one of"):
        InferenceConfig(precision="int8")


def test_compile_once_per_model_and_process(clip, float32_results):
    """Four videos of four sizes through fresh VideoSegmenters of one model: the compiled functions are made
    once; the next two sizes recompile parts with dynamic shapes, the fourth compiles nothing new."""
    from torch._dynamo.utils import counters

    model = load_model(shipped_weights())
    frames, labels = clip
    results = _segment(model, frames, labels, compile=True)
    first = compiled(model)
    agreement = np.mean([np.mean(a.labels == b.labels) for a, b in zip(results, float32_results)])
    assert agreement >= 0.99, agreement
    graphs = []
    for height, width in ((56, 80), (40, 64), (48, 96)):
        small = [np.ascontiguousarray(f[:height, :width]) for f in frames[:3]]
        _segment(model, small, [lab[:height, :width] for lab in labels], compile=True)
        graphs.append(counters["stats"]["unique_graphs"])
    assert compiled(model) is first
    assert graphs[2] == graphs[1], f"a fourth frame size compiled new graphs: {graphs}"
