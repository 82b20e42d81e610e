"""Compress stage: replace a large collection by k-means centroids (RVC's rule by default).

``method=minibatch`` (ours) runs the k-means core (``compute.lloyd``: one Lloyd loop over one "assign and
accumulate" step) on one of two routes, decided in the plan (``plan_kmeans``, ``kmeans_route``) and logged:

- ``minibatch`` (a CPU; ``stages.compress_minibatch``): init on a sample drawn by the value check
  (hierarchical: coarse k-means, centres per coarse cell, then Lloyd over the whole sample), ``epochs``
  of mini-batch updates when asked, then Lloyd passes over every row on every core or Dask worker, rows
  finding their centre in two levels (about 4 % of the arithmetic of an exact search at K = 10,000) or in
  fixed cells (large K);
- ``device`` (a GPU; ``stages.compress_device``): full-batch exact passes with the rows resident on the
  device or a device sample then streamed passes, TF32 products where the GPU has them and one FP32 pass to
  finish, stopping on the change of the mean squared distance.

``method=sklearn`` runs RVC's own ``MiniBatchKMeans`` call, holding every row in memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import numpy as np
from rvc_index.compute.backend import Backend
from rvc_index.compute.knn import distance_tile_rows
from rvc_index.compute.minibatch import KMeansState, new_state
from rvc_index.compute.warm import ensure_warm
from rvc_index.config.schema import BudgetConfig, CompressConfig
from rvc_index.data.feature_set import FeatureSet
from rvc_index.errors import RvcIndexError
from rvc_index.runtime.memory import F32, StageEstimate
from rvc_index.runtime.progress import get_logger
from rvc_index.runtime.run import Run
from rvc_index.stages.compress_device import fit_device
from rvc_index.stages.compress_minibatch import fit_on_sample_then_passes
from rvc_index.stages.kmeans_plan import KMeansPlan, plan_kmeans


class CompressError(RvcIndexError, ValueError):
    """Compression cannot run as configured (e.g. more centroids than rows)."""


@dataclass(frozen=True)
class CompressPlan:
    """Whether the collection is replaced by centroids, how many, and how they are fitted."""

    apply: bool
    n_centroids: int
    reason: str
    budget_vectors: int = 0  # the most vectors the budget holds (docs/consumers.md)
    method: Literal["minibatch", "sklearn"] = "minibatch"  # sklearn: RVC's own MiniBatchKMeans call
    kmeans: KMeansPlan | None = None  # the minibatch k-means, when it applies


MIB = 2**20


def budget_vectors(dim: int, budget: BudgetConfig) -> int:
    """The most vectors a consumer can hold within ``budget``: ``big`` (ntotal x D x 4 bytes of
    ``reconstruct_n``) within ``big_mb``, and Applio realtime's GPU copy (big, its transpose and a norm per
    vector) within ``gpu_mb``."""
    by_ram = budget.big_mb * MIB / (F32 * dim)
    by_gpu = budget.gpu_mb * MIB / (2 * F32 * dim + F32)
    return max(1, int(min(by_ram, by_gpu)))


def plan_compression(n_rows: int, dim: int, config: CompressConfig, budget: BudgetConfig,
                     backend: Backend) -> CompressPlan:
    """Decide whether to compress ``n_rows`` rows of ``dim`` and to how many centroids: as many as the budget
    holds (``compress.n_centroids=0``), above as many rows as it holds (``compress.row_threshold=0``), or the
    numbers the config names (RVC's recipe: 10,000 above 200,000 rows); and the k-means that fits them on
    ``backend`` (``plan_kmeans``)."""
    cap = budget_vectors(dim, budget)
    held = f"budget {budget.big_mb:g} MB of vectors / {budget.gpu_mb:g} MB of GPU holds {cap:,} vectors"
    if not config.enabled:
        return CompressPlan(False, 0, "compression disabled" + (f" ({n_rows:,} rows: over the {held})"
                                                                if n_rows > cap else ""), cap)
    threshold = config.row_threshold or cap
    if n_rows <= threshold:
        why = f"{n_rows:,} rows fit the {held}" if not config.row_threshold else \
            f"{n_rows:,} rows <= compress.row_threshold {config.row_threshold:,}"
        return CompressPlan(False, 0, why, cap)
    n_centroids = config.n_centroids or cap
    if n_centroids > n_rows:
        if config.on_too_few_rows == "error":
            raise CompressError(
                f"compress.n_centroids={n_centroids:,} is more than the {n_rows:,} rows to compress"
            )
        get_logger().warning("compress.n_centroids=%d > %d rows: clamped to %d", n_centroids, n_rows, n_rows)
        n_centroids = n_rows
    why = (f"{n_rows:,} rows > the {held}: {n_centroids:,} centroids" if not config.n_centroids else
           f"{n_rows:,} rows > {'compress.row_threshold ' + format(threshold, ',') if config.row_threshold else held}: "
           f"{n_centroids:,} centroids (compress.n_centroids)")
    kmeans = plan_kmeans(n_rows, n_centroids, config, backend) if config.method == "minibatch" else None
    return CompressPlan(True, n_centroids, why, cap, config.method, kmeans)


def compress_estimate(n_rows: int, dim: int, plan: CompressPlan, stream: int, on_gpu: bool) -> StageEstimate:
    """Host bytes the compress stage holds (``stream``: a streamed pass's chunks; no k-means plan: sklearn's
    in-memory call); it keeps the K centroids."""
    row, k, kplan = dim * F32, plan.n_centroids, plan.kmeans
    if kplan is None:
        transient, what = 2 * n_rows * row + stream, f"all {n_rows:,} rows held twice (sklearn)"
    elif kplan.route == "device":  # on a GPU the rows live in device memory; on numpy in host memory (at most)
        rows = 0 if on_gpu else n_rows * row
        transient = rows + stream + 4 * k * row + 2 * distance_tile_rows(k) * k * F32
        what = f"full-batch passes over {'device-resident' if on_gpu else 'host-resident'} rows, {k:,} centres"
    elif kplan.fixed_cells:  # the centres and one running sum, updated in place; per-cell tiles are small
        sample = kplan.sample_rows * row
        transient = sample + stream + 2 * k * row + 4 * distance_tile_rows(kplan.n_coarse) * kplan.n_coarse * F32
        what = f"sample {kplan.sample_rows:,} rows, {k:,} centres in {kplan.n_coarse:,} fixed cells"
    else:
        tile = distance_tile_rows(k) * k * F32  # one [rows, centres] distance tile
        sample = kplan.sample_rows * row  # filled in place from the chunks in flight (stream.take_rows)
        transient = sample + stream + 5 * k * row + 2 * tile + 2 * kplan.batch_rows * row
        what = f"sample {kplan.sample_rows:,} rows, {k:,} centres, batches of {kplan.batch_rows:,} rows"
    return StageEstimate("compress", transient, k * row, what)


def sklearn_centroids(features: FeatureSet, n_centroids: int, run: Run[Backend]) -> np.ndarray:
    """RVC's exact call: concatenate, shuffle, ``MiniBatchKMeans(init='random')``. Holds all rows."""
    from sklearn.cluster import MiniBatchKMeans

    rows = np.concatenate(list(run.blocks(features)))
    rows = rows[run.rng().permutation(rows.shape[0])]
    model = MiniBatchKMeans(n_clusters=n_centroids, batch_size=256 * (os.cpu_count() or 1),
                            compute_labels=False, init="random", random_state=run.seed)
    return model.fit(rows).cluster_centers_.astype(np.float32)


def compress(features: FeatureSet, plan: CompressPlan, run: Run[Backend]) -> np.ndarray:
    """Centroids [n_centroids, D] float32 summarising the collection, as ``plan`` says."""
    if plan.kmeans is None:
        get_logger().info("compress: sklearn MiniBatchKMeans (RVC parity mode) on %s rows", f"{features.n_rows:,}")
        return sklearn_centroids(features, plan.n_centroids, run)
    state = fit_centroids(features, plan.kmeans, run)
    return run.backend.to_host(state.centres).astype(np.float32)


def fit_centroids(features: FeatureSet, kplan: KMeansPlan, run: Run[Backend]) -> KMeansState:
    """k-means of the whole collection on the plan's route; returns the final state (centres on the device)."""
    backend = run.backend
    ensure_warm(backend)  # a GPU's kernels compiled before the first timed pass
    rng = run.rng()
    get_logger().info("compress: %s", kplan.describe())
    if kplan.route == "device":
        fitted = fit_device(features, kplan, run, rng)
        state = new_state(backend.xp, fitted.centres, fitted.counts, seed=int(rng.integers(2**31)), adopt=True)
        state.reseeded, state.msd = fitted.reseeded, fitted.msd
        return state
    return fit_on_sample_then_passes(features, kplan, run, rng)
