#!/usr/bin/env bash
# Builds the abi3 wheels of cfbi (cfbi_ops with its CPU and CUDA libraries, and cfbi_model) into OUTDIR:
#
#   bash scripts/build_wheels.sh OUTDIR
#
# One wheel per CUDA major version that an nvcc here can build for, named by it: cfbi-0.1.0+cu13-cp310-abi3-...whl.
# Each holds cfbi_ops._C (schemas and CPU kernels) and cfbi_ops._C_cuda (CUDA kernels for TORCH_CUDA_ARCH_LIST,
# by default 7.5;8.0;8.6;8.9;9.0+PTX), both on the LibTorch stable ABI of torch 2.10: the wheel installs on every
# torch >= 2.10 of that CUDA major (and on a CPU-only torch, where it gives the CPU kernels) and every CPython >= 3.10.
#
# The build uses the project's environment (.venv, or $PYTHON): its torch must be a CUDA build of the same major
# as the nvcc on the PATH (torch 2.14.1 + nvcc 13 here). CUDA_HOMES="/path/to/cuda-12 /path/to/cuda-13" builds
# one wheel per toolkit listed instead, each with a torch of its major given by PYTHON_<major> (e.g. PYTHON_12).
# MAX_JOBS (default 2) and TORCH_CUDA_ARCH_LIST are passed on. The sources are copied first (tracked and untracked
# files, not ignored ones), so the checkout's own build folder is not touched.
set -euo pipefail
[ $# -eq 1 ] || { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$1" && OUT=$(cd "$1" && pwd)
DEFAULT_PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
export MAX_JOBS=${MAX_JOBS:-2} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-7.5;8.0;8.6;8.9;9.0+PTX}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/build_wheels.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

toolkit_of_nvcc() {  # the toolkit root of the nvcc on PATH (setup.py's rule: through wrapper scripts)
  local nvcc
  nvcc=$(readlink -f "$(command -v nvcc)")
  if head -c 2 "$nvcc" | grep -q '#!'; then
    nvcc=$(grep -o '/[^ ]*/bin/nvcc' "$nvcc" | head -n 1)
  fi
  dirname "$(dirname "$nvcc")"
}

HOMES=${CUDA_HOMES:-$(toolkit_of_nvcc)}
(cd "$ROOT" && git ls-files -co --exclude-standard -z | xargs -0 tar -cf -) | (mkdir -p "$WORK/src" && tar -xf - -C "$WORK/src")

for home in $HOMES; do
  major=$("$home/bin/nvcc" --version | sed -n 's/.*release \([0-9]*\)\..*/\1/p')
  python_var=PYTHON_$major
  py=${!python_var:-$DEFAULT_PYTHON}
  torch_cuda=$("$py" -c 'import torch; print(torch.version.cuda or "")')
  if [ "${torch_cuda%%.*}" != "$major" ]; then
    echo "build_wheels: nvcc $major at $home needs a torch built for CUDA $major (set $python_var); $py has '$torch_cuda'" >&2
    exit 1
  fi
  echo "build_wheels: cu$major with $home/bin/nvcc and torch $("$py" -c 'import torch; print(torch.__version__)')," \
    "archs $TORCH_CUDA_ARCH_LIST"
  start=$(date +%s)
  rm -rf "$WORK/src/build"
  (cd "$WORK/src" && CUDA_HOME=$home PATH="$home/bin:$PATH" FORCE_CUDA=1 CFBI_LOCAL_VERSION=cu$major \
    "$py" -m pip wheel -q --no-build-isolation --no-deps -w "$OUT" . > "$WORK/build-cu$major.log" 2>&1) || {
    tail -n 40 "$WORK/build-cu$major.log"
    echo "build_wheels: cu$major failed" >&2
    exit 1
  }
  wheel=$(ls -t "$OUT"/cfbi-*+cu"$major"-*.whl | head -n 1)
  echo "build_wheels: $(basename "$wheel") ($(du -k "$wheel" | cut -f1) KiB) in $(( $(date +%s) - start )) s"
done
