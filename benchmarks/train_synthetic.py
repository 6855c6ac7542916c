"""Train the small CFBI+ configuration on synthetic videos on the CPU and report J&F on held-out synthetic
videos against the copy-the-first-mask baseline (benchmarks/results/training.md, training_curve.png).

    .venv/bin/python -m benchmarks.train_synthetic --minutes 25 --threads 1

The run is reproducible: the data come from write_synthetic_davis(seed), the model and the clips from the
training seed (the wall-clock limit only decides the number of steps: pass --steps to fix it instead).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import numpy as np
import torch

from cfbi_model.data import ClipConfig, davis_videos, load_mask
from cfbi_model.data.synthetic import SyntheticConfig, write_synthetic_davis
from cfbi_model.evaluation import metrics
from cfbi_model.evaluation.predict import evaluate_videos
from cfbi_model.training import TrainConfig, Trainer

HERE = os.path.dirname(os.path.abspath(__file__))


def copy_first_mask_jf(videos) -> float:
    results = []
    for video in videos:
        gt = np.stack([load_mask(p) for p in video.masks])
        pred = np.repeat(gt[:1], len(gt), axis=0)
        results.append(metrics.evaluate_sequence(gt, pred, metrics.davis_object_ids(gt[0]), name=video.name))
    return float(metrics.DatasetResult(results).global_measures()["J&F-Mean"])


def plot_curve(history: list[dict], baseline: float, path: str) -> None:
    steps = [h["step"] for h in history]
    losses = [h["loss"] for h in history]
    val = [(h["step"], h["val_jf"]) for h in history if "val_jf" in h]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax1 = plt.subplots(figsize=(8, 4.5))
    ax1.plot(steps, losses, color="tab:blue", alpha=0.35, label="training loss (logged steps)")
    if len(losses) >= 10:
        kernel = np.ones(10) / 10
        ax1.plot(steps[9:], np.convolve(losses, kernel, mode="valid"), color="tab:blue", label="loss, mean of 10")
    ax1.set_xlabel("step")
    ax1.set_ylabel("bootstrapped cross-entropy", color="tab:blue")
    ax1.set_yscale("log")
    ax2 = ax1.twinx()
    if val:
        ax2.plot(*zip(*val), "o-", color="tab:red", label="held-out J&F")
    ax2.axhline(baseline, color="tab:gray", linestyle="--", label=f"copy first mask ({baseline:.3f})")
    ax2.set_ylabel("J&F (held-out synthetic videos)", color="tab:red")
    ax2.set_ylim(0, 1)
    lines = ax1.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax1.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="center right", fontsize=8)
    ax1.set_title("CFBI+ small, synthetic videos, CPU 1 thread")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="/tmp/cfbi_synthetic", help="synthetic data folder (rewritten)")
    parser.add_argument("--out", default="/tmp/cfbi_train_synthetic", help="run folder (checkpoints)")
    parser.add_argument("--minutes", type=float, default=25.0, help="wall-clock budget of the whole run")
    parser.add_argument(
        "--steps",
        type=int,
        default=1600,
        help="schedule length (the run stops earlier when --minutes runs out; the schedule is not shortened)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--num-train", type=int, default=60)
    parser.add_argument("--num-val", type=int, default=10)
    parser.add_argument("--val-every", type=int, default=200)
    parser.add_argument("--results", default=os.path.join(HERE, "results"))
    parser.add_argument(
        "--weights", default=None, help="also copy the final weights ({'state_dict', 'model_config'}) here"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    shutil.rmtree(args.data, ignore_errors=True)
    shutil.rmtree(args.out, ignore_errors=True)
    write_synthetic_davis(args.data, num_train=args.num_train, num_val=args.num_val, seed=0, config=SyntheticConfig())
    train = davis_videos(args.data, "train")
    val = davis_videos(args.data, "val")
    baseline = copy_first_mask_jf(val)
    print(f"data written in {time.perf_counter() - started:.0f} s; copy-first-mask J&F {baseline:.4f}", flush=True)

    config = TrainConfig(
        model="small",
        steps=args.steps,
        batch_size=4,
        lr=0.05,
        warmup_steps=50,
        clip=ClipConfig(num_current=3, max_gap=3, crop_size=(97, 97), short_edge=None, min_object_pixels=100),
        seed=0,
        num_workers=0,
        checkpoint_every=100,
        log_every=5,
        val_every=args.val_every,
        amp=False,
    )
    trainer = Trainer(config, train, args.out, val_videos=val, progress=True)
    deadline = started + args.minutes * 60
    # Train in chunks so that the wall-clock limit is respected (each chunk ends with a checkpoint).
    chunk = 50
    while trainer.step < config.steps:
        per_step = (time.perf_counter() - started) / max(1, trainer.step) if trainer.step else 1.0
        if time.perf_counter() + per_step * chunk + 90 > deadline:  # keep time for the final evaluation
            break
        trainer.train(until=trainer.step + chunk)
    train_seconds = time.perf_counter() - started
    final = evaluate_videos(trainer.model, val)
    jf = final.global_measures()
    history = trainer.history
    os.makedirs(args.results, exist_ok=True)
    plot_curve(
        history + [{"step": trainer.step, "loss": history[-1]["loss"], "val_jf": jf["J&F-Mean"]}],
        baseline,
        os.path.join(args.results, "training_curve.png"),
    )
    with open(os.path.join(args.results, "training_history.json"), "w") as handle:
        json.dump(
            {
                "history": history,
                "baseline_jf": baseline,
                "final": jf,
                "steps": trainer.step,
                "seconds": train_seconds,
                "config": config.to_dict(),
            },
            handle,
            indent=1,
        )
    if args.weights:
        state = {
            "state_dict": {k: v.clone() for k, v in trainer.model.state_dict().items()},
            "model_config": trainer.model.config.to_dict(),
            "train_config": json.dumps(config.to_dict()),
            "step": trainer.step,
            "val_jf": jf["J&F-Mean"],
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.weights)), exist_ok=True)
        torch.save(state, args.weights)
    print(
        json.dumps(
            {"steps": trainer.step, "seconds": round(time.perf_counter() - started), "baseline": baseline, "final": jf},
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
