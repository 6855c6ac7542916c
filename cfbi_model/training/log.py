"""The run log of a training run (rank 0): log.jsonl, one JSON object per logged step; TensorBoard scalars and
overlays when tensorboard is installed; and the progress bar on stderr. The trainer decides what is logged
and when; this module only writes it."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

from ..config import IGNORE_LABEL

__all__ = ["LOG_NAME", "RunLog", "overlay_grid"]

LOG_NAME = "log.jsonl"

_SCALARS = ("loss", "lr", "grad_norm", "top_k")


def _finite(value: Any) -> Any:
    # JSON has no NaN / infinity (the grad norm is NaN when clipping is off)
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _json_line(record: dict) -> str:
    return json.dumps({k: _finite(v) for k, v in record.items()}) + "\n"


class RunLog:
    """Where a run is observed, in out_dir: log.jsonl, tensorboard/ (when `tensorboard` and the package is
    installed) and a progress bar (when `progress`). Use `start` ... `close` around each stretch of steps."""

    def __init__(self, out_dir: str, *, tensorboard: bool = True, progress: bool = True) -> None:
        self.out_dir = out_dir
        self.progress = progress
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 - optional dependency

                self.writer = SummaryWriter(os.path.join(out_dir, "tensorboard"))
            except ImportError:
                self.writer = None
        self._handle = None
        self._bar = None

    @property
    def path(self) -> str:
        """The JSON-lines log: one object per logged step."""
        return os.path.join(self.out_dir, LOG_NAME)

    def start(self, history: Sequence[dict], step: int, end: int) -> None:
        """Rewrite log.jsonl from `history` (that of a resumed run) and open the progress bar at step / end."""
        os.makedirs(self.out_dir, exist_ok=True)
        self._handle = open(self.path, "w", encoding="utf-8")
        for record in history:
            self._handle.write(_json_line(record))
        self._handle.flush()
        if self.progress:
            from tqdm import tqdm  # noqa: PLC0415 - only a run with a bar needs it

            self._bar = tqdm(
                total=end,
                initial=step,
                desc="train",
                unit="step",
                dynamic_ncols=True,
                bar_format="{desc} {n_fmt}/{total_fmt} steps |{bar}| [{elapsed} elapsed, ETA "
                "{remaining}, {rate_fmt}]{postfix}",
            )

    def close(self) -> None:
        """Close the progress bar and log.jsonl (also after an interruption)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def flush(self) -> None:
        """Flush TensorBoard's events (at the end of a stretch that was not interrupted)."""
        if self.writer is not None:
            self.writer.flush()

    def validation(self, jf: float, step: int) -> None:
        """The J&F of a periodic validation."""
        if self.writer is not None:
            self.writer.add_scalar("val/J&F", jf, step)

    def record(self, record: dict, info: dict, overlay: bool) -> None:
        """One logged step: its line in log.jsonl and its TensorBoard scalars, with the first clip's overlay
        (overlay_grid) when `overlay`. `info` is Trainer.train_step's result."""
        if self._handle is not None:
            self._handle.write(_json_line(record))
            self._handle.flush()
        if self.writer is None:
            return
        step = record["step"]
        for key in _SCALARS:
            if isinstance(info[key], float) and math.isfinite(info[key]):
                self.writer.add_scalar(f"train/{key}", info[key], step)
        if overlay:
            self.writer.add_image(
                "train/overlay", overlay_grid(info["batch"], info["predictions"]), step, dataformats="HWC"
            )

    def advance(self, running_loss: float, lr: float, val_jf: float | None = None) -> None:
        """Move the progress bar one step on, showing the running loss, the lr and the last validation."""
        if self._bar is None:
            return
        postfix = {"loss": f"{running_loss:.4f}", "lr": f"{lr:.2e}"}
        if val_jf is not None:
            postfix["val J&F"] = f"{val_jf:.3f}"
        self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(1)


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
