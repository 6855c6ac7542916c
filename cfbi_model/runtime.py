"""Where the process runs: the default device and the torchrun environment, read in this one place."""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["default_device", "cpu_flags", "Distributed", "distributed_environment"]


def default_device() -> str:
    """ "cuda" when torch sees a GPU, else "cpu"."""
    import torch  # noqa: PLC0415 - keep `cfbi --help` light

    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_flags() -> frozenset[str]:
    """The instruction-set flags of this machine's CPU (/proc/cpuinfo; empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@dataclass(frozen=True)
class Distributed:
    """The torchrun environment: world size, this process's rank and its rank on the machine."""

    world: int = 1
    rank: int = 0
    local_rank: int = 0


def distributed_environment() -> Distributed:
    """WORLD_SIZE, RANK and LOCAL_RANK as torchrun sets them (1, 0, 0 outside torchrun)."""
    names = (("WORLD_SIZE", "1"), ("RANK", "0"), ("LOCAL_RANK", "0"))
    return Distributed(*(int(os.environ.get(name, default)) for name, default in names))
