"""Compress stage: replace a large collection by k-means centroids (RVC's rule by default)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.backend import Backend
from pipeline.config import CompressConfig
from pipeline.kmeans import fit_minibatch
from pipeline.progress import Progress, get_logger
from pipeline.sources import FeatureSet
from pipeline.stream import iter_blocks, sample_row_ids, take_rows


class CompressError(ValueError):
    """Compression cannot run as configured (e.g. more centroids than rows)."""


@dataclass(frozen=True)
class CompressPlan:
    apply: bool
    n_centroids: int
    reason: str


def plan_compression(n_rows: int, config: CompressConfig) -> CompressPlan:
    """Decide whether to compress ``n_rows`` rows and to how many centroids."""
    if not config.enabled:
        return CompressPlan(False, 0, "compression disabled")
    if n_rows <= config.row_threshold:
        return CompressPlan(False, 0, f"{n_rows:,} rows <= threshold {config.row_threshold:,}")
    n_centroids = config.n_centroids
    if n_centroids > n_rows:
        if config.on_too_few_rows == "error":
            raise CompressError(
                f"compress.n_centroids={n_centroids:,} is more than the {n_rows:,} rows to compress"
            )
        get_logger().warning("compress.n_centroids=%d > %d rows: clamped to %d", n_centroids, n_rows, n_rows)
        n_centroids = n_rows
    return CompressPlan(True, n_centroids,
                        f"{n_rows:,} rows > threshold {config.row_threshold:,}: {n_centroids:,} centroids")


def shuffled_batches(features: FeatureSet, batch_rows: int, max_rows: int, rng: np.random.Generator,
                     client: Any | None = None) -> Iterator[np.ndarray]:
    """Batches of ``batch_rows`` rows: chunks in a seeded random order, rows shuffled inside.

    Stops after ``max_rows`` rows (several passes when it exceeds the collection).
    """
    emitted = 0
    carry = np.empty((0, features.dim), np.float32)
    while emitted < max_rows:
        order = rng.permutation(len(features.chunks))
        for block in iter_blocks(features.array.blocks[order.tolist()], client):
            block = block[rng.permutation(block.shape[0])]
            if carry.shape[0]:
                block = np.concatenate([carry, block])
            usable = block.shape[0] - block.shape[0] % batch_rows
            for start in range(0, usable, batch_rows):
                if emitted >= max_rows:
                    return
                yield block[start:start + batch_rows]
                emitted += batch_rows
            carry = block[usable:]
    # a final partial batch is dropped: every update sees a full batch


def sklearn_centroids(features: FeatureSet, n_centroids: int, seed: int, client: Any | None) -> np.ndarray:
    """RVC's exact call: concatenate, shuffle, ``MiniBatchKMeans(init='random')``. Holds all rows."""
    from sklearn.cluster import MiniBatchKMeans

    rows = np.concatenate(list(iter_blocks(features.array, client)))
    rows = rows[np.random.default_rng(seed).permutation(rows.shape[0])]
    model = MiniBatchKMeans(n_clusters=n_centroids, batch_size=256 * (os.cpu_count() or 1),
                            compute_labels=False, init="random", random_state=seed)
    return model.fit(rows).cluster_centers_.astype(np.float32)


def compress(features: FeatureSet, plan: CompressPlan, config: CompressConfig, backend: Backend,
             seed: int, client: Any | None = None) -> np.ndarray:
    """Centroids [n_centroids, D] float32 summarising the collection."""
    log = get_logger()
    if config.method == "sklearn":
        log.info("compress: sklearn MiniBatchKMeans (RVC parity mode) on %s rows", f"{features.n_rows:,}")
        return sklearn_centroids(features, plan.n_centroids, seed, client)
    rng = np.random.default_rng(seed)
    init_rows = plan.n_centroids if config.init == "random" else min(features.n_rows, 4 * plan.n_centroids)
    init_sample = take_rows(features.array, sample_row_ids(features.n_rows, init_rows, rng), client)
    batch_rows = min(config.batch_rows, features.n_rows)
    max_rows = max(batch_rows, int(config.epochs * features.n_rows))
    progress = Progress("compress", max_rows)

    def batches() -> Iterator[np.ndarray]:
        for batch in shuffled_batches(features, batch_rows, max_rows, rng, client):
            yield batch
            progress.advance(batch.shape[0])

    state = fit_minibatch(backend, batches(), init_sample, plan.n_centroids, config.init, seed)
    log.info("compress: %d steps, %d dead centres re-seeded", state.step, state.reseeded)
    return backend.to_host(state.centres).astype(np.float32)
