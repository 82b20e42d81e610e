"""Quality measures shared by builds, reports, tests and benchmarks."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from pipeline.backend import Backend
from pipeline.kmeans import squared_norms


def exact_knn(backend: Backend, queries: np.ndarray, blocks: Iterable[np.ndarray], k: int,
              tile_rows: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Exact L2 k-NN of ``queries`` [q, D] over the rows of ``blocks`` (streamed, in id order).

    Returns (squared distances [q, k] float32, ids [q, k] int64), nearest first; ids count rows
    across blocks from 0.
    """
    xp = backend.xp
    q = backend.asarray(queries)
    q_norms = squared_norms(xp, q)
    best_d = xp.full((q.shape[0], k), xp.inf, dtype=xp.float32)
    best_i = xp.full((q.shape[0], k), -1, dtype=xp.int64)
    offset = 0
    for block in blocks:
        for start in range(0, block.shape[0], tile_rows):
            tile = backend.asarray(block[start:start + tile_rows])
            dist = xp.maximum(q_norms[:, None] - 2.0 * (q @ tile.T) + squared_norms(xp, tile)[None, :], 0.0)
            ids = xp.broadcast_to(xp.arange(offset + start, offset + start + tile.shape[0]), dist.shape)
            if tile.shape[0] > k:  # keep each query's k best of the tile before merging
                part = xp.argpartition(dist, k - 1, axis=1)[:, :k]
                dist, ids = xp.take_along_axis(dist, part, axis=1), xp.take_along_axis(ids, part, axis=1)
            all_d = xp.concatenate([best_d, dist.astype(xp.float32)], axis=1)
            all_i = xp.concatenate([best_i, ids], axis=1)
            order = xp.argsort(all_d, axis=1, kind="stable")[:, :k]
            best_d = xp.take_along_axis(all_d, order, axis=1)
            best_i = xp.take_along_axis(all_i, order, axis=1)
        offset += block.shape[0]
    return backend.to_host(best_d), backend.to_host(best_i)


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean over queries of |found[:, :k] ∩ truth[:, :k]| / k (-1 labels never count)."""
    found, truth = np.asarray(found)[:, :k], np.asarray(truth)[:, :k]
    hits = [len(set(f[f >= 0].tolist()) & set(t.tolist())) for f, t in zip(found, truth)]
    return float(np.mean(hits) / k) if len(hits) else 0.0


def missing_label_share(labels: np.ndarray) -> float:
    """Share of queries with at least one -1 label (RVC's realtime GUI drops those blocks)."""
    labels = np.asarray(labels)
    return float((labels < 0).any(axis=1).mean()) if labels.size else 0.0

