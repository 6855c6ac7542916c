#!/usr/bin/env bash
# One short check of the CUDA path on a GPU machine with only this checkout (no network, no virtual
# environment): build, CUDA tests, compute-sanitizer, benchmarks, and a one-screen summary.
#
#   bash scripts/gpu_check.sh --results DIR            # from the repository root, on the GPU machine
#   bash scripts/gpu_check.sh --results DIR --dry-run  # the same stages on the CPU with tiny sizes (CI)
#   bash scripts/gpu_check.sh --results DIR --dist dist  # use a prebuilt wheel from dist/ instead of compiling
#
# Stages (each time-boxed; the whole run ends within --budget seconds, 470 by default):
#   env        the machine's Python, torch, GPU, nvcc, ninja, compute-sanitizer and optional packages
#   build      setup.py build_ext --inplace for the visible GPU's architecture only (scripts/parallel_build.py
#              compiles in parallel processes when ninja is missing); never downloads anything. With --dist DIR
#              holding a wheel of scripts/build_wheels.sh for the machine's CUDA major (cfbi-*+cu<major>-*.whl) and
#              a torch >= 2.10, that wheel is installed into a target folder (pip --no-deps --target) and its
#              libraries are used in place of the build (its Python files must equal the checkout's)
#   tests      pytest tests/ -k "cuda and not emulation": every test marked `cuda` or named after CUDA
#   sanitizer  compute-sanitizer memcheck / racecheck / synccheck on tests/cuda_sanitizer_case.py (run
#              alongside the tests; without the tool the driver runs bare)
#   benchmark  python -m benchmarks.compare --device cuda -> benchmarks/results/cuda-<gpu>.{md,json}
#   model      python -m benchmarks.model_speed: ResNet-101 CFBI+ at 480p, float32, AMP and bfloat16 + torch.compile,
#              added to the same files
#   export     python -m benchmarks.export_speed --device cuda: CUDA AOTInductor packages of the small model at 480p
#              against eager, float32 and bfloat16 -> export-cuda.json (with what the budget leaves; not in a dry
#              run, whose CPU would spend minutes compiling: tests/test_export.py exports on the CPU in CI)
# Results (at most 8 files of at most 16 MiB) go to DIR as each stage ends: env-build.log, tests.log,
# sanitizer.log, benchmark.log, the benchmark .md and .json, export-cuda.json, summary.txt. Exit status 0 when every stage passed.
set -uo pipefail

usage() {
  sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
}

RESULTS="" DRY_RUN=0 BUDGET=470 DIST=""
while [ $# -gt 0 ]; do
  case "$1" in
    --results) RESULTS=${2:-}; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --budget) BUDGET=${2:-}; shift 2 ;;
    --dist) DIST=${2:-}; shift 2 ;;
    -h|--help) usage ;;
    *) echo "unknown argument: $1" >&2; usage ;;
  esac
done
[ -n "$RESULTS" ] || usage

cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
mkdir -p "$RESULTS" && RESULTS=$(cd "$RESULTS" && pwd) || exit 2
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX") || exit 2
# The first of $PYTHON, python3, python that imports torch (the machine's own environment).
PY=""
for candidate in ${PYTHON:-} python3 python; do
  if command -v "$candidate" > /dev/null && "$candidate" -c "import torch" > /dev/null 2>&1; then
    PY=$(command -v "$candidate")
    break
  fi
done
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
START=$(date +%s)
DEADLINE=$((START + BUDGET))
JOBS=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
STATUS_FILE=$WORK/status.tsv
: > "$STATUS_FILE"
MAX_BYTES=$((16 * 1024 * 1024 - 4096))

log() { echo "[gpu_check $(($(date +%s) - START))s] $*"; }

# record STAGE STATUS SECONDS NOTE: one line of the summary's stage table.
record() {
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$STATUS_FILE"
  log "$1: $2 ($3 s) $4"
}

