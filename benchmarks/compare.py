"""Kernel benchmark: cfbi_ops against its peers on the CFBI+ matching shapes.

    python -m benchmarks.compare                       # CPU, all cases -> benchmarks/results/cpu.{md,json}
    python -m benchmarks.compare --device cuda         # GPU -> benchmarks/results/cuda-<gpu>.{md,json}
    python -m benchmarks.compare --cases s4 --labels 4 --quick

Times are medians of repeated runs in one process (ratios are what count: the machines are noisy). Peak extra
memory is measured in a fresh subprocess per (case, peer): peak RSS growth on CPU, max allocated on CUDA.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

import cfbi_ops
from benchmarks.cases import (
    CASES,
    FORWARD_ONLY,
    PEERS,
    Case,
    has_faiss,
    make_inputs,
    mm_global_operands,
    mm_local_operands,
    outputs_bytes,
)
from benchmarks.machine import machine_info

ROOT = Path(__file__).resolve().parents[1]

RESULTS = ROOT / "benchmarks" / "results"
HALF_DTYPES = (torch.float16, torch.bfloat16)  # CPU rows of cfbi_ops at L = 4, named cfbi_ops[<dtype>]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def median_ms(fn: Callable[[], object], device: str, repeats: int, budget_s: float) -> float:
    """Median wall time of fn() in ms, after one warm-up; stops early once budget_s is spent."""
    fn()
    _sync(device)
    times = []
    start = time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() - start > budget_s and len(times) >= 3:
            break
    return statistics.median(times)


def run_peer(
    case: Case, op: str, peer: str, num_labels: int, backward: bool, device: str, dtype: torch.dtype = torch.float32
):
    """A closure running one forward (and backward) of the peer on fixed inputs of the given dtype."""
    x = make_inputs(case, num_labels, device, grad=backward, dtype=dtype)
    fn = PEERS[op][peer]
    if not backward:

        def forward():
            with torch.no_grad():
                return fn(case, x)

        return forward

    leaves = [x.query, x.reference if op == "global" else x.previous, x.fg_bias, x.bg_bias]

    def forward_backward():
        fg, bg = fn(case, x)
        torch.autograd.grad((fg.sum() + bg.sum(),), leaves, allow_unused=True)

    return forward_backward


def mm_peer(case: Case, op: str, device: str, tf32: bool = False):
    a, b = (mm_global_operands if op == "global" else mm_local_operands)(case, device)

    def mm():
        torch.backends.cuda.matmul.allow_tf32 = tf32
        return torch.mm(a, b)

    return mm


def peak_memory_mb(case: str, op: str, peer: str, labels: int, backward: bool, device: str) -> float | None:
    """Peak extra memory of one call, in a fresh process."""
    code = f"""
import torch
from benchmarks.compare import run_peer, mm_peer
from benchmarks.cases import CASES
case = CASES[{case!r}]
if {peer!r} == "torch.mm":
    fn = mm_peer(case, {op!r}, {device!r})
else:
    fn = run_peer(case, {op!r}, {peer!r}, {labels}, {backward}, {device!r})
if {device!r} == "cuda":
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
    fn(); torch.cuda.synchronize(); print((torch.cuda.max_memory_allocated() - base) / 2**20)
else:
    # VmHWM after resetting it (clear_refs 5): ru_maxrss would carry the parent's peak across fork + exec.
    def status(key): return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(key))
    open('/proc/self/clear_refs', 'w').write('5')
    base = status('VmRSS:'); fn(); print(max(0, status('VmHWM:') - base) / 1024)
