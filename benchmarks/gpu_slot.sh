#!/usr/bin/env bash
# The GPU slot (issue 22): everything one lent GPU machine should measure, in one device call of at most
# 8 minutes, start to finish, each GPU figure beside --backend cpu on the same host:
#   0. the carried wheels (.whl/: faiss-cpu, dask, distributed and their pure-Python needs, from
#      ../shared/device/wheels.sh) installed with `pip install --no-deps --target` (the device's python3 is
#      itself a virtual environment holding CuPy: a venv made from it would not see CuPy); the project itself
#      from the working tree that travelled (its carried wheel when that fails); the 1M-row collection written
#      in the background meanwhile;
#   1. the `gpu`-marked test files (and `cupy`: the stand-in's facts against the real CuPy), named one by one
#      (never tests/batch: it imports distributed and dask_jobqueue);
#   2. the benchmarks in priority order, each under its own time limit (benchmarks/slot_step.py): exact 8-NN
#      (bench_knn), k-means (a compile run, the measured warm run, the CPU backend: bench_kmeans), end to end
#      (`rvc-index build --config tips-plain`: GPU with a cold kernel cache, GPU warm, CPU) and one read of the
#      collection;
#   3. everything repacked into $OUT/results.tgz after each step (one call brings back at most 8 files), and
#      the GPU section of docs/benchmarks.md rendered into it (benchmarks/gpu_report.py).
# faiss-gpu (135 MB) cannot be carried: faiss runs on the CPU beside CuPy, as the build reports in one line.
#
# On the device (the tool's `run`, carry [".whl"], timeout_s 600):  bash benchmarks/gpu_slot.sh
# Then here:  python -m benchmarks.gpu_report <files_at>/results.tgz --docs docs/benchmarks.md
# CPU smoke run (tests/test_gpu_slot.py): bash benchmarks/gpu_slot.sh --backend cpu --no-install --python PY \
#   --rows 3000 --knn-rows 2000 --k 32 --dim 64 --budget 150 --out DIR
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
BACKEND=gpu INSTALL=1 PY=python3 ROWS=1000000 KNN_ROWS=100000 K=10000 DIM=768 BUDGET=480 RESERVE=20
OUT=${OUT:-/tmp/gpu-slot}
while [ $# -gt 0 ]; do
  case $1 in
    --backend) BACKEND=$2; shift ;;
    --no-install) INSTALL=0 ;;
    --python) PY=$2; shift ;;
    --rows) ROWS=$2; shift ;;
    --knn-rows) KNN_ROWS=$2; shift ;;
    --k) K=$2; shift ;;
    --dim) DIM=$2; shift ;;
    --budget) BUDGET=$2; shift ;;
    --out) OUT=$2; shift ;;
    *) echo "gpu_slot.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[ "$BACKEND" = gpu ] || [ "$BACKEND" = cpu ] || { echo "gpu_slot.sh: --backend gpu|cpu" >&2; exit 2; }
START=$(date +%s)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-slot.XXXXXX")
RES=$WORK/results
mkdir -p "$OUT" "$RES"
say() { echo "[gpu-slot $(( $(date +%s) - START ))s] $*" | tee -a "$RES/slot.log"; }
left() { echo $(( BUDGET - RESERVE - ($(date +%s) - START) )); }
pack() { tar -czf "$OUT/results.tgz.part" -C "$WORK" results && mv -f "$OUT/results.tgz.part" "$OUT/results.tgz"; }
# step NAME LIMIT_S CMD...: CMD under min(LIMIT_S, what the budget has left), recorded as NAME.json/.log, packed
step() {
  local name=$1 limit=$2 room
  shift 2
  room=$(left)
  if [ "$room" -lt 15 ]; then
    say "$name: skipped, ${room} s left of the budget"
    echo '{"skipped": "the slot budget ran out"}' > "$RES/$name.json"
  else
    [ "$limit" -gt "$room" ] && limit=$room
    say "$name (at most ${limit} s): $*"
    "$PY" -m benchmarks.slot_step "$RES/$name" "$limit" "$@" | tee -a "$RES/slot.log"
  fi
  pack
}
echo "{\"backend\": \"$BACKEND\", \"rows\": $ROWS, \"knn_rows\": $KNN_ROWS, \"k\": $K, \"dim\": $DIM, \"budget_s\": $BUDGET}" \
  > "$RES/plan.json"

