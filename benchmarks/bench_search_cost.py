"""What a frame's search costs at one thread, per list format, size, n_list and nprobe: the points the plan's cost
model (``stages.indexing.search_us``) is fitted to, and its estimate beside each.

Every index holds a uniform sample of the collection's frames (the lists of frames are uneven: speech's pauses
crowd some of them), coarse centroids trained as a build trains them; queries are held-out utterances, searched
with k=8 in batches of 50 frames (one second of audio, as RVC searches), the best of 3 runs of the thread's CPU time.

    python -m benchmarks.bench_search_cost --feature-dir /data/speech/3_feature768 --json docs/bench/search-cost.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks.harness import machine, split_collection

FACTORY = {"flat": "Flat", "fp16": "SQfp16", "sq8": "SQ8", "pq8": "PQ48"}


def frames_of(folder: Path) -> np.ndarray:
    return np.concatenate([np.load(p) for p in sorted(folder.glob("*.npy"))]).astype(np.float32)


def one_second_batches(index, queries: np.ndarray, nprobe: int, repeats: int = 3) -> float:
    """us per frame at one thread: k=8 in batches of 50 frames, the best of ``repeats`` runs of the CPU time."""
    import faiss

    faiss.extract_index_ivf(index).nprobe = nprobe
    index.search(queries[:50], 8)
    best = float("inf")
    for _ in range(repeats):
        started = time.thread_time()
        for i in range(0, len(queries), 50):
            index.search(queries[i:i + 50], 8)
        best = min(best, time.thread_time() - started)
    return best / len(queries) * 1e6


def run(feature_dir: Path, work: Path, sizes: Sequence[int], factors: Sequence[float], nprobes: Sequence[int],
        formats: Sequence[str], seed: int = 0) -> list[dict]:
    import faiss
    from rvc_index.compute.backend import faiss_threads
    from rvc_index.stages.indexing import search_us

    collection = split_collection(feature_dir, work, seed=seed)
    x = frames_of(collection.feature_dir)
    queries = frames_of(collection.heldout_dir)[:1000]
    rng = np.random.default_rng(seed)
    points = []
    for n in sizes:
        data = x[rng.permutation(len(x))[:n]]
        for factor in factors:
            n_list = int(factor * np.sqrt(n))
            clustering = faiss.Clustering(data.shape[1], n_list)
            clustering.niter, clustering.max_points_per_centroid = 8, 32
            quantizer = faiss.IndexFlatL2(data.shape[1])
            clustering.train(data[:n_list * 32], quantizer)
            for lists in formats:
                index = faiss.index_factory(data.shape[1], f"IVF{n_list},{FACTORY[lists]}")
                faiss.extract_index_ivf(index).quantizer.add(quantizer.reconstruct_n(0, n_list))
                index.train(data[:min(n, 20_000)])
                index.add(data)
                with faiss_threads(1):
                    for nprobe in nprobes:
                        point = {"n": n, "n_list": n_list, "lists": lists, "nprobe": nprobe,
                                 "us": round(one_second_batches(index, queries, nprobe), 1),
                                 "planned_us": round(search_us(lists, data.shape[1], n, n_list, nprobe,
                                                               data.shape[1] // 16, frames=True), 1)}
                        print(json.dumps(point), flush=True)
                        points.append(point)
                del index
    return points


def main(argv: Sequence[str] | None = None) -> int:
    from rvc_index.config.schema import LIST_FORMATS
    from rvc_index.runtime.outputs import write_json_atomic

    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_search_cost",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--feature-dir", type=Path, required=True, help="a collection (2%% of its files: queries)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/rvc-index-search-cost"))
    parser.add_argument("--sizes", default="20000,60000,175000,400000")
    parser.add_argument("--factors", default="1,4", help="n_list = factor x sqrt(N)")
    parser.add_argument("--nprobes", default="1,5,10,20")
    parser.add_argument("--lists", default=",".join(LIST_FORMATS))
    parser.add_argument("--json", type=Path, help="write the points here")
    args = parser.parse_args(argv)
    points = run(args.feature_dir, args.work, [int(v) for v in args.sizes.split(",")],
                 [float(v) for v in args.factors.split(",")], [int(v) for v in args.nprobes.split(",")],
                 args.lists.split(","))
    if args.json:
        command = " ".join(["python -m benchmarks.bench_search_cost", *(argv or sys.argv[1:])])
        write_json_atomic(args.json, {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "command": command,
                                      "points": points})
    return 0


if __name__ == "__main__":
    sys.exit(main())
