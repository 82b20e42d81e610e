"""RVC's ``train_index`` recipe, re-implemented line for line as the baseline we measure against.

RVC (20240604 release) loads every feature file in sorted order, concatenates them, shuffles the
rows, replaces them by 10,000 sklearn MiniBatchKMeans centroids above 200,000 rows, trains
``IVF{n_ivf},Flat`` with ``n_ivf = min(int(16 * sqrt(N)), N // 39)``, sets nprobe 1 and adds in
batches of 8192. RVC seeds neither the shuffle nor k-means; ``seed`` does here.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np


@dataclass
class RvcBuild:
    index: faiss.Index
    big_npy: np.ndarray  # what RVC saves as total_fea.npy
    rows: int  # rows before compression
    compressed: bool
    n_ivf: int


def rvc_train_index(feature_dir: Path, dim: int, seed: int = 0, row_threshold: int = 200_000,
                    n_centroids: int = 10_000, n_cpu: int | None = None,
                    timings: dict[str, float] | None = None) -> RvcBuild:
    """Build the index exactly as RVC's ``train_index`` does (in memory, in this process).

    ``timings``, when given, receives the seconds of each step (load, kmeans, train, add).
    """
    from sklearn.cluster import MiniBatchKMeans

    clock = [time.perf_counter()]

    def lap(name: str) -> None:
        now = time.perf_counter()
        if timings is not None:
            timings[name] = round(now - clock[0], 3)
        clock[0] = now

    n_cpu = n_cpu or os.cpu_count() or 1
    npys = [np.load(Path(feature_dir) / name) for name in sorted(os.listdir(feature_dir))]
    big_npy = np.concatenate(npys, 0)
    rows = big_npy.shape[0]
    big_npy_idx = np.arange(rows)
    np.random.default_rng(seed).shuffle(big_npy_idx)
    big_npy = big_npy[big_npy_idx]
    lap("load")
    compressed = big_npy.shape[0] > row_threshold
    if compressed:
        big_npy = MiniBatchKMeans(n_clusters=n_centroids, verbose=False, batch_size=256 * n_cpu,
                                  compute_labels=False, init="random",
                                  random_state=seed).fit(big_npy).cluster_centers_
    big_npy = np.ascontiguousarray(big_npy, dtype=np.float32)
    lap("kmeans")
    n_ivf = max(1, min(int(16 * np.sqrt(big_npy.shape[0])), big_npy.shape[0] // 39))
    index = faiss.index_factory(dim, f"IVF{n_ivf},Flat")
    index_ivf = faiss.extract_index_ivf(index)
    index_ivf.nprobe = 1
    index_ivf.cp.seed = seed
    index.train(big_npy)
    lap("train")
    batch_size_add = 8192
    for i in range(0, big_npy.shape[0], batch_size_add):
        index.add(big_npy[i:i + batch_size_add])
    lap("add")
    return RvcBuild(index, big_npy, rows, compressed, n_ivf)
