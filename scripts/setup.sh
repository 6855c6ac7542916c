#!/usr/bin/env bash
# One-command set-up: a virtual environment in .venv with the dependencies and the built extension.
#   FORCE_CUDA=1|0, TORCH_CUDA_ARCH_LIST, MAX_JOBS are passed to the build (see setup.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt
mkdir -p build
# An extension built by an older checkout (before the abi3 libraries, e.g. _C.cpython-311-*.so) would shadow the
# new _C.abi3.so: Python prefers the interpreter-specific name.
rm -f cfbi_ops/_C*.so
log=build/pip-build.log
if ! .venv/bin/python -m pip install --no-build-isolation -v -e . > "$log" 2>&1; then
  tail -n 60 "$log"
  echo "build failed; full log in $log" >&2
  exit 1
fi
# One line per compiled object (compiler and source), then any warning from our sources.
grep -E '^ *\[[0-9]+/[0-9]+\] ' "$log" | sed -E 's|^ *(\[[0-9]+/[0-9]+\]) ([^ ]+) .* -c ([^ ]+) .*|\1 \2 \3|' || true
grep -E "$(pwd)/csrc/.*warning" "$log" || true
.venv/bin/python - <<'PY'
import torch, cfbi_ops
assert cfbi_ops.HAS_EXTENSION, cfbi_ops.EXTENSION_ERROR
dump = torch._C._dispatch_dump("cfbi::global_match").splitlines()
print("cfbi_ops built; kernels for:", " ".join(line.split(":")[0] for line in dump if line.startswith(("CPU:", "CUDA:"))))
PY