# record_run STAGE NOTE: the stage's line after `timed`: pass with NOTE, or fail with why (RC, ELAPSED).
record_run() {
  if [ "$RC" -eq 0 ]; then record "$1" pass "$ELAPSED" "$2"
  else record "$1" fail "$ELAPSED" "$([ "$RC" -eq 124 ] && echo 'timed out' || echo "exit status $RC")"; fi
}

# budget CAP RESERVE: seconds for the next stage, at most CAP, leaving RESERVE seconds for the later stages.
budget() {
  local left=$((DEADLINE - $(date +%s) - $2))
  [ "$left" -lt "$1" ] || left=$1
  [ "$left" -ge 20 ] || left=20
  echo "$left"
}

# publish FILE [NAME]: copy FILE into the results folder (the middle cut out above 16 MiB).
publish() {
  local src=$1 dst=$RESULTS/${2:-$(basename "$1")}
  [ -f "$src" ] || return 0
  if [ "$(stat -c %s "$src")" -le "$MAX_BYTES" ]; then
    cp "$src" "$dst"
  else
    { head -c 1048576 "$src"; printf '\n[... cut to fit 16 MiB ...]\n'; tail -c $((MAX_BYTES - 1048576 - 64)) "$src"; } > "$dst"
  fi
}

# timed LOG SECONDS CMD...: run CMD with its output appended to LOG, killed (with its process group) after
# SECONDS; sets RC (124: timed out) and ELAPSED.
timed() {
  local log_file=$1 seconds=$2 t0
  shift 2
  t0=$(date +%s)
  echo "\$ $* (time box ${seconds} s)" >> "$log_file"
  timeout -k 10 "$seconds" "$@" >> "$log_file" 2>&1
  RC=$?
  [ "$RC" -ne 137 ] || RC=124
  ELAPSED=$(($(date +%s) - t0))
  echo "[exit status $RC after ${ELAPSED} s]" >> "$log_file"
}

# ---- env -------------------------------------------------------------------------------------------------
BUILD_LOG=$WORK/env-build.log
if [ -z "$PY" ]; then
  echo "no python3 / python on PATH imports torch" > "$BUILD_LOG"
  record env fail 0 "no Python with torch on PATH"
fi
# ninja from the Python package when its binary is not on PATH
if [ -n "$PY" ] && ! command -v ninja > /dev/null; then
  NINJA_DIR=$("$PY" -c 'import ninja, os; print(getattr(ninja, "BIN_DIR", os.path.dirname(ninja.__file__)))' 2> /dev/null)
  [ -n "$NINJA_DIR" ] && [ -x "$NINJA_DIR/ninja" ] && export PATH="$NINJA_DIR:$PATH"
fi
if ! command -v nvcc > /dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi
SANITIZER=$(command -v compute-sanitizer || true)
if [ -z "$SANITIZER" ] && command -v nvcc > /dev/null; then
  for dir in "$(dirname "$(readlink -f "$(command -v nvcc)")")" /usr/local/cuda/bin /usr/local/cuda/compute-sanitizer; do
    [ -x "$dir/compute-sanitizer" ] && SANITIZER=$dir/compute-sanitizer && break
  done
fi
# The real nvcc may sit behind a wrapper script; look beside the binary it execs too.
if [ -z "$SANITIZER" ] && command -v nvcc > /dev/null; then
  REAL_NVCC=$(grep -o '/[^ ]*/bin/nvcc' "$(command -v nvcc)" 2> /dev/null | head -n 1)
  [ -n "$REAL_NVCC" ] && [ -x "$(dirname "$REAL_NVCC")/compute-sanitizer" ] && SANITIZER=$(dirname "$REAL_NVCC")/compute-sanitizer
fi

ENV_FILE=$WORK/env.sh
if [ -n "$PY" ]; then
  timed "$BUILD_LOG" 90 "$PY" - "$ENV_FILE" "$DRY_RUN" "$SANITIZER" <<'PY'
