"""CFBI+ network: state dict = the released one, building blocks, end-to-end shapes, checkpoint loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cfbi_model import CFBIPlus, CheckpointError, get_config, load_checkpoint
from cfbi_model.config import config_names
from cfbi_model.modeling.attention import atrous_subsampled
from cfbi_model.modeling.layers import GCT, FrozenBatchNorm2d

pytestmark = pytest.mark.usefixtures("single_thread_module")

SPEC = Path(__file__).parent / "data" / "cfbip_r101_state_dict.txt"


def read_spec() -> list[tuple[str, tuple[int, ...]]]:
    entries = []
    for line in SPEC.read_text().splitlines():
        if line.strip():
            name, shape = line.split()
            entries.append((name, tuple(int(x) for x in shape.split("x"))))
    return entries


@pytest.fixture(scope="module")
def r101() -> CFBIPlus:
    torch.manual_seed(0)
    return CFBIPlus("resnet101")


@pytest.fixture(scope="module")
def small() -> CFBIPlus:
    torch.manual_seed(0)
    return CFBIPlus("small").eval()


# ---------------------------------------------------------------------------------------------- state dict
def test_state_dict_equals_spec(r101):
    spec = read_spec()
    assert len(spec) == 762
    mine = [(name, tuple(t.shape)) for name, t in r101.state_dict().items()]
    missing = sorted(set(spec) - set(mine))
    extra = sorted(set(mine) - set(spec))
    assert not missing and not extra, f"missing {missing[:5]}, unexpected {extra[:5]}"
    assert mine == spec  # same order too


def test_resnet101_structure_facts(r101):
    cfg = r101.config
    assert cfg.ensembler_in_dims() == (783, 783, 781)
    assert cfg.local_window_order(0) == (24, 4, 8, 12, 16, 20)
    assert cfg.local_window_order(1) == (12, 2, 4, 6, 8, 10)
    assert cfg.local_window_order(2) == (10, 2, 4, 6, 8)
    assert cfg.matching_dims == (32, 64, 128) and cfg.global_atrous == (2, 1, 1) and cfg.local_atrous == (2, 1, 1)
    # Frozen BN everywhere in the feature extractor, no trainable BN and no num_batches_tracked.
    bns = [m for m in r101.feature_extracter.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(bns) == 104 + 5 + 1 + 3  # backbone, ASPP branches + pool, ASPP fuse, decoder
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in r101.modules())
    layer4 = r101.feature_extracter.backbone.layer4
    assert [b.conv2.dilation[0] for b in layer4] == [2, 4, 8]
    assert [b.conv2.stride[0] for b in r101.feature_extracter.backbone.layer2][:1] == [2]
    head = r101.dynamic_seghead
    assert head.bn_sc.num_groups == 16 and head.bn1.num_groups == 32 and head.ASPP.aspp1.bn.num_groups == 32
    assert head.S2_layer1.conv2.stride == (2, 2) and head.S3_layer1.conv2.stride == (2, 2)
    assert [head.S2_layer2.conv2.dilation[0], head.S2_layer3.conv2.dilation[0]] == [2, 4]
    assert all(m.num_groups == 32 for m in r101.fpn.modules() if isinstance(m, torch.nn.GroupNorm))


def test_configs():
    assert config_names() == ["resnet101", "small"]
    assert get_config().name == "resnet101"
    assert get_config("small", atrous_attention_quirk=False).atrous_attention_quirk is False
    with pytest.raises(ValueError, match="unknown model configuration"):
        get_config("nope")
    with pytest.raises(ValueError, match="ascending"):
        get_config("small", local_windows=((8, 4), (2,), (2,)))
    with pytest.raises(ValueError, match="matching_dims"):
        get_config("small", matching_dims=(8, 16, 64))


# ---------------------------------------------------------------------------------------------- blocks
def test_frozen_batchnorm_equals_eval_batchnorm():
    g = torch.Generator().manual_seed(1)
    bn = torch.nn.BatchNorm2d(6).eval()
    frozen = FrozenBatchNorm2d(6)
    for name in ("weight", "bias", "running_mean"):
        value = torch.randn(6, generator=g)
        getattr(bn, name).data.copy_(value)
        getattr(frozen, name).copy_(value)
    var = torch.rand(6, generator=g) + 0.5
    bn.running_var.copy_(var)
    frozen.running_var.copy_(var)
    x = torch.randn(2, 6, 5, 7, generator=g)
    torch.testing.assert_close(frozen(x), bn(x))
    assert list(frozen.state_dict()) == ["weight", "bias", "running_mean", "running_var"]
    assert not list(frozen.parameters())


def test_gct_formula():
    g = torch.Generator().manual_seed(2)
    gct = GCT(5)
    with torch.no_grad():
        for p in gct.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    x = torch.randn(3, 5, 4, 6, generator=g)
    eps = 1e-5
    s = torch.sqrt((x**2).sum(dim=(2, 3), keepdim=True) + eps) * gct.alpha
    norm = gct.gamma / torch.sqrt((s**2).mean(dim=1, keepdim=True) + eps)
    expected = x * (1 + torch.tanh(s * norm + gct.beta))
    torch.testing.assert_close(gct(x), expected)
    assert torch.equal(GCT(5)(x), x)  # gamma = beta = 0 at initialisation: identity


def test_atrous_subsampled_does_not_mutate_and_keeps_small_labels():
    masks = torch.zeros(1, 2, 8, 8)
    masks[0, 0] = 1
    masks[0, 1, 1:3, 1:3] = 1  # 4 pixels
    masks[0, 0, 1:3, 1:3] = 0
    before = masks.clone()
    out = atrous_subsampled(masks, 2, min_matching_pixels=1)  # labels with <= 4 pixels keep everything
    assert torch.equal(masks, before)
    assert torch.equal(out[0, 1], masks[0, 1])
    assert out[0, 0, 0, 0] == 1 and out[0, 0, 0, 1] == 0 and out[0, 0, 1, 0] == 0 and out[0, 0, 2, 4] == 1
    out0 = atrous_subsampled(masks, 2, min_matching_pixels=0)
    assert out0[0, 1].sum() == 1  # only (2, 2) is on the grid


# ---------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("size", [(65, 65), (97, 113)])
def test_end_to_end_shapes_small(small, size):
    h, w = size
    g = torch.Generator().manual_seed(3)
    images = torch.randn(1, 3, h, w, generator=g)
    features = small.extract_features(images)
    grids = [tuple(e.shape[-2:]) for e in features.embeddings]
    assert grids == [
        ((h - 1) // 4 + 1, (w - 1) // 4 + 1),
        ((h - 1) // 8 + 1, (w - 1) // 8 + 1),
        ((h - 1) // 16 + 1, (w - 1) // 16 + 1),
    ]
    assert all(e.shape[1] == small.config.embedding_dim for e in features.embeddings)
    assert features.low_level.shape[1] == small.config.backbone.low_level_dim
    labels = torch.randint(0, 3, (1, h, w), generator=g)
    with torch.no_grad():
        logits = small(images, labels, images, labels, images, 3, output_size=(h, w))
    assert len(logits) == 1 and logits[0].shape == (3, h, w)
    assert torch.isfinite(logits[0]).all()


def test_forward_batch_with_different_label_counts_and_backward(small):
    small.train()
    try:
        g = torch.Generator().manual_seed(4)
        images = torch.randn(2, 3, 33, 49, generator=g)
        refs = torch.randn(2, 2, 3, 33, 49, generator=g)  # two reference frames per sample
        ref_labels = torch.randint(0, 3, (2, 2, 33, 49), generator=g)
        labels = torch.randint(0, 3, (2, 33, 49), generator=g)
        logits = small(refs, ref_labels, images, labels, images, [3, 2])
        assert [tuple(x.shape) for x in logits] == [(3, 9, 13), (2, 9, 13)]
        loss = sum(
            F.cross_entropy(x.unsqueeze(0), labels[i : i + 1, ::4, ::4].clamp(max=x.shape[0] - 1))
            for i, x in enumerate(logits)
        )
        loss.backward()
        for name in ("fg_bias", "bg_bias"):
            grad = getattr(small, name).grad
            assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
        assert small.dynamic_seghead.S1_IA1.IA.weight.grad.abs().sum() > 0
        assert all(b.grad is None for b in small.feature_extracter.buffers())
    finally:
        small.zero_grad(set_to_none=True)
        small.eval()


def test_forward_of_a_sequence_chains_the_current_frames(small):
    """The training forward over N current frames: frame t + 1 is matched against frame t, with its ground truth
    (teacher forcing) or the model's own argmax prediction; each frame equals a one-frame forward so chained."""
    g = torch.Generator().manual_seed(8)
    model = small.double()
    try:
        ref, prev = torch.randn(2, 3, 33, 49, generator=g, dtype=torch.float64).unbind(0)
        ref, prev = ref[None], prev[None]
        cur = torch.randn(1, 3, 3, 33, 49, generator=g, dtype=torch.float64)
        ref_labels, prev_labels = torch.randint(0, 3, (2, 1, 33, 49), generator=g)
        cur_labels = torch.randint(0, 3, (1, 3, 33, 49), generator=g)
        with torch.no_grad():
            for teacher in (cur_labels, None):
                sequence = model(
                    ref, ref_labels, prev, prev_labels, cur, 3, current_labels=teacher, output_size=(33, 49)
                )
                assert len(sequence) == 3 and all(len(frame) == 1 for frame in sequence)
                before, labels = prev, prev_labels
                for t in range(3):
                    single = model(ref, ref_labels, before, labels, cur[:, t], 3, output_size=(33, 49))
                    torch.testing.assert_close(sequence[t][0], single[0], rtol=1e-9, atol=1e-9)
                    before = cur[:, t]
                    labels = cur_labels[:, t] if teacher is not None else sequence[t][0].argmax(0)[None]
    finally:
        small.float()


