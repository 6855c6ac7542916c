"""Runs the CUDA sources of cfbi_ops on the CPU and compares them with the CPU kernels (no GPU needed).

    python tools/cuda_emulation/run.py            # build (build/cuda_emulation) and compare
    python tools/cuda_emulation/run.py --asan     # the same under AddressSanitizer / UBSan (re-executes itself)

The .cu files and csrc/cuda/matching_cuda.cpp are copied with two mechanical rewrites (kernel<<<cfg>>>(args)
becomes ::emu::launch(kernel, cfg)(args); extern __shared__ arrays become the launch's buffer) and built by
g++ against the headers in include/, which emulate the CUDA runtime, cuda_fp16/bf16, cub's radix sort and
csrc/cuda/cuda_context.h (device guard, current stream). The ops are registered as cfbi_emu:: with the schemas
of csrc/ops.cpp and compared with the cfbi:: CPU kernels: forward values and argmin, both backward paths
(atomic, deterministic), degenerate sizes, and opcheck / torch.compile through the CUDA registration code. A
development aid for machines without a GPU; the CUDA tests on a real device (tests/test_cuda.py, the harness's
cuda backend) remain the reference.
"""

from __future__ import annotations

import argparse
import glob
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
BUILD = ROOT / "build" / "cuda_emulation"


def generate() -> Path:
    src = BUILD / "src"
    shutil.rmtree(src, ignore_errors=True)
    (src / "cuda").mkdir(parents=True)
    for header in ("matching.h", "checks.h"):
        shutil.copy(ROOT / "csrc" / header, src / header)
    # The schemas of the four matching ops, from the m.def("...") string literals of csrc/ops.cpp.
    ops = (ROOT / "csrc" / "ops.cpp").read_text()
    defs = ["".join(re.findall(r'"([^"]*)"', call)) for call in re.findall(r"m\.def\(\s*((?:\"[^\"]*\"\s*)+)\)", ops)]
    defs = [d for d in defs if re.match(r"(global|local)_match(_backward)?\(", d)]
    assert len(defs) == 4, defs
    schemas = "STABLE_TORCH_LIBRARY(cfbi_emu, m) {\n" + "".join(f'  m.def("{d}");\n' for d in defs) + "}\n"
    for path in sorted((ROOT / "csrc" / "cuda").iterdir()):
        text = path.read_text()
        if path.suffix == ".cu":
            text = re.sub(
                r"([\w:]+(?:<[^<>;]*>)?)<<<(.*?)>>>\(",
                lambda m: f"::emu::launch({m.group(1)}, {m.group(2)})(",
                text,
                flags=re.S,
            )
            text = re.sub(r"extern __shared__ (\w+) (\w+)\[\];", r"\1* \2 = ::emu::dynamic_shared<\1>();", text)
            (src / "cuda" / (path.stem + "_cu.cpp")).write_text(text)
        elif path.suffix == ".cpp":
            text = text.replace(".is_cuda()", ".is_cpu()")
            text = text.replace(
                "STABLE_TORCH_LIBRARY_IMPL(cfbi, CUDA, m)", schemas + "\nSTABLE_TORCH_LIBRARY_IMPL(cfbi_emu, CPU, m)"
            )
            (src / "cuda" / path.name).write_text(text)
        elif path.name != "cuda_context.h":  # replaced by include/cuda_context.h
            shutil.copy(path, src / "cuda" / path.name)
    return src


def build(asan: bool) -> str:
    from torch.utils.cpp_extension import load

    src = generate()
    flags = ["-O1", "-std=c++20", "-Wno-unknown-pragmas", "-DTORCH_TARGET_VERSION=0x020a000000000000"]
    ldflags = []
    if asan:
        flags += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
        ldflags += ["-fsanitize=address,undefined"]
    name = "cfbi_emu_asan" if asan else "cfbi_emu"
    out = BUILD / name
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MAX_JOBS", "2")
    load(
        name=name,
        sources=sorted(glob.glob(str(src / "cuda" / "*.cpp"))),
        extra_include_paths=[str(HERE / "include"), str(src)],
        extra_cflags=flags,
        extra_ldflags=ldflags,
        is_python_module=False,
        build_directory=str(out),
        verbose=False,
    )
    return str(out / f"{name}.so")


