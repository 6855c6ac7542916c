"""Training runs that survive interruptions: SIGTERM then --resume equals an uninterrupted run, checkpoints
that are damaged or of other settings are refused in one line, numbered checkpoints, the JSON-lines log,
gradient accumulation (also under DDP with 2 gloo processes), recipes and the --help defaults."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import tiny_config, tiny_train_args

from cfbi_model.build import CheckpointError
from cfbi_model.data import davis_videos
from cfbi_model.training import TrainConfig, Trainer, read_training_checkpoint
from cfbi_model.training.recipes import RECIPES, recipe_train_config
from cfbi_model.training.state import add_checksum, save_atomic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_SEED = 3  # of conftest's data_root fixture


def _cli(data_root, out, *extra: str) -> list[str]:
    return [
        *tiny_train_args(data_root),
        "--threads",
        "1",
        "--log-every",
        "1",
        "--out",
        str(out),
        *extra,
    ]


def _weights(path) -> dict:
    return torch.load(path, weights_only=True)["state_dict"]


def _lines(path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


# ------------------------------------------------------------------------------------------ interruption
def test_sigterm_then_resume_equals_an_uninterrupted_run(data_root, tmp_path):
    """A run killed with SIGTERM mid-way writes the checkpoint of its current step and exits 143 with one
    line; --resume then ends with exactly the weights, history and log of a run that was never stopped."""
    from cfbi_model.cli import main

    steps = ["--steps", "10", "--workers", "1"]
    straight = tmp_path / "straight"
    assert main(_cli(data_root, straight, *steps, "--no-progress")) == 0

    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "cfbi_model.cli", *_cli(data_root, run, *steps)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    log = run / "log.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be interrupted"
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("cfbi train: interrupted by SIGTERM at step ") and "--resume" in last, err[-2000:]
    stopped = int(last.split("at step ")[1].split(";")[0])
    assert 2 <= stopped < 10
    assert torch.load(run / "checkpoint.pth", weights_only=True)["step"] == stopped
    assert len(_lines(log)) == stopped
    # the progress bar says what it shows
    for label in ("steps", "loss=", "lr=", "ETA", "step/s"):
        assert label in err, label
    assert not [n for n in os.listdir(run) if ".tmp-" in n]

    assert main(_cli(data_root, run, *steps, "--resume", "--no-progress")) == 0
    a, b = _weights(straight / "checkpoint.pth"), _weights(run / "checkpoint.pth")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    drop_time = [{k: v for k, v in r.items() if k != "time"} for r in _lines(straight / "log.jsonl")]
    assert [{k: v for k, v in r.items() if k != "time"} for r in _lines(run / "log.jsonl")] == drop_time
    assert [r["step"] for r in drop_time] == list(range(1, 11))


def test_signal_in_process_raises_after_the_checkpoint(data_root, tmp_path):
    """Trainer.train itself: a SIGINT during a step stops after it with TrainingInterrupted."""
    from cfbi_model.training import TrainingInterrupted

    trainer = Trainer(
        tiny_config(steps=6),
        davis_videos(data_root, "train"),
        str(tmp_path),
        progress=False,
        tensorboard=False,
        on_log=lambda r: os.kill(os.getpid(), signal.SIGINT) if r["step"] == 2 else None,
    )
    with pytest.raises(TrainingInterrupted) as stop:
        trainer.train()
    assert stop.value.signum == signal.SIGINT and stop.value.step == 2
    assert read_training_checkpoint(trainer.checkpoint_path)["step"] == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    trainer.on_log = None
    trainer.train()  # the same trainer continues; the old signal does not stop it again
    assert trainer.step == 6


# ------------------------------------------------------------------------------------------ damaged files
@pytest.fixture(scope="module")
def finished_run(data_root, tmp_path_factory):
    from cfbi_model.cli import main

    out = tmp_path_factory.mktemp("finished")
    assert main(_cli(data_root, out, "--steps", "2", "--no-progress")) == 0
    return out


def _resume_error(data_root, out, capsys, *extra: str) -> str:
    from cfbi_model.cli import main

    capsys.readouterr()
    assert main(_cli(data_root, out, "--steps", "2", "--resume", "--no-progress", *extra)) == 1
    err = [
        line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("cfbi train: global batch")
    ]  # the account of batch and lr comes first
    assert len(err) == 1 and err[0].startswith("cfbi train: error: "), err
    return err[0]


def _copy_run(finished_run, tmp_path) -> tuple:
    out = tmp_path / "run"
    out.mkdir()
    data = (finished_run / "checkpoint.pth").read_bytes()
    return out, data


@pytest.mark.parametrize(
    "damage, expected",
    [
        ("truncated", "truncated or not a PyTorch checkpoint"),
        ("empty", "is empty (0 bytes)"),
        ("garbage", "truncated or not a PyTorch checkpoint"),
        ("directory", "is a directory"),
        ("flipped", "fails its checksum"),
        ("model-only", "holds model weights only"),
        ("other-model", "holds model configuration"),
    ],
)
def test_damaged_or_foreign_checkpoints_give_one_line(data_root, finished_run, tmp_path, capsys, damage, expected):
    out, data = _copy_run(finished_run, tmp_path)
    path = out / "checkpoint.pth"
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "garbage":
        path.write_bytes(os.urandom(4096))
    elif damage == "directory":
        path.mkdir()
    elif damage == "flipped":
        state = torch.load(finished_run / "checkpoint.pth", weights_only=True)
        key = max(state["state_dict"], key=lambda k: state["state_dict"][k].numel())
        needle = state["state_dict"][key].contiguous().numpy().tobytes()[:64]
        at = data.find(needle)
        assert at > 0
        flipped = bytearray(data)
        flipped[at + 10] ^= 0x01
        path.write_bytes(bytes(flipped))
    elif damage == "model-only":
        from cfbi_model.build import load_model, save_model

        save_model(load_model(finished_run / "checkpoint.pth"), path)
    elif damage == "other-model":
        state = torch.load(finished_run / "checkpoint.pth", weights_only=True)
        state["model_config"]["fpn_gn_groups"] = 4
        save_atomic(add_checksum(state), str(path))
    line = _resume_error(data_root, out, capsys)
    assert expected in line, line


def test_resume_with_changed_settings_refuses_or_warns(data_root, finished_run, tmp_path, capsys):
    from cfbi_model.cli import main

    out, data = _copy_run(finished_run, tmp_path)
    (out / "checkpoint.pth").write_bytes(data)
    line = _resume_error(data_root, out, capsys, "--lr", "0.5", "--seed", "3")
    assert "lr: 0.01 != 0.5" in line and "seed: 0 != 3" in line and "--allow-changes" in line
    # operational settings only warn; --allow-changes continues with the new lr from the checkpoint's step
    assert (
        main(
            _cli(
                data_root,
                out,
                "--steps",
                "3",
                "--resume",
                "--no-progress",
                "--lr",
                "0.5",
                "--allow-changes",
                "--log-every",
                "2",
            )
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "warning: resuming step 2 with changed settings: steps: 2 != 3; lr: 0.01 != 0.5" in err
    assert "resuming step 2 with: log_every: 1 != 2" in err
    state = read_training_checkpoint(str(out / "checkpoint.pth"))
    assert state["step"] == 3 and json.loads(state["train_config"])["lr"] == 0.5
    assert state["optimizer"]["param_groups"][0]["initial_lr"] == 0.5


def test_resume_reads_a_train_config_that_names_its_model(data_root, finished_run, tmp_path, capsys):
    """Checkpoints written before TrainConfig.model was a ModelConfig store the configuration's name."""
    from cfbi_model.cli import main
    from cfbi_model.config import ModelConfig, get_config

    state = torch.load(finished_run / "checkpoint.pth", weights_only=True)
    old = json.loads(state["train_config"])
    assert ModelConfig.from_dict(old["model"]) == get_config("small")
    old["model"] = "small"
    del old["dtype"]  # a field added since: it takes its default
    assert TrainConfig.from_dict(old) == TrainConfig.from_dict(json.loads(state["train_config"]))
    state["train_config"] = json.dumps(old)
    out = tmp_path / "run"
    out.mkdir()
    save_atomic(add_checksum({k: v for k, v in state.items() if k != "checksum"}), str(out / "checkpoint.pth"))
    assert main(_cli(data_root, out, "--steps", "3", "--resume", "--allow-changes", "--no-progress")) == 0
    assert "with changed settings: steps: 2 != 3\n" in capsys.readouterr().err  # the model is no change
    assert json.loads(read_training_checkpoint(str(out / "checkpoint.pth"))["train_config"])["model"]["name"] == "small"


