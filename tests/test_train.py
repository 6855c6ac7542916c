"""Training: loss, schedule, a few steps lower the loss, exact resume, DDP (2 gloo processes), CLI."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config, tiny_train_args

from cfbi_model.data import collate_clips, davis_videos
from cfbi_model.training import Trainer, bootstrapped_cross_entropy, learning_rate_factor, top_k_fraction

DATA_SEED = 2  # of conftest's data_root fixture


def test_bootstrapped_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(3, 9, 11)
    target = torch.randint(0, 3, (9, 11))
    target[0, :5] = 255
    full = bootstrapped_cross_entropy(logits, target, 1.0)
    assert torch.allclose(full, F.cross_entropy(logits[None], target[None], ignore_index=255))
    per_pixel = F.cross_entropy(logits[None], target[None], ignore_index=255, reduction="none")[0][target != 255]
    k = int(0.3 * per_pixel.numel())
    assert torch.allclose(
        bootstrapped_cross_entropy(logits, target, 0.3), per_pixel.sort(descending=True).values[:k].mean()
    )
    assert top_k_fraction(0, 0.15, 100) == 1.0 and top_k_fraction(50, 0.15, 100) == pytest.approx(0.575)
    assert top_k_fraction(500, 0.15, 100) == pytest.approx(0.15)
    assert learning_rate_factor(0, 100, 10, 0.9, 0.1, 1e-5) == pytest.approx(0.1)
    assert learning_rate_factor(10, 100, 10, 0.9, 0.1, 1e-5) == pytest.approx(1.0)
    assert learning_rate_factor(99, 100, 10, 0.9, 0.1, 1e-5) < 0.05


def test_steps_lower_the_loss_on_a_fixed_batch(data_root, tmp_path):
    torch.set_num_threads(1)
    videos = davis_videos(data_root, "train")
    config = tiny_config(steps=100, batch_size=2, lr=0.02, warmup_steps=1, sequential_start=1000, top_k_percent=1.0)
    trainer = Trainer(config, videos, str(tmp_path), progress=False, tensorboard=False)
    batch = collate_clips([trainer.dataset[0], trainer.dataset[1]])
    losses = [trainer.train_step(batch)["loss"] for _ in range(10)]
    assert all(np.isfinite(losses))
    assert min(losses[-3:]) < 0.7 * losses[0], losses
    # the backbone BN stays frozen (no trainable BN parameters, running statistics untouched)
    assert not any(
        "bn" in name
        for name, p in trainer.model.named_parameters()
        if p.requires_grad and "feature_extracter.backbone" in name
    )


def _params(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resume_is_exact(data_root, tmp_path):
    torch.set_num_threads(1)
    videos = davis_videos(data_root, "train")
    config = tiny_config(steps=4, checkpoint_every=2)
    straight = Trainer(config, videos, str(tmp_path / "a"), progress=False, tensorboard=False)
    straight.train()
    first = Trainer(config, videos, str(tmp_path / "b"), progress=False, tensorboard=False)
    first.train(until=2)
    assert os.path.isfile(first.checkpoint_path)
    torch.manual_seed(1234)  # the resumed run restores the RNG state itself
    resumed = Trainer(config, videos, str(tmp_path / "b"), progress=False, tensorboard=False)
    resumed.train(resume=True)
    assert resumed.step == 4
    a, b = _params(straight.model), _params(resumed.model)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    sa, sb = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    for key in sa:
        assert torch.equal(sa[key]["momentum_buffer"], sb[key]["momentum_buffer"])
    # the checkpoint also loads as a plain model checkpoint
    from cfbi_model.build import load_model

    model = load_model(resumed.checkpoint_path)
    assert model.config.name == "small"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, root: str, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    import torch.distributed as dist

    videos = davis_videos(root, "train")
    trainer = Trainer(tiny_config(steps=2), videos, out, progress=False, tensorboard=False)
    assert trainer.world_size == world
    trainer.train()
    torch.save(_params(trainer.model), os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_ddp_two_gloo_processes_keep_replicas_identical(data_root, tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, _free_port(), str(data_root), str(tmp_path)), nprocs=2, join=True)
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    initial = _params(
        Trainer(
            tiny_config(), davis_videos(data_root, "train"), str(tmp_path / "x"), progress=False, tensorboard=False
        ).model
    )
    changed = 0
    for key in a:
        assert torch.equal(a[key], b[key]), key
        changed += int(not torch.equal(a[key], initial[key]))
    assert changed > 0
    assert torch.load(tmp_path / "checkpoint.pth", weights_only=True)["step"] == 2


def test_cli_train_resume_and_evaluate_checkpoint(data_root, tmp_path, capsys):
    from cfbi_model.cli import main

    out = tmp_path / "run"
    common = [
        *tiny_train_args(data_root),
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    assert main(common + ["--steps", "2"]) == 0
    # a longer schedule is a changed setting: --allow-changes
    assert (
        main(common + ["--steps", "3", "--resume", "--allow-changes", "--val-every", "3", "--val-max-frames", "4"]) == 0
    )
    state = torch.load(out / "checkpoint.pth", weights_only=True)
    assert state["step"] == 3 and state["model_config"]["name"] == "small"
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(out / "checkpoint.pth"),
                "--data",
                str(data_root),
                "--split",
                "val",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    assert "J&F-Mean" in capsys.readouterr().out
    assert main(["train", "--config", "small", "--data", str(tmp_path / "missing"), "--steps", "1"]) == 1


def test_tensorboard_logs_the_history(data_root, tmp_path):
    """The TensorBoard event file holds the logged scalars (equal to the returned history) and the overlay."""
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    trainer = Trainer(
        tiny_config(steps=10, log_every=1),
        davis_videos(data_root, "train"),
        str(tmp_path),
        progress=False,
        tensorboard=True,
    )
    history = trainer.train()
    events = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == [r["step"] for r in history] == list(range(1, 11))
    np.testing.assert_allclose([e.value for e in losses], [r["loss"] for r in history], rtol=1e-6)
    np.testing.assert_allclose([e.value for e in events.Scalars("train/lr")], [r["lr"] for r in history], rtol=1e-6)
    overlays = events.Images("train/overlay")
    assert [e.step for e in overlays] == [10]
    assert overlays[0].height > 65 and overlays[0].width > 65  # ground-truth row over prediction row


def test_torchrun_two_processes(data_root, tmp_path):
    """`torchrun --nproc_per_node=2 -m cfbi_model.cli train`: both ranks join one gloo group and train."""
    import subprocess
    import sys

    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port",
        str(_free_port()),
        "-m",
        "cfbi_model.cli",
        *tiny_train_args(data_root),
        "--threads",
        "1",
        "--steps",
        "2",
        "--log-every",
        "1",
        "--out",
        str(out),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    state = torch.load(out / "checkpoint.pth", weights_only=True)
    assert state["step"] == 2
    assert not any(k.startswith("module.") for k in state["state_dict"])  # saved unwrapped: loads without DDP
