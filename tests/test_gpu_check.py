"""scripts/gpu_check.sh: the --dry-run walks every stage on the CPU with tiny sizes; the parallel build it uses
without ninja compiles an extension; the GPU table's targets are computed from the measured rows."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT

from benchmarks import compare

ROOT = Path(REPO_ROOT)
STAGES = ["env", "build", "tests", "sanitizer", "benchmark", "model", "export"]


requires_cxx = pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None, reason="needs a C++ compiler"
)

# A Python module tiny_ext with one function, twice(), defined in another source file.
MODULE_SOURCE = textwrap.dedent("""
    #include <Python.h>
    long twice(long x);
    static PyObject* call(PyObject*, PyObject* arg) { return PyLong_FromLong(twice(PyLong_AsLong(arg))); }
    static PyMethodDef methods[] = {{"twice", call, METH_O, nullptr}, {nullptr, nullptr, 0, nullptr}};
    static PyModuleDef module = {PyModuleDef_HEAD_INIT, "tiny_ext", nullptr, -1, methods};
    PyMODINIT_FUNC PyInit_tiny_ext() { return PyModule_Create(&module); }
""")


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_dry_run_walks_every_stage(tmp_path: Path) -> None:
    results = tmp_path / "results"
    before = sorted(os.listdir(ROOT / "benchmarks" / "results"))
    # --dist: a wheel named for torch's CUDA major is picked instead of a build (a dry run only names it).
    dist = tmp_path / "dist"
    dist.mkdir()
    major = (torch.version.cuda or "0").split(".")[0]
    (dist / f"cfbi-0.1.0+cu{major}-cp310-abi3-linux_x86_64.whl").write_bytes(b"")
    proc = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--dry-run", "--results", str(results), "--dist", str(dist)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = (results / "summary.txt").read_text()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for stage in STAGES:
        status = "skip" if stage == "export" else "pass"  # a dry run compiles no packages
        assert any(line.split()[:2] == [stage, status] for line in summary.splitlines()), (stage, summary)
    assert "sanitizer" in summary and "driver on the CPU: ok" in summary
    assert "DRY RUN" in summary and "model" in summary.split("targets")[1]
    files = sorted(p.name for p in results.iterdir())
    assert len(files) <= 8 and all((results / f).stat().st_size <= 16 * 2**20 for f in files)
    assert {"env-build.log", "tests.log", "sanitizer.log", "benchmark.log", "summary.txt"} <= set(files)
    table = json.loads((results / "dry-run-gpu-table.json").read_text())
    kinds = {(r["op"], r["dtype"], r["mode"], r["peer"]) for r in table["rows"]}
    for op in ("global", "local"):
        for dtype in compare.GPU_DTYPES:
            assert (op, dtype, "fwd+bwd", "cfbi_ops") in kinds and (op, dtype, "fwd", "torch.mm") in kinds
        assert (op, "float32", "fwd", "torch.mm-tf32") in kinds and (op, "float32", "fwd", "naive") in kinds
    assert [compare.model_label(run["args"]) for run in table["model"]] == ["float32", "AMP", "bfloat16"]
    page = (results / "dry-run-gpu-table.md").read_text()
    assert "## Model per-frame time (AMP)" in page and "## Model per-frame time (bfloat16)" in page
    # The sanitizer driver ran every case; the CUDA tests were selected and skipped (no GPU here).
    sanitizer = (results / "sanitizer.log").read_text()
    assert "ok: " in sanitizer and "deterministic bfloat16 local: row state in global memory" in sanitizer
    tests = (results / "tests.log").read_text()
    assert (
        "test_ops_harness.py::test_gradients_equal_cpu_kernel[cuda-" in tests
        and "test_inference.py::test_cuda_matches_cpu" in tests
    )
    assert "test_cuda_emulation" not in tests and "test_gpu_check" not in tests
    assert "main: " in summary and "compile: " in summary
    build_log = (results / "env-build.log").read_text()
    if torch.version.cuda is not None:
        assert f"would install {dist}/cfbi-0.1.0+cu{major}-cp310-abi3-linux_x86_64.whl" in build_log, build_log
    else:
        assert "no wheel for CUDA none" in build_log, build_log
    assert sorted(os.listdir(ROOT / "benchmarks" / "results")) == before  # a dry run writes nothing there


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the run on a machine without a GPU")
def test_without_gpu_stops_after_env(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--results", str(tmp_path)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    summary = (tmp_path / "summary.txt").read_text()
    assert proc.returncode == 1
    assert "no CUDA device visible" in (tmp_path / "env-build.log").read_text()
    rows = {words[0]: words[1] for words in map(str.split, summary.splitlines()) if words and words[0] in STAGES}
    assert rows == dict(
        env="FAIL", build="skip", tests="skip", sanitizer="skip", benchmark="skip", model="skip", export="skip"
    )


def test_usage_without_results_folder() -> None:
    proc = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "--results DIR" in proc.stdout


def _parallel_build(folder: Path, sources: list[str], **env: str) -> subprocess.CompletedProcess:
    """scripts/parallel_build.py --no-ninja on a setup.py building `sources` of `folder` into one module."""
    (folder / "setup.py").write_text(
        textwrap.dedent(f"""
        from setuptools import Extension, setup
        from torch.utils.cpp_extension import BuildExtension
        setup(name="tiny_ext", ext_modules=[Extension("tiny_ext", {sources!r}, language="c++")],
              cmdclass={{"build_ext": BuildExtension}})
    """)
    )
    command = [
        sys.executable,
        str(ROOT / "scripts" / "parallel_build.py"),
        "--jobs",
        "2",
        "--no-ninja",
        "--setup",
        str(folder / "setup.py"),
        "build_ext",
        "--inplace",
    ]
    return subprocess.run(command, cwd=ROOT, env={**_env(), **env}, capture_output=True, text=True, timeout=300)


@requires_cxx
def test_parallel_build_without_ninja(tmp_path: Path) -> None:
    """Two sources compiled in two forked processes through torch's BuildExtension, then loaded."""
    (tmp_path / "module.cpp").write_text(MODULE_SOURCE)
    (tmp_path / "twice.cpp").write_text("long twice(long x) { return 2 * x; }\n")
    proc = _parallel_build(tmp_path, ["module.cpp", "twice.cpp"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "compiling 2 sources in 2 processes" in proc.stdout
    out = subprocess.run(
        [sys.executable, "-c", "import tiny_ext; print(tiny_ext.twice(21))"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.strip() == "42", out.stderr


@requires_cxx
def test_parallel_build_with_old_setuptools_skips_pyproject(tmp_path: Path) -> None:
    """setuptools < 77 (simulated) rejects the SPDX license string of pyproject.toml: the build runs from a
    folder of links without it, writes the module into the real package folder and removes the links."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "module.cpp").write_text(MODULE_SOURCE.replace("tiny_ext", "_ext"))
    (tmp_path / "twice.cpp").write_text("long twice(long x) { return 2 * x; }\n")
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "pkg"\nversion = "0.1"\nlicense = "MIT"\n')
    (tmp_path / "setup.py").write_text(
        textwrap.dedent("""
        from setuptools import Extension, setup
        from torch.utils.cpp_extension import BuildExtension
        setup(packages=["pkg"], ext_modules=[Extension("pkg._ext", ["module.cpp", "twice.cpp"], language="c++")],
              cmdclass={"build_ext": BuildExtension})
    """)
    )
    code = (
        f"import runpy, sys, setuptools; setuptools.__version__ = '65.5.0'; "
        f"sys.argv = ['parallel_build.py', '--jobs', '2', '--setup', {str(tmp_path / 'setup.py')!r}, "
        f"'build_ext', '--inplace']; runpy.run_path({str(ROOT / 'scripts' / 'parallel_build.py')!r}, "
        f"run_name='__main__')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    shadow = proc.stdout.split("building from ")[1].split(",")[0]
    assert not os.path.exists(shadow)
    assert list((tmp_path / "pkg").glob("_ext*.so")) and (tmp_path / "pyproject.toml").exists()
    out = subprocess.run(
        [sys.executable, "-c", "from pkg import _ext; print(_ext.twice(4))"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.strip() == "8", out.stderr


@requires_cxx
def test_parallel_build_reports_a_compile_error(tmp_path: Path) -> None:
    (tmp_path / "broken.cpp").write_text("int f( { return 0; }\n")
    (tmp_path / "fine.cpp").write_text("int g() { return 0; }\n")
    proc = _parallel_build(tmp_path, ["broken.cpp", "fine.cpp"])
    assert proc.returncode != 0 and "failed to compile" in proc.stderr and "broken.cpp" in proc.stderr


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_parallel_build_sends_cu_files_to_nvcc(tmp_path: Path) -> None:
    """BuildExtension swaps in nvcc for a .cu file: each forked child has its own compiler, so the .cpp compiled
    alongside still goes to the C++ compiler."""
    (tmp_path / "kernel.cu").write_text("__global__ void add_one(int* x) { *x += 1; }\nint host() { return 1; }\n")
    (tmp_path / "plain.cpp").write_text("int plain() { return 2; }\n")
    proc = _parallel_build(tmp_path, ["kernel.cu", "plain.cpp"], TORCH_CUDA_ARCH_LIST="9.0")  # no GPU to ask
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "compiling 2 sources in 2 processes" in proc.stdout
    commands = [line for line in proc.stdout.splitlines() if " -c " in line]
    assert any("nvcc" in line and "kernel.cu" in line for line in commands)
    assert any("nvcc" not in line and "plain.cpp" in line for line in commands)


def _row(op, peer, ms, dtype="float32", mode="fwd", labels=4, peak_mb=None, outputs_mb=None):
    return dict(
        case="s4",
        op=op,
        labels=labels,
        dtype=dtype,
        mode=mode,
        peer=peer,
        ms=ms,
        peak_mb=peak_mb,
        outputs_mb=outputs_mb,
    )


@pytest.mark.parametrize("global_ms, local_ms, peak, met", [(3.0, 1.0, 1.9, True), (3.1, 1.25, 2.1, False)])
def test_gpu_targets(global_ms, local_ms, peak, met) -> None:
    rows = [
        _row("global", "cfbi_ops", global_ms, peak_mb=peak, outputs_mb=1.0),
        _row("global", "torch.mm", 2.0, labels=None),
        _row("global", "torch.mm-tf32", 1.0, labels=None),
        _row("local", "cfbi_ops", local_ms, peak_mb=1.0, outputs_mb=1.0),
        _row("local", "naive", 24.0),
    ]
    targets = {t["name"]: t for t in compare.gpu_targets(rows, ["s4"])}
    assert targets["s4 global fwd / float32 torch.mm"]["value"] == pytest.approx(global_ms / 2.0)
    assert targets["s4 global fwd / float32 torch.mm"]["ok"] is met
    assert targets["s4 local fwd: naive / cfbi_ops"]["ok"] is met
    assert targets["s4 global fwd peak memory / outputs"]["ok"] is met
    assert targets["s4 local fwd peak memory / outputs"]["ok"] is True
    assert targets["s4 global fwd / TF32 torch.mm"]["ok"] is None


def test_gpu_table_keeps_the_rows_of_calls_that_worked(tmp_path: Path, monkeypatch) -> None:
    """A peer that fails (out of memory, say) loses its rows only; the run reports it and exits with 1."""

    def out_of_memory(case, x):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setitem(compare.PEERS["local"], "naive", out_of_memory)
    stem = tmp_path / "table"
    code = compare.main(
        [
            "--device",
            "cpu",
            "--protocol",
            "gpu",
            "--cases",
            "tiny",
            "--labels",
            "4",
            "--dtypes",
            "float32",
            "--quick",
            "--out",
            str(stem),
        ]
    )
    data = json.loads(stem.with_suffix(".json").read_text())
    assert code == 1 and len(data["errors"]) == 2 and "simulated" in data["errors"][0]
    assert {(r["op"], r["peer"]) for r in data["rows"]} == {
        ("global", "cfbi_ops"),
        ("global", "naive"),
        ("global", "torch.mm"),
        ("global", "torch.mm-tf32"),
        ("local", "cfbi_ops"),
        ("local", "torch.mm"),
        ("local", "torch.mm-tf32"),
    }
    assert "## Failed calls" in stem.with_suffix(".md").read_text()


def test_add_model_without_kernel_table(tmp_path: Path) -> None:
    """The model runs are added (with their frames/s target) even when the kernel benchmark wrote nothing."""
    runs = []
    for amp, median in ((False, 0.08), (True, 0.05)):
        path = tmp_path / f"model-{amp}.json"
        args = dict(height=480, width=854, objects=2, frames=3, warmup=1, amp=amp)
        row = {
            "config": "resnet101",
            "input": [481, 849],
            "median": median,
            "global": 0.0,
            "local": 0.01,
            "features": 0.03,
            "ensembler": 0.02,
            "share": 0.1,
        }
        path.write_text(json.dumps(dict(args=args, machine=[], rows=[row])))
        runs.append(path)
    stem = tmp_path / "table"
    compare.add_model_results(stem, runs + [tmp_path / "missing.json"])
    data = json.loads(stem.with_suffix(".json").read_text())
    fps = {t["name"]: t for t in data["targets"]}
    assert fps["model resnet101 480x854 2 objects float32 frames/s"]["value"] == pytest.approx(12.5)
    assert fps["model resnet101 480x854 2 objects float32 frames/s"]["ok"] is True
    assert fps["model resnet101 480x854 2 objects AMP frames/s"]["ok"] is None
    assert "| resnet101 | 481x849 | 80.0 | 12.5 |" in stem.with_suffix(".md").read_text()