def test_checksum_is_verified_and_temporaries_are_removed(data_root, finished_run, tmp_path):
    state = read_training_checkpoint(str(finished_run / "checkpoint.pth"))
    assert state["checksum_verified"]
    out, data = _copy_run(finished_run, tmp_path)
    (out / "checkpoint.pth").write_bytes(data)
    child = subprocess.Popen([sys.executable, "-c", "pass"])  # a process that has ended
    child.wait()
    stale = out / f".checkpoint.pth.tmp-{child.pid}"
    stale.write_bytes(b"half a checkpoint")
    alive = out / f".checkpoint.pth.tmp-{os.getppid()}"  # a running process's save is left alone
    alive.write_bytes(b"being written")
    messages = []
    trainer = Trainer(
        tiny_config(steps=3),
        davis_videos(data_root, "train"),
        str(out),
        progress=False,
        tensorboard=False,
        on_message=messages.append,
    )
    trainer.train(resume=True, allow_changes=True)
    assert not stale.exists() and alive.exists()
    assert any("left by an interrupted save" in m for m in messages)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_training_checkpoint(str(out / "missing.pth"))


def test_keep_numbered_checkpoints_and_jsonl_log(data_root, tmp_path):
    trainer = Trainer(
        tiny_config(steps=5, checkpoint_every=1, keep_checkpoints=2, log_every=2),
        davis_videos(data_root, "train"),
        str(tmp_path),
        progress=False,
        tensorboard=False,
    )
    history = trainer.train()
    numbered = sorted(n for n in os.listdir(tmp_path) if n.startswith("checkpoint-"))
    assert numbered == ["checkpoint-00000004.pth", "checkpoint-00000005.pth"]
    assert read_training_checkpoint(str(tmp_path / numbered[0]))["step"] == 4
    assert read_training_checkpoint(str(tmp_path / "checkpoint.pth"))["step"] == 5
    logged = _lines(tmp_path / "log.jsonl")
    assert [r["step"] for r in logged] == [r["step"] for r in history] == [2, 4, 5]
    assert [r["loss"] for r in logged] == [r["loss"] for r in history]


