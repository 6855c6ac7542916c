"""What every benchmark records about the machine it ran on: one reader of /proc/cpuinfo for all of them."""

from __future__ import annotations

import os
import platform
from typing import Any

__all__ = ["cpu_name", "machine_info"]


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo's first "model name"; platform's guess where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """The machine a timing was taken on: architecture, CPU, logical CPUs, system, Python, torch and its intra-op
    threads, the device; on the CPU the ISA of cfbi_ops' kernels and the 1-minute load average (other processes
    on the cores skew times), on CUDA the GPU's name."""
    import torch  # noqa: PLC0415 - benchmarks that only start subprocesses need no torch until here

    import cfbi_ops  # noqa: PLC0415

    device = str(device)
    info: dict[str, Any] = {
        "machine": platform.machine(),
        "cpu": cpu_name(),
        "logical CPUs": os.cpu_count(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": device,
    }
    if device.startswith("cpu"):
        info["isa"] = torch.ops.cfbi.cpu_isa() if cfbi_ops.HAS_EXTENSION else "no compiled extension"
        if hasattr(os, "getloadavg"):
            info["load average (1 min)"] = round(os.getloadavg()[0], 1)
    else:
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info