# 0. environment ----------------------------------------------------------------------------------------------
if [ "$INSTALL" = 1 ]; then
  SITE=$WORK/site
  ls .whl/*.whl >/dev/null 2>&1 || { say "no .whl/*.whl: run bash ../shared/device/wheels.sh here and carry .whl"; pack; exit 2; }
  OTHERS=$(ls .whl/*.whl | grep -v '/rvc_index-')
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" $OTHERS >>"$RES/slot.log" 2>&1 \
    || { say "the carried wheels did not install (slot.log)"; pack; exit 2; }
  if ! "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target "$SITE" . >>"$RES/slot.log" 2>&1; then
    say "the working tree did not install: using the carried rvc_index wheel (it may be older than the tree)"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/rvc_index-*.whl >>"$RES/slot.log" 2>&1
  fi
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
"$PY" - "$BACKEND" >"$RES/env.json" 2>>"$RES/slot.log" <<'EOF'
import json, platform, subprocess, sys
import faiss, numpy, rvc_index
from rvc_index.compute.backend import select_backend
env = {"python": sys.version.split()[0], "numpy": numpy.__version__, "faiss": faiss.__version__,
       "rvc_index": f"{rvc_index.__version__} ({rvc_index.__file__})", "host": platform.node(),
       "cpus": __import__("os").cpu_count()}
try:
    import cupy
    env["cupy"] = f"{cupy.__version__} (CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()})"
    env["gpu"] = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
except Exception as exc:  # noqa: BLE001 - the CPU smoke run has no CuPy
    env["cupy"] = f"none ({type(exc).__name__})"
env["backend"] = select_backend(sys.argv[1]).describe()
print(json.dumps(env))
EOF
[ -s "$RES/env.json" ] || { say "no usable environment for --backend $BACKEND (slot.log)"; pack; exit 2; }
say "environment: $(cat "$RES/env.json")"
DATA=$WORK/data
SPEAKER=$DATA/n$ROWS-d$DIM-s0/bench  # bench_kmeans.dataset's speaker
"$PY" -c "import sys; from pathlib import Path; from benchmarks.bench_kmeans import dataset; \
dataset(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))" "$DATA" "$ROWS" "$DIM" >"$RES/dataset.log" 2>&1 &
DATASET=$!
pack

# 1. the gpu tests --------------------------------------------------------------------------------------------
GPU_TESTS=$(grep -rlE 'mark\.(gpu|cupy)\b' tests --include='test_*.py' | grep -v '^tests/batch/' | sort)
step tests_gpu 150 "$PY" -m pytest -q -p no:cacheprovider -m "gpu or cupy" --timeout 120 $GPU_TESTS

# 2. benchmarks, in priority order ----------------------------------------------------------------------------
step knn 90 "$PY" -m benchmarks.bench_knn --rows "$KNN_ROWS" --dim "$DIM" --k 8 --backend "$BACKEND" \
  --json "$RES/knn.result.json"
while kill -0 "$DATASET" 2>/dev/null && [ "$(left)" -gt 15 ]; do sleep 1; done
if [ -f "$SPEAKER/.complete" ]; then
  say "collection ready: $ROWS x $DIM ($(tail -1 "$RES/dataset.log"))"
else
  kill "$DATASET" 2>/dev/null
  say "the collection was not written in time (dataset.log)"
fi
KM=(-m benchmarks.bench_kmeans --rows "$ROWS" --dim "$DIM" --k "$K" --data-dir "$DATA" --no-sklearn)
export CUPY_CACHE_DIR=$WORK/cupy-kmeans  # the compile run fills it, the warm run finds every kernel there
step kmeans_compile 120 "$PY" "${KM[@]}" --backend "$BACKEND" --no-inertia --set compress.lloyd_passes=1 \
  --json "$RES/kmeans_compile.result.json"
step kmeans_warm 120 "$PY" "${KM[@]}" --backend "$BACKEND" --json "$RES/kmeans_warm.result.json"
step kmeans_cpu 150 "$PY" "${KM[@]}" --backend cpu --json "$RES/kmeans_cpu.result.json"
step read_once 60 "$PY" -c "import sys, time, numpy as np; from pathlib import Path; t = time.perf_counter(); \
n = sum(np.load(f).shape[0] for f in sorted(Path(sys.argv[1]).glob('*/*.npy'))); \
import json; print(json.dumps({'rows': n, 'seconds': round(time.perf_counter() - t, 3)}))" "$SPEAKER"
BUILD=(-m rvc_index -q build "$SPEAKER/3_feature$DIM" --config tips-plain --force --set evaluate.recall_queries=0)
export CUPY_CACHE_DIR=$WORK/cupy-build  # empty: the first build compiles every kernel it uses
step build_cold 150 "$PY" "${BUILD[@]}" --backend "$BACKEND" --out "$WORK/out-$BACKEND"
step build_warm 120 "$PY" "${BUILD[@]}" --backend "$BACKEND" --out "$WORK/out-$BACKEND"
step build_cpu 150 "$PY" "${BUILD[@]}" --backend cpu --out "$WORK/out-cpu"

# 3. the report -----------------------------------------------------------------------------------------------
"$PY" -m benchmarks.gpu_report "$RES" > "$RES/report.md" 2>>"$RES/slot.log" || say "gpu_report failed (slot.log)"
cat "$RES/report.md"
say "done in $(( $(date +%s) - START )) s: $OUT/results.tgz"
pack
rm -rf "$WORK"
