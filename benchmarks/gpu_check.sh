#!/usr/bin/env bash
# benchmarks/gpu_check.sh [--dry-run] [OUT] -- the one device check of the GPU path, sized for a
# 15-minute device lease: a hard cap of CAP_S (480 s) wall time for everything, Python
# start-ups included, enforced twice: every step's timeout is cut to the time left before the
# cap, and a watchdog (`timeout` around the whole script) ends it at the cap regardless.
#
# Needs a CUDA GPU and, already installed, torch, triton, numpy, onnx, onnxruntime, opencv,
# click, tqdm and pytest(-xdist); no internet. Installs this checkout without dependencies
# (pip install --no-deps --no-build-isolation -e .), then, most informative first (nominal
# budget in seconds; a step never gets more than the time left):
#   setup      versions, GPU, CPU threads, the launch configs in effect, and one line per
#              component this machine cannot exercise (TensorRT, faiss-gpu, ONNX Runtime's
#              CUDA providers), naming the missing package                          (SETUP_S)
#   gpu-tests  python3 -m pytest -m gpu: the compiled kernel against the reference (GPU_TESTS_S)
#   kernel     QAConvMatch at Market size, 3,368 x 15,913 pairs, 24x8 maps, C 128, fp16, P 1
#              and 65, with an empty Triton cache: first call and steady seconds, TFLOP/s,
#              x the official evaluator path, % of a dense fp16 GEMM (benchmarks/match.py)
#                                                                                  (KERNEL_S)
#   warm       a new process, same Triton cache: first calls with a warm cache; then the
#              training op (responses forward + backward) per backend             (WARM_S)
#   extract    paper preset (K = 3 + DI, 384x128), batch 128: eager fp32 (and fp16 autocast)
#              and every runtime extractor backend that opens (benchmarks/extract.py) (EXTRACT_S)
#   demo       tal-demo end to end, on the GPU                                       (DEMO_S)
#   suite      the rest of the suite (-m "not gpu") in pytest-xdist workers: the time left
#              (the suite takes about 110 s on 2 cores; on 16 cores less), failures named as
#              they happen                                                         (SUITE_S)
# OUT (default: ./gpu-check-<date>) receives report.md and the raw logs.
# --dry-run: every step is a stand-in that never ends on its own (DRY_STEP_S, default 3600 s),
# and no GPU is needed: it shows that the cap holds (tests/test_gpu_check.py runs it with small
# budgets). Without a CUDA GPU (and no --dry-run) it refuses with one line and exit status 2.
set -uo pipefail

: "${CAP_S:=480}" "${KILL_AFTER_S:=5}" "${REPORT_S:=10}"
: "${INSTALL_S:=25}" "${SETUP_S:=30}" "${GPU_TESTS_S:=90}" "${KERNEL_S:=80}" "${WARM_S:=40}"
: "${EXTRACT_S:=60}" "${DEMO_S:=70}" "${SUITE_S:=$CAP_S}" "${DRY_STEP_S:=3600}"

: "${DRY_RUN:=0}"
if [ "${1:-}" = "--dry-run" ]; then
    DRY_RUN=1
    shift
fi

# The watchdog: the script runs again under `timeout`, which ends it at the cap (steps are in
# process groups of their own and end by their own timeouts, which never pass the cap). The
# signal goes to the script alone (--foreground), whose TERM trap ends the running step: sent
# to its whole process group, it would also kill whatever short command the script was
# running at that moment, and bash would print "Terminated" for it.
if [ "${GPU_CHECK_INNER:-0}" != 1 ]; then
    GPU_CHECK_INNER=1 GPU_CHECK_START=$(date +%s) DRY_RUN=$DRY_RUN \
        timeout --foreground -k "$KILL_AFTER_S" "$CAP_S" bash "$0" "$@"
    rc=$?
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "error: gpu_check.sh reached its ${CAP_S}-second cap; the watchdog ended it" >&2
    fi
    exit "$rc"
fi

# Ended by the watchdog: end the running step too (its timeout passes the signal on).
trap '[ -z "${STEP_PID:-}" ] || kill -TERM "$STEP_PID" 2>/dev/null; exit 124' TERM
PY=${PYTHON:-python3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-gpu-check-$(date +%Y%m%d-%H%M%S)}
DEADLINE=$((GPU_CHECK_START + CAP_S - REPORT_S))

# left: seconds before the deadline (what steps may still use).
left() {
    echo $((DEADLINE - $(date +%s)))
}

if [ "$DRY_RUN" = 0 ] && ! timeout -k "$KILL_AFTER_S" "$(left)" "$PY" -c \
        "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
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
# under min(BUDGET, time left), in its own process group (timeout ends all of it), output
# appended to OUT/LOG; one row of the steps table. A dry run runs a stand-in that never ends.
run_step() {
    local name=$1 budget=$2 log=$3 start=$SECONDS rc status allowed
    shift 3
    allowed=$(( $(left) - KILL_AFTER_S ))
    [ "$budget" -lt "$allowed" ] || budget=$allowed
    if [ "$budget" -le 0 ]; then
        echo "| $name | **not run: no time left** | 0 | 0 | $log |" >>"$STEPS"
        STEPS_NOT_OK=$((STEPS_NOT_OK + 1))
        return 1
    fi
    [ "$DRY_RUN" = 0 ] || set -- sleep "$DRY_STEP_S"
    echo "### $name: $*" >>"$OUT/$log"
    timeout -k "$KILL_AFTER_S" "$budget" bash -c '"$@"' "$name" "$@" >>"$OUT/$log" 2>&1 &
    STEP_PID=$!
    wait "$STEP_PID"
    rc=$?
    STEP_PID=
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
    "$PY" -m pip install --no-deps --no-build-isolation -e . 2>&1 | tail -n 3
    if ! "$PY" -c "import tal_plugins.tuning, tal_infer, tal_train, tal_export" 2>/dev/null; then
        mkdir -p "$WORK/path" && ln -s "$ROOT/plugins" "$WORK/path/tal_plugins"
        echo "PYTHONPATH=$ROOT:$WORK/path" >"$WORK/pythonpath"
        echo "pip install failed: the checkout is on PYTHONPATH instead"
    fi
}