import importlib.util, os, platform, shlex, shutil, subprocess, sys
env_file, dry_run, sanitizer = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
import torch
print(f"python {platform.python_version()} ({sys.executable}); torch {torch.__version__}, CUDA {torch.version.cuda}")
cuda = torch.cuda.is_available()
gpu, arch, slug = "none", "", "cpu"
if cuda:
    props = torch.cuda.get_device_properties(0)
    major, minor = torch.cuda.get_device_capability(0)
    gpu, arch = torch.cuda.get_device_name(0), f"{major}.{minor}"
    slug = "cuda-" + gpu.replace(" ", "-").lower()
    print(f"GPU: {gpu}, sm_{major}{minor}, {props.multi_processor_count} multiprocessors, "
          f"{props.total_memory / 2**30:.0f} GiB; {torch.cuda.device_count()} device(s)")
else:
    print("GPU: none visible")
nvcc = shutil.which("nvcc")
version = [l for l in subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.splitlines()
           if "release" in l] if nvcc else []
version = version[0].split(",", 1)[-1].strip() if version else ""
print(f"nvcc: {nvcc or 'missing'} {version}")
print(f"ninja: {shutil.which('ninja') or 'missing (parallel processes instead)'}")
print(f"compute-sanitizer: {sanitizer or 'missing'}")
print(f"CPUs: {os.cpu_count()}; g++: {shutil.which('g++') or 'missing'}")
missing = [m for m in ("numpy", "PIL", "tqdm", "imageio", "imageio_ffmpeg", "pytest", "pytest_benchmark", "hypothesis",
                       "tensorboard", "matplotlib", "faiss", "cmake", "ninja")
           if importlib.util.find_spec(m) is None]
print("optional packages missing (tests needing them skip or fail): " + (", ".join(missing) or "none"))
with open(env_file, "w") as f:
    f.write(f"HAS_CUDA={int(cuda)}\nARCH={arch}\nSLUG={shlex.quote(slug)}\nGPU_NAME={shlex.quote(gpu)}\n")
    f.write(f"MISSING={shlex.quote(' '.join(missing))}\n")
    # A prebuilt wheel (--dist) serves torch >= 2.10 (the stable ABI it targets) of its CUDA major.
    release = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    f.write(f"CUDA_MAJOR={(torch.version.cuda or '').split('.')[0]}\nTORCH_STABLE={int(release >= (2, 10))}\n")
if not cuda and not dry_run:
    sys.exit("no CUDA device visible: nothing to check (use --dry-run on a CPU machine)")
PY
  if [ "$RC" -eq 0 ] && [ -f "$ENV_FILE" ]; then
    # shellcheck disable=SC1090
    . "$ENV_FILE"
    record env pass "$ELAPSED" "$GPU_NAME${ARCH:+ (sm_${ARCH/./})}"
  else
    record env fail "$ELAPSED" "see env-build.log"
  fi
fi
publish "$BUILD_LOG"
ENV_OK=0
grep -q "^env"$'\t'"pass" "$STATUS_FILE" && ENV_OK=1

