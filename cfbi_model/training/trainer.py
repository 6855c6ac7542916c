"""Training CFBI+ (the authors never released theirs; docs/design.md, "Training", and the paper give
the recipe).

* Clips of a reference, a previous and N current frames (cfbi_model.data); one backbone pass over all frames.
* Sequential training: the first current frame is matched against the previous frame's ground truth; each
  later one against the model's own (detached, argmax) prediction of the frame before once
  `step >= sequential_start` (before that, against the ground truth).
* Bootstrapped cross-entropy: the mean over the hardest k pixels, k falling linearly from 100 % to
  `top_k_percent` over `hard_mining_steps` (ignore index 255; ignored pixels are not counted).
* SGD (momentum 0.9, weight decay 1.5e-4), linear warm-up then poly decay (power 0.9), gradient-norm clip 5.
  The backbone's BatchNorm layers are frozen by construction (FrozenBatchNorm2d, buffers only).
* Checkpoints (model, optimizer, scheduler, step, RNG states) are written atomically; resuming continues
  exactly (clip sampling is a pure function of the seed and the sample index).
* DistributedDataParallel when started by torchrun (gloo on CPU, nccl on CUDA); autocast on CUDA.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..build import build_model, checkpoint_dict
from ..config import IGNORE_LABEL, InferenceConfig, TrainConfig
from ..data.clips import ClipDataset, StepSampler, collate_clips
from ..data.datasets import MixedVideos, VideoEntry
from ..modeling.network import CFBIPlus
from ..modeling.precision import amp_dtype, autocast
from .loss import bootstrapped_cross_entropy, top_k_fraction
from .schedule import learning_rate_factor
from .state import distributed, rng_state, save_atomic, set_rng_state

__all__ = ["SequentialTrainer", "Trainer", "overlay_grid"]


# ------------------------------------------------------------------------------------------------ model step
class SequentialTrainer(nn.Module):
    """Wraps CFBIPlus so that one forward call computes a clip batch's loss (what DDP needs to see)."""

    def __init__(self, model: CFBIPlus) -> None:
        super().__init__()
        self.model = model

    def forward(self, ref_image: Tensor, ref_label: Tensor, prev_image: Tensor, prev_label: Tensor,
                cur_images: Tensor, cur_labels: Tensor, num_labels: Sequence[int], sequential: bool,
                fraction: float) -> tuple[Tensor, list[Tensor]]:
        """Returns (loss, predictions [B, N, H, W] int64 per current frame)."""
        model = self.model
        batch, num_current = cur_images.shape[:2]
        size = tuple(cur_images.shape[-2:])
        images = torch.cat([ref_image, prev_image, cur_images.flatten(0, 1)])
        features = model.extract_features(images)
        embeddings = features.embeddings

        def frame(index: Tensor | slice):
            return [e[index] for e in embeddings]

        refs = [e[:batch].unsqueeze(1) for e in model.matching_embeddings(features)]
        ref_labels = [lab.unsqueeze(1) for lab in model.scale_labels(ref_label, features)]
        cur_start = 2 * batch
        prev_emb = frame(slice(batch, 2 * batch))
        prev_labels = model.scale_labels(prev_label, features)
        total = 0.0
        predictions = []
        for t in range(num_current):
            idx = torch.arange(batch, device=images.device) * num_current + t + cur_start
            cur = type(features)(tuple(e[idx] for e in embeddings), features.low_level[idx])
            logits = model.segment(cur, refs, ref_labels, prev_emb, prev_labels, list(num_labels))
            frame_loss = 0.0
            preds = []
            for n, lg in enumerate(logits):
                lg = F.interpolate(lg.unsqueeze(0), size=size, mode="bilinear", align_corners=True)[0]
                frame_loss = frame_loss + bootstrapped_cross_entropy(lg, cur_labels[n, t], fraction)
                preds.append(lg.detach().argmax(0))
            total = total + frame_loss / batch
            pred = torch.stack(preds)
            predictions.append(pred)
            prev_emb = [e[idx] for e in embeddings]
            prev_labels = model.scale_labels(pred if sequential else cur_labels[:, t], features)
        return total / num_current, torch.stack(predictions, 1)


