"""What a training checkpoint needs besides the model: atomic writes with a checksum, verified reading with
one-line errors, numbered copies, RNG states, the process group (docs/design.md, "Training").

A training checkpoint is a model checkpoint (`cfbi_model.build`: "state_dict", "model_config") plus the
optimizer, scheduler and scaler states, the step, the RNG states, the TrainConfig (JSON), the logged history
(JSON), the number of processes and "checksum": the SHA-256 of everything else (`state_digest`), which
`read_training_checkpoint` verifies, so that a file damaged on disk is refused instead of loading silently.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ..build import CheckpointError, read_checkpoint
from ..runtime import default_device, distributed_environment

__all__ = [
    "save_atomic",
    "rng_state",
    "set_rng_state",
    "distributed",
    "state_digest",
    "add_checksum",
    "read_training_checkpoint",
    "remove_stale_temporaries",
    "keep_numbered",
    "numbered_checkpoints",
]

_TMP = re.compile(r"^\..+\.tmp-(\d+)$")
_NUMBERED = re.compile(r"^checkpoint-(\d+)\.pth$")


def save_atomic(obj: dict, path: str) -> None:
    """torch.save to a temporary file (`.NAME.tmp-PID`) in the same folder, flushed to disk, then os.replace:
    readers never see half a file; the temporary file is removed when the write fails or is interrupted."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: str) -> list[str]:
    """Remove the temporary files of saves that never finished (`.NAME.tmp-PID` whose process is gone, e.g.
    killed with SIGKILL mid-write) from `folder`; returns the removed paths."""
    removed = []
    if not os.path.isdir(folder):
        return removed
    for name in sorted(os.listdir(folder)):
        match = _TMP.match(name)
        if match and (int(match.group(1)) == os.getpid() or not _pid_alive(int(match.group(1)))):
            path = os.path.join(folder, name)
            try:
                os.remove(path)
                removed.append(path)
            except FileNotFoundError:
                pass
    return removed


def numbered_checkpoints(folder: str) -> list[tuple[int, str]]:
    """(step, path) of the numbered checkpoints `checkpoint-STEP.pth` in `folder`, by step."""
    if not os.path.isdir(folder):
        return []
    found = [(int(m.group(1)), os.path.join(folder, n)) for n in os.listdir(folder) if (m := _NUMBERED.match(n))]
    return sorted(found)


def keep_numbered(path: str, step: int, keep: int) -> None:
    """Keep a copy of the checkpoint `path` as checkpoint-STEP.pth beside it (a hard link where the file
    system allows: a later os.replace of `path` does not touch it), then delete all but the last `keep`."""
    if keep <= 0:
        return
    folder = os.path.dirname(os.path.abspath(path))
    target = os.path.join(folder, f"checkpoint-{step:08d}.pth")
    if os.path.exists(target):
        os.remove(target)
    try:
        os.link(path, target)
    except OSError:  # no hard links here: copy through a temporary file, atomically
        tmp = os.path.join(folder, f".{os.path.basename(target)}.tmp-{os.getpid()}")
        try:
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
    for _, old in numbered_checkpoints(folder)[:-keep]:
        os.remove(old)


# ------------------------------------------------------------------------------------------------ checksum
def _digest_into(h: Any, value: Any) -> None:
    if isinstance(value, Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(value, Mapping):
        h.update(f"D{len(value)};".encode())
        for key in sorted(value, key=repr):
            _digest_into(h, key)
            _digest_into(h, value[key])
    elif isinstance(value, (list, tuple)):
        h.update(f"L{len(value)};".encode())
        for item in value:
            _digest_into(h, item)
    else:
        h.update(f"{type(value).__name__}:{value!r};".encode())


def state_digest(state: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a checkpoint's contents, the "checksum" entry excluded: tensors by dtype, shape and
    bytes, containers recursively, everything else by type and repr."""
    h = hashlib.sha256()
    _digest_into(h, {k: v for k, v in state.items() if k != "checksum"})
    return h.hexdigest()


def add_checksum(state: dict) -> dict:
    """`state` with "checksum": {"sha256": state_digest(state)} added."""
    state["checksum"] = {"sha256": state_digest(state)}
    return state


def _first_line(error: BaseException | None) -> str:
    text = str(error).strip() if error is not None else ""
    return text.splitlines()[0] if text else type(error).__name__


def read_training_checkpoint(path: str, *, map_location: Any = "cpu") -> dict:
    """A training checkpoint, read with `torch.load(weights_only=True)` and its checksum verified.

    Raises CheckpointError with a one-line message for a missing, empty, truncated or garbage file, a
    directory in its place, a model-only checkpoint (no optimizer state) and a checksum mismatch. A file
    without a checksum (written by an earlier version) loads; its "checksum_verified" entry is False.
    """
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path!r} is a directory, not a file")
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(
            f"checkpoint {path!r} is empty (0 bytes): an interrupted copy? Restore it or delete it to start over"
        )
    try:
        contents = read_checkpoint(path, map_location=map_location)
    except CheckpointError as error:
        text = _first_line(error)
        prefix = f"cannot read checkpoint {path!r}: "
        if not text.startswith(prefix):  # e.g. a file that holds code: read_checkpoint's words are enough
            raise CheckpointError(text) from None
        raise CheckpointError(
            f"checkpoint {path!r} ({size} bytes) is truncated or not a PyTorch checkpoint: {text[len(prefix) :]}"
        ) from None
    if not isinstance(contents, Mapping) or "state_dict" not in contents:
        raise CheckpointError(f"checkpoint {path!r} is not a checkpoint of cfbi train (no 'state_dict')")
    missing = [k for k in ("optimizer", "scheduler", "step", "rng", "train_config") if k not in contents]
    if missing:
        raise CheckpointError(
            f"checkpoint {path!r} holds model weights only (no {', '.join(missing)}): it "
            "cannot be resumed; start a run from its weights with --init instead"
        )
    contents = dict(contents)
    stored = contents.get("checksum")
    if stored is None:
        contents["checksum_verified"] = False
        return contents
    actual = state_digest(contents)
    expected = stored.get("sha256") if isinstance(stored, Mapping) else None
    if actual != expected:
        raise CheckpointError(
            f"checkpoint {path!r} fails its checksum (stored sha256 {str(expected)[:12]}..., "
            f"contents {actual[:12]}...): the file is damaged; use an older "
            "checkpoint-STEP.pth or start over"
        )
    contents["checksum_verified"] = True
    return contents


# ------------------------------------------------------------------------------------------------ RNG, DDP
def rng_state() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank), initialising the process group when started by torchrun."""
    env = distributed_environment()
    if env.world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if default_device() == "cuda" else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), env.local_rank
    return 0, 1, 0
