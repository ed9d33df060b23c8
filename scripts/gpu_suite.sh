#!/usr/bin/env bash
# The GPU suite of rpo: every GPU claim checked by one prepared command. See --help.
set -uo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/gpu_suite.sh [--out DIR] [--phases LIST] [--budget SECONDS] [--python PY] [--wheels DIR] [--dry-run]

Runs the GPU checks of rpo in phases, each printing what it does and how long it took; every command has a time
limit, so one hang cannot eat the window. All output and result files go under --out DIR: suite.log (everything
printed), steps.tsv (phase, step, exit status, seconds), env.json, junit.xml (the tests), results/*.csv and *.png
(benchmark rows tagged with the card's name; keep them with `python -m benchmarks.merge DIR/results`).

Phases (--phases, comma-separated; default all, in this order):
  env    card, driver, CUDA, Python, torch, triton, nvcc versions; rpo_kernels.backends()
  deps   installs the wheels of scripts/gpu_wheels.txt from --wheels DIR (default .whl, made on a networked
         machine by scripts/fetch_gpu_wheels.sh) with pip --no-index into a folder put on PYTHONPATH
  build  the CUDA extension rpo_kernels/_C with CMake + ninja for sm_80 and sm_90a; then backends() lists cuda
  test   pytest -m "gpu or cuda_ext or parity": the GPU parity tests, every kernel against float64 at bf16/fp16
         (Triton and CUDA, the 2x rule), the prefix-once bf16 test, and the training smokes (the embedded task on
         cuda in bf16; the 1.5B GPU recipe on a random model of that shape)
  bench  short GPU runs of every benchmark, providers side by side: fused policy loss at (8192, 2048, 151936)
         bf16; shared-prefix decode at P 1024/4096/16384, G 8/16 against SDPA on duplicated KV, with the share of
         the measured copy bandwidth; prefix-once vs plain forward on the Qwen2-0.5B shape (the shared-prefix
         forward through the HF model's own layers and the Triton kernels, as RPOTrainer runs it); rollout full vs RPO,
         native vs HF generate, on the Qwen2-0.5B shape; then the same cases under pytest-benchmark
         (pytest benchmarks --benchmark-only at the GPU shapes), saved under DIR/benchmarks for --benchmark-compare

Options:
  --out DIR         where everything goes (default runs/gpu-suite)
  --phases LIST     e.g. env,build,test (default env,deps,build,test,bench)
  --budget SECONDS  stop starting steps when the suite has run this long, and cut each step's limit to what is
                    left, so the summary and files are written before an outer limit hits (default: none)
  --python PY       the interpreter with torch (default: $PYTHON or python3)
  --wheels DIR      the carried wheels (default .whl)
  --dry-run         walk every phase on a machine without a GPU: the GPU steps are replaced by what can run
                    there (the CMake configure, test collection, the benchmarks' quick shapes on the CPU); the
                    test suite runs this, so the script cannot rot between GPU visits
  -h, --help        this text

Exit status: 0 when every step passed, 1 when any failed or timed out, 2 for bad arguments.
EOF
}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT="$ROOT/runs/gpu-suite"
PHASES="env,deps,build,test,bench"
PY="${PYTHON:-python3}"
WHEELS="$ROOT/.whl"
DRY=0
BUDGET=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="${2:?--out needs a folder}"; shift 2 ;;
    --phases) PHASES="${2:?--phases needs a list}"; shift 2 ;;
    --budget) BUDGET="${2:?--budget needs seconds}"; shift 2 ;;
    --python) PY="${2:?--python needs an interpreter}"; shift 2 ;;
    --wheels) WHEELS="${2:?--wheels needs a folder}"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_suite.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
for phase in ${PHASES//,/ }; do
  case "$phase" in
    env|deps|build|test|bench) ;;
    *) echo "gpu_suite.sh: --phases: unknown phase '$phase'; expected some of env,deps,build,test,bench" >&2
       exit 2 ;;
  esac
done
if ! [[ "$BUDGET" =~ ^[0-9]+$ ]]; then
  echo "gpu_suite.sh: --budget: expected whole seconds, got '$BUDGET'" >&2
  exit 2
fi
if ! command -v "$PY" >/dev/null; then
  echo "gpu_suite.sh: --python: '$PY' is not an executable on PATH" >&2
  exit 2
fi
PY=$(command -v "$PY")
[[ "$PY" == */* ]] && PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"  # absolute, links kept (a venv's python)

mkdir -p "$OUT/results"
OUT=$(cd "$OUT" && pwd)
SCRATCH="${TMPDIR:-/tmp}/rpo-gpu-suite"
SITE="$SCRATCH/site"
export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
cd "$ROOT" || exit 2
: > "$OUT/steps.tsv"
exec > >(tee "$OUT/suite.log") 2>&1

START=$SECONDS
PHASE=""
PHASE_FAILS=0
FAILS=0

