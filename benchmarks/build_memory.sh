#!/bin/bash
# Peak RSS (/usr/bin/time -v) of `rvc-index build` with each preset on one feature folder, then RVC's
# retrieval on each index under faiss-cpu 1.7.3 / numpy<2 (.venv-compat, `make compat`).
#   benchmarks/build_memory.sh FEATURE_DIR HELDOUT_DIR OUT_DIR
# e.g. after `python -m benchmarks.bench_rvc --rows 300000 --dim 768` wrote the collection:
#   benchmarks/build_memory.sh /tmp/rvc-index-bench/n300000-d768-s0/logs/bench/3_feature768 \
#       /tmp/rvc-index-bench/n300000-d768-s0/heldout/3_feature768 /tmp/build-memory
set -euo pipefail
feature_dir=$1 heldout_dir=$2 out=$3
mkdir -p "$out"
echo "collection: $(du -sb "$feature_dir" | cut -f1) bytes in $feature_dir"
.venv/bin/python -c "import numpy as np, pathlib, sys; files = sorted(pathlib.Path(sys.argv[1]).glob('*.npy')); \
np.save(sys.argv[2], np.concatenate([np.load(f) for f in files])[:500])" "$heldout_dir" "$out/queries.npy"
for preset in rvc-classic tips tips-plain; do
  rm -rf "${out:?}/$preset"
  /usr/bin/time -v .venv/bin/rvc-index build "$feature_dir" --config "$preset" --out "$out/$preset" \
      > "$out/$preset.log" 2> "$out/$preset.time"
  echo "$preset: $(grep -E 'Elapsed|Maximum resident' "$out/$preset.time" | tr -s ' ' | tr '\n' ' ')"
  .venv-compat/bin/python pipeline/rvc_compat.py "$out/$preset"/*.index --queries "$out/queries.npy" --dim 768
done
