"""The compiled libraries use only the LibTorch stable ABI: they import no C++ symbol of libtorch (a mangled at::,
c10:: or torch:: name), so one build loads on every torch >= 2.10 (DESIGN.md section 5; issue: stable ABI).

Checks every built .so of the package (cfbi_ops._C, cfbi_ops._C_cuda) and of the CMake build when present.
CFBI_ABI_CHECK_DIRS (os.pathsep-separated folders) adds folders to search, e.g. an unpacked wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

import cfbi_ops

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("at::", "c10::", "torch::")


def _libraries() -> list[Path]:
    folders = [Path(cfbi_ops.__file__).parent, ROOT / "build" / "cmake"]
    folders += [Path(p) for p in os.environ.get("CFBI_ABI_CHECK_DIRS", "").split(os.pathsep) if p]
    found = []
    for folder in folders:
        if folder.is_dir():
            found += [p for p in folder.rglob("*.so") if "cuda_emulation" not in str(p)]
    return sorted(set(found))


def forbidden_imports(library: Path) -> list[str]:
    """The undefined dynamic symbols of `library` whose demangled names start with at::, c10:: or torch::."""
    undefined = subprocess.run(
        ["nm", "-D", "--undefined-only", str(library)], capture_output=True, text=True, check=True
    ).stdout
    names = [line.split()[-1] for line in undefined.splitlines() if line.strip()]
    demangled = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True)
    return [name for name in demangled.stdout.splitlines() if name.startswith(FORBIDDEN)]


@pytest.mark.skipif(shutil.which("nm") is None or shutil.which("c++filt") is None, reason="needs binutils")
def test_libraries_import_no_libtorch_cpp_symbol():
    libraries = _libraries()
    if not libraries:
        pytest.skip("no built library (the extension is not compiled)")
    bad = {str(lib): forbidden_imports(lib) for lib in libraries}
    bad = {lib: names for lib, names in bad.items() if names}
    assert not bad, f"libraries importing libtorch C++ symbols (not stable ABI): {bad}"


@pytest.mark.skipif(shutil.which("nm") is None or shutil.which("c++filt") is None, reason="needs binutils")
def test_the_check_catches_a_mangled_import(tmp_path):
    """The check itself: a library calling an ordinary ATen function is caught."""
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("needs g++")
    source = tmp_path / "uses_aten.cpp"
    source.write_text("namespace at { void from_aten(int); }\nvoid call() { at::from_aten(1); }\n")
    library = tmp_path / "libuses_aten.so"
    subprocess.run([compiler, "-shared", "-fPIC", str(source), "-o", str(library)], check=True)
    assert forbidden_imports(library) == ["at::from_aten(int)"]
