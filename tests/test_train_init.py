"""--init: explicit key mapping from the usual pretrained files, checked with generated state dicts that have
the names and shapes of the real ones (torchvision ResNet-18/50/101, DeepLabV3+ in the jfzhang95 layout,
which the authors' state dict follows, and in the VainF layout, CFBI+ checkpoints)."""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict

import pytest
import torch
from conftest import tiny_train_args

from cfbi_model.build import CheckpointError, build_model, save_model
from cfbi_model.config import BackboneConfig, get_config
from cfbi_model.training import initialise_from
from cfbi_model.training.init import detect_layout

HERE = os.path.dirname(os.path.abspath(__file__))
SPEC = os.path.join(HERE, "data", "cfbip_r101_state_dict.txt")


def _bn(state: dict, name: str, channels: int, g: torch.Generator) -> None:
    state[f"{name}.weight"] = torch.rand(channels, generator=g) + 0.5
    state[f"{name}.bias"] = torch.randn(channels, generator=g)
    state[f"{name}.running_mean"] = torch.randn(channels, generator=g)
    state[f"{name}.running_var"] = torch.rand(channels, generator=g) + 0.5
    state[f"{name}.num_batches_tracked"] = torch.tensor(1000)  # as torchvision / torch.nn.BatchNorm2d save it


def torchvision_resnet(
    block: str,
    layers: tuple[int, int, int, int],
    widths=(64, 128, 256, 512),
    stem: int = 64,
    classes: int = 1000,
    prefix: str = "",
    fc: bool = True,
    seed: int = 0,
) -> OrderedDict:
    """A state dict with the names and shapes of torchvision.models.resnet{18,50,101}(): conv1, bn1,
    layer1..4 (BasicBlock: conv1/2 3x3; Bottleneck: conv1 1x1, conv2 3x3, conv3 1x1 x4), downsample.0/1, fc."""
    g = torch.Generator().manual_seed(seed)
    state: OrderedDict = OrderedDict()
    expansion = 4 if block == "bottleneck" else 1
    state[f"{prefix}conv1.weight"] = torch.randn(stem, 3, 7, 7, generator=g)
    _bn(state, f"{prefix}bn1", stem, g)
    inplanes = stem
    for index, (count, planes) in enumerate(zip(layers, widths), start=1):
        for b in range(count):
            name = f"{prefix}layer{index}.{b}"
            stride = 2 if index in (2, 3, 4) and b == 0 else 1
            out = planes * expansion
            if block == "bottleneck":
                state[f"{name}.conv1.weight"] = torch.randn(planes, inplanes, 1, 1, generator=g)
                _bn(state, f"{name}.bn1", planes, g)
                state[f"{name}.conv2.weight"] = torch.randn(planes, planes, 3, 3, generator=g)
                _bn(state, f"{name}.bn2", planes, g)
                state[f"{name}.conv3.weight"] = torch.randn(out, planes, 1, 1, generator=g)
                _bn(state, f"{name}.bn3", out, g)
            else:
                state[f"{name}.conv1.weight"] = torch.randn(planes, inplanes, 3, 3, generator=g)
                _bn(state, f"{name}.bn1", planes, g)
                state[f"{name}.conv2.weight"] = torch.randn(planes, planes, 3, 3, generator=g)
                _bn(state, f"{name}.bn2", planes, g)
            if b == 0 and (stride != 1 or inplanes != out):
                state[f"{name}.downsample.0.weight"] = torch.randn(out, inplanes, 1, 1, generator=g)
                _bn(state, f"{name}.downsample.1", out, g)
            inplanes = out
    if fc:
        state["fc.weight"] = torch.randn(classes, inplanes, generator=g)
        state["fc.bias"] = torch.randn(classes, generator=g)
    return state


def _trunk_equal(model, state: dict, prefix: str = "") -> int:
    target = model.state_dict()
    checked = 0
    for key, value in state.items():
        if key.startswith(prefix) and not key.endswith("num_batches_tracked") and not key.startswith("fc."):
            assert torch.equal(target["feature_extracter.backbone." + key[len(prefix) :]], value), key
            checked += 1
    return checked


def _untouched(model, before: dict, part: str) -> None:
    for key, value in model.state_dict().items():
        if key.startswith(part):
            assert torch.equal(value, before[key]), key


SMALL_AS_TORCHVISION = dict(block="basic", layers=(1, 1, 1, 1), widths=(16, 32, 64, 128), stem=16)


