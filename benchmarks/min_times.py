"""Minimum wall time (ms) of the compiled CPU ops over repeated calls, for comparing two builds on a busy machine.

    python benchmarks/min_times.py ROOT [ROUNDS]     # ROOT: a checkout whose cfbi_ops holds the build to time

Prints one JSON object {row: min ms}. The minimum over rounds is the statistic least disturbed by other load; run
two builds alternately (A B A B) and compare the minima (benchmarks/results/wheels.md does so).
"""

from __future__ import annotations

import json
import sys
import time

root = sys.argv[1]
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 15
sys.path.insert(0, root)

import torch  # noqa: E402

import cfbi_ops  # noqa: E402
from benchmarks.cases import CASES, make_inputs  # noqa: E402

assert cfbi_ops.ops._C.__file__.startswith(root), f"timing {cfbi_ops.ops._C.__file__}, not a build under {root}"


def timed_call(case, op: str, mode: str, num_labels: int, dtype: torch.dtype):
    x = make_inputs(case, num_labels, grad=mode == "fwd+bwd", dtype=dtype)

    def call() -> None:
        if op == "global":
            fg, bg = cfbi_ops.global_match(
                x.query, x.reference, x.ref_labels, num_labels, x.fg_bias, x.bg_bias,
                atrous=case.global_atrous, backend="compiled",
            )  # fmt: skip
        else:
            fg, bg = cfbi_ops.local_match(
                x.query, x.previous, x.prev_labels, num_labels, x.fg_bias, x.bg_bias,
                windows=case.windows, atrous=case.local_atrous, backend="compiled",
            )  # fmt: skip
        if mode == "fwd+bwd":
            (fg.float().sum() + bg.float().sum()).backward()

    return call


out = {}
for name in ("s4", "s8"):
    for num_labels in (2, 4, 11):
        dtypes = (torch.float32, torch.float16, torch.bfloat16) if num_labels == 4 else (torch.float32,)
        for dtype in dtypes:
            for op in ("global", "local"):
                for mode in ("fwd", "fwd+bwd"):
                    call = timed_call(CASES[name], op, mode, num_labels, dtype)
                    call()
                    times = []
                    for _ in range(rounds):
                        start = time.perf_counter()
                        call()
                        times.append(time.perf_counter() - start)
                    out[f"{name} {op} L={num_labels} {str(dtype)[6:]} {mode}"] = round(1000 * min(times), 2)
print(json.dumps(out))