"""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,  # where `benchmarks` imports from
        env=dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads())),
    )
    try:
        return float(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return None


def thread_scaling(case: Case, op: str, labels: int, repeats: int, budget: float) -> tuple[float, float, bool]:
    """(ms with 1 thread, ms with 2 threads, outputs and gradients bit-identical)."""
    results, times = [], []
    saved = torch.get_num_threads()
    for threads in (1, 2):
        torch.set_num_threads(threads)
        x = make_inputs(case, labels, grad=True)
        fn = PEERS[op]["cfbi_ops"]
        times.append(median_ms(lambda fn=fn, x=x: fn(case, x), "cpu", repeats, budget))
        fg, bg = fn(case, x)
        grads = torch.autograd.grad(fg.sum() + 2 * bg.sum(), [x.query, x.reference if op == "global" else x.previous])
        results.append([fg, bg, *grads])
    torch.set_num_threads(saved)
    identical = all(torch.equal(a, b) for a, b in zip(*results))
    return times[0], times[1], identical


def offset_robustness(offsets: tuple[float, ...] = (0.0, 1.0, 10.0, 100.0, 1000.0)) -> list[dict]:
    """max |fg_float32 - fg_float64| of global_match (same values, C = 64, sigma = 0.05) when query and reference
    share an offset: ||q - r|| is unchanged, so only the selection's rounding can move fg."""
    out = []
    for offset in offsets:
        gen = torch.Generator().manual_seed(int(offset))
        query = (0.05 * torch.randn(1, 64, 40, 40, generator=gen, dtype=torch.float64) + offset).float()
        reference = (0.05 * torch.randn(1, 64, 40, 40, generator=gen, dtype=torch.float64) + offset).float()
        labels = torch.randint(0, 4, (1, 40, 40), generator=gen)
        fg32, _ = cfbi_ops.global_match(query, reference, labels, 4, 0.0, 0.0)
        fg64, _ = cfbi_ops.global_match(query.double(), reference.double(), labels, 4, 0.0, 0.0)
        out.append(dict(offset=offset, max_abs_fg_diff=(fg32.double() - fg64).abs().max().item()))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--cases", nargs="+", default=["s4", "s8", "s16", "s4-480p"], choices=sorted(CASES))
    parser.add_argument("--labels", nargs="+", type=int, default=[2, 4, 11])
    parser.add_argument("--peers", nargs="+", default=None, help="subset of peers (default: all available)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--budget", type=float, default=3.0, help="seconds per measurement at most")
    parser.add_argument("--no-memory", action="store_true", help="skip the subprocess memory measurements")
    parser.add_argument("--quick", action="store_true", help="one repeat, no memory or thread runs (smoke test)")
    parser.add_argument("--out", type=Path, default=None, help="output stem (default benchmarks/results/<device>)")
    parser.add_argument(
        "--protocol",
        default="auto",
        choices=["auto", "cpu", "gpu"],
        help="gpu: the GPU table (dtypes, TF32 / 16-bit torch.mm, targets); auto: by --device",
    )
    parser.add_argument(
        "--dtypes",
        nargs="+",
        default=list(GPU_DTYPES),
        choices=list(GPU_DTYPES),
        help="cfbi_ops dtypes of the GPU table",
    )
    parser.add_argument(
        "--add-model",
        nargs="+",
        type=Path,
        default=None,
        metavar="JSON",
        help="add benchmarks/model_speed.py --json results to the GPU table at --out (runs nothing)",
    )
    args = parser.parse_args(argv)
    if args.add_model:
        if args.out is None:
            parser.error("--add-model needs --out")
        add_model_results(args.out, args.add_model)
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    if args.protocol == "gpu" or (args.protocol == "auto" and args.device == "cuda"):
        return run_gpu_protocol(args)
    if args.quick:
        args.repeats, args.budget, args.no_memory = 1, 0.0, True

    rows = []
    for case_name in args.cases:
        case = CASES[case_name]
        for op in ("global", "local"):
            peers = [p for p in PEERS[op] if args.peers is None or p in args.peers]
            if "faiss" in peers and (not has_faiss() or args.device != "cpu"):
                peers.remove("faiss")
            for labels in args.labels:
                for backward in (False, True):
                    mode = "fwd+bwd" if backward else "fwd"
                    for peer in peers:
                        if backward and peer in FORWARD_ONLY:
                            continue
                        if peer == "naive" and op == "local" and case_name.startswith("s4") and labels != 4:
                            continue  # ~2 GB and seconds per call: measured at L = 4 only
                        ms = median_ms(
                            run_peer(case, op, peer, labels, backward, args.device),
                            args.device,
                            args.repeats,
                            args.budget,
                        )
                        mem = None
                        if not args.no_memory and labels == 4:
                            mem = peak_memory_mb(case_name, op, peer, labels, backward, args.device)
                        rows.append(
                            dict(case=case_name, op=op, labels=labels, mode=mode, peer=peer, ms=ms, peak_mb=mem)
                        )
                        print(
                            f"{case_name:8s} {op:6s} L={labels:<2d} {mode:7s} {peer:10s} {ms:9.2f} ms"
                            + (f"  {mem:8.1f} MB" if mem is not None else ""),
                            flush=True,
                        )
            if args.device == "cpu" and (args.peers is None or "cfbi_ops" in args.peers) and 4 in args.labels:
                for dtype in HALF_DTYPES:  # 16-bit inputs (computed in float32), L = 4
                    for backward in (False, True):
                        mode = "fwd+bwd" if backward else "fwd"
                        peer = f"cfbi_ops[{str(dtype).replace('torch.', '')}]"
                        ms = median_ms(
                            run_peer(case, op, "cfbi_ops", 4, backward, args.device, dtype),
                            args.device,
                            args.repeats,
                            args.budget,
                        )
                        rows.append(dict(case=case_name, op=op, labels=4, mode=mode, peer=peer, ms=ms, peak_mb=None))
                        print(f"{case_name:8s} {op:6s} L=4  {mode:7s} {peer:10s} {ms:9.2f} ms", flush=True)
            if args.peers is None or "torch.mm" in args.peers:
                variants = [("torch.mm", False)] + ([("torch.mm-tf32", True)] if args.device == "cuda" else [])
                for name, tf32 in variants:
                    ms = median_ms(mm_peer(case, op, args.device, tf32), args.device, args.repeats, args.budget)
                    mem = (
                        None
                        if args.no_memory or tf32
                        else peak_memory_mb(case_name, op, "torch.mm", 4, False, args.device)
                    )
                    rows.append(dict(case=case_name, op=op, labels=None, mode="fwd", peer=name, ms=ms, peak_mb=mem))
                    print(f"{case_name:8s} {op:6s}      fwd     {name:10s} {ms:9.2f} ms", flush=True)

    scaling = []
    if args.device == "cpu" and not args.quick:
        for case_name in args.cases:
            for op in ("global", "local"):
                t1, t2, same = thread_scaling(CASES[case_name], op, 4, args.repeats, args.budget)
                scaling.append(
                    dict(case=case_name, op=op, ms_1_thread=t1, ms_2_threads=t2, speedup=t1 / t2, bit_identical=same)
                )
                print(
                    f"{case_name:8s} {op:6s} threads 1: {t1:.2f} ms  2: {t2:.2f} ms  x{t1 / t2:.2f}  identical={same}",
                    flush=True,
                )

    offsets = offset_robustness() if args.device == "cpu" else []
    for o in offsets:
        print(f"offset {o['offset']:7.1f}: max |fg32 - fg64| = {o['max_abs_fg_diff']:.3g}", flush=True)

    info = machine_info(args.device)
    stem = args.out or RESULTS / (
        args.device if args.device == "cpu" else "cuda-" + info["gpu"].replace(" ", "-").lower()
    )
    write_results(stem, info, rows, scaling, args, offsets)
    print(f"wrote {stem}.md and {stem}.json")
    return 0