def test_torchvision_resnet_into_the_small_trunk(tmp_path):
    model = build_model("small")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = torchvision_resnet(**SMALL_AS_TORCHVISION)
    torch.save(state, tmp_path / "resnet.pth")
    summary = initialise_from(model, tmp_path / "resnet.pth")
    trunk = sum(1 for k in model.state_dict() if k.startswith("feature_extracter.backbone."))
    assert _trunk_equal(model, state) == trunk
    digest = hashlib.sha256((tmp_path / "resnet.pth").read_bytes()).hexdigest()
    assert f"(torchvision ResNet): tensors loaded: trunk {trunk}/{trunk}, ASPP 0/" in summary
    assert summary.endswith(f"; sha256 {digest}")
    assert "unused from the file: fc.weight, fc.bias" in summary and "\n" not in summary
    _untouched(model, before, "feature_extracter.aspp.")
    _untouched(model, before, "fpn.")


@pytest.mark.parametrize(
    "name, block, layers, widths_config",
    [
        ("resnet101", "bottleneck", (3, 4, 23, 3), {}),
        ("resnet50", "bottleneck", (3, 4, 6, 3), {"layers": (3, 4, 6)}),
        ("resnet18", "basic", (2, 2, 2, 2), {"block": "basic", "layers": (2, 2, 2), "multi_grid": (1, 1)}),
    ],
)
def test_torchvision_resnets_of_the_real_sizes(tmp_path, name, block, layers, widths_config):
    """ResNet-101 fits `resnet101`; ResNet-50 / 18 fit configurations with their depth (layer4 has one block
    per multi-grid entry)."""
    config = (
        get_config("resnet101")
        if not widths_config
        else get_config("resnet101", backbone=BackboneConfig(**widths_config))
    )
    model = build_model(config)
    state = torchvision_resnet(block, layers)
    torch.save(state, tmp_path / f"{name}.pth")
    summary = initialise_from(model, tmp_path / f"{name}.pth")
    trunk = sum(1 for k in model.state_dict() if k.startswith("feature_extracter.backbone."))
    assert _trunk_equal(model, state) == trunk and f"trunk {trunk}/{trunk}" in summary


def _spec_names() -> list[tuple[str, tuple[int, ...]]]:
    out = []
    with open(SPEC) as handle:
        for line in handle:
            name, shape = line.split()
            out.append((name, tuple(int(s) for s in shape.split("x"))))
    return out


def test_deeplabv3plus_jfzhang95_layout_resnet101(tmp_path):
    """{'state_dict': backbone.*, aspp.*, decoder.*} with BatchNorm2d's num_batches_tracked and the 21-class
    classifier decoder.last_conv.8, names and shapes from the released CFBI+ state dict's feature extractor."""
    g = torch.Generator().manual_seed(1)
    state = OrderedDict()
    for name, shape in _spec_names():
        if name.startswith("feature_extracter."):
            state[name[len("feature_extracter.") :]] = torch.randn(shape, generator=g)
            if name.endswith("running_var"):
                state[name[len("feature_extracter.") :].replace("running_var", "num_batches_tracked")] = torch.tensor(
                    30000
                )
    state["decoder.last_conv.8.weight"] = torch.randn(21, 256, 1, 1, generator=g)
    state["decoder.last_conv.8.bias"] = torch.randn(21, generator=g)
    torch.save({"epoch": 50, "state_dict": state, "best_pred": 0.78}, tmp_path / "deeplab-resnet.pth.tar")
    model = build_model("resnet101")
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("feature_extracter.")}
    summary = initialise_from(model, tmp_path / "deeplab-resnet.pth.tar")
    target = model.state_dict()
    for key, value in state.items():
        if "num_batches_tracked" not in key and not key.startswith("decoder.last_conv.8."):
            assert torch.equal(target["feature_extracter." + key], value), key
    assert "(DeepLabV3+, jfzhang95 layout)" in summary and "ASPP 30/30" in summary and "decoder 15/15" in summary
    assert "unused from the file: decoder.last_conv.8.weight, decoder.last_conv.8.bias" in summary
    for key, value in before.items():
        assert torch.equal(target[key], value), key
    assert detect_layout({"backbone.layer1.0.conv1.weight": torch.zeros(1)}) == "deeplabv3plus"