def test_segment_rejects_bad_input(small):
    g = torch.Generator().manual_seed(5)
    feats = small.extract_features(torch.randn(1, 3, 33, 33, generator=g))
    refs = [e.unsqueeze(1) for e in small.matching_embeddings(feats)]
    ref_labels = [torch.zeros(1, 1, *e.shape[-2:], dtype=torch.long) for e in feats.embeddings]
    prev_labels = [x[:, 0] for x in ref_labels]
    with pytest.raises(ValueError, match="num_labels"):
        small.segment(feats, refs, ref_labels, list(feats.embeddings), prev_labels, [2, 2])
    with pytest.raises(ValueError, match="spatial size"):
        small.segment(feats, refs, ref_labels, list(feats.embeddings), [p[..., :-1] for p in prev_labels], 2)
    with pytest.raises(ValueError, match="4x reference"):
        small.segment(feats, [refs[0][:, :, :4]] + refs[1:], ref_labels, list(feats.embeddings), prev_labels, 2)
    with pytest.raises(ValueError, match="images"):
        small.extract_features(torch.randn(3, 33, 33))


# ---------------------------------------------------------------------------------------------- checkpoints
def _perturbed_state(model: CFBIPlus) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(6)
    return {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}


def _assert_loaded(model: CFBIPlus, state: dict[str, torch.Tensor]) -> None:
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_checkpoint_round_trip_bare(tmp_path):
    src = CFBIPlus("small")
    state = _perturbed_state(src)
    path = tmp_path / "bare.pth"
    torch.save(state, path)
    dst = CFBIPlus("small")
    assert load_checkpoint(dst, path) is dst
    _assert_loaded(dst, state)