def _ms(rows, **key) -> float | None:
    for row in rows:
        if all(row.get(k) == v for k, v in key.items()):
            return row["ms"]
    return None


def targets(rows: list[dict], args) -> list[tuple[str, str]]:
    """The issue's target ratios, from the measured rows."""
    out = []
    for case in args.cases:
        fwd = _ms(rows, case=case, op="global", labels=4, mode="fwd", peer="cfbi_ops")
        mm = _ms(rows, case=case, op="global", peer="torch.mm")
        if fwd and mm:
            out.append((f"{case} global fwd L=4 / torch.mm", f"{fwd / mm:.2f}"))
        faiss_ms = _ms(rows, case=case, op="global", labels=4, mode="fwd", peer="faiss")
        if fwd and faiss_ms:
            out.append((f"{case} global fwd L=4 / faiss", f"{fwd / faiss_ms:.2f}"))
        l11 = _ms(rows, case=case, op="global", labels=11, mode="fwd", peer="cfbi_ops")
        l2 = _ms(rows, case=case, op="global", labels=2, mode="fwd", peer="cfbi_ops")
        if l11 and l2:
            out.append((f"{case} global fwd L=11 / L=2", f"{l11 / l2:.2f}"))
        lfwd = _ms(rows, case=case, op="local", labels=4, mode="fwd", peer="cfbi_ops")
        naive = _ms(rows, case=case, op="local", labels=4, mode="fwd", peer="naive")
        lmm = _ms(rows, case=case, op="local", peer="torch.mm")
        if lfwd and naive:
            out.append((f"{case} local fwd L=4: naive / cfbi_ops", f"{naive / lfwd:.1f}"))
        if lfwd and lmm:
            out.append((f"{case} local fwd L=4 / torch.mm (same MACs)", f"{lfwd / lmm:.2f}"))
        for op in ("global", "local"):
            f = _ms(rows, case=case, op=op, labels=4, mode="fwd", peer="cfbi_ops")
            fb = _ms(rows, case=case, op=op, labels=4, mode="fwd+bwd", peer="cfbi_ops")
            if f and fb:
                out.append((f"{case} {op} backward / forward L=4", f"{(fb - f) / f:.2f}"))
            for dtype in HALF_DTYPES:
                name = str(dtype).replace("torch.", "")
                hf = _ms(rows, case=case, op=op, labels=4, mode="fwd", peer=f"cfbi_ops[{name}]")
                hfb = _ms(rows, case=case, op=op, labels=4, mode="fwd+bwd", peer=f"cfbi_ops[{name}]")
                if hf and f:
                    out.append((f"{case} {op} fwd L=4 {name} / float32", f"{hf / f:.2f}"))
                if hf and hfb:
                    out.append((f"{case} {op} {name} backward / forward L=4", f"{(hfb - hf) / hf:.2f}"))
    return out