# ---- build -----------------------------------------------------------------------------------------------
BUILD_OK=0
if [ "$ENV_OK" -eq 1 ]; then
  WHEEL=""
  if [ -n "$DIST" ] && [ -n "${CUDA_MAJOR:-}" ] && [ "${TORCH_STABLE:-0}" -eq 1 ]; then
    WHEEL=$(ls "$DIST"/cfbi-*+cu"$CUDA_MAJOR"-cp3*-abi3-*.whl 2> /dev/null | sort | tail -n 1)
  fi
  if [ -n "$DIST" ] && [ -z "$WHEEL" ]; then
    echo "--dist $DIST: no wheel for CUDA ${CUDA_MAJOR:-none} and torch >= 2.10; compiling instead" >> "$BUILD_LOG"
  fi
  if [ -n "$WHEEL" ] && [ "$DRY_RUN" -eq 1 ]; then
    echo "dry run: would install $WHEEL (pip --no-deps --target) and use its libraries" >> "$BUILD_LOG"
    BUILD_CMD=(true)
  elif [ -n "$WHEEL" ]; then
    # The wheel's libraries replace an in-place build; the Python files must be the checkout's own.
    BUILD_CMD=(bash -c 'set -e; "$1" -m pip install -q --no-deps --no-index --target "$2/wheel" "$3"
      for f in "$2"/wheel/cfbi_ops/*.py; do cmp "$f" "cfbi_ops/$(basename "$f")"; done
      cp "$2"/wheel/cfbi_ops/_C*.so cfbi_ops/ && echo "libraries of $(basename "$3"):" && ls cfbi_ops/_C*.so' \
      _ "$PY" "$WORK" "$WHEEL")
  elif [ "$DRY_RUN" -eq 1 ]; then
    # No compile in a dry run (the CPU build of this checkout is used): show the command and check the import.
    echo "dry run: would run FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=<GPU arch> MAX_JOBS=$JOBS" \
      "$PY scripts/parallel_build.py --jobs $JOBS build_ext --inplace" >> "$BUILD_LOG"
    BUILD_CMD=(true)
  else
    export FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=$ARCH MAX_JOBS=$JOBS
    BUILD_CMD=("$PY" scripts/parallel_build.py --jobs "$JOBS" build_ext --inplace)
  fi
  timed "$BUILD_LOG" "$(budget 240 230)" "${BUILD_CMD[@]}"
  BUILD_RC=$RC BUILD_TIME=$ELAPSED
  timed "$BUILD_LOG" 120 "$PY" - "$DRY_RUN" <<'PY'
import sys
import torch
import cfbi_ops
assert cfbi_ops.HAS_EXTENSION, f"cfbi_ops._C does not load: {cfbi_ops.EXTENSION_ERROR}"
kernels = [line.split(":")[0] for line in torch._C._dispatch_dump("cfbi::global_match").splitlines()
           if line.startswith(("CPU:", "CUDA:"))]
print(f"cfbi_ops extension: {cfbi_ops.ops._C.__file__}; kernels for {' '.join(kernels)}")
assert sys.argv[1] == "1" or "CUDA" in kernels, "no CUDA kernels registered"
PY
  if [ "$BUILD_RC" -eq 0 ] && [ "$RC" -eq 0 ]; then
    BUILD_OK=1
    NOTE="arch ${ARCH:-none}, $(command -v ninja > /dev/null && echo ninja || echo 'no ninja: parallel processes')"
    [ -n "$WHEEL" ] && NOTE="wheel $(basename "$WHEEL"), no compile"
    [ "$DRY_RUN" -eq 1 ] && NOTE="dry run: no compile, existing extension loads"
    record build pass "$BUILD_TIME" "$NOTE"
  elif [ "$BUILD_RC" -eq 124 ]; then
    record build fail "$BUILD_TIME" "timed out; see env-build.log"
  else
    record build fail "$BUILD_TIME" "$(grep -m 1 -E '(error|Error)[: ]' "$BUILD_LOG" | cut -c 1-100)"
  fi
else
  record build skip 0 "env failed"
fi
publish "$BUILD_LOG"

# ---- tests and sanitizer (concurrently: the tests barely load the GPU, the sanitizer is CPU-bound) ----------
TEST_LOG=$WORK/tests.log SAN_LOG=$WORK/sanitizer.log
: > "$SAN_LOG"
if [ "$BUILD_OK" -eq 1 ]; then
  SECONDS_TESTS=$(budget 210 110)
  sanitize() {  # sanitize TOOL SECONDS: one tool on the driver; its log in $WORK/san-TOOL.log
    local tool=$1 seconds=$2 out=$WORK/san-$1.log
    : > "$out"
    if [ "$DRY_RUN" -eq 1 ] || [ -z "$SANITIZER" ]; then
      local device=cuda
      [ "$DRY_RUN" -eq 1 ] && device=cpu
      timed "$out" "$seconds" "$PY" tests/cuda_sanitizer_case.py --device "$device"
    elif [ "$tool" = memcheck ]; then
      # Without the caching allocator every tensor is its own allocation, so out-of-bounds accesses show.
      timed "$out" "$seconds" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --tool memcheck --error-exitcode 9 \
        "$PY" tests/cuda_sanitizer_case.py
    else
      timed "$out" "$seconds" "$SANITIZER" --tool "$tool" --error-exitcode 9 "$PY" tests/cuda_sanitizer_case.py
    fi
    echo "$RC $ELAPSED" > "$WORK/san-$tool.rc"
  }
  TOOLS="memcheck racecheck synccheck"
  [ "$DRY_RUN" -eq 0 ] && [ -n "$SANITIZER" ] || TOOLS=driver  # no tool (or no GPU): one bare run of the driver
  SAN_PIDS=()
  for tool in $TOOLS; do
    sanitize "$tool" "$SECONDS_TESTS" &
    SAN_PIDS+=($!)
  done
  # Two pytest processes: the torch.compile and opcheck tests (long, mostly compiling on the CPU) beside the rest.
  pytest_part() {  # pytest_part NAME EXPRESSION: log in $WORK/tests-NAME.log, "RC SECONDS" in $WORK/tests-NAME.rc
    : > "$WORK/tests-$1.log"
    timed "$WORK/tests-$1.log" "$SECONDS_TESTS" "$PY" -m pytest tests -k "$2" -v --tb=short -rfEs --durations=10 \
      --continue-on-collection-errors -p no:cacheprovider
    echo "$RC $ELAPSED" > "$WORK/tests-$1.rc"
  }
  pytest_part compile "cuda and not emulation and (compile or opcheck)" &
  COMPILE_PID=$!
  pytest_part main "cuda and not emulation and not compile and not opcheck"
  wait "$COMPILE_PID"
  TEST_STATUS=pass TEST_NOTE="" TEST_TIME=0
  : > "$TEST_LOG"
  for part in main compile; do
    read -r rc secs < "$WORK/tests-$part.rc"
    [ "$secs" -le "$TEST_TIME" ] || TEST_TIME=$secs
    last=$(grep -E '^=+ .*(passed|failed|skipped|error|no tests ran).* in [0-9.]+s' "$WORK/tests-$part.log" \
      | tail -n 1 | sed -E 's/^=+ //; s/ =+$//')
    if [ "$rc" -eq 124 ]; then
      last="timed out after $(grep -cE ' (PASSED|FAILED|SKIPPED|ERROR)' "$WORK/tests-$part.log") tests"
    fi
    [ "$rc" -eq 0 ] || TEST_STATUS=fail
    TEST_NOTE="$TEST_NOTE $part: ${last:-exit status $rc};"
    { echo "======== $part ========"; cat "$WORK/tests-$part.log"; } >> "$TEST_LOG"
  done
  record tests "$TEST_STATUS" "$TEST_TIME" "${TEST_NOTE# }"
  publish "$TEST_LOG"

  wait "${SAN_PIDS[@]}"
  SAN_STATUS=pass SAN_NOTE="" SAN_TIME=0
  for tool in $TOOLS; do
    read -r rc secs < "$WORK/san-$tool.rc"
    [ "$secs" -le "$SAN_TIME" ] || SAN_TIME=$secs
    # "ERROR SUMMARY: N errors", or racecheck's "RACECHECK SUMMARY: H hazards displayed (N errors, W warnings)"
    errors=$(grep -oE 'ERROR SUMMARY: [0-9]+ error|SUMMARY: .*\([0-9]+ error' "$WORK/san-$tool.log" | tail -n 1 \
      | grep -oE '[0-9]+ error' | grep -oE '[0-9]+')
    ok=$(grep -c '^ok: ' "$WORK/san-$tool.log")
    if [ "$DRY_RUN" -eq 1 ] || [ -z "$SANITIZER" ]; then
      label="driver without compute-sanitizer"
      [ "$DRY_RUN" -eq 1 ] && label="driver on the CPU"
      if [ "$rc" -eq 0 ] && [ "$ok" -eq 1 ]; then
        SAN_NOTE="$label: ok"
        [ "$DRY_RUN" -eq 1 ] || SAN_STATUS=skip  # the kernels ran, but nothing checked them
      else
        SAN_STATUS=fail SAN_NOTE="$label: exit $rc"
      fi
    elif [ "$rc" -eq 124 ]; then
      SAN_STATUS=fail SAN_NOTE="$SAN_NOTE $tool: timed out${errors:+ ($errors errors)};"
    elif [ -z "$errors" ] && [ "$rc" -eq 0 ] && [ "$ok" -eq 1 ]; then
      SAN_NOTE="$SAN_NOTE $tool: exit 0, no summary line;"  # --error-exitcode: 9 had it found any error
    elif [ -z "$errors" ]; then
      SAN_STATUS=fail SAN_NOTE="$SAN_NOTE $tool: no report (refused?) exit $rc;"
    elif [ "$errors" -ne 0 ] || [ "$rc" -ne 0 ] || [ "$ok" -ne 1 ]; then
      SAN_STATUS=fail SAN_NOTE="$SAN_NOTE $tool: $errors errors, exit $rc;"
    else
      SAN_NOTE="$SAN_NOTE $tool: 0 errors;"
    fi
    { echo "======== $tool ========"; cat "$WORK/san-$tool.log"; } >> "$SAN_LOG"
  done
  record sanitizer "$SAN_STATUS" "$SAN_TIME" "${SAN_NOTE# }"
  publish "$SAN_LOG"
else
  record tests skip 0 "no build"
  record sanitizer skip 0 "no build"
fi

# ---- benchmarks ------------------------------------------------------------------------------------------
BENCH_LOG=$WORK/benchmark.log
: > "$BENCH_LOG"
if [ "$DRY_RUN" -eq 1 ]; then
  STEM=$WORK/dry-run-gpu-table DEVICE=cpu
  COMPARE_ARGS=(--device cpu --protocol gpu --cases tiny --labels 2 4 --quick)
  MODEL_ARGS=(--configs small --height 60 --width 70 --frames 1 --warmup 0 --device cpu)
  FAST_VARIANT=bfloat16  # the dry run checks the plumbing without minutes of compiling
else
  STEM=$ROOT/benchmarks/results/${SLUG:-cuda-unknown} DEVICE=cuda
  COMPARE_ARGS=(--device cuda --cases s4 s8 s16 s4-480p --labels 2 4 11 --repeats 20 --budget 1)
  MODEL_ARGS=(--configs resnet101 --height 480 --width 854 --objects 2 --frames 30 --warmup 5 --device cuda)
  FAST_VARIANT=bfloat16+compile
fi
if [ "$BUILD_OK" -eq 1 ]; then
  timed "$BENCH_LOG" "$(budget 120 60)" "$PY" -m benchmarks.compare "${COMPARE_ARGS[@]}" --out "$STEM"
  record_run benchmark "$(basename "$STEM").{md,json}"
  MODEL_STATUS=pass MODEL_TIME=0 MODEL_NOTE=""
  for precision in float32 amp fast; do
    extra=() reserve=30
    [ "$precision" = amp ] && extra=(--amp) reserve=20
    [ "$precision" = fast ] && extra=(--variants "$FAST_VARIANT") reserve=10
    timed "$BENCH_LOG" "$(budget 60 "$reserve")" "$PY" -m benchmarks.model_speed "${MODEL_ARGS[@]}" "${extra[@]}" \
      --output "$WORK/model-$precision.md" --json "$WORK/model-$precision.json"
    MODEL_TIME=$((MODEL_TIME + ELAPSED))
    [ "$RC" -eq 0 ] || { MODEL_STATUS=fail; MODEL_NOTE="$MODEL_NOTE $precision: exit status $RC;"; }
  done
  timed "$BENCH_LOG" 60 "$PY" -m benchmarks.compare --add-model "$WORK/model-float32.json" "$WORK/model-amp.json" \
    "$WORK/model-fast.json" --out "$STEM"
  [ "$RC" -eq 0 ] || { MODEL_STATUS=fail; MODEL_NOTE="$MODEL_NOTE not added to the table;"; }
  record model "$MODEL_STATUS" "$MODEL_TIME" "${MODEL_NOTE:-float32, AMP and $FAST_VARIANT added to $(basename "$STEM").md}"
  if [ "$DRY_RUN" -eq 1 ]; then
    record export skip 0 "dry run: no AOTInductor compile"
  else
    timed "$BENCH_LOG" "$(budget 300 0)" "$PY" -m benchmarks.export_speed --device cuda --configs small \
      --size 480 854 --frames 6 --dtypes float32 bfloat16 --out "$WORK/export-cuda.json"
    record_run export export-cuda.json
  fi
else
  record benchmark skip 0 "no build"
  record model skip 0 "no build"
  record export skip 0 "no build"
fi
publish "$BENCH_LOG"
publish "$STEM.md"
publish "$STEM.json"
[ -f "$WORK/export-cuda.json" ] && publish "$WORK/export-cuda.json"

# ---- summary ---------------------------------------------------------------------------------------------
"$PY" - "$STATUS_FILE" "$STEM.json" "$DRY_RUN" "$(($(date +%s) - START))" "$WORK/env-build.log" > "$WORK/summary.txt" 2>&1 <<'PY'
import json, os, sys
status_file, table, dry_run, total, env_log = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4], sys.argv[5]
SHORT = {"global fwd / float32 torch.mm": "global/mm", "local fwd: naive / cfbi_ops": "naive/local",
         " fwd peak memory / outputs": " memory/outputs", " 2 objects": "", " float32": "", " frames/s": " fps"}
lines = ["cfbi GPU check" + (" (DRY RUN on the CPU: tiny sizes, the targets do not apply)" if dry_run else "")]
with open(env_log) as f:
    lines += ["  " + l.rstrip() for l in f if l.startswith(("python ", "GPU:", "nvcc:", "ninja:", "compute-sanitizer:"))]
lines += ["", f"{'stage':10s} {'status':6s} {'time':>6s}  note"]
for row in open(status_file):
    stage, status, seconds, note = row.rstrip("\n").split("\t")
    lines.append(f"{stage:10s} {status.upper() if status == 'fail' else status:6s} {seconds + ' s':>6s}  {note}"[:118])
if os.path.exists(table):
    targets = json.load(open(table))["targets"]
    groups = {}
    for t in targets:
        if t["ok"] is not None or t["name"].startswith("model"):
            groups.setdefault(t["name"].split(" ")[0], []).append(t)
    lines += ["", "targets (float32, L = 4; value, target, ok / NO):"]
    for name, group in groups.items():
        parts = []
        for t in group:
            short = t["name"][len(name) + 1:]
            for long, abbreviation in SHORT.items():
                short = short.replace(long, abbreviation)
            verdict = "" if t["ok"] is None else (" ok" if t["ok"] else " NO")
            parts.append(f"{short} {t['value']:.2f}{' ' + t['target'] if t['target'] else ''}{verdict}")
        lines.append(f"  {name:8s} " + " | ".join(parts))
else:
    lines += ["", "no benchmark table"]
lines += ["", f"total {total} s"]
print("\n".join(lines))
PY
publish "$WORK/summary.txt"
cat "$WORK/summary.txt"
STATUS=0
grep -q $'\tfail\t' "$STATUS_FILE" && STATUS=1
rm -rf "$WORK"
log "results in $RESULTS"
exit "$STATUS"
