"""Runs a setup.py with its C++ / CUDA sources compiled in parallel processes when ninja is missing.

Without ninja, torch's BuildExtension compiles the sources of an extension one after another (setuptools'
--parallel only builds several extensions at once), which on a 16-core machine turns a one-minute build into
several. This wraps the compiler's per-source step in a pool of forked processes: each child compiles one
source with its own copy of the compiler object (BuildExtension swaps the compiler executable for every .cu
file, so threads sharing one object would race). With ninja available it runs setup.py unchanged (ninja's
parallelism is set by MAX_JOBS). With a setuptools older than 77, which rejects the SPDX license string of
pyproject.toml, it runs setup.py from a temporary folder of links that leaves pyproject.toml out.

    python scripts/parallel_build.py --jobs 16 build_ext --inplace        # setup.py of the current folder
    python scripts/parallel_build.py --jobs 2 --no-ninja --setup path/to/setup.py build_ext --inplace
"""

from __future__ import annotations  # noqa: I001  (setuptools before distutils, below)

import argparse
import multiprocessing
import multiprocessing.connection
import os
import runpy
import shutil
import sys
import tempfile

import setuptools  # noqa: F401  (installs setuptools' distutils before the import below)
import distutils.ccompiler  # noqa: E402
from distutils.errors import CompileError  # noqa: E402


def _compile_one(compiler, item: tuple, cc_args, extra_postargs, pp_opts) -> None:
    """Child process: compiles one source; exit status 1 on failure (the compiler's message is on stderr)."""
    obj, src, ext = item
    try:
        compiler._compile(obj, src, ext, cc_args, extra_postargs, pp_opts)
    except Exception as error:  # CompileError, or anything else: reported by the parent as a failed source
        print(f"parallel_build: {src}: {error}", file=sys.stderr, flush=True)
        sys.exit(1)


def parallel_compile(jobs: int):
    """A replacement of CCompiler.compile that runs the per-source _compile calls in up to `jobs` forked
    processes (forked, so nothing is pickled: setup.py runs as a stand-in __main__ module)."""

    def compile(
        self,
        sources,
        output_dir=None,
        macros=None,
        include_dirs=None,
        debug=False,
        extra_preargs=None,
        extra_postargs=None,
        depends=None,
    ):
        macros, objects, extra_postargs, pp_opts, build = self._setup_compile(
            output_dir, macros, include_dirs, sources, depends, extra_postargs
        )
        cc_args = self._get_cc_args(pp_opts, debug, extra_preargs)
        pending = [(obj, *build[obj]) for obj in objects if obj in build]
        if len(pending) <= 1 or jobs <= 1:
            for obj, src, ext in pending:
                self._compile(obj, src, ext, cc_args, extra_postargs, pp_opts)
            return objects
        print(f"parallel_build: compiling {len(pending)} sources in {min(jobs, len(pending))} processes", flush=True)
        context = multiprocessing.get_context("fork")
        running, failed = [], []
        while pending or running:
            while pending and len(running) < jobs:
                item = pending.pop(0)
                child = context.Process(target=_compile_one, args=(self, item, cc_args, extra_postargs, pp_opts))
                child.start()
                running.append((child, item))
            multiprocessing.connection.wait([child.sentinel for child, _ in running])
            still = []
            for child, item in running:
                if child.exitcode is None:
                    still.append((child, item))
                elif child.exitcode != 0:
                    failed.append(item[1])
            running = still
        if failed:
            raise CompileError("parallel_build: failed to compile " + ", ".join(failed))
        return objects

    return compile


def _setuptools_major() -> int:
    try:
        return int(setuptools.__version__.split(".")[0])
    except ValueError:
        return 0


def shadow_without_pyproject(folder: str) -> str:
    """A temporary folder with a symbolic link to every entry of `folder` but pyproject.toml and build/: setup.py
    run there reads no [project] table, and build_ext --inplace still writes through the package links."""
    shadow = tempfile.mkdtemp(prefix="cfbi-build-")
    for name in os.listdir(folder):
        if name not in ("pyproject.toml", "build"):
            os.symlink(os.path.join(folder, name), os.path.join(shadow, name))
    return shadow


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compile processes without ninja")
    parser.add_argument("--setup", default="setup.py", help="the setup.py to run (in its own folder)")
    parser.add_argument("--no-ninja", action="store_true", help="do not use ninja even when it is available")
    args, setup_args = parser.parse_known_args(argv)
    import torch.utils.cpp_extension as cpp_extension

    if args.no_ninja:
        cpp_extension.is_ninja_available = lambda: False
    if not cpp_extension.is_ninja_available():
        distutils.ccompiler.CCompiler.compile = parallel_compile(args.jobs)
        print(f"parallel_build: no ninja; {args.jobs} compile processes", flush=True)
    setup = os.path.abspath(args.setup)
    folder, shadow = os.path.dirname(setup), None
    if _setuptools_major() < 77 and os.path.exists(os.path.join(folder, "pyproject.toml")):
        folder = shadow = shadow_without_pyproject(folder)
        setup = os.path.join(folder, os.path.basename(setup))
        print(
            f"parallel_build: setuptools {setuptools.__version__} rejects this pyproject.toml (a license string "
            f"needs >= 77); building from {folder}, which links everything else",
            flush=True,
        )
    os.chdir(folder)
    sys.argv = [setup] + setup_args
    try:
        runpy.run_path(setup, run_name="__main__")
    except SystemExit as exit:  # setup() exits with a message on a failed build
        if exit.code not in (None, 0):
            print(exit.code, file=sys.stderr)
            return 1
    finally:
        if shadow is not None:
            os.chdir("/")
            shutil.rmtree(shadow)  # removes the links and the build folder, never what they point to
    return 0


if __name__ == "__main__":
    sys.exit(main())