# --------------------------------------------------------------------------------------------------
# Comparisons
# --------------------------------------------------------------------------------------------------


class Checker:
    def __init__(self):
        self.failures = 0
        self.checks = 0

    def close(self, name, got, expected, exact=True, tol=1e-5, argmin=False):
        import torch

        self.checks += 1
        if got.shape != expected.shape or got.dtype != expected.dtype:
            self.fail(name, f"shape/dtype {tuple(got.shape)} {got.dtype} vs {tuple(expected.shape)} {expected.dtype}")
            return
        if argmin and not exact:  # a dot-product search (CPU float32, GPU global) may order a near-tie differently
            if not torch.equal(got < 0, expected < 0) or (got != expected).double().mean() > 1e-2:
                self.fail(name, "argmin differs")
            return
        ok = (
            torch.equal(got, expected) if exact else torch.allclose(got.double(), expected.double(), rtol=tol, atol=tol)
        )
        if not ok:
            diff = (got.double() - expected.double()).abs()
            self.fail(name, f"max diff {diff.max().item():.3g} at {int((diff > 0).sum())} / {diff.numel()}")

    def fail(self, name, message):
        self.failures += 1
        print(f"FAIL {name}: {message}")


def compare(lib: str) -> int:
    import torch

    sys.path.insert(0, str(ROOT))
    import cfbi_ops  # noqa: F401  (registers the cfbi:: CPU kernels)

    torch.ops.load_library(lib)
    check = Checker()
    ops_cpu, ops_emu = torch.ops.cfbi, torch.ops.cfbi_emu

    def tolerances(dtype):
        # float32 / float64: CPU float32 fast paths sum in another order (scores within an ulp or two).
        return {torch.float32: 1e-6, torch.float64: 1e-12, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]

    def backward(tag, fn, args, fwd, dtype, g):
        # args: (query, reference / previous, fg_bias, bg_bias)
        grad_fg = torch.randn(fwd[0].shape, generator=g).to(dtype)
        grad_bg = torch.randn(fwd[0].shape, generator=g).to(dtype)
        expected = getattr(ops_cpu, fn)(grad_fg, grad_bg, fwd[0], fwd[2], *args)
        for deterministic in (False, True):
            got = getattr(ops_emu, fn)(grad_fg, grad_bg, fwd[0], fwd[2], *args, deterministic)
            tol = 1e-5 if dtype in (torch.float32, torch.float64) else 3e-2
            for name, a, b in zip(("query", "candidates", "fg_bias", "bg_bias"), got, expected):
                check.close(f"{tag} {fn} det={deterministic} {name}", a, b, exact=False, tol=tol)
                check.close(
                    f"{tag} {fn} det={deterministic} {name} strides", torch.tensor(a.stride()), torch.tensor(b.stride())
                )

    def global_case(B, T, C, H, W, Hr, Wr, L, atrous, min_pixels, dtype, seed, ints=False):
        g = torch.Generator().manual_seed(seed)
        if ints:  # exact ties
            q = torch.randint(-1, 2, (B, C, H, W), generator=g).to(dtype)
            r = torch.randint(-1, 2, (B, T, C, Hr, Wr), generator=g).to(dtype)
        else:
            q = (0.3 * torch.randn(B, C, H, W, generator=g)).to(dtype)
            r = (0.3 * torch.randn(B, T, C, Hr, Wr, generator=g)).to(dtype)
        labels = torch.randint(0, L + 1, (B, T, Hr, Wr), generator=g)
        labels[labels == L] = 255
        fb, bb = torch.tensor([0.1], dtype=dtype), torch.tensor([-0.2], dtype=dtype)
        tag = f"global B{B} T{T} C{C} {H}x{W} ref {Hr}x{Wr} L{L} atrous {atrous} min {min_pixels} {dtype}"
        args = (q, r, labels, L, fb, bb, atrous, min_pixels)
        expected, got = ops_cpu.global_match(*args), ops_emu.global_match(*args)
        exact = dtype == torch.float64  # the others select with dot products
        check.close(tag + " fg", got[0], expected[0], exact=False, tol=tolerances(dtype))
        check.close(tag + " bg", got[1], expected[1], exact=False, tol=tolerances(dtype))
        check.close(tag + " argmin", got[2], expected[2], exact=exact or ints, argmin=True)
        backward(tag, "global_match_backward", (q, r, fb, bb), expected, dtype, g)

    def local_case(B, C, H, W, L, windows, atrous, dtype, seed, ints=False):
        g = torch.Generator().manual_seed(seed)
        if ints:
            q = torch.randint(-1, 2, (B, C, H, W), generator=g).to(dtype)
            p = torch.randint(-1, 2, (B, C, H, W), generator=g).to(dtype)
        else:
            q = (0.3 * torch.randn(B, C, H, W, generator=g)).to(dtype)
            p = (0.3 * torch.randn(B, C, H, W, generator=g)).to(dtype)
        labels = torch.randint(0, L + 1, (B, H, W), generator=g)
        labels[labels == L] = -1
        fb, bb = torch.tensor([0.1], dtype=dtype), torch.tensor([-0.2], dtype=dtype)
        tag = (
            f"local B{B} C{C} {H}x{W} L{L} windows {windows[:8]}{'...' if len(windows) > 8 else ''} "
            f"atrous {atrous} {dtype}"
        )
        args = (q, p, labels, L, fb, bb, list(windows), atrous)
        expected, got = ops_cpu.local_match(*args), ops_emu.local_match(*args)
        exact = dtype != torch.float32
        check.close(tag + " fg", got[0], expected[0], exact=False, tol=tolerances(dtype))
        check.close(tag + " bg", got[1], expected[1], exact=False, tol=tolerances(dtype))
        check.close(tag + " argmin", got[2], expected[2], exact=exact or ints, argmin=True)
        backward(tag, "local_match_backward", (q, p, fb, bb), expected, dtype, g)

    dtypes = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
    for dtype in dtypes:
        global_case(2, 1, 5, 7, 9, 6, 8, 3, 1, 0, dtype, 0)
        global_case(1, 2, 33, 11, 13, 5, 7, 4, 2, 0, dtype, 1)
        global_case(2, 2, 40, 5, 30, 9, 10, 3, 2, 3, dtype, 2)
        global_case(2, 2, 2, 5, 6, 4, 5, 3, 1, 0, dtype, 3, ints=True)
        local_case(2, 5, 7, 9, 3, (1, 2, 3), 1, dtype, 4)
        local_case(1, 33, 10, 37, 4, (4, 0, 2, 4, 8), 2, dtype, 5)
        local_case(1, 70, 6, 8, 2, (3, 1), 1, dtype, 6)
        local_case(2, 2, 9, 11, 3, (2, 1, 3), 1, dtype, 7, ints=True)
    # Per-label row state: the largest L in shared memory, then the smallest in the global workspace.
    local_case(1, 4, 6, 35, 17, (1, 2), 1, torch.float32, 8)
    local_case(1, 4, 6, 35, 18, (3, 2), 1, torch.float32, 8)
    local_case(1, 4, 6, 35, 11, (1, 2), 1, torch.float64, 9)
    local_case(1, 4, 6, 35, 12, (2, 1), 1, torch.float64, 9)
    # Radii over 12 (further dx segments), capped radii, atrous 2 / 3 with H, W not multiples of the rate.
    local_case(1, 6, 9, 45, 3, (13, 4, 25), 1, torch.float32, 14)
    local_case(1, 3, 7, 40, 3, (60, 2, 0), 1, torch.float64, 15)
    local_case(1, 5, 13, 61, 4, (30, 6, 0), 2, torch.float16, 16)
    local_case(2, 4, 11, 44, 3, (9, 3, 40), 3, torch.bfloat16, 17)
    local_case(1, 2, 10, 50, 3, (26, 4, 0, 26), 2, torch.float32, 18, ints=True)
    local_case(1, 40, 6, 30, 22, (14, 1), 1, torch.float64, 19)  # several chunks, state in global memory
    global_case(1, 1, 4, 6, 7, 8, 9, 60, 1, 0, torch.float32, 10)
    rng = random.Random(1)
    local_case(1, 3, 5, 6, 3, tuple(rng.randint(0, 9) for _ in range(70)) + (100, 0, 100), 1, torch.float32, 11)
    local_case(1, 3, 1, 1, 2, (0, 5), 1, torch.float64, 12)
    global_case(1, 3, 6, 5, 5, 7, 8, 4, 3, 1, torch.float32, 13)
    # Many candidate tiles: label runs cross tile and split boundaries; 16-bit inputs on the tensor-core path
    # with a partial channel chunk; exactly 64 candidates (one full tile).
    for dtype in dtypes:
        global_case(2, 2, 37, 9, 17, 30, 41, 3, 1, 0, dtype, 14)
    global_case(1, 1, 16, 3, 50, 8, 8, 1, 1, 0, torch.float16, 15)
    global_case(1, 1, 33, 3, 50, 8, 8, 2, 1, 0, torch.bfloat16, 16, ints=True)
    for i in range(10):
        dtype = rng.choice(dtypes)
        global_case(
            rng.randint(1, 2),
            rng.randint(1, 2),
            rng.randint(1, 40),
            rng.randint(1, 12),
            rng.randint(1, 12),
            rng.randint(1, 9),
            rng.randint(1, 9),
            rng.randint(1, 6),
            rng.randint(1, 3),
            rng.randint(0, 2),
            dtype,
            100 + i,
        )
        local_case(
            rng.randint(1, 2),
            rng.randint(1, 70),
            rng.randint(1, 12),
            rng.randint(1, 40),
            rng.randint(1, 6),
            tuple(rng.randint(0, 8) for _ in range(rng.randint(1, 5))),
            rng.randint(1, 3),
            dtype,
            200 + i,
        )

    # An offset shared by queries and candidates leaves ||q - r|| unchanged and must not move the float32
    # selection (it is centred): fg within 1e-5 of the float64 CPU result on the same values (C = 64, sigma 0.05).
    for offset in (0.0, 10.0, 100.0, 1000.0):
        g = torch.Generator().manual_seed(300 + int(offset))
        q = (0.05 * torch.randn(2, 64, 9, 13, generator=g, dtype=torch.float64) + offset).float()
        r = (0.05 * torch.randn(2, 2, 64, 10, 11, generator=g, dtype=torch.float64) + offset).float()
        labels = torch.randint(0, 3, (2, 2, 10, 11), generator=g)
        fb, bb = torch.tensor([0.1]), torch.tensor([-0.2])
        got = ops_emu.global_match(q, r, labels, 3, fb, bb, 1, 0)[0].double()
        want = ops_cpu.global_match(q.double(), r.double(), labels, 3, fb.double(), bb.double(), 1, 0)[0]
        check.checks += 1
        if (got - want).abs().max().item() > 1e-5:
            check.fail(f"global offset {offset}", f"max |fg - fg64| {(got - want).abs().max().item():.3g}")

    # Degenerate sizes: the emulated CUDA path alone (the CPU backward rejects some of them).
    fb, bb = torch.tensor([0.1]), torch.tensor([-0.2])
    for q, r in [
        (torch.randn(0, 3, 4, 4), torch.randn(0, 1, 3, 2, 2)),
        (torch.randn(1, 3, 0, 4), torch.randn(1, 1, 3, 2, 2)),
        (torch.randn(1, 3, 4, 4), torch.randn(1, 1, 3, 0, 2)),
        (torch.randn(2, 0, 4, 4), torch.randn(2, 1, 0, 3, 2)),
    ]:
        labels = torch.zeros(r.shape[0], r.shape[1], r.shape[3], r.shape[4], dtype=torch.long)
        fg, bg, argmin = ops_emu.global_match(q, r, labels, 3, fb, bb, 2, 1)
        expected = ops_cpu.global_match(q, r, labels, 3, fb, bb, 2, 1)
        check.close(f"global degenerate {tuple(q.shape)} {tuple(r.shape)} fg", fg, expected[0])
        grads = ops_emu.global_match_backward(fg, fg, fg, argmin, q, r, fb, bb)
        # Zero, except the bias gradients with C = 0 (every distance 0: the scores still depend on the biases).
        sums = torch.tensor([float(x.abs().sum()) for x in grads])
        if q.shape[1] == 0:
            want = ops_cpu.global_match_backward(expected[0], expected[0], expected[0], expected[2], q, r, fb, bb)
            check.close(
                "global degenerate C=0 grads",
                sums,
                torch.tensor([float(x.abs().sum()) for x in want]),
                exact=False,
                tol=1e-5,
            )
            check.close(
                "global degenerate C=0 bias grads are not zero",
                torch.tensor(float(sums[2:].sum() > 0)),
                torch.ones(()),
                exact=False,
            )
        else:
            check.close("global degenerate grads", sums, torch.zeros(4))

    for q, labels in [
        (torch.randn(0, 3, 4, 4), torch.zeros(0, 4, 4, dtype=torch.long)),
        (torch.randn(1, 3, 0, 4), torch.zeros(1, 0, 4, dtype=torch.long)),
        (torch.randn(2, 0, 4, 5), torch.randint(0, 3, (2, 4, 5))),
    ]:
        got = ops_emu.local_match(q, q, labels, 3, fb, bb, [1, 2], 1)
        expected = ops_cpu.local_match(q, q, labels, 3, fb, bb, [1, 2], 1)
        for name, a, b in zip(("fg", "bg", "argmin"), got, expected):
            check.close(f"local degenerate {tuple(q.shape)} {name}", a, b)

    # opcheck and torch.compile through the CUDA registration code (fake kernels as in cfbi_ops/ops.py).
    sys.path.insert(0, str(ROOT / "tests"))
    ops_py = (ROOT / "cfbi_ops" / "ops.py").read_text()
    start = ops_py.index('    @torch.library.register_fake("cfbi::global_match")')
    end = ops_py.index('    torch.library.register_autograd("cfbi::local_match"')
    end = ops_py.index("\n", end) + 1
    block = "\n".join(line[4:] for line in ops_py[start:end].splitlines())
    helpers = ops_py[ops_py.index("def _global_backward") : ops_py.index("if HAS_EXTENSION:")]
    code = (
        "from __future__ import annotations\nimport torch\nfrom torch import Tensor\n"
        "from cfbi_ops import _validate\n"
        "from cfbi_ops.ops import _differentiable_backward, _double_backward_wanted, _grad_or_zeros\n" + helpers + block
    )
    exec(code.replace("cfbi::", "cfbi_emu::").replace("torch.ops.cfbi.", "torch.ops.cfbi_emu."), {})
    from test_ops_harness import CASES, opcheck_args

    # The op harness's opcheck cases (both ops, both dense layouts, the small end), on the emulated ops.
    for case in [c for c in CASES if c.name.startswith("opcheck")]:
        for dtype, op in [(d, o) for d in (torch.float32, torch.float64) for o in ("forward", "backward")]:
            try:
                function, args = opcheck_args(case, dtype, "cpu", op, ops_emu)
                torch.library.opcheck(function.default, args)
            except Exception as error:  # noqa: BLE001
                check.fail(f"opcheck {case.id} {op} {dtype}", str(error)[:500])
            check.checks += 1
    print(f"{check.checks} checks, {check.failures} failures")
    return 1 if check.failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--asan", action="store_true", help="build and run under AddressSanitizer and UBSan")
    args = parser.parse_args()
    if args.asan and "CFBI_EMU_CHILD" not in os.environ:
        # The sanitizer runtimes must be loaded before Python loads the instrumented library.
        runtimes = [
            subprocess.check_output(["gcc", f"-print-file-name={n}"], text=True).strip()
            for n in ("libasan.so", "libubsan.so")
        ]
        env = dict(
            os.environ,
            CFBI_EMU_CHILD="1",
            LD_PRELOAD=" ".join(runtimes),
            ASAN_OPTIONS="detect_leaks=0",
            UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1",
        )
        return subprocess.call([sys.executable, __file__, "--asan"], env=env)
    return compare(build(args.asan))


if __name__ == "__main__":
    sys.exit(main())
