#!/usr/bin/env bash
# GPU check (issue 12), one script for one GPU machine, about 8 minutes on one H200:
#   1. an environment from .whl/ (faiss-cpu, dask, distributed, ... carried by the device tool; no network,
#      no faiss-gpu wheel there: faiss runs on the CPU, CuPy on the GPU, which the build reports in one line);
#   2. the benchmarks, each GPU figure beside --backend cpu on the same host in the same run:
#      1M x 768 `build --config tips-plain` (gpu with a cold and a warm CuPy kernel cache, cpu),
#      k-means alone 1M x 768 -> 10,000 (rows/s, MSD), exact 8-NN expansion of 100k x 768 (% of the measured
#      matmul rate), and the streamed route at 3M x 768 under a 2 GiB device budget;
#   3. the `gpu` tests, then the whole suite (compat tests skip without a faiss-1.7.3 env);
#   4. the figures into docs/benchmarks.md, section "## GPU" (benchmarks/gpu_report.py), and $OUT/gpu-check.json.
# Usage: bash benchmarks/gpu_check.sh   (env: OUT=results folder, GPU_CHECK_SKIP="suite 3m" to skip steps)
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
OUT=${OUT:-/tmp/gpu-check}
WORK=${GPU_CHECK_WORK:-/tmp/gpu-check-work}
SKIP=${GPU_CHECK_SKIP:-}
mkdir -p "$OUT" "$WORK"
LOG="$OUT/gpu-check.log"
say() { echo "[gpu-check $(date +%T)] $*" | tee -a "$LOG"; }
skip() { [[ " $SKIP " == *" $1 "* ]]; }

# 1. environment ---------------------------------------------------------------------------------------------
PY=.venv-gpu/bin/python
[ -x "$PY" ] || python3 -m venv --system-site-packages .venv-gpu
if [ -d .whl ]; then
  for pkg in setuptools numpy faiss-cpu dask distributed pyyaml psutil scikit-learn threadpoolctl matplotlib \
             pytest pytest-timeout cupy-cuda12x cupy-cuda13x; do
    "$PY" -m pip install -q --no-index --find-links .whl "$pkg" >>"$LOG" 2>&1 || say "not installed from .whl: $pkg"
  done
fi
"$PY" -m pip install -q --no-deps --no-build-isolation -e . >>"$LOG" 2>&1 || say "editable install failed (see $LOG)"
if ! "$PY" -c "import cupy, rvc_index; assert cupy.cuda.runtime.getDeviceCount() > 0" >>"$LOG" 2>&1; then
  say "no CuPy with a CUDA device in .venv-gpu: nothing to check"; exit 2
fi
"$PY" - <<'EOF' | tee -a "$LOG"
import cupy, faiss
from rvc_index.compute.backend import select_backend
b = select_backend("gpu")
print(f"{cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()}, CuPy {cupy.__version__} "
      f"(CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}), faiss {faiss.__version__}: {b.describe()}")
EOF
tail -1 "$LOG" > "$OUT/device.txt"

# timed: NAME CMD... -> $OUT/NAME.json {seconds, max_rss_mib, rc} and $OUT/NAME.log
timed() {
  local name=$1; shift
  "$PY" - "$OUT/$name.json" "$OUT/$name.log" "$@" <<'EOF'
import json, resource, subprocess, sys, time
out, log, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
started = time.perf_counter()
with open(log, "w") as handle:
    rc = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT).returncode
seconds = time.perf_counter() - started
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
json.dump({"cmd": cmd, "rc": rc, "seconds": round(seconds, 2), "max_rss_mib": round(rss)}, open(out, "w"))
print(f"{out}: rc {rc}, {seconds:.1f} s, peak RSS {rss:,.0f} MiB")
EOF
}

# 2. benchmarks ----------------------------------------------------------------------------------------------
say "k-means alone 1M x 768 -> 10,000: gpu, cpu (the first run writes the 1M x 768 speaker)"
KM=("$PY" -m benchmarks.bench_kmeans --rows 1000000 --dim 768 --k 10000 --data-dir "$WORK/km" --no-sklearn)
timed kmeans_gpu "${KM[@]}" --backend gpu --json "$OUT/kmeans_gpu.result.json"
timed kmeans_cpu "${KM[@]}" --backend cpu --json "$OUT/kmeans_cpu.result.json"
timed kmeans_gpu_lloyd_random "${KM[@]}" --backend gpu --set compress.init=random \
  --json "$OUT/kmeans_gpu_lloyd_random.result.json"  # the baseline: 10 plain Lloyd passes from random rows

SPK="$WORK/km/n1000000-d768-s0/bench"  # bench_kmeans.dataset's speaker
BUILD=("$PY" -m rvc_index -q build "$SPK" --config tips-plain --force --set evaluate.recall_queries=0)
say "build 1M x 768 tips-plain: gpu cold kernel cache, gpu warm, cpu"
CUPY_CACHE_DIR="$WORK/cupy-cold-$$" timed build_gpu_cold "${BUILD[@]}" --backend gpu --out "$WORK/out-gpu"
CUPY_CACHE_DIR="$WORK/cupy-cold-$$" timed build_gpu_warm "${BUILD[@]}" --backend gpu --out "$WORK/out-gpu"
timed build_cpu "${BUILD[@]}" --backend cpu --out "$WORK/out-cpu"

say "exact 8-NN expansion 100k x 768: gpu, cpu"
EX=("$PY" -m benchmarks.bench_expand --rows 100000 --dim 768 --method exact --no-reference --repeats 2 -q)
timed expand_gpu "${EX[@]}" --backend gpu --tile-mb 2048 --json "$OUT/expand_gpu.result.json"
timed expand_cpu "${EX[@]}" --backend cpu --json "$OUT/expand_cpu.result.json"

if ! skip 3m; then
  say "streamed route 3M x 768 -> 10,000 under a 2 GiB device budget: gpu, cpu"
  KM3=("$PY" -m benchmarks.bench_kmeans --rows 3000000 --dim 768 --k 10000 --data-dir "$WORK/km" --no-sklearn
       --no-inertia)
  timed kmeans3m_gpu "${KM3[@]}" --backend gpu --set compress.device_budget_mb=2048 \
    --json "$OUT/kmeans3m_gpu.result.json"
  timed kmeans3m_cpu "${KM3[@]}" --backend cpu --json "$OUT/kmeans3m_cpu.result.json"
fi

# 3. tests ---------------------------------------------------------------------------------------------------
say "gpu tests"
timed tests_gpu "$PY" -m pytest -q -m gpu -p no:cacheprovider --timeout 300
if ! skip suite; then
  say "whole suite"
  timed tests_all timeout 420 "$PY" -m pytest -q -x -p no:cacheprovider --timeout 300
fi

# 4. figures -------------------------------------------------------------------------------------------------
"$PY" -m benchmarks.gpu_report "$OUT" --docs "$REPO/docs/benchmarks.md" | tee -a "$LOG"
cp "$REPO/docs/benchmarks.md" "$OUT/benchmarks.md" 2>/dev/null || true
say "done: $OUT"