# ------------------------------------------------------------------------------------------ accumulation
def _params(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _without_dropout(trainer: Trainer) -> Trainer:
    # The ASPP's dropout draws its masks per batch shape: equal clips give equal gradients only without it.
    for module in trainer.model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return trainer


def test_accumulation_equals_a_larger_batch(data_root, tmp_path):
    """2 steps of a batch of 2 clips against 2 steps of 2 x 1 clip accumulated, in float64: the two sum the same
    gradients in another order, which in float32 flips ReLUs within rounding of 0 (docs/design.md, "Numerics");
    float64 agrees to about 1e-15 relative, so 1e-10 leaves room and still catches any real difference."""
    torch.set_num_threads(1)
    videos = davis_videos(data_root, "train")
    big = _without_dropout(
        Trainer(
            tiny_config(steps=2, batch_size=2, dtype="float64"),
            videos,
            str(tmp_path / "big"),
            progress=False,
            tensorboard=False,
        )
    )
    big.train()
    acc = _without_dropout(
        Trainer(
            tiny_config(steps=2, batch_size=1, accumulate=2, dtype="float64"),
            videos,
            str(tmp_path / "acc"),
            progress=False,
            tensorboard=False,
        )
    )
    acc.train()
    assert acc.micro_batches == 4 and big.micro_batches == 2
    a, b = _params(big.model), _params(acc.model)
    initial = _params(
        Trainer(tiny_config(dtype="float64"), videos, str(tmp_path / "x"), progress=False, tensorboard=False).model
    )
    moved = 0
    for key in a:
        assert a[key].dtype == torch.float64
        torch.testing.assert_close(a[key], b[key], rtol=1e-10, atol=1e-10)
        moved += int(not torch.equal(a[key], initial[key]))
    assert moved > 0
    np.testing.assert_allclose([r["loss"] for r in big.history], [r["loss"] for r in acc.history], rtol=1e-12)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_accumulate_worker(rank: int, world: int, port: int, root: str, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    trainer = _without_dropout(
        Trainer(
            tiny_config(steps=2, batch_size=1, accumulate=2, dtype="float64"),
            davis_videos(root, "train"),
            out,
            progress=False,
            tensorboard=False,
        )
    )
    synced_at = []

    def hook(state, bucket):
        synced_at.append(trainer.micro_batches)  # which micro-batch's backward reduces gradients
        return default_hooks.allreduce_hook(None, bucket)

    trainer.module.register_comm_hook(None, hook)
    trainer.train(until=1)
    after_one = _params(trainer.model)
    trainer.train()
    torch.save(
        {"params": after_one, "last": _params(trainer.model), "synced_at": sorted(set(synced_at))},
        os.path.join(out, f"rank{rank}.pt"),
    )
    dist.destroy_process_group()


def test_ddp_accumulation_two_gloo_processes(data_root, tmp_path):
    """2 processes x 1 clip x 2 micro-batches = one process with 4 clips, after the first and the second step,
    in float64 (float32 rounds the two decompositions differently; docs/design.md, "Numerics"); gradients are
    reduced only on the last micro-batch of each step, and the replicas stay identical."""
    import torch.multiprocessing as mp

    mp.spawn(_ddp_accumulate_worker, args=(2, _free_port(), str(data_root), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["synced_at"] == r1["synced_at"] == [2, 4]
    single = _without_dropout(
        Trainer(
            tiny_config(steps=2, batch_size=4, dtype="float64"),
            davis_videos(data_root, "train"),
            str(tmp_path / "one"),
            progress=False,
            tensorboard=False,
        )
    )
    single.train(until=1)
    after_one = _params(single.model)
    single.train()
    last = _params(single.model)
    for key in last:
        assert torch.equal(r0["last"][key], r1["last"][key]), key
        torch.testing.assert_close(r0["params"][key], after_one[key], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(r0["last"][key], last[key], rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------------------------------ recipes, help
def test_recipes_and_the_linear_scaling_rule():
    config, message = recipe_train_config("ytvos")
    assert (config.lr, config.steps, config.batch_size, config.clip.num_current, config.youtube_ratio) == (
        0.01,
        100_000,
        8,
        3,
        1.0,
    )
    assert config.clip.crop_size == (465, 465) and config.clip.scale_range == (1.0, 1.3)
    assert config.momentum == 0.9 and config.top_k_percent == 0.15 and config.recipe == "ytvos"
    config, message = recipe_train_config("ytvos", world_size=4)
    assert config.batch_size == 2 and config.lr == 0.01 and "global batch 8 = 4 process(es) x 2" in message
    config, message = recipe_train_config("ytvos", world_size=2, accumulate=2)
    assert config.batch_size == 2 and config.accumulate == 2 and config.lr == 0.01
    config, message = recipe_train_config("ytvos", world_size=1, batch_size=2)
    assert config.lr == pytest.approx(0.0025) and "0.01 x 2/8 (linear scaling)" in message
    config, message = recipe_train_config("ytvos", batch_size=2, lr=0.05, steps=10)
    assert config.lr == 0.05 and config.steps == 10 and "lr 0.05 (given)" in message
    davis, _ = recipe_train_config("davis", world_size=2)
    assert (davis.lr, davis.steps, davis.batch_size, davis.youtube_ratio) == (0.006, 50_000, 3, 0.0)
    tune, _ = recipe_train_config("davis-finetune", world_size=4)
    assert (tune.lr, tune.steps, tune.batch_size, tune.clip.num_current) == (0.01, 50_000, 2, 5)
    assert tune.youtube_ratio == pytest.approx(2 / 3)
    double, _ = recipe_train_config("ytvos-2x", world_size=4)
    assert (double.lr, double.batch_size) == (0.02, 4)
    assert set(RECIPES) == {"ytvos", "davis", "davis-finetune", "ytvos-2x"}
    with pytest.raises(ValueError, match="unknown recipe"):
        recipe_train_config("imagenet")


def test_cli_recipe_overridden_flag_by_flag(data_root, tmp_path, capsys):
    from cfbi_model.cli import main

    out = tmp_path / "run"
    assert main(_cli(data_root, out, "--recipe", "davis", "--steps", "1", "--no-progress")) == 0
    err = capsys.readouterr().err
    assert (
        "recipe davis: global batch 1 = 1 process(es) x 1 clip(s) x 1 accumulation (the paper's 6); "
        "lr 0.001 = 0.006 x 1/6 (linear scaling)" in err
    )
    config = json.loads(read_training_checkpoint(str(out / "checkpoint.pth"))["train_config"])
    assert config["recipe"] == "davis" and config["lr"] == pytest.approx(0.001) and config["model"]["name"] == "small"
    assert main(["train", "--recipe", "ytvos", "--data", str(data_root), "--out", str(tmp_path / "x")]) == 2
    assert "recipe ytvos trains on youtube: pass --data-youtube" in capsys.readouterr().err


def test_train_help_shows_every_default(capsys):
    from cfbi_model.cli import build_parser

    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    formatter = train._get_formatter()
    for action in train._actions:
        if action.dest == "help":
            continue
        assert "(default: " in formatter._get_help_string(action) % {"default": action.default}, action.dest
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # unwrapped
    for expected in (
        "total optimizer steps; a --recipe sets its own (default: 100000)",
        "--accumulate K",
        "--keep N",
        "--init PATH",
        "ytvos-2x",
    ):
        assert expected in text, expected


def test_training_speed_benchmark_runs(capsys):
    from benchmarks import training_speed

    assert training_speed.main(["--config", "small", "--crop", "65", "--num-current", "2", "--steps", "1"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["config"] == "small" and len(result["seconds"]) == 1 and result["steps_per_s"] > 0


# ------------------------------------------------------------------------------------------ bad data, --resume
def _copy_data(data_root, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    return root


def _cli_run(root, out, *extra: str) -> int:
    from cfbi_model.cli import main

    return main([*tiny_train_args(root), "--threads", "1", "--no-progress", "--out", str(out), *extra])


def test_resume_without_a_checkpoint_is_an_error(data_root, tmp_path, capsys):
    assert _cli_run(data_root, tmp_path / "typo", "--steps", "1", "--resume") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("cfbi train: error: --resume: no checkpoint in ") and "typo" in err[-1]
    assert not (tmp_path / "typo" / "checkpoint.pth").exists()


def test_a_mask_of_the_wrong_size_stops_the_run_before_its_first_step(data_root, tmp_path, capsys):
    from PIL import Image

    root = _copy_data(data_root, tmp_path)
    mask = sorted((root / "Annotations" / "480p").glob("synth_train_*/*.png"))[-1]
    with Image.open(mask) as image:
        image.crop((0, 0, image.width - 2, image.height)).save(mask)
    assert _cli_run(root, tmp_path / "run", "--steps", "3") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("cfbi train: error: mask ") and mask.name in err[-1] and "(WxH)" in err[-1]
    assert not (tmp_path / "run" / "checkpoint.pth").exists()  # no step was run


def test_a_data_error_during_the_run_writes_the_checkpoint(data_root, tmp_path, capsys):
    """A frame whose header reads but whose pixels do not (truncated): found when a clip draws it; the steps
    done are kept in the checkpoint and the error says where it is."""
    root = _copy_data(data_root, tmp_path)
    for frame in (root / "JPEGImages" / "480p").glob("synth_train_*/*.jpg"):
        data = frame.read_bytes()
        frame.write_bytes(data[: len(data) // 3])
    assert _cli_run(root, tmp_path / "run", "--steps", "3") == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("cfbi train: error: ") and "checkpoint of step 0 written" in last, last
    assert torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)["step"] == 0