def vainf_deeplabv3plus(model, classes: int = 21, seed: int = 2) -> OrderedDict:
    """{'model_state': ...} of VainF/DeepLabV3Plus-Pytorch's deeplabv3plus_resnet*: backbone.* (torchvision
    names), classifier.aspp.convs.0-4 (1x1, three 3x3, pooling at index 1/2), classifier.aspp.project.0/1,
    classifier.project.0/1 (low-level 48 channels), classifier.classifier.0/1 (3x3 on [low, aspp]) and .3."""
    cfg = model.config.backbone
    g = torch.Generator().manual_seed(seed)
    state = OrderedDict()
    for key, value in torchvision_resnet(
        cfg.block, (*cfg.layers, len(cfg.multi_grid)), cfg.widths, cfg.stem_width, fc=False, seed=seed
    ).items():
        state["backbone." + key] = value
    c_in, c, low = cfg.out_dim, cfg.aspp_dim, cfg.decoder_low_dim
    state["classifier.project.0.weight"] = torch.randn(low, cfg.low_level_dim, 1, 1, generator=g)
    _bn(state, "classifier.project.1", low, g)
    state["classifier.aspp.convs.0.0.weight"] = torch.randn(c, c_in, 1, 1, generator=g)
    _bn(state, "classifier.aspp.convs.0.1", c, g)
    for i in (1, 2, 3):
        state[f"classifier.aspp.convs.{i}.0.weight"] = torch.randn(c, c_in, 3, 3, generator=g)
        _bn(state, f"classifier.aspp.convs.{i}.1", c, g)
    state["classifier.aspp.convs.4.1.weight"] = torch.randn(c, c_in, 1, 1, generator=g)
    _bn(state, "classifier.aspp.convs.4.2", c, g)
    state["classifier.aspp.project.0.weight"] = torch.randn(c, 5 * c, 1, 1, generator=g)
    _bn(state, "classifier.aspp.project.1", c, g)
    state["classifier.classifier.0.weight"] = torch.randn(cfg.decoder_dim, low + c, 3, 3, generator=g)
    _bn(state, "classifier.classifier.1", cfg.decoder_dim, g)
    state["classifier.classifier.3.weight"] = torch.randn(classes, cfg.decoder_dim, 1, 1, generator=g)
    state["classifier.classifier.3.bias"] = torch.randn(classes, generator=g)
    return state


def test_deeplabv3plus_vainf_layout(tmp_path):
    model = build_model("small")
    state = vainf_deeplabv3plus(model)
    torch.save({"cur_itrs": 30000, "model_state": state, "best_score": 0.77}, tmp_path / "best_deeplabv3plus.pth")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    summary = initialise_from(model, tmp_path / "best_deeplabv3plus.pth")
    target = model.state_dict()
    assert _trunk_equal(model, state, prefix="backbone.") > 0
    pairs = {
        "feature_extracter.aspp.aspp1.atrous_conv.weight": "classifier.aspp.convs.0.0.weight",
        "feature_extracter.aspp.aspp3.atrous_conv.weight": "classifier.aspp.convs.2.0.weight",
        "feature_extracter.aspp.aspp4.bn.running_var": "classifier.aspp.convs.3.1.running_var",
        "feature_extracter.aspp.global_avg_pool.1.weight": "classifier.aspp.convs.4.1.weight",
        "feature_extracter.aspp.global_avg_pool.2.bias": "classifier.aspp.convs.4.2.bias",
        "feature_extracter.aspp.conv1.weight": "classifier.aspp.project.0.weight",
        "feature_extracter.aspp.bn1.weight": "classifier.aspp.project.1.weight",
        "feature_extracter.decoder.conv1.weight": "classifier.project.0.weight",
        "feature_extracter.decoder.bn1.running_mean": "classifier.project.1.running_mean",
        "feature_extracter.decoder.last_conv.1.weight": "classifier.classifier.1.weight",
    }
    for ours, theirs in pairs.items():
        assert torch.equal(target[ours], state[theirs]), ours
    low = model.config.backbone.decoder_low_dim
    first = state["classifier.classifier.0.weight"]  # their input order is [low-level, ASPP]
    assert torch.equal(
        target["feature_extracter.decoder.last_conv.0.weight"], torch.cat([first[:, low:], first[:, :low]], dim=1)
    )
    assert torch.equal(
        target["feature_extracter.decoder.last_conv.4.weight"], before["feature_extracter.decoder.last_conv.4.weight"]
    )
    assert "(DeepLabV3+, VainF layout)" in summary and "ASPP 30/30" in summary and "decoder 10/15" in summary
    assert "not loaded: feature_extracter.decoder.last_conv.4.weight" in summary
    assert "unused from the file: classifier.classifier.3.weight, classifier.classifier.3.bias" in summary


def test_cfbi_checkpoints_ours_and_the_authors(tmp_path):
    source = build_model("small")
    torch.manual_seed(7)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p))
    save_model(source, tmp_path / "ours.pth")
    torch.save({"state_dict": {"module." + k: v for k, v in source.state_dict().items()}}, tmp_path / "authors.pth")
    for name in ("ours.pth", "authors.pth"):
        model = build_model("small")
        summary = initialise_from(model, tmp_path / name)
        for key, value in source.state_dict().items():
            assert torch.equal(model.state_dict()[key], value), key
        assert "(CFBI+)" in summary and "unused" not in summary and "not loaded" not in summary
    other = build_model(get_config("small", fpn_gn_groups=4))
    with pytest.raises(CheckpointError, match="holds model configuration 'small'.*fpn_gn_groups"):
        initialise_from(other, tmp_path / "ours.pth")


