#!/usr/bin/env bash
# benchmarks/gpu_check.sh [OUT] -- the one device check of the GPU path (issue 12), sized for a
# 15-minute device lease: at most 8 minutes wall, every step under its own timeout so a hang
# cannot eat the others.
#
# Needs a CUDA GPU and, already installed, torch, triton, numpy, onnx, onnxruntime, opencv,
# click and tqdm; no internet. Installs this checkout without dependencies (pip install --no-deps
# --no-build-isolation -e .), then runs, in this order (budget, seconds of wall time):
#   install    pip install --no-deps --no-build-isolation -e . (at most INSTALL_S; where it
#              fails, the checkout is put on PYTHONPATH instead)
#   setup      versions, GPU, CPU threads, the kernel launch configs in effect       (SETUP_S)
#   gpu-tests  python3 -m pytest -m gpu                                             (GPU_TESTS_S)
#   kernel     QAConvMatch at Market size, 3,368 x 15,913 pairs, 24x8 maps, C 128, fp16, P 1
#              and 65, with an empty Triton cache: first call and steady seconds, TFLOP/s,
#              x the official evaluator path, % of a dense fp16 GEMM (benchmarks/match.py)
#                                                                                  (KERNEL_S)
#   warm       a new process, same Triton cache: first calls with a warm cache; then the
#              training op (responses forward + backward) per backend             (WARM_S)
#   extract    paper preset (K = 3 + DI, 384x128), batch 128: eager fp32 (and fp16 autocast)
#              and every runtime extractor backend that opens (benchmarks/extract.py) (EXTRACT_S)
#   demo       tal-demo end to end, on the GPU                                       (DEMO_S)
#   suite      the rest of the suite (-m "not gpu"), time-capped, failures named as they
#              happen                                                               (SUITE_S)
# OUT (default: ./gpu-check-<date>) receives report.md and the raw logs, 7 files in all.
# Without a CUDA GPU it refuses with one line and exit status 2.
set -uo pipefail

# Budgets in seconds (the environment may override them): the defaults sum to 440 s, and each
# budget that runs out adds at most KILL_AFTER_S (SIGTERM, then SIGKILL that much later), so
# the whole check ends within 480 s.
: "${INSTALL_S:=25}" "${SETUP_S:=20}" "${GPU_TESTS_S:=75}" "${KERNEL_S:=80}" "${WARM_S:=40}"
: "${EXTRACT_S:=60}" "${DEMO_S:=80}" "${SUITE_S:=60}" "${KILL_AFTER_S:=5}"

PY=${PYTHON:-python3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-gpu-check-$(date +%Y%m%d-%H%M%S)}

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "error: gpu_check.sh needs a CUDA GPU that $PY's torch can see (torch.cuda.is_available() is False)" >&2
    exit 2
fi
if [ -e "$OUT" ] && [ -n "$(ls -A "$OUT" 2>/dev/null)" ]; then
    echo "error: $OUT already holds files; name an empty or new folder" >&2
    exit 2
fi
mkdir -p "$OUT" || { echo "error: cannot create $OUT" >&2; exit 2; }
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
STEPS="$WORK/steps.md"
# Fresh caches: no earlier tuning or compiled kernel changes what is measured.
export TAL_CACHE_DIR="$WORK/tal-cache" TRITON_CACHE_DIR="$WORK/triton-cache"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
cd "$ROOT" || exit 2
export PY ROOT OUT WORK

# run_step NAME BUDGET LOG COMMAND...: the command (a function of this script or a program)
# under its budget, in its own process group (timeout kills all of it), output appended to
# OUT/LOG; one row of the steps table.
run_step() {
    local name=$1 budget=$2 log=$3 start=$SECONDS rc status
    shift 3
    echo "### $name: $*" >>"$OUT/$log"
    timeout -k "$KILL_AFTER_S" "$budget" bash -c '"$@"' "$name" "$@" >>"$OUT/$log" 2>&1
    rc=$?
    case $rc in
        0) status=ok ;;
        124 | 137) status="**cut at its budget**" ;;
        *) status="**failed (exit $rc)**" ;;
    esac
    [ "$rc" -eq 0 ] || STEPS_NOT_OK=$((STEPS_NOT_OK + 1))
    echo "| $name | $status | $((SECONDS - start)) | $budget | $log |" >>"$STEPS"
    return $rc
}

# The project into $PY's environment; where pip cannot, on PYTHONPATH (tal_plugins is the
# plugins/ folder, as the pyproject's package-dir maps it).
install() {
    echo "### install: pip install --no-deps --no-build-isolation -e ."
    timeout -k "$KILL_AFTER_S" "$INSTALL_S" "$PY" -m pip install --no-deps --no-build-isolation -e . 2>&1 |
        tail -n 3
    if ! "$PY" -c "import tal_plugins.tuning, tal_infer, tal_train, tal_export" 2>/dev/null; then
        mkdir -p "$WORK/path" && ln -s "$ROOT/plugins" "$WORK/path/tal_plugins"
        export PYTHONPATH="$ROOT:$WORK/path${PYTHONPATH:+:$PYTHONPATH}"
        echo "pip install failed: the checkout is on PYTHONPATH instead"
    fi
}

