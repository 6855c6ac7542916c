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
* Checkpoints (model, optimizer, scheduler, step, RNG states) are written atomically with a checksum;
  resuming continues exactly (clip sampling is a pure function of the seed and the sample index) and refuses
  a checkpoint that is damaged, of another model, or of other settings (training.state).
* SIGINT / SIGTERM: the current step finishes, the checkpoint is written, TrainingInterrupted is raised.
* Gradient accumulation: `accumulate` micro-batches per optimizer step, the clips of a K-times-larger batch.
* DistributedDataParallel when started by torchrun (gloo on CPU, nccl on CUDA); autocast on CUDA.
* Pretrained initialisation from torchvision ResNets, DeepLabV3+ and CFBI+ checkpoints (training.init).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..build import CheckpointError, build_model, checkpoint_config, checkpoint_dict, extract_state_dict
from ..config import InferenceConfig, TrainConfig, config_differences
from ..data.clips import ClipDataset, StepSampler, collate_clips
from ..data.datasets import DataError, MixedVideos
from ..io.files import file_sha256
from ..io.source import Video
from ..modeling.network import CFBIPlus
from ..modeling.precision import amp_dtype, autocast
from .init import initialise_from
from .log import LOG_NAME, RunLog
from .loss import bootstrapped_cross_entropy, top_k_fraction
from .schedule import learning_rate_factor
from .state import (
    add_checksum,
    distributed,
    keep_numbered,
    read_training_checkpoint,
    remove_stale_temporaries,
    rng_state,
    save_atomic,
    set_rng_state,
)

__all__ = ["SequentialTrainer", "Trainer", "TrainingInterrupted", "OPERATIONAL_SETTINGS"]


# ------------------------------------------------------------------------------------------------ model step
class SequentialTrainer(nn.Module):
    """CFBIPlus's training forward plus the loss, so that one forward call computes a clip batch's loss (what
    DDP needs to see)."""

    def __init__(self, model: CFBIPlus) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        ref_image: Tensor,
        ref_label: Tensor,
        prev_image: Tensor,
        prev_label: Tensor,
        cur_images: Tensor,
        cur_labels: Tensor,
        num_labels: Sequence[int],
        sequential: bool,
        fraction: float,
    ) -> tuple[Tensor, Tensor]:
        """Returns (loss, predictions [B, N, H, W] int64 per current frame)."""
        batch, num_current = cur_images.shape[:2]
        sequence = self.model(
            ref_image,
            ref_label,
            prev_image,
            prev_label,
            cur_images,
            list(num_labels),
            current_labels=None if sequential else cur_labels,
            output_size=cur_images.shape[-2:],
        )
        total = 0.0
        predictions = []
        for t, logits in enumerate(sequence):
            frame_loss = 0.0
            for n, lg in enumerate(logits):
                frame_loss = frame_loss + bootstrapped_cross_entropy(lg, cur_labels[n, t], fraction)
            total = total + frame_loss / batch
            predictions.append(torch.stack([lg.detach().argmax(0) for lg in logits]))
        return total / num_current, torch.stack(predictions, 1)


# ------------------------------------------------------------------------------------------------ trainer
class TrainingInterrupted(Exception):
    """Raised by Trainer.train after SIGINT / SIGTERM, once the checkpoint of the current step is written.

    Attributes: signum, step, path (the checkpoint)."""

    def __init__(self, signum: int, step: int, path: str) -> None:
        self.signum, self.step, self.path = int(signum), int(step), path
        name = signal.Signals(self.signum).name
        super().__init__(f"interrupted by {name} at step {step}; checkpoint {path} written, continue with --resume")


# Settings that only change how a run is observed or stored: a resumed run may change them (with a warning).
# Every other TrainConfig field, and the number of processes, changes what is computed.
OPERATIONAL_SETTINGS = frozenset(
    {"num_workers", "checkpoint_every", "log_every", "val_every", "val_max_frames", "keep_checkpoints", "init"}
)