setup() {
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
    "$PY" - <<'EOF'
import importlib, os, platform, shutil
import torch
mods = ["torch", "triton", "numpy", "onnx", "onnxruntime", "cv2", "click", "tqdm", "pytest"]
def version(name):
    try:
        return getattr(importlib.import_module(name), "__version__", "?")
    except ImportError:
        return "missing"
print("python", platform.python_version(), "|", ", ".join(f"{m} {version(m)}" for m in mods))
print("gpu", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability())
print("cpus: os.cpu_count", os.cpu_count(), "affinity", len(os.sched_getaffinity(0)),
      "torch threads", torch.get_num_threads(), "| C compiler for Triton:",
      shutil.which("cc") or shutil.which("gcc") or "none")
# One line per component this machine cannot exercise, naming what is missing.
try:
    import tensorrt
    print("exercised: TensorRT", tensorrt.__version__)
except ImportError:
    print("not exercised: TensorRT (package tensorrt is not installed: pip install 'tal-reid[trt]')")
try:
    import faiss
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    print(f"exercised: faiss-gpu ({gpus} GPUs)" if gpus else
          "not exercised: faiss-gpu (the installed faiss has no GPU support: install faiss-gpu)")
except ImportError:
    print("not exercised: faiss-gpu (package faiss is not installed: install faiss-gpu)")
try:
    import onnxruntime as ort
    providers = ort.get_available_providers()
    print("exercised: ONNX Runtime CUDA" if "CUDAExecutionProvider" in providers else
          f"not exercised: ONNX Runtime CUDA (onnxruntime {ort.__version__} has "
          f"{', '.join(providers)} only: install onnxruntime-gpu)")
except ImportError:
    print("not exercised: ONNX Runtime CUDA (package onnxruntime is not installed: install "
          "onnxruntime-gpu)")
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

extract() {
    "$PY" benchmarks/extract.py --device cuda --runtime --presets paper --batches 128 \
        --min-time 1 --min-calls 1
}

demo() {
    local t0=$SECONDS
    "$PY" -c "from tal_export.demo import main; main()" --workdir "$WORK/demo" --quiet 2>&1 |
        while IFS= read -r line; do printf '[%4d s] %s\n' $((SECONDS - t0)) "$line"; done
    return "${PIPESTATUS[0]}"
}

# pytest -v progress lines of one outcome: "tests/x.py::t FAILED [ 5%]", or with xdist
# "[gw1] [  5%] FAILED tests/x.py::t".
outcomes() {
    grep -E "^tests/[^ ]+ $2( |$)|^\[gw[0-9]+\] \[ *[0-9]+%\] $2 " "$1"
}

# The lines of a log worth reading in the report: markdown tables, pytest outcomes, demo lines.
summary_of() {
    local outcome
    [ -f "$OUT/$1" ] || { echo "(not run)"; return; }
    case $1 in
        *tests.log | suite.log)
            for outcome in PASSED FAILED ERROR SKIPPED; do
                printf '%s %s, ' "$(outcomes "$OUT/$1" $outcome | wc -l)" "$outcome"
            done
            echo "as reported when the step ended"
            echo
            outcomes "$OUT/$1" "(FAILED|ERROR)" | sed 's/^/    /' | head -n 60
            grep -E "^=+ .*(passed|failed|error).* in [0-9.]+s" "$OUT/$1" ;;
        demo.log) grep -E "^\[ *[0-9]+ s\] (\[|done|mAP|      training)|rror" "$OUT/$1" ;;
        *) grep -E "^\||^measured |^TRITON_CACHE_DIR|^qaconv_|^QAConvMatch|^torch |rror" "$OUT/$1" ;;
    esac
}

export -f setup pytest_run kernel warm extract demo install
STEPS_NOT_OK=0
echo "| step | result | seconds | budget (s) | log |" >"$STEPS"
echo "|---|---|---|---|---|" >>"$STEPS"
run_step install "$INSTALL_S" setup.log install
[ -f "$WORK/pythonpath" ] && export "$(cat "$WORK/pythonpath")"
run_step setup "$SETUP_S" setup.log setup
run_step gpu-tests "$GPU_TESTS_S" gpu-tests.log pytest_run -m gpu
run_step kernel "$KERNEL_S" kernel.log kernel
run_step warm "$WARM_S" kernel.log warm
run_step extract "$EXTRACT_S" extract.log extract
run_step demo "$DEMO_S" demo.log demo
run_step suite "$SUITE_S" suite.log pytest_run -m "not gpu"

{
    echo "# GPU check $(date -u '+%Y-%m-%d %H:%M UTC'), $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo 'no git')$([ "$DRY_RUN" = 1 ] && echo ', dry run')"
    echo
    grep -E "^(NVIDIA|name|python|gpu|cpus|sm[0-9]|pip install failed|exercised|not exercised)" "$OUT/setup.log"
    echo
    cat "$STEPS"
    echo
    echo "total: $(( $(date +%s) - GPU_CHECK_START )) s of the ${CAP_S}-second cap"
    for log in gpu-tests.log kernel.log extract.log demo.log suite.log; do
        echo
        echo "## $log"
        echo
        summary_of "$log"
    done
} >"$OUT/report.md"
cat "$OUT/report.md"
[ "$STEPS_NOT_OK" -eq 0 ]