setup() {
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
    "$PY" - <<'EOF'
import os, platform, shutil, importlib
import torch
mods = ["torch", "triton", "numpy", "onnx", "onnxruntime", "cv2", "click", "tqdm", "pytest"]
print("python", platform.python_version(), "|", ", ".join(
    f"{m} {getattr(importlib.import_module(m), '__version__', '?')}" for m in mods))
print("gpu", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability())
print("cpus: os.cpu_count", os.cpu_count(), "affinity", len(os.sched_getaffinity(0)),
      "torch threads", torch.get_num_threads(), "| C compiler for Triton:",
      shutil.which("cc") or shutil.which("gcc") or "none")
try:
    print("cgroup cpu.max", open("/sys/fs/cgroup/cpu.max").read().strip())
except OSError:
    pass
EOF
    "$PY" -m tal_plugins.tune --show --hw 24x8 --hw 12x4 --p 1,65 --dtype fp16,fp32
}

# pytest with one line per test (names of failures show even when the step is cut short);
# xdist workers with 2 threads each where pytest-xdist is installed.
pytest_run() {
    local workers=()
    if "$PY" -c "import xdist" 2>/dev/null; then
        workers=(-n "$(($(nproc) / 2))")
    fi
    OMP_NUM_THREADS=2 "$PY" -m pytest -v -rfE -p no:cacheprovider ${workers[@]+"${workers[@]}"} "$@"
}

kernel() {
    TRITON_CACHE_DIR="$WORK/triton-cold" "$PY" benchmarks/match.py --device cuda --sizes market
}

warm() {
    TRITON_CACHE_DIR="$WORK/triton-cold" "$PY" benchmarks/match.py --device cuda --first-call &&
        "$PY" benchmarks/match.py --device cuda --training
}

demo() {
    local t0=$SECONDS
    "$PY" -c "from tal_export.demo import main; main()" --workdir "$WORK/demo" --quiet 2>&1 |
        while IFS= read -r line; do printf '[%4d s] %s\n' $((SECONDS - t0)) "$line"; done
    local rc=${PIPESTATUS[0]}
    "$PY" - "$WORK/demo/runs/demo" <<'EOF'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
if (run / "train_log.json").is_file():
    for e in json.loads((run / "train_log.json").read_text()):
        print(f"epoch {e['epoch']}: {e['iterations']} iterations, {e['seconds']} s, "
              f"{e['images_per_s']} images/s")
EOF
    return "$rc"
}

# pytest -v progress lines of one outcome: "tests/x.py::t FAILED [ 5%]", or with xdist
# "[gw1] [  5%] FAILED tests/x.py::t".
outcomes() {
    grep -E "^tests/[^ ]+ $2( |$)|^\[gw[0-9]+\] \[ *[0-9]+%\] $2 " "$1"
}

# The lines of a log worth reading in the report: markdown tables, pytest outcomes, demo lines.
summary_of() {
    local outcome
    case $1 in
        *tests.log | suite.log)
            for outcome in PASSED FAILED ERROR SKIPPED; do
                printf '%s %s, ' "$(outcomes "$OUT/$1" $outcome | wc -l)" "$outcome"
            done
            echo "as reported when the step ended"
            echo
            outcomes "$OUT/$1" "(FAILED|ERROR)" | sed 's/^/    /' | head -n 60
            grep -E "^=+ .*(passed|failed|error).* in [0-9.]+s" "$OUT/$1" ;;
        demo.log) grep -E "^\[ *[0-9]+ s\] (\[|done|mAP|      training)|^epoch |rror" "$OUT/$1" ;;
        *) grep -E "^\||^measured |^TRITON_CACHE_DIR|^qaconv_|^QAConvMatch|^torch |rror" "$OUT/$1" ;;
    esac
}

export -f setup pytest_run kernel warm demo
STEPS_NOT_OK=0
install >"$OUT/setup.log" 2>&1
echo "| step | result | seconds | budget (s) | log |" >"$STEPS"
echo "|---|---|---|---|---|" >>"$STEPS"
run_step setup "$SETUP_S" setup.log setup
run_step gpu-tests "$GPU_TESTS_S" gpu-tests.log pytest_run -m gpu
run_step kernel "$KERNEL_S" kernel.log kernel
run_step warm "$WARM_S" kernel.log warm
run_step extract "$EXTRACT_S" extract.log "$PY" benchmarks/extract.py --device cuda --runtime \
    --presets paper --batches 128 --min-time 1 --min-calls 1
run_step demo "$DEMO_S" demo.log demo
run_step suite "$SUITE_S" suite.log pytest_run -m "not gpu"

{
    echo "# GPU check $(date -u '+%Y-%m-%d %H:%M UTC'), $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo 'no git')"
    echo
    grep -E "^(NVIDIA|name|python|gpu|cpus|cgroup|sm[0-9]|pip install failed)" "$OUT/setup.log"
    echo
    cat "$STEPS"
    for log in gpu-tests.log kernel.log extract.log demo.log suite.log; do
        echo
        echo "## $log"
        echo
        summary_of "$log"
    done
} >"$OUT/report.md"
cat "$OUT/report.md"
[ "$STEPS_NOT_OK" -eq 0 ]