def compat_speedups(rows: list[dict]) -> list[dict]:
    """The authors' functions run by their implementation (peer `naive`) and by cfbi_ops.compat (peer `compat`),
    same calls: ms of each and the speed-up, for every (case, op, L, mode) measured with both."""
    out = []
    for row in rows:
        if row["peer"] != "compat":
            continue
        key = {k: row[k] for k in ("case", "op", "labels", "mode")}
        naive = _ms(rows, peer="naive", **key)
        if naive:
            out.append(dict(key, naive_ms=naive, compat_ms=row["ms"], speedup=naive / row["ms"]))
    return out


def write_results(
    stem: Path, info: dict, rows: list[dict], scaling: list[dict], args, offsets: list[dict] | None = None
) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    ratios = targets(rows, args)
    speedups = compat_speedups(rows)
    offsets = offsets or []
    if offsets:
        ratios.append(
            (
                "global max |fg float32 - fg float64|, offsets 0-1000",
                f"{max(o['max_abs_fg_diff'] for o in offsets):.2g}",
            )
        )
    stem.with_suffix(".json").write_text(
        json.dumps(
            dict(
                machine=info,
                rows=rows,
                thread_scaling=scaling,
                ratios=dict(ratios),
                compat_speedups=speedups,
                offset_robustness=offsets,
            ),
            indent=1,
        )
    )
    lines = [
        f"# cfbi_ops benchmark ({info['device']})",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()),
        "",
        "Command: `python -m benchmarks.compare " + " ".join(sys.argv[1:]) + "`",
        "",
        "Median ms per call; peak extra memory (MB) measured at L = 4 in a fresh process. "
        "cfbi_ops[float16] / cfbi_ops[bfloat16]: the same op on 16-bit inputs.",
        "",
        "| case | op | L | mode | peer | ms | peak MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mem = "" if r["peak_mb"] is None else f"{r['peak_mb']:.1f}"
        lines.append(
            f"| {r['case']} | {r['op']} | {r['labels'] or ''} | {r['mode']} | {r['peer']} | {r['ms']:.2f} | {mem} |"
        )
    if ratios:
        lines += ["", "## Ratios", "", "| ratio | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in ratios]
    if speedups:
        lines += [
            "",
            "## The authors' functions: their implementation (naive) / cfbi_ops.compat",
            "",
            "| case | op | L | mode | naive ms | compat ms | speed-up |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {s['case']} | {s['op']} | {s['labels']} | {s['mode']} | {s['naive_ms']:.2f} | "
            f"{s['compat_ms']:.2f} | {s['speedup']:.1f} |"
            for s in speedups
        ]
    if scaling:
        lines += [
            "",
            "## Threads (cfbi_ops forward, L = 4)",
            "",
            "| case | op | 1 thread ms | 2 threads ms | speed-up | bit-identical |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {s['case']} | {s['op']} | {s['ms_1_thread']:.2f} | {s['ms_2_threads']:.2f} | {s['speedup']:.2f} | "
            f"{s['bit_identical']} |"
            for s in scaling
        ]
    if offsets:
        lines += [
            "",
            "## Offset robustness (global_match, C = 64, sigma = 0.05, 40 x 40, L = 4)",
            "",
            "| offset | max abs(fg float32 - fg float64) |",
            "|---|---|",
        ]
        lines += [f"| {o['offset']:g} | {o['max_abs_fg_diff']:.2g} |" for o in offsets]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------------------------------
# GPU table (--device cuda, or --protocol gpu): cfbi_ops in float32 / float16 / bfloat16 against torch.mm of the
# same size (float32, TF32, 16-bit) and the naive approach, peak memory from the CUDA allocator's statistics (in
# process), the targets, and the model's per-frame time added by --add-model.
# ----------------------------------------------------------------------------------------------------------------

GPU_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TARGET_GLOBAL_VS_MM = 1.5  # global forward <= 1.5 x the float32 torch.mm of the same size
TARGET_LOCAL_VS_NAIVE = 20.0  # local forward >= 20 x faster than the naive unfold approach
TARGET_PEAK_VS_OUTPUTS = 2.0  # peak extra memory of a forward <= 2 x its outputs (fg, bg, argmin)
TARGET_FPS = 11.0  # float32, 480p, 2 objects: twice CFBI+'s published 5.52 frames/s on a V100


def gpu_call(
    case: Case, op: str, peer: str, labels: int, backward: bool, device: str, dtype: torch.dtype
) -> Callable[[], object]:
    """A closure running one forward (and backward) of the peer in dtype on fixed inputs."""
    x = make_inputs(case, labels, device, grad=backward, dtype=dtype)
    fn = PEERS[op][peer]
    if not backward:

        def forward():
            with torch.no_grad():
                return fn(case, x)

        return forward
    leaves = [x.query, x.reference if op == "global" else x.previous, x.fg_bias, x.bg_bias]

    def forward_backward():
        fg, bg = fn(case, x)
        torch.autograd.grad((fg.float().sum() + bg.float().sum(),), leaves, allow_unused=True)

    return forward_backward


def gpu_mm(case: Case, op: str, device: str, dtype: torch.dtype, tf32: bool) -> Callable[[], object]:
    """torch.mm with the operands of the op's search ([N, C] x [C, M]); tf32 switches TF32 on for float32."""
    a, b = (mm_global_operands if op == "global" else mm_local_operands)(case, device)
    a, b = a.to(dtype), b.to(dtype)

    def mm():
        saved = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("high" if tf32 else "highest")
        try:
            return torch.mm(a, b)
        finally:
            torch.set_float32_matmul_precision(saved)

    return mm


def device_peak_mb(fn: Callable[[], object], device: str) -> float | None:
    """Peak memory allocated on the CUDA device during fn() beyond what was allocated before, in MB (None on
    the CPU, where compare.peak_memory_mb measures a fresh process instead)."""
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def gpu_rows(args) -> tuple[list[dict], list[str]]:
    """Measures every row of the GPU table (printing each); returns the rows and the calls that failed (a
    RuntimeError such as running out of memory loses that row only)."""
    device, rows, errors = args.device, [], []

    def measure(case_name, op, labels, dtype_name, mode, peer, make):
        try:
            fn = make()
            ms = median_ms(fn, device, args.repeats, args.budget)
            peak = device_peak_mb(fn, device)
        except RuntimeError as error:
            first_line = (str(error).splitlines() or [repr(error)])[0]
            errors.append(f"{case_name} {op} L={labels} {dtype_name} {mode} {peer}: {first_line}")
            print("failed: " + errors[-1], flush=True)
            return
        finally:
            fn = None
            if device == "cuda":
                torch.cuda.empty_cache()
        out_mb = outputs_bytes(CASES[case_name], labels, op) / 2**20 if labels else None
        rows.append(
            dict(
                case=case_name,
                op=op,
                labels=labels,
                dtype=dtype_name,
                mode=mode,
                peer=peer,
                ms=ms,
                peak_mb=peak,
                outputs_mb=out_mb,
            )
        )
        print(
            f"{case_name:8s} {op:6s} L={labels or '-'!s:<2s} {dtype_name:8s} {mode:7s} {peer:14s} {ms:9.3f} ms"
            + (f"  {peak:8.1f} MB" if peak is not None else ""),
            flush=True,
        )

    for case_name in args.cases:
        case = CASES[case_name]
        for op in ("global", "local"):
            for labels in args.labels:
                for dtype_name in args.dtypes:
                    for backward in (False, True):
                        measure(
                            case_name,
                            op,
                            labels,
                            dtype_name,
                            "fwd+bwd" if backward else "fwd",
                            "cfbi_ops",
                            partial(gpu_call, case, op, "cfbi_ops", labels, backward, device, GPU_DTYPES[dtype_name]),
                        )
                for backward in (False, True) if labels == 4 else (False,):
                    measure(
                        case_name,
                        op,
                        labels,
                        "float32",
                        "fwd+bwd" if backward else "fwd",
                        "naive",
                        partial(gpu_call, case, op, "naive", labels, backward, device, torch.float32),
                    )
            for dtype_name, tf32 in [("float32", False), ("float32", True)] + [
                (d, False) for d in args.dtypes if d != "float32"
            ]:
                measure(
                    case_name,
                    op,
                    None,
                    dtype_name,
                    "fwd",
                    "torch.mm-tf32" if tf32 else "torch.mm",
                    partial(gpu_mm, case, op, device, GPU_DTYPES[dtype_name], tf32),
                )
    return rows, errors


def _gpu_ms(rows: list[dict], **key) -> float | None:
    for row in rows:
        if all(row.get(k) == v for k, v in key.items()):
            return row["ms"]
    return None


def _target(name: str, value: float, target: str | None, ok: bool | None) -> dict:
    return dict(name=name, value=value, target=target, ok=ok)


def gpu_targets(rows: list[dict], cases: list[str]) -> list[dict]:
    """The issue's targets per case (float32, L = 4) and informative ratios (target None)."""
    out = []
    for case in cases:
        ours = dict(case=case, labels=4, dtype="float32", mode="fwd", peer="cfbi_ops")
        g, mm = (
            _gpu_ms(rows, op="global", **ours),
            _gpu_ms(rows, case=case, op="global", dtype="float32", peer="torch.mm"),
        )
        if g and mm:
            out.append(
                _target(
                    f"{case} global fwd / float32 torch.mm",
                    g / mm,
                    f"<= {TARGET_GLOBAL_VS_MM}",
                    g / mm <= TARGET_GLOBAL_VS_MM,
                )
            )
        tf32 = _gpu_ms(rows, case=case, op="global", peer="torch.mm-tf32")
        if g and tf32:
            out.append(_target(f"{case} global fwd / TF32 torch.mm", g / tf32, None, None))
        for dtype in ("float16", "bfloat16"):
            g16 = _gpu_ms(rows, case=case, op="global", labels=4, dtype=dtype, mode="fwd", peer="cfbi_ops")
            mm16 = _gpu_ms(rows, case=case, op="global", dtype=dtype, peer="torch.mm")
            if g16 and mm16:
                out.append(_target(f"{case} global fwd / torch.mm, {dtype}", g16 / mm16, None, None))
        loc = _gpu_ms(rows, op="local", **ours)
        naive = _gpu_ms(rows, case=case, op="local", labels=4, dtype="float32", mode="fwd", peer="naive")
        if loc and naive:
            out.append(
                _target(
                    f"{case} local fwd: naive / cfbi_ops",
                    naive / loc,
                    f">= {TARGET_LOCAL_VS_NAIVE:g}",
                    naive / loc >= TARGET_LOCAL_VS_NAIVE,
                )
            )
        lmm = _gpu_ms(rows, case=case, op="local", dtype="float32", peer="torch.mm")
        if loc and lmm:
            out.append(_target(f"{case} local fwd / float32 torch.mm (same MACs)", loc / lmm, None, None))
        for row in rows:
            if all(row.get(k) == v for k, v in ours.items()) and row["peak_mb"] is not None and row["outputs_mb"]:
                ratio = row["peak_mb"] / row["outputs_mb"]
                out.append(
                    _target(
                        f"{case} {row['op']} fwd peak memory / outputs",
                        ratio,
                        f"<= {TARGET_PEAK_VS_OUTPUTS:g}",
                        ratio <= TARGET_PEAK_VS_OUTPUTS,
                    )
                )
    return out


def model_label(args: dict, row: dict | None = None) -> str:
    """What a model run (or one of its rows) measured: AMP, or its precision variant (e.g. bfloat16+compile)."""
    if args.get("amp"):
        return "AMP"
    if row is not None and "variant" in row:
        return row["variant"]
    return "+".join(args.get("variants") or ["float32"])


def model_targets(model: list[dict]) -> list[dict]:
    """Frames per second of each model row; every row against the issue's target, AMP excepted."""
    out = []
    for run in model:
        for row in run["rows"]:
            fps = 1.0 / row["median"]
            label = model_label(run["args"], row)
            name = (
                f"model {row['config']} {run['args']['height']}x{run['args']['width']} "
                f"{run['args']['objects']} objects {label} frames/s"
            )
            if label == "AMP":
                out.append(_target(name, fps, None, None))
            else:
                out.append(_target(name, fps, f">= {TARGET_FPS:g}", fps >= TARGET_FPS))
    return out


def render_gpu_markdown(data: dict) -> str:
    """The Markdown page of a GPU table (the JSON written by write_gpu_results / add_model_results)."""
    info = data["machine"]
    lines = [
        f"# cfbi_ops benchmark ({info.get('gpu', info['device'])})",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()),
        "",
        f"Command: `{data['command']}`",
        "",
        "Median ms per call (CUDA synchronised); peak MB: the CUDA allocator's peak during one call beyond what "
        "was allocated before (inputs excluded, outputs included); outputs MB: fg + bg + int32 argmin in "
        "float32. torch.mm: [N, C] x [C, M] with the search's multiply-adds.",
        "",
        "| case | op | L | dtype | mode | peer | ms | peak MB | outputs MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        peak = "" if r["peak_mb"] is None else f"{r['peak_mb']:.2f}"
        out = "" if r["outputs_mb"] is None else f"{r['outputs_mb']:.2f}"
        lines.append(
            f"| {r['case']} | {r['op']} | {r['labels'] or ''} | {r['dtype']} | {r['mode']} | {r['peer']} | "
            f"{r['ms']:.3f} | {peak} | {out} |"
        )
    for run in data.get("model", []):
        a = run["args"]
        lines += [
            "",
            f"## Model per-frame time ({model_label(a)})",
            "",
            f"`VideoSegmenter.step` on a {a['height']}x{a['width']} frame, {a['objects']} objects, "
            f"{a['warmup']} warm-up and {a['frames']} timed frames, random weights "
            "(benchmarks/model_speed.py).",
            "",
            "| config | network input | ms/frame (median) | frames/s | global match ms | local match ms | "
            "matching share | features ms | ensembler ms |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in run["rows"]:
            lines.append(
                f"| {r['config']} | {r['input'][0]}x{r['input'][1]} | {r['median'] * 1000:.1f} | "
                f"{1 / r['median']:.1f} | {r['global'] * 1000:.1f} | {r['local'] * 1000:.1f} | "
                f"{100 * r['share']:.1f}% | {r['features'] * 1000:.1f} | {r['ensembler'] * 1000:.1f} |"
            )
    if data.get("errors"):
        lines += ["", "## Failed calls", ""] + [f"- {e}" for e in data["errors"]]
    if data["targets"]:
        lines += ["", "## Targets and ratios", "", "| ratio | value | target | met |", "|---|---|---|---|"]
        for t in data["targets"]:
            met = "" if t["ok"] is None else ("yes" if t["ok"] else "**no**")
            lines.append(f"| {t['name']} | {t['value']:.2f} | {t['target'] or ''} | {met} |")
    return "\n".join(lines) + "\n"


def _write_gpu(stem: Path, data: dict) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(data, indent=1))
    stem.with_suffix(".md").write_text(render_gpu_markdown(data))


def run_gpu_protocol(args) -> int:
    """Measures the GPU table and writes <stem>.{md,json} (default benchmarks/results/cuda-<gpu>)."""
    if args.quick:
        args.repeats, args.budget = 1, 0.0
    rows, errors = gpu_rows(args)
    info = machine_info(args.device)
    stem = args.out or RESULTS / ("cuda-" + info.get("gpu", args.device).replace(" ", "-").lower())
    data = dict(
        machine=info,
        command="python -m benchmarks.compare " + " ".join(sys.argv[1:]),
        rows=rows,
        errors=errors,
        targets=gpu_targets(rows, args.cases),
        model=[],
    )
    _write_gpu(stem, data)
    print(f"wrote {stem}.md and {stem}.json" + (f"; {len(errors)} call(s) failed" if errors else ""))
    return 1 if errors else 0


def add_model_results(stem: Path, model_jsons: list[Path]) -> None:
    """Adds the runs of benchmarks/model_speed.py --json (missing files are skipped) and their frames/s targets to
    the GPU table at stem (created without kernel rows if the kernel benchmark did not write it)."""
    path = stem.with_suffix(".json")
    if path.exists():
        data = json.loads(path.read_text())
    else:
        data = dict(
            machine=machine_info("cuda" if torch.cuda.is_available() else "cpu"),
            command="(not run)",
            rows=[],
            targets=[],
            model=[],
        )
    runs = [json.loads(p.read_text()) for p in model_jsons if p.exists()]
    data["model"] = data.get("model", []) + runs
    data["targets"] = data["targets"] + model_targets(runs)
    _write_gpu(stem, data)
    print(f"added {len(runs)} model run(s) to {stem}.md and {stem}.json")


if __name__ == "__main__":
    sys.exit(main())