def _ignore_signals_in_worker(worker_id: int) -> None:
    # Loader workers ignore SIGINT / SIGTERM: the main process decides when to stop (after writing the
    # checkpoint) and shuts them down; a worker dying first would end the loop with a traceback instead.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class Trainer:
    """Runs a TrainConfig over training videos, writing checkpoints to out_dir; the periodic validation
    segments val_videos with `inference` (default InferenceConfig()).

        trainer = Trainer(config, train_videos, "runs/x", val_videos=val)
        trainer.train()                 # or trainer.train(resume=True), trainer.train(until=500)

    Files in out_dir: checkpoint.pth (written atomically, with a checksum), checkpoint-STEP.pth (the last
    `keep_checkpoints`), log.jsonl (one JSON object per logged step) and tensorboard/. Messages (the --init
    summary, resume warnings) go to `on_message` (default: stderr, rank 0 only).
    """

    def __init__(
        self,
        config: TrainConfig,
        videos: Sequence[Video] | MixedVideos,
        out_dir: str,
        *,
        val_videos: Sequence[Video] | None = None,
        device: str | torch.device | None = None,
        progress: bool = True,
        tensorboard: bool = True,
        on_log: Callable[[dict], None] | None = None,
        inference: InferenceConfig | None = None,
        on_message: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.inference = inference if inference is not None else InferenceConfig()  # of the validation
        self.out_dir = out_dir
        self.rank, self.world_size, local_rank = distributed()
        if device is None:
            device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.say = on_message if on_message is not None else (lambda text: print(text, file=sys.stderr))
        torch.manual_seed(config.seed)  # the same initial weights on every rank
        self.dtype = getattr(torch, config.dtype)
        self.model = build_model(config.model).to(self.device, self.dtype)
        self.model.train()
        self.module = SequentialTrainer(self.model)
        if self.world_size > 1:
            self.module = nn.parallel.DistributedDataParallel(
                self.module, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.amp = bool(config.amp) and self.device.type == "cuda"
        self.amp_dtype = amp_dtype(self.amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.amp_dtype == torch.float16)
        self.dataset = ClipDataset(videos, config.clip, seed=config.seed)
        self.val_videos = list(val_videos) if val_videos else []
        self.step = 0
        self.micro_batches = 0  # forward / backward passes of this process so far (all steps)
        self.history: list[dict] = []
        self.initialised_from: str | None = None
        self.init_sha256: str | None = None
        # log.jsonl, TensorBoard and the progress bar are rank 0's
        self.run_log = RunLog(out_dir, tensorboard=tensorboard, progress=progress) if self.rank == 0 else None
        self.on_log = on_log
        self._signal: int | None = None

    def _lr_factor(self, step: int) -> float:
        cfg = self.config
        return learning_rate_factor(step, cfg.steps, cfg.warmup_steps, cfg.poly_power, cfg.lr, cfg.min_lr)

    @property
    def global_batch(self) -> int:
        """Clips per optimizer step over all processes: processes x batch_size x accumulate."""
        return self.world_size * self.config.batch_size * self.config.accumulate

    # ----------------------------------------------------------------- checkpoints
    @property
    def checkpoint_path(self) -> str:
        return os.path.join(self.out_dir, "checkpoint.pth")

    @property
    def log_path(self) -> str:
        """The JSON-lines log: one object per logged step (the records of `history`)."""
        return os.path.join(self.out_dir, LOG_NAME)

    def state(self) -> dict:
        """Everything a resumed run needs, with its checksum (cfbi_model.training.state)."""
        return add_checksum(
            {
                **checkpoint_dict(self.model),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "step": self.step,
                "rng": rng_state(),
                "train_config": json.dumps(self.config.to_dict()),
                "history": json.dumps(self.history),
                "world_size": self.world_size,
                "init_sha256": self.init_sha256 or "",
            }
        )

    def save(self, path: str | None = None) -> None:
        """Write the checkpoint atomically (rank 0), then the numbered copy when keep_checkpoints > 0."""
        if self.rank == 0:
            target = path or self.checkpoint_path
            save_atomic(self.state(), target)
            if path is None:
                keep_numbered(target, self.step, self.config.keep_checkpoints)
        if self.world_size > 1:
            dist.barrier()

    def resume_differences(self, contents: dict) -> tuple[list[str], list[str]]:
        """(changed, operational): the settings of this run that differ from a training checkpoint's, as
        "name: checkpoint != now" lines; `operational` are those in OPERATIONAL_SETTINGS."""
        try:
            stored = TrainConfig.from_dict(
                {
                    k: v
                    for k, v in json.loads(contents["train_config"]).items()
                    if k in {f.name for f in dataclasses.fields(TrainConfig)}
                }
            )
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"checkpoint holds an invalid train_config: {error}") from None
        lines = config_differences(stored, self.config)
        processes = int(contents.get("world_size", 1))
        if processes != self.world_size:
            lines.append(f"processes: {processes} != {self.world_size}")
        operational = [line for line in lines if line.split(":")[0] in OPERATIONAL_SETTINGS]
        return [line for line in lines if line not in operational], operational

    def load(self, path: str | None = None, *, allow_changes: bool = False) -> None:
        """Continue from a training checkpoint (verified: read_training_checkpoint). CheckpointError (one line)
        when it holds another model configuration, or when this run's settings differ from its own in
        anything but OPERATIONAL_SETTINGS, unless allow_changes (then they are named in a warning and the
        learning rate, momentum and weight decay of this run apply from the checkpoint's step on)."""
        path = path or self.checkpoint_path
        contents = read_training_checkpoint(path, map_location=self.device)
        stored = checkpoint_config(contents, path)
        if stored is not None and stored != self.model.config:
            differences = "; ".join(config_differences(stored, self.model.config)[:4])
            raise CheckpointError(
                f"checkpoint {path!r} holds model configuration {stored.name!r}, this run builds "
                f"{self.model.config.name!r} ({differences})"
            )
        changed, operational = self.resume_differences(contents)
        if changed and not allow_changes:
            raise CheckpointError(
                f"--resume: settings differ from the checkpoint's ({'; '.join(changed)}); "
                "rerun with the checkpoint's settings, or pass --allow-changes to continue with "
                "these"
            )
        self.model.load_state_dict(extract_state_dict(contents))
        self.optimizer.load_state_dict(contents["optimizer"])
        self.scheduler.load_state_dict(contents["scheduler"])
        self.scaler.load_state_dict(contents["scaler"])
        self.step = int(contents["step"])
        self.history = json.loads(contents.get("history", "[]"))
        self.init_sha256 = contents.get("init_sha256") or None
        set_rng_state(contents["rng"])
        if changed:  # the loaded optimizer and scheduler carry the checkpoint's hyper-parameters
            cfg = self.config
            self.scheduler.base_lrs = [cfg.lr for _ in self.optimizer.param_groups]
            for group in self.optimizer.param_groups:
                group.update(
                    initial_lr=cfg.lr,
                    lr=cfg.lr * self._lr_factor(self.step),
                    momentum=cfg.momentum,
                    weight_decay=cfg.weight_decay,
                )
            if self.rank == 0:
                self.say(f"warning: resuming step {self.step} with changed settings: {'; '.join(changed)}")
        if operational and self.rank == 0:
            self.say(f"resuming step {self.step} with: {'; '.join(operational)}")
        if not contents["checksum_verified"] and self.rank == 0:
            self.say(f"warning: checkpoint {path!r} holds no checksum (an earlier version wrote it): not verified")

    def initialise(self, path: str | None = None) -> str:
        """Load pretrained weights into the model (cfbi_model.training.init); returns the one-line summary."""
        path = path or self.config.init
        self.init_sha256 = file_sha256(path)  # what the run started from, in its checkpoints and log.jsonl
        summary = initialise_from(self.model, path, self.init_sha256)
        self.initialised_from = path
        return summary

    # ----------------------------------------------------------------- loop
    def _autocast(self):
        return autocast(self.amp, self.amp_dtype)

    def _micro_batch(self, batch: dict, sequential: bool, fraction: float, sync: bool):
        # Images take the model's dtype (float64 for an oracle run); labels stay integers.
        tensors = {
            k: batch[k].to(self.device, self.dtype if batch[k].is_floating_point() else None, non_blocking=True)
            for k in ("ref_image", "ref_label", "prev_image", "prev_label", "cur_images", "cur_labels")
        }
        # DDP reduces gradients in backward; the first K - 1 micro-batches of a step only accumulate locally.
        context = self.module.no_sync() if self.world_size > 1 and not sync else contextlib.nullcontext()
        with context:
            with self._autocast():
                loss, predictions = self.module(
                    tensors["ref_image"],
                    tensors["ref_label"],
                    tensors["prev_image"],
                    tensors["prev_label"],
                    tensors["cur_images"],
                    tensors["cur_labels"],
                    batch["num_labels"],
                    sequential,
                    fraction,
                )
            self.micro_batches += 1
            # Each micro-batch loss is a mean over its clips: dividing by K makes the sum the mean over all.
            self.scaler.scale(loss / self.config.accumulate).backward()
        return loss.detach(), predictions, tensors

    def train_step(self, batch: dict | Sequence[dict]) -> dict:
        """One optimizer step over `accumulate` micro-batches (a list of collated batches, or one batch when
        accumulate is 1): gradients summed with weight 1 / accumulate, then clipped, then SGD."""
        cfg = self.config
        micro = [batch] if isinstance(batch, dict) else list(batch)
        if len(micro) != cfg.accumulate:
            raise ValueError(f"train_step needs {cfg.accumulate} micro-batches (accumulate), got {len(micro)}")
        fraction = top_k_fraction(self.step, cfg.top_k_percent, cfg.hard_mining_end)
        sequential = self.step >= cfg.sequential_from
        self.optimizer.zero_grad(set_to_none=True)
        losses = []
        for index, part in enumerate(micro):
            loss, predictions, tensors = self._micro_batch(part, sequential, fraction, index == len(micro) - 1)
            losses.append(loss)
        self.scaler.unscale_(self.optimizer)
        grad_norm = float("nan")
        if cfg.clip_grad_norm:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad_norm))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.step += 1
        loss_value = torch.stack(losses).mean()  # float32 (also under autocast), float64 in a float64 run
        if self.world_size > 1:
            dist.all_reduce(loss_value)
            loss_value /= self.world_size
        return {
            "step": self.step,
            "loss": float(loss_value),
            "lr": lr,
            "grad_norm": grad_norm,
            "top_k": fraction,
            "sequential": sequential,
            "predictions": predictions,
            "batch": tensors,
        }

    def loader(self, start: int, end: int):
        """Micro-batches of steps start..end-1 for this process (accumulate per step): step s of rank r reads
        the samples a run with a K-times-larger batch_size reads, so accumulation changes no clip."""
        per_step = self.config.batch_size * self.config.accumulate
        sampler = StepSampler(start, end, per_step, self.rank, self.world_size)
        return torch.utils.data.DataLoader(
            self.dataset,
            batch_size=self.config.batch_size,
            sampler=sampler,
            num_workers=self.config.num_workers,
            collate_fn=collate_clips,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            worker_init_fn=_ignore_signals_in_worker,
            # its own generator: creating the loader must not consume the
            # global RNG (dropout), or a resumed run would diverge
            generator=torch.Generator().manual_seed(self.config.seed + start),
        )

    def validate(self) -> float:
        from ..evaluation.predict import evaluate_videos  # noqa: PLC0415 - evaluation needs the model, not the reverse

        result = evaluate_videos(self.model, self.val_videos, self.inference, max_frames=self.config.val_max_frames)
        self.model.train()
        return float(result.global_measures()["J&F-Mean"])

    def _on_signal(self, signum: int, frame) -> None:
        self._signal = signum  # acted on after the current step: the checkpoint then holds a whole step

    def _stop_requested(self) -> int:
        """The signal number every process stops for (0: none); all ranks agree, so they stop at one step."""
        signum = self._signal or 0
        if self.world_size > 1:
            flag = torch.tensor(
                [signum], dtype=torch.int64, device=self.device if self.device.type == "cuda" else "cpu"
            )
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            signum = int(flag)
        return signum

    def train(self, resume: bool = False, until: int | None = None, *, allow_changes: bool = False) -> list[dict]:
        """Train up to step `until` (default: config.steps). With resume, first continue from the checkpoint of
        out_dir when it exists (see load); otherwise start from config.init when set.

        SIGINT / SIGTERM stop the run after the current step: the checkpoint is written and
        TrainingInterrupted raised. Returns the logged history ({step, loss, lr, ..., and val J&F when
        measured}), which log.jsonl repeats line by line."""
        cfg = self.config
        if self.rank == 0:
            for stale in remove_stale_temporaries(self.out_dir):
                self.say(f"removed {stale} (left by an interrupted save)")
        if resume and os.path.exists(self.checkpoint_path):
            self.load(allow_changes=allow_changes)
        elif cfg.init and self.step == 0 and self.initialised_from is None:
            summary = self.initialise()
            if self.rank == 0:
                self.say(summary)
        end = cfg.steps if until is None else min(int(until), cfg.steps)
        if self.step >= end:
            return self.history
        handlers = {}
        self._signal = None  # a signal that stopped an earlier call does not stop this one
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                handlers[signum] = signal.signal(signum, self._on_signal)
        log = self.run_log
        try:
            if log is not None:
                log.start(self.history, self.step, end)  # log.jsonl rewritten from the (resumed) history
            self._loop(end)
        finally:
            if log is not None:
                log.close()
            for signum, previous in handlers.items():
                signal.signal(signum, previous)
        if log is not None:
            log.flush()
        return self.history

    def _loop(self, end: int) -> None:
        cfg = self.config
        started = time.perf_counter()
        self._running: float | None = None
        micro: list[dict] = []
        batches = iter(self.loader(self.step, end))
        while self.step < end:
            try:
                micro.append(next(batches))
            except DataError as error:
                if self._signal is None and self.world_size == 1:  # keep the steps done (several processes would
                    self.save()  # wait for each other in save; there the run stops at its last checkpoint)
                    raise DataError(
                        f"{error} (checkpoint of step {self.step} written: {self.checkpoint_path})"
                    ) from None
                raise
            except Exception:
                if self._signal is None:
                    raise
                micro = []  # a loader worker ended by the signal: stop at the last whole step
            if micro and len(micro) < cfg.accumulate:
                continue
            if micro:
                info = self.train_step(micro)
                micro = []
                self._after_step(info, started)
            signum = self._stop_requested()
            if signum:
                del batches
                self.save()
                raise TrainingInterrupted(signum, self.step, self.checkpoint_path)
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step != end:
                self.save()
        self.save()

    def _after_step(self, info: dict, started: float) -> None:
        cfg, log = self.config, self.run_log
        running = self._running
        self._running = info["loss"] if running is None else 0.9 * running + 0.1 * info["loss"]
        record = {k: info[k] for k in ("step", "loss", "lr", "grad_norm", "top_k", "sequential")}
        record["time"] = time.perf_counter() - started
        if cfg.val_every and self.val_videos and (self.step % cfg.val_every == 0 or self.step == cfg.steps):
            record["val_jf"] = self.validate()
            if log is not None:
                log.validation(record["val_jf"], self.step)
        if cfg.log_every and (self.step % cfg.log_every == 0 or "val_jf" in record or self.step == cfg.steps):
            if self.init_sha256 and not self.history:
                record["init_sha256"] = self.init_sha256  # the first logged record says what the run started from
            self.history.append(record)
            if log is not None:
                log.record(record, info, overlay=self.step % (cfg.log_every * 10) == 0)
            if self.on_log is not None and self.rank == 0:
                self.on_log(record)
        if log is not None:
            log.advance(self._running, info["lr"], record.get("val_jf"))
