"""Exact k-NN alone: ``compute.neighbours.exact_neighbours`` of every row against all rows, as the exact
expansion route runs it, beside the device's measured float32 matrix-product rate in the same process.

Random unit rows (a fixed seed) are made on the host and staged once. The first run is timed apart
(CuPy compiles its kernels there), then ``--repeats`` timed runs, each waited for on the device; the
median gives GFLOP/s (``2 N^2 D`` per run) and its share of ``matmul_gflops`` (an 8192 x D x 8192
product). ``--check`` queries are compared with float64 neighbours on the host.

    python -m benchmarks.bench_knn --rows 100000 --dim 768 --backend gpu --json /tmp/knn.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rvc_index.compute.backend import select_backend
from rvc_index.compute.neighbours import exact_neighbours

from benchmarks.bench_kmeans import matmul_gflops

TILE_MB = {"gpu": 2048, "cpu": 256}  # expand.tile_mb a build would use on each device


def unit_rows(rows: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((rows, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def host_check(x: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> float:
    """Share of the ``queries``' float64 top-``k`` inner-product neighbours that ``ids`` holds."""
    scores = x[queries].astype(np.float64) @ x.T.astype(np.float64)
    truth = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return float(np.mean([len(set(t.tolist()) & set(f.tolist())) / k for t, f in zip(truth, ids[queries])]))


def run(rows: int, dim: int, k: int, backend_name: str, repeats: int, check: int, seed: int,
        tile_mb: float | None) -> dict[str, Any]:
    backend = select_backend(backend_name)  # type: ignore[arg-type]
    tile_bytes = int((tile_mb or TILE_MB[backend.name]) * 2**20)
    workers = 1 if backend.is_gpu else os.cpu_count() or 1  # as the expansion runs on each device
    x = unit_rows(rows, dim, seed)
    device = backend.to_device(x)
    backend.sync()

    def once() -> tuple[Any, float]:
        started = time.perf_counter()
        ids = exact_neighbours(backend.xp, device, device, k, tile_bytes, workers)
        backend.sync()
        return ids, time.perf_counter() - started

    ids, first = once()
    times = [once()[1] for _ in range(repeats)]
    seconds = statistics.median(times)
    gflop = 2.0 * rows * rows * dim / 1e9
    rate = matmul_gflops(backend, 8192, dim, 8192)
    queries = np.random.default_rng(seed + 1).choice(rows, size=min(check, rows), replace=False)
    return {"rows": rows, "dim": dim, "k": k, "backend": backend.describe(), "tile_mb": tile_bytes / 2**20,
            "first_seconds": round(first, 3), "seconds": [round(t, 4) for t in times],
            "median_seconds": round(seconds, 4), "knn_gflop": round(gflop, 1),
            "knn_gflops": round(gflop / seconds, 1), "matmul_gflops": round(rate, 1),
            "knn_share_of_matmul_rate": round(gflop / seconds / rate, 3),
            "check_queries": len(queries), "check_recall": round(host_check(x, backend.to_host(ids), queries, k), 4)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_knn", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--backend", choices=["cpu", "gpu", "auto"], default="gpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--check", type=int, default=64, help="queries checked against float64 on the host")
    parser.add_argument("--tile-mb", type=float, help="score tile memory (default: 2048 on a GPU, 256 on a CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args(argv)
    result = run(args.rows, args.dim, args.k, args.backend, args.repeats, args.check, args.seed, args.tile_mb)
    print(json.dumps(result, indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