# ------------------------------------------------------------------------------------------------ trainer
class Trainer:
    """Runs a TrainConfig over training videos, writing checkpoints to out_dir; the periodic validation
    segments val_videos with `inference` (default InferenceConfig()).

        trainer = Trainer(config, train_videos, "runs/x", val_videos=val)
        trainer.train()                 # or trainer.train(resume=True), trainer.train(until=500)
    """

    def __init__(self, config: TrainConfig, videos: Sequence[VideoEntry] | MixedVideos, out_dir: str, *,
                 val_videos: Sequence[VideoEntry] | None = None, device: str | torch.device | None = None,
                 progress: bool = True, tensorboard: bool = True,
                 on_log: Callable[[dict], None] | None = None, inference: InferenceConfig | None = None) -> None:
        self.config = config
        self.inference = inference if inference is not None else InferenceConfig()  # of the validation
        self.out_dir = out_dir
        self.rank, self.world_size, local_rank = distributed()
        if device is None:
            device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        torch.manual_seed(config.seed)  # the same initial weights on every rank
        self.model = build_model(config.model).to(self.device)
        self.model.train()
        self.module = SequentialTrainer(self.model)
        if self.world_size > 1:
            self.module = nn.parallel.DistributedDataParallel(
                self.module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                                         weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: learning_rate_factor(s, config.steps, config.warmup_steps, config.poly_power,
                                                           config.lr, config.min_lr))
        self.amp = bool(config.amp) and self.device.type == "cuda"
        self.amp_dtype = amp_dtype(self.amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.amp_dtype == torch.float16)
        self.dataset = ClipDataset(videos, config.clip, seed=config.seed)
        self.val_videos = list(val_videos) if val_videos else []
        self.step = 0
        self.history: list[dict] = []
        self.progress = progress and self.rank == 0
        self.writer = None
        if tensorboard and self.rank == 0:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(os.path.join(out_dir, "tensorboard"))
            except ImportError:
                self.writer = None
        self.on_log = on_log

    # ----------------------------------------------------------------- checkpoints
    @property
    def checkpoint_path(self) -> str:
        return os.path.join(self.out_dir, "checkpoint.pth")

    def state(self) -> dict:
        return {**checkpoint_dict(self.model), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "step": self.step,
                "rng": rng_state(), "train_config": json.dumps(self.config.to_dict()),
                "history": json.dumps(self.history)}

    def save(self, path: str | None = None) -> None:
        if self.rank == 0:
            save_atomic(self.state(), path or self.checkpoint_path)
        if self.world_size > 1:
            dist.barrier()

    def load(self, path: str | None = None) -> None:
        state = torch.load(path or self.checkpoint_path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.history = json.loads(state.get("history", "[]"))
        set_rng_state(state["rng"])

    # ----------------------------------------------------------------- loop
    def _autocast(self):
        return autocast(self.amp, self.amp_dtype)

    def train_step(self, batch: dict) -> dict:
        cfg = self.config
        fraction = top_k_fraction(self.step, cfg.top_k_percent, cfg.hard_mining_end)
        sequential = self.step >= cfg.sequential_from
        tensors = {k: batch[k].to(self.device, non_blocking=True) for k in
                   ("ref_image", "ref_label", "prev_image", "prev_label", "cur_images", "cur_labels")}
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            loss, predictions = self.module(tensors["ref_image"], tensors["ref_label"], tensors["prev_image"],
                                            tensors["prev_label"], tensors["cur_images"], tensors["cur_labels"],
                                            batch["num_labels"], sequential, fraction)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = float("nan")
        if cfg.clip_grad_norm:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad_norm))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.step += 1
        loss_value = loss.detach()
        if self.world_size > 1:
            dist.all_reduce(loss_value)
            loss_value /= self.world_size
        return {"step": self.step, "loss": float(loss_value), "lr": lr, "grad_norm": grad_norm,
                "top_k": fraction, "sequential": sequential, "predictions": predictions, "batch": tensors}

    def loader(self, start: int, end: int):
        sampler = StepSampler(start, end, self.config.batch_size, self.rank, self.world_size)
        return torch.utils.data.DataLoader(self.dataset, batch_size=self.config.batch_size, sampler=sampler,
                                           num_workers=self.config.num_workers, collate_fn=collate_clips,
                                           pin_memory=self.device.type == "cuda",
                                           persistent_workers=False,
                                           # its own generator: creating the loader must not consume the
                                           # global RNG (dropout), or a resumed run would diverge
                                           generator=torch.Generator().manual_seed(self.config.seed + start))

    def validate(self) -> float:
        from ..evaluation.run import evaluate_videos  # noqa: PLC0415 - evaluation needs the model, not the reverse
        result = evaluate_videos(self.model, self.val_videos, self.inference, max_frames=self.config.val_max_frames)
        self.model.train()
        return float(result.global_measures()["J&F-Mean"])

    def train(self, resume: bool = False, until: int | None = None) -> list[dict]:
        """Train up to step `until` (default: config.steps); with resume, first load the checkpoint of out_dir
        when it exists. Returns the logged history ({step, loss, lr, ..., and val J&F when measured})."""
        cfg = self.config
        if resume and os.path.isfile(self.checkpoint_path):
            self.load()
        end = cfg.steps if until is None else min(int(until), cfg.steps)
        if self.step >= end:
            return self.history
        bar = None
        if self.progress:
            from tqdm import tqdm
            bar = tqdm(total=end, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        started, start_step, running = time.perf_counter(), self.step, None
        for batch in self.loader(self.step, end):
            info = self.train_step(batch)
            running = info["loss"] if running is None else 0.9 * running + 0.1 * info["loss"]
            record = {k: info[k] for k in ("step", "loss", "lr", "grad_norm", "top_k", "sequential")}
            record["time"] = time.perf_counter() - started
            if cfg.val_every and self.val_videos and (self.step % cfg.val_every == 0 or self.step == cfg.steps):
                record["val_jf"] = self.validate()
                if self.writer is not None:
                    self.writer.add_scalar("val/J&F", record["val_jf"], self.step)
            if cfg.log_every and (self.step % cfg.log_every == 0 or "val_jf" in record or self.step == end):
                self.history.append(record)
                if self.writer is not None:
                    self._tensorboard(info)
                if self.on_log is not None and self.rank == 0:
                    self.on_log(record)
            if bar is not None:
                rate = (self.step - start_step) / max(1e-9, time.perf_counter() - started)
                postfix = {"loss": f"{running:.4f}", "lr": f"{info['lr']:.2e}", "it/s": f"{rate:.2f}"}
                if "val_jf" in record:
                    postfix["val J&F"] = f"{record['val_jf']:.3f}"
                bar.set_postfix(postfix)
                bar.update(1)
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step != end:
                self.save()
        if bar is not None:
            bar.close()
        self.save()
        if self.writer is not None:
            self.writer.flush()
        return self.history

    def _tensorboard(self, info: dict) -> None:
        w, s = self.writer, self.step
        for key in ("loss", "lr", "grad_norm", "top_k"):
            if isinstance(info[key], float) and math.isfinite(info[key]):
                w.add_scalar(f"train/{key}", info[key], s)
        if self.config.log_every and s % (self.config.log_every * 10) == 0:
            w.add_image("train/overlay", overlay_grid(info["batch"], info["predictions"]), s, dataformats="HWC")


def overlay_grid(batch: dict, predictions: Tensor) -> np.ndarray:
    """First clip of a batch as an image: the current frames with ground truth (top) and prediction (bottom)."""
    from ..io.masks import default_palette  # noqa: PLC0415
    from ..io.overlay import overlay  # noqa: PLC0415
    from ..modeling.preprocess import to_rgb  # noqa: PLC0415
    palette = default_palette()
    rows = [[], []]
    for t in range(predictions.shape[1]):
        rgb = to_rgb(batch["cur_images"][0, t])
        gt = batch["cur_labels"][0, t].cpu().numpy().astype(np.uint8)
        gt[gt == IGNORE_LABEL] = 0
        rows[0].append(overlay(rgb, gt, palette))
        rows[1].append(overlay(rgb, predictions[0, t].cpu().numpy().astype(np.uint8), palette))
    return np.concatenate([np.concatenate(r, axis=1) for r in rows], axis=0)