# step NAME LIMIT_S CMD...: run CMD under a time limit (cut to what --budget leaves), report and record the result.
step() {
  local name=$1 limit=$2
  shift 2
  if [ "$BUDGET" -gt 0 ]; then
    local left=$((BUDGET - (SECONDS - START)))
    if [ "$left" -lt 20 ]; then
      echo "-- $PHASE/$name: SKIPPED, the --budget of ${BUDGET}s is spent"
      printf '%s\t%s\t%s\t%s\n' "$PHASE" "$name" "skipped" 0 >> "$OUT/steps.tsv"
      PHASE_FAILS=$((PHASE_FAILS + 1))
      return 125
    fi
    [ "$limit" -gt $((left - 10)) ] && limit=$((left - 10))
  fi
  echo "-- $PHASE/$name (limit ${limit}s): $*"
  local t0=$SECONDS rc
  timeout --kill-after=15 "$limit" "$@"
  rc=$?
  local took=$((SECONDS - t0))
  if [ $rc -eq 0 ]; then
    echo "   ok: $PHASE/$name in ${took}s"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    echo "   TIMED OUT: $PHASE/$name after ${took}s (limit ${limit}s)"
  else
    echo "   FAILED (exit $rc): $PHASE/$name after ${took}s"
  fi
  printf '%s\t%s\t%s\t%s\n' "$PHASE" "$name" "$rc" "$took" >> "$OUT/steps.tsv"
  [ $rc -eq 0 ] || PHASE_FAILS=$((PHASE_FAILS + 1))
  return $rc
}

# note NAME MESSAGE: a check of the suite itself that failed (recorded like a failed step).
note_failure() {
  echo "   FAILED: $PHASE/$1: $2"
  printf '%s\t%s\t%s\t%s\n' "$PHASE" "$1" 1 0 >> "$OUT/steps.tsv"
  PHASE_FAILS=$((PHASE_FAILS + 1))
}

torch_has_cuda() {
  "$PY" -c "import sys, torch; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null
}

phase_env() {
  step versions 120 "$PY" scripts/gpu_env.py --out "$OUT"
  if command -v nvidia-smi >/dev/null; then
    step nvidia-smi 60 nvidia-smi
  else
    echo "   nvidia-smi is not on this machine"
  fi
}

