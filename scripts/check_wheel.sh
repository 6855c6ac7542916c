#!/usr/bin/env bash
# Checks a built wheel the way a user gets it: a throwaway virtual environment with the torch asked for, the wheel
# installed with --no-deps, no compiler on the PATH, and the op test suite run against the installed package
# (the tests are copied out of the checkout, so the source tree's build cannot be imported by mistake).
#
#   bash scripts/check_wheel.sh dist/cfbi-0.1.0+cu13-cp310-abi3-linux_x86_64.whl torch==2.10.0
#   bash scripts/check_wheel.sh WHEEL "torch==2.13.0+cpu"
#
# The machine's pip constraint (which pins the project's torch) is lifted for this environment only.
# CFBI_FUZZ_CASES (default 150) sizes the fuzz stage; CHECK_WHEEL_KEEP=1 keeps the environment (path printed).
# Prints one summary line: "check_wheel: <wheel> on torch <version>: <pytest summary>". Exit status of pytest.
set -euo pipefail
[ $# -eq 2 ] || { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
WHEEL=$(readlink -f "$1") TORCH_SPEC=$2
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
[ -f "$WHEEL" ] || { echo "no wheel at $1" >&2; exit 2; }
WORK=$(mktemp -d "${TMPDIR:-/tmp}/check_wheel.XXXXXX")
[ "${CHECK_WHEEL_KEEP:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT
: > "$WORK/no-constraints.txt"

"$PYTHON" -m venv "$WORK/venv"
PY=$WORK/venv/bin/python
export PIP_CONSTRAINT=$WORK/no-constraints.txt PIP_DISABLE_PIP_VERSION_CHECK=1
pip_install() {  # quiet unless it fails
  "$PY" -m pip install -q "$@" > "$WORK/pip.log" 2>&1 || { grep -v '^WARNING: Location' "$WORK/pip.log" | tail -n 20; exit 1; }
}
pip_install "$TORCH_SPEC" numpy pytest hypothesis Pillow tqdm
pip_install --no-deps "$WHEEL"

# The tests, without the package sources beside them.
mkdir -p "$WORK/run" "$WORK/tools"
cp -r "$ROOT/tests" "$WORK/run/tests"
cd "$WORK/run"

# No compiler while the tests run: the PATH holds the environment's bin and a folder of the few tools they call.
for tool in sh bash env uname nm c++filt cat; do
  path=$(command -v "$tool" || true)
  [ -n "$path" ] && ln -s "$path" "$WORK/tools/$tool"
done
SAVED_PATH=$PATH
export PATH=$WORK/venv/bin:$WORK/tools
for compiler in cc gcc g++ c++ clang nvcc; do
  if command -v "$compiler" > /dev/null; then echo "check_wheel: $compiler is on the PATH" >&2; exit 2; fi
done
unset CUDA_HOME
"$PY" - <<'PY'
import os, sys
import torch
import cfbi_ops
here = os.path.dirname(cfbi_ops.__file__)
assert here.startswith(sys.prefix), f"cfbi_ops imported from {here}, not from the environment {sys.prefix}"
assert cfbi_ops.HAS_EXTENSION, cfbi_ops.EXTENSION_ERROR
print("check_wheel: cfbi_ops from", here)
print("check_wheel: backends", cfbi_ops.loaded_backends())
PY
export CFBI_FUZZ_CASES=${CFBI_FUZZ_CASES:-150}
status=0
"$PY" -m pytest -q -rs -p no:cacheprovider tests/test_ops_harness.py tests/test_ops_edges.py tests/test_compat.py \
  tests/test_ops_errors.py tests/test_ops_fuzz.py tests/test_stable_abi.py > "$WORK/pytest.log" 2>&1 || status=$?
export PATH=$SAVED_PATH
grep -vE '^SKIPPED' "$WORK/pytest.log" | tail -n 12
echo "check_wheel: skipped, by reason:"
sed -nE 's/^SKIPPED \[([0-9]+)\] [^:]+:[0-9]+: (.*)/\1 \2/p' "$WORK/pytest.log" |
  awk '{n = $1; $1 = ""; count[$0] += n} END {for (r in count) printf "  %4d%s\n", count[r], r}'
summary=$(grep -E '^[0-9]+ (passed|failed)|^=+ .*(passed|failed)' "$WORK/pytest.log" | tail -n 1 | sed -E 's/^=+ //; s/ =+$//')
version=$("$PY" -c 'import torch; print(torch.__version__)')
echo "check_wheel: $(basename "$WHEEL") on torch $version: ${summary:-no summary (exit $status)}"
exit "$status"
