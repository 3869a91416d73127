#!/usr/bin/env bash
# One run that tells whether seglosses' CUDA path works on this machine: build the extension with
# CUDA, check that every op has a CUDA kernel, run every CUDA test (`pytest -m cuda`: the tests
# marked @requires_cuda), and run the Dice and MALIS benchmarks on the GPU. Prints one table
# (result and time per part) and exits non-zero if any part failed. Needs no internet: it uses
# the torch (a CUDA build) and the packages already installed, and says which ones are missing.
# Budget: 8 minutes in all on a 16-core machine (DEVELOPERS.md, "The GPU check").
#
# Usage: tools/gpu_check.sh [--dry-run] [--python PY] LOG_DIR
#   LOG_DIR    where each part writes its log (created; a summary.txt goes there too)
#   --python   the interpreter with the CUDA torch (default: $PYTHON, else python3)
#   --dry-run  print the parts and their commands, run nothing (no GPU needed)
# Environment: TORCH_CUDA_ARCH_LIST (default: this GPU's architecture only, from
#   torch.cuda.get_device_capability(); the check builds for the GPU it runs on), MAX_JOBS (default:
#   every usable core), as for setup.py.
set -uo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '9,14p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
PY=${PYTHON:-python3}
DRY=0
LOG=
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --python) [ $# -ge 2 ] || usage; PY=$2; shift ;;
    -h|--help) usage ;;
    -*) echo "gpu_check: unknown option $1" >&2; usage ;;
    *) [ -z "$LOG" ] || usage; LOG=$1 ;;
  esac
  shift
done
[ -n "$LOG" ] || usage
mkdir -p "$LOG" || exit 2
LOG=$(cd "$LOG" && pwd)

# Seconds each part may take at most; each also stops when the 8-minute budget is spent.
BUDGET=480
BUILD_LIMIT=240
TESTS_LIMIT=240
BENCH_LIMIT=90

ROWS=()
FAILED=0
START=$(date +%s)

# record PART RESULT SECONDS NOTE
record() {
  ROWS+=("$(printf '%-20s %-5s %6s s  %s' "$1" "$2" "$3" "$4")")
  [ "$2" = FAIL ] && FAILED=1
  echo "gpu_check: $1: $2 ($3 s) $4"
}

print_table() {
  {
    echo
    printf '%-20s %-5s %8s  %s\n' part result time notes
    printf '%s\n' "${ROWS[@]}"
  } | tee "$LOG/summary.txt"
}

# run PART LIMIT LOGFILE COMMAND...: runs the command, output to the log, for at most LIMIT
# seconds and what is left of the budget; sets RC and SECS.
run() {
  local part=$1 limit=$2 logfile=$3
  shift 3
  local left=$(( BUDGET - ($(date +%s) - START) ))
  [ $limit -le $left ] || limit=$left
  echo "gpu_check: $part: $*  (limit ${limit} s, log $logfile)"
  if [ $DRY = 1 ]; then RC=0; SECS=0; return; fi
  local t0=$(date +%s)
  if [ $limit -le 0 ]; then
    echo "gpu_check: $part: not run, the ${BUDGET} s budget is spent" > "$logfile"
    RC=124; SECS=0; return
  fi
  timeout --kill-after=10 "$limit" "$@" > "$logfile" 2>&1
  RC=$?
  SECS=$(( $(date +%s) - t0 ))
  [ $RC = 124 ] || [ $RC = 137 ] && echo "gpu_check: $part: stopped after its ${limit} s limit" >> "$logfile"
}

# --- environment ---------------------------------------------------------------------------
if [ $DRY = 1 ]; then
  echo "gpu_check: environment: $PY tools/gpu_check_probe.py environment  (log $LOG/environment.log)"
else
  t0=$(date +%s)
  "$PY" tools/gpu_check_probe.py environment > "$LOG/environment.log" 2>&1
  RC=$?
  NOTE=$(tr '\n' ' ' < "$LOG/environment.log" | sed 's/ *$//' | cut -c1-160)
  record environment "$([ $RC = 0 ] && echo ok || echo FAIL)" $(( $(date +%s) - t0 )) "$NOTE"
  if [ $RC != 0 ]; then
    echo "gpu_check: this environment cannot run the CUDA check; see $LOG/environment.log"
    print_table
    exit 1
  fi
  { nvidia-smi || true; command -v nvcc && nvcc --version; } > "$LOG/machine.log" 2>&1
fi

# --- build ---------------------------------------------------------------------------------
# Only this GPU's architecture (setup.py's default list is 6 of them: minutes more), on every core.
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  if [ $DRY = 1 ]; then
    TORCH_CUDA_ARCH_LIST="<this GPU's, from $PY tools/gpu_check_probe.py arch>"
  else
    TORCH_CUDA_ARCH_LIST=$("$PY" tools/gpu_check_probe.py arch 2> "$LOG/arch.log") || TORCH_CUDA_ARCH_LIST=
  fi