phase_deps() {
  local missing=() spec name version wheels=()
  while read -r spec; do
    name=$(echo "${spec%%==*}" | tr 'A-Z-' 'a-z_')
    version=${spec#*==}
    if ! ls "$WHEELS" 2>/dev/null | tr 'A-Z' 'a-z' | grep -q "^${name}-${version}-"; then  # wheel names use _
      missing+=("$spec")
    fi
  done < <(grep -vE '^\s*(#|$)' scripts/gpu_wheels.txt)
  shopt -s nullglob
  wheels=("$WHEELS"/*.whl)
  shopt -u nullglob
  if [ ${#missing[@]} -gt 0 ]; then
    local why="not in $WHEELS: ${missing[*]}; run scripts/fetch_gpu_wheels.sh on a networked machine and carry $WHEELS"
    if [ "$DRY" -eq 1 ]; then
      echo "   a GPU run from here would lack them: $why"
    else
      note_failure wheels "$why"
    fi
  fi
  [ ${#wheels[@]} -gt 0 ] || return 0
  local mib
  mib=$(du -sm "$WHEELS" | cut -f1)
  echo "   ${#wheels[@]} wheels, ${mib} MiB in $WHEELS"
  [ "$mib" -lt 40 ] || note_failure size "$WHEELS holds ${mib} MiB; keep it well under 40 MiB"
  local pip=("$PY" -m pip install --quiet --disable-pip-version-check --no-index --no-deps --no-compile --no-cache-dir)
  if [ "$DRY" -eq 1 ]; then
    step install-plan 120 "${pip[@]}" --dry-run --target "$SCRATCH/dry-site" --python-version 3.12 --implementation cp \
      --only-binary=:all: --platform manylinux_2_28_x86_64 "${wheels[@]}"
  else
    step install 180 "${pip[@]}" --upgrade --target "$SITE" "${wheels[@]}"
    step imports 120 "$PY" -c "import math_verify, liger_kernel; print('math_verify and liger_kernel import')"
  fi
}

phase_build() {
  local build="$SCRATCH/build" ext=OFF
  torch_has_cuda && ext=ON
  if [ "$DRY" -eq 1 ] && [ "$ext" = OFF ]; then
    echo "   torch here has no CUDA: configuring the torch-free kernel library only (the GPU run adds the extension)"
  fi
  rm -rf "$build"
  step configure 180 cmake -S "$ROOT" -B "$build" -G Ninja -DRPO_BUILD_TORCH_EXT=$ext -DPython3_EXECUTABLE="$PY" \
    "-DCMAKE_CUDA_ARCHITECTURES=80;90a" || return 1
  if [ "$DRY" -eq 1 ]; then
    echo "   dry run: the compile is left to the GPU run (CI compiles csrc/ in tests/kernels/test_cuda_build.py)"
    return 0
  fi
  if ! step compile 480 bash -c "cmake --build '$build' -j $(nproc) > '$OUT/compile.log' 2>&1"; then
    echo "   first compiler error ($OUT/compile.log):"
    grep -m 3 -E "error|Error" "$OUT/compile.log" | sed 's/^/     /'
    tail -n 20 "$OUT/compile.log" | sed 's/^/     | /'
    return 1
  fi
  step extension 120 "$PY" -c "
import sys, torch, rpo_kernels
from rpo_kernels._dispatch import _cuda_ext_import
ok, why = _cuda_ext_import()
print('extension:', why)
status = rpo_kernels.backends()
print('backends:', status)
sys.exit(0 if ok and (status['cuda']['available'] or not torch.cuda.is_available()) else 1)"
}

phase_test() {
  local select="gpu or cuda_ext or parity"
  if [ "$DRY" -eq 1 ]; then
    step collect 180 "$PY" -m pytest --collect-only -q -p no:cacheprovider -m "$select" tests
    return
  fi
  local args=(-q -rA -p no:cacheprovider --junitxml "$OUT/junit.xml" -m "$select")
  "$PY" -c "import pytest_timeout" 2>/dev/null && args+=(--timeout 300)
  step pytest 600 "$PY" -m pytest "${args[@]}" tests
}

phase_bench() {
  local res="$OUT/results"
  # pytest-benchmark's runs, kept for `pytest benchmarks --benchmark-compare --benchmark-storage DIR/benchmarks`
  local pytest_bench=("$PY" -m pytest benchmarks --benchmark-only -q -p no:cacheprovider --benchmark-autosave
                      --benchmark-storage "$OUT/benchmarks")
  if [ "$DRY" -eq 1 ]; then
    step policy_loss 180 "$PY" -m benchmarks.bench_policy_loss --quick --rep 1 --out "$res/policy_loss.csv"
    step attention 180 "$PY" -m benchmarks.bench_attention --prefix 64 256 --group-sizes 2 4 --suffix 16 --groups 2 \
      --rep 1 --out "$res/attention.csv"
    step policy_forward 180 "$PY" -m benchmarks.bench_policy_forward --shapes 24,6,3 --rep 1 \
      --out "$res/policy_forward.csv"
    step rollout 180 "$PY" -m benchmarks.bench_rollout --quick --rep 1 --providers native hf --out "$res/rollout.csv"
    step pytest_benchmarks 300 "${pytest_bench[@]}" --bench-device cpu --bench-size smoke --benchmark-min-rounds 2 \
      --benchmark-max-time 0.1
    return
  fi
  step policy_loss 300 "$PY" -m benchmarks.bench_policy_loss --rep 5 --out "$res/policy_loss.csv"
  step attention 300 "$PY" -m benchmarks.bench_attention --prefix 1024 4096 16384 --group-sizes 8 16 --suffix 64 \
    --rep 20 --out "$res/attention.csv"
  step policy_forward 300 "$PY" -m benchmarks.bench_policy_forward --arch qwen2-0.5b --shapes 2048,256,8 --rep 3 \
    --out "$res/policy_forward.csv"
  step rollout 360 "$PY" -m benchmarks.bench_rollout --arch qwen2-0.5b --C 256 --rep 2 --providers native hf \
    --out "$res/rollout.csv"
  step pytest_benchmarks 480 "${pytest_bench[@]}" --bench-device cuda --bench-size full
}

describe() {
  case "$1" in
    env) echo "the machine and the versions" ;;
    deps) echo "the carried wheels, installed offline" ;;
    build) echo "the CUDA extension with CMake + ninja (sm_80, sm_90a)" ;;
    test) echo "GPU tests, kernel parity at bf16/fp16, training smokes" ;;
    bench) echo "every benchmark, GPU shapes" ;;
  esac
}

echo "rpo GPU suite: phases $PHASES$([ "$DRY" -eq 1 ] && echo ' (dry run)'), python $PY, out $OUT, $(date -u +%FT%TZ)"
declare -a SUMMARY=()
for phase in ${PHASES//,/ }; do
  PHASE=$phase
  PHASE_FAILS=0
  echo
  echo "== $phase: $(describe "$phase")$([ "$DRY" -eq 1 ] && echo ' [dry run]')"
  t0=$SECONDS
  "phase_$phase"
  [ $? -eq 0 ] || [ "$PHASE_FAILS" -gt 0 ] || PHASE_FAILS=1
  status=$([ "$PHASE_FAILS" -eq 0 ] && echo ok || echo "FAILED ($PHASE_FAILS)")
  echo "== $phase: $status in $((SECONDS - t0))s"
  SUMMARY+=("$phase: $status in $((SECONDS - t0))s")
  FAILS=$((FAILS + PHASE_FAILS))
done

echo
echo "== summary ($((SECONDS - START))s in all; steps in $OUT/steps.tsv)"
printf '   %s\n' "${SUMMARY[@]}"
[ "$FAILS" -eq 0 ] && exit 0 || exit 1
