"""Configurations in checkpoints: build_model / load_model, the formats a checkpoint may have, and the defaults
of the command line taken from the configuration dataclasses."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys

import pytest
import torch

from cfbi_model import CFBIPlus, CheckpointError, InferenceConfig, ModelConfig, get_config
from cfbi_model.build import build_model, checkpoint_config, load_model, resolve_config, save_model, shipped_weights
from cfbi_model.cli import build_parser
from cfbi_model.cli._options import given_config_values, inference_config
from cfbi_model.config import ClipConfig, TrainConfig
from cfbi_model.training.recipes import recipe_train_config


def _equal_states(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_model_config_round_trip_through_a_weights_only_file(tmp_path):
    config = get_config("small", global_atrous=(1, 1, 1), local_windows=((2, 4), (2, 4), (2,)), epsilon=1e-3)
    path = tmp_path / "c.pth"
    torch.save({"model_config": config.to_dict()}, path)
    stored = torch.load(path, weights_only=True)["model_config"]
    assert ModelConfig.from_dict(stored) == config
    lists = dataclasses.asdict(config) | {"matching_dims": [8, 16, 32]}  # lists are accepted for tuples
    assert ModelConfig.from_dict(lists) == config
    with pytest.raises(ValueError, match="unknown field"):
        ModelConfig.from_dict({**stored, "depth": 3})


def test_load_model_rebuilds_the_exact_model_from_the_file(tmp_path):
    config = get_config("small", global_atrous=(1, 1, 1), atrous_attention_quirk=False)
    torch.manual_seed(0)
    model = build_model(config)
    path = tmp_path / "m.pth"
    save_model(model, path)
    loaded = load_model(path)
    assert loaded.config == config and not loaded.training
    assert _equal_states(model, loaded)
    # the named configuration alone would not be this model
    with pytest.raises(CheckpointError, match="disagrees") as info:
        load_model(path, config="small")
    assert "global_atrous" in str(info.value) and "atrous_attention_quirk" in str(info.value)
    assert load_model(path, config=config).config == config


def test_checkpoint_formats(tmp_path):
    model = CFBIPlus("small")
    # an earlier version of this package named the configuration
    old = tmp_path / "old.pth"
    torch.save({"state_dict": model.state_dict(), "model_config": "small"}, old)
    assert load_model(old).config == get_config("small")
    # the authors' files and bare state dicts hold none: the released configuration, unless one is given
    bare = tmp_path / "bare.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, bare)
    assert checkpoint_config(torch.load(bare, weights_only=True)) is None
    assert resolve_config(None, None) == get_config("resnet101")
    with pytest.raises(CheckpointError, match="missing keys"):  # small weights into the resnet101 default
        load_model(bare)
    assert _equal_states(load_model(bare, config="small"), model)
    broken = tmp_path / "broken.pth"
    torch.save({"state_dict": model.state_dict(), "model_config": {"name": "small", "width": 3}}, broken)
    with pytest.raises(CheckpointError, match="invalid model_config"):
        load_model(broken)


def test_shipped_weights_hold_their_config():
    contents = torch.load(shipped_weights(), weights_only=True)
    assert isinstance(contents["model_config"], dict)
    assert load_model(shipped_weights()).config == get_config("small")


def _subparsers():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices


def test_inference_options_default_to_inference_config():
    parsers = _subparsers()
    args = parsers["segment"].parse_args(["--frames", "f", "--mask", "m.png", "--out", "o"])
    assert inference_config(args) == InferenceConfig()
    args = parsers["segment"].parse_args(
        [
            "--frames",
            "f",
            "--mask",
            "m.png",
            "--out",
            "o",
            "--flip",
            "--scales",
            "1",
            "1.3",
            "--min-matching-pixels",
            "100",
        ]
    )
    assert inference_config(args) == InferenceConfig(flip=True, scales=(1.0, 1.3), min_matching_pixels=100)
    assert inference_config(parsers["demo"].parse_args([])) == InferenceConfig()
    assert inference_config(parsers["evaluate"].parse_args([])) == InferenceConfig()
    train = parsers["train"].parse_args(["--data", "d"])
    assert inference_config(train, prefix="val-") == InferenceConfig()
    # the training options hold only what the command line gives; the rest are TrainConfig's / ClipConfig's
    assert given_config_values(train, TrainConfig) == {} and given_config_values(train, ClipConfig) == {}
    config, _ = recipe_train_config(None, **given_config_values(train, TrainConfig), clip={})
    assert config == TrainConfig()
    given = parsers["train"].parse_args(
        ["--crop", "65", "--short-edge", "0", "--clip-grad-norm", "0", "--warmup", "3", "--dtype", "float64"]
    )
    assert given_config_values(given, ClipConfig) == {"crop_size": (65, 65), "short_edge": None}
    assert given_config_values(given, TrainConfig) == {"clip_grad_norm": None, "warmup_steps": 3, "dtype": "float64"}


def test_parsing_the_command_line_imports_no_torch():
    """The parsers read the configurations and the recipes, which import neither torch nor the network."""
    code = "import sys; from cfbi_model.cli import build_parser; build_parser(); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("command", ["segment", "demo", "evaluate", "train"])
def test_help_shows_every_default(command):
    parser = _subparsers()[command]
    text = " ".join(parser.format_help().split())
    for action in parser._actions:
        if action.option_strings and action.dest != "help" and not action.required:
            if action.default is argparse.SUPPRESS:  # a configuration field's option: its help names the default
                assert "(default: " in action.help, action.option_strings
                continue
            assert f"(default: {action.default})" in text, (action.option_strings, text)