fi
JOBS=${MAX_JOBS:-$(nproc 2>/dev/null || echo 4)}
if [ -n "$TORCH_CUDA_ARCH_LIST" ]; then
  run "build (CUDA)" $BUILD_LIMIT "$LOG/build.log" env FORCE_CUDA=1 "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST" \
    "MAX_JOBS=$JOBS" "$PY" setup.py build_ext --inplace
else  # no capability read (see arch.log): setup.py's default list
  run "build (CUDA)" $BUILD_LIMIT "$LOG/build.log" env FORCE_CUDA=1 "MAX_JOBS=$JOBS" "$PY" setup.py build_ext --inplace
fi
if [ $DRY = 0 ]; then
  ARCHS=$(sed -n 's/.*GPU architectures \([^ ]*\).*/\1/p' "$LOG/build.log" | head -1)
  record "build (CUDA)" "$([ $RC = 0 ] && echo ok || echo FAIL)" $SECS "archs ${ARCHS:-?}; log build.log"
fi

# --- every op has a CUDA kernel ------------------------------------------------------------
run "CUDA kernels" 60 "$LOG/kernels.log" "$PY" tools/gpu_check_probe.py kernels
[ $DRY = 1 ] || record "CUDA kernels" "$([ $RC = 0 ] && echo ok || echo FAIL)" $SECS "$(tail -1 "$LOG/kernels.log" | cut -c1-100)"

# --- the CUDA tests ------------------------------------------------------------------------
run "CUDA tests" $TESTS_LIMIT "$LOG/cuda-tests.log" \
  "$PY" -m pytest tests -m cuda -q -rfEs -p no:cacheprovider --junitxml="$LOG/cuda-tests.xml"
if [ $DRY = 1 ]; then
  N=$("$PY" -m pytest tests -m cuda --collect-only -q -p no:cacheprovider 2>/dev/null | grep -c '::')
  echo "gpu_check: CUDA tests: $N tests carry the cuda marker"
else
  COUNTS=$(grep -E '^(=+ )?[0-9]+ (passed|failed|skipped|error)' "$LOG/cuda-tests.log" | tail -1 | tr -d '=' | sed 's/ in .*//')
  RESULT=$([ $RC = 0 ] && echo ok || echo FAIL)
  # Every CUDA test skipped means the GPU was not used at all: that is no pass.
  if [ $RC = 0 ] && ! grep -qE '[0-9]+ passed' <<< "$COUNTS"; then RESULT=FAIL; fi
  record "CUDA tests" "$RESULT" $SECS "${COUNTS:-no result}; log cuda-tests.log"
fi

# --- benchmarks on the GPU -----------------------------------------------------------------
# bench_part PART SCRIPT LOGNAME EXTRA_FLAGS...: runs SCRIPT --device cuda if the script has that mode.
bench_part() {
  local part=$1 script=$2 logname=$3
  shift 3
  if [ ! -f "$script" ]; then
    echo "gpu_check: $part: $script is not in this checkout: not run"
    [ $DRY = 1 ] || record "$part" "n/a" 0 "$script is not in this checkout"
    return
  fi
  # The script's source names its options (cheaper than running --help, which imports torch).
  if ! grep -q -- '"--device"' "$script"; then
    echo "gpu_check: $part: $script has no --device option (no CUDA mode in this version): not run"
    [ $DRY = 1 ] || record "$part" "n/a" 0 "$script has no CUDA mode yet"
    return
  fi
  local extra=()
  for flag in "$@"; do grep -q -- "\"$flag\"" "$script" && extra+=("$flag"); done
  run "$part" $BENCH_LIMIT "$LOG/$logname" "$PY" "$script" --device cuda "${extra[@]}"
  if [ $DRY = 0 ]; then
    cat "$LOG/$logname"
    record "$part" "$([ $RC = 0 ] && echo ok || echo FAIL)" $SECS "table in $logname"
  fi
}
bench_part "Dice bench (cuda)" bench/dice.py dice-bench.log
bench_part "MALIS bench (cuda)" bench/malis_weights.py malis-bench.log --no-peer  # malis 1.0 needs its venv (internet)

# --- the table -----------------------------------------------------------------------------
[ $DRY = 1 ] && { echo "gpu_check: dry run: nothing was run"; exit 0; }
TOTAL=$(( $(date +%s) - START ))
record total "$([ $TOTAL -le $BUDGET ] && echo ok || echo FAIL)" $TOTAL "budget $BUDGET s; logs in $LOG"
print_table
exit $FAILED