def test_errors_are_one_line_and_name_the_key(tmp_path):
    big = torchvision_resnet("basic", (2, 2, 2, 2))  # ResNet-18 shapes into the narrow small trunk
    torch.save(big, tmp_path / "resnet18.pth")
    with pytest.raises(CheckpointError) as error:
        initialise_from(build_model("small"), tmp_path / "resnet18.pth")
    message = str(error.value)
    assert "\n" not in message
    assert (
        "conv1.weight has shape (64, 3, 7, 7) but the model's feature_extracter.backbone.conv1.weight has "
        "(16, 3, 7, 7)" in message
    )
    torch.save({"state_dict": {"embedding.weight": torch.zeros(3)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="unrecognised weights layout"):
        initialise_from(build_model("small"), tmp_path / "other.pth")
    torch.save({"weights": os.getcwd}, tmp_path / "code.pth")  # unpickling it would import a function
    with pytest.raises(CheckpointError, match="--init: checkpoint .* holds Python objects") as error:
        initialise_from(build_model("small"), tmp_path / "code.pth")
    assert "\n" not in str(error.value) and "weights_only=False" not in str(error.value)
    with pytest.raises(CheckpointError, match="is a directory"):
        initialise_from(build_model("small"), tmp_path)


def test_fine_tune_starts_from_the_exact_weights(tmp_path):
    """A run with init starts from the file's weights (step 0), prints the summary, and then trains."""
    from cfbi_model.config import ClipConfig
    from cfbi_model.data import davis_videos
    from cfbi_model.data.synthetic import SyntheticConfig, write_synthetic_davis
    from cfbi_model.training import TrainConfig, Trainer

    root = tmp_path / "data"
    write_synthetic_davis(
        root,
        num_train=2,
        num_val=1,
        seed=4,
        config=SyntheticConfig(height=72, width=96, num_frames=(8, 10), max_objects=2),
    )
    source = build_model("small")
    torch.manual_seed(11)
    with torch.no_grad():
        for p in source.parameters():
            p.mul_(0.5).add_(0.01 * torch.randn_like(p))
    save_model(source, tmp_path / "released.pth")
    config = TrainConfig(
        model="small",
        steps=1,
        batch_size=1,
        warmup_steps=1,
        num_workers=0,
        log_every=1,
        checkpoint_every=0,
        amp=False,
        init=str(tmp_path / "released.pth"),
        clip=ClipConfig(num_current=2, crop_size=(65, 65), short_edge=None),
    )
    messages = []
    trainer = Trainer(
        config,
        davis_videos(root, "train"),
        str(tmp_path / "run"),
        progress=False,
        tensorboard=False,
        on_message=messages.append,
    )
    trainer.train(until=0)
    for key, value in source.state_dict().items():
        assert torch.equal(trainer.model.state_dict()[key], value), key
    assert len(messages) == 1 and messages[0].startswith(f"--init {tmp_path / 'released.pth'} (CFBI+)")
    trainer.train()
    assert trainer.step == 1
    assert any(not torch.equal(trainer.model.state_dict()[k], v) for k, v in source.state_dict().items())


def test_cli_init(tmp_path, capsys):
    from cfbi_model.cli import main
    from cfbi_model.data.synthetic import SyntheticConfig, write_synthetic_davis

    root = tmp_path / "data"
    write_synthetic_davis(
        root,
        num_train=2,
        num_val=1,
        seed=4,
        config=SyntheticConfig(height=72, width=96, num_frames=(8, 10), max_objects=2),
    )
    torch.save(torchvision_resnet(**SMALL_AS_TORCHVISION), tmp_path / "resnet.pth")
    common = [
        *tiny_train_args(root),
        "--steps",
        "1",
        "--threads",
        "1",
        "--no-progress",
    ]
    assert main(common + ["--init", str(tmp_path / "resnet.pth"), "--out", str(tmp_path / "run")]) == 0
    digest = hashlib.sha256((tmp_path / "resnet.pth").read_bytes()).hexdigest()
    err = capsys.readouterr().err
    assert "(torchvision ResNet): tensors loaded: trunk " in err and f"; sha256 {digest}\n" in err
    # The run records what it started from: in its log and its checkpoint.
    first = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])
    assert first["init_sha256"] == digest
    assert torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)["init_sha256"] == digest
    torch.save(torchvision_resnet("basic", (2, 2, 2, 2)), tmp_path / "resnet18.pth")
    assert main(common + ["--init", str(tmp_path / "resnet18.pth"), "--out", str(tmp_path / "bad")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("cfbi train: error: --init ") and "conv1.weight has shape" in err[-1]