def test_checkpoint_wrapped_with_module_prefix(tmp_path):
    state = _perturbed_state(CFBIPlus("small"))
    path = tmp_path / "official.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}, "optimizer": {"step": 3}}, path)
    dst = CFBIPlus("small")
    load_checkpoint(dst, str(path))
    _assert_loaded(dst, state)


def test_checkpoint_mismatch_lists_keys(tmp_path):
    state = CFBIPlus("small").state_dict()
    state.pop("fg_bias")
    state.pop("fpn.toplayer.0.weight")
    state["extra.weight"] = torch.zeros(2)
    state["bg_bias"] = torch.zeros(4, 1, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save({"state_dict": state}, path)
    model = CFBIPlus("small")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model, path)
    message = str(info.value)
    for text in (
        "missing keys (2)",
        "fg_bias",
        "fpn.toplayer.0.weight",
        "unexpected keys (1)",
        "extra.weight",
        "mis-shaped keys",
        "bg_bias: (4, 1, 1, 1) vs (3, 1, 1, 1)",
        "bad.pth",
    ):
        assert text in message, text
    assert info.value.missing == ["fg_bias", "fpn.toplayer.0.weight"]
    assert info.value.unexpected == ["extra.weight"]
    assert info.value.mismatched == [("bg_bias", (4, 1, 1, 1), (3, 1, 1, 1))]
    _assert_loaded(model, before)  # nothing was loaded


def test_checkpoint_of_other_config_and_unreadable_files(tmp_path):
    path = tmp_path / "small.pth"
    torch.save(CFBIPlus("small").state_dict(), path)
    with pytest.raises(CheckpointError, match="mis-shaped"):
        load_checkpoint(CFBIPlus(get_config("small", embedding_dim=64)), path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(CFBIPlus("small"), tmp_path / "missing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth"):
        load_checkpoint(CFBIPlus("small"), garbage)
    # weights_only=True: arbitrary pickled objects are refused.
    evil = tmp_path / "object.pth"
    torch.save({"state_dict": CFBIPlus("small").state_dict(), "obj": _Opaque()}, evil)
    with pytest.raises(CheckpointError, match="object.pth"):
        load_checkpoint(CFBIPlus("small"), evil)


class _Opaque:
    pass
