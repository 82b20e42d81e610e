"""Compress stage: replace a large collection by k-means centroids (RVC's rule by default).

``method=minibatch`` (ours), in three phases whose memory depends on K and the batch, never on N:

1. **init** on a uniform sample of ``sample_rows`` rows drawn from every chunk: coarse k-means
   (k1 ~ 2 sqrt(K) centres), then each coarse cell gets centres in proportion to its rows (random)
   or squared distances (k-means++), initialised there and refined by ``init_iters`` Lloyd iterations
   per cell, then over the whole sample;
2. ``epochs`` passes of **mini-batch** updates over batches streamed from every chunk (seeded
   shuffle of chunk order and of rows within chunks), Sculley rates or EMA (``decay``), dead
   centres re-seeded from the batch;
3. a **final pass** over the whole collection: every centre moves to the mean of the rows it
   wins (a Lloyd step). Per-chunk partial sums are computed on the Dask workers that hold the data.

Rows find their centre in two levels (the centres listed in their ``nprobe`` nearest coarse cells,
each centre listed in its ``spread`` nearest: about 4 % of the arithmetic of an exact search at
K = 10,000) or exactly (``assign``).
``method=sklearn`` runs RVC's own ``MiniBatchKMeans`` call, holding every row in memory.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from rvc_index.compute.backend import Backend
from rvc_index.compute.device_kmeans import fit_device
from rvc_index.compute.kmeans import distance_tile_rows, init_centres
from rvc_index.compute.minibatch import (
    KMeansState,
    apply_pass,
    fit_minibatch,
    new_state,
)
from rvc_index.compute.two_level import refine, two_level_init
from rvc_index.config.schema import BudgetConfig, CompressConfig
from rvc_index.data.feature_set import DrawnRows, FeatureSet
from rvc_index.errors import RvcIndexError
from rvc_index.runtime.memory import F32, StageEstimate, release_freed_memory
from rvc_index.runtime.progress import Progress, get_logger
from rvc_index.runtime.stream import iter_blocks, local_threads, sample_row_ids, take_rows
from rvc_index.stages.passes import PassCache, final_pass_stats, shuffled_batches

MINIBATCH_MAX_ROWS = 4_000_000  # above, no mini-batch epoch and one Lloyd pass: the sample's k-means, then 2 reads


class CompressError(RvcIndexError, ValueError):
    """Compression cannot run as configured (e.g. more centroids than rows)."""


@dataclass(frozen=True)
class CompressPlan:
    apply: bool
    n_centroids: int
    reason: str
    budget_vectors: int = 0  # the most vectors the budget holds (docs/consumers.md)


MIB = 2**20


def budget_vectors(dim: int, budget: BudgetConfig) -> int:
    """The most vectors a consumer can hold within ``budget``: ``big`` (ntotal x D x 4 bytes of
    ``reconstruct_n``) within ``big_mb``, and Applio realtime's GPU copy (big, its transpose and a norm per
    vector) within ``gpu_mb``."""
    by_ram = budget.big_mb * MIB / (F32 * dim)
    by_gpu = budget.gpu_mb * MIB / (2 * F32 * dim + F32)
    return max(1, int(min(by_ram, by_gpu)))


def plan_compression(n_rows: int, dim: int, config: CompressConfig, budget: BudgetConfig) -> CompressPlan:
    """Decide whether to compress ``n_rows`` rows of ``dim`` and to how many centroids: as many as the budget
    holds (``compress.n_centroids=0``), above as many rows as it holds (``compress.row_threshold=0``), or the
    numbers the config names (RVC's recipe: 10,000 above 200,000 rows)."""
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
    return CompressPlan(True, n_centroids, why, cap)


CELL_MIN_CENTRES = 32_768  # from this many centres, or with fewer than CELL_ROWS_PER_CENTRE rows per centre:
CELL_ROWS_PER_CENTRE = 8  # hierarchical k-means in fixed cells (the large-K route: copies of the centres dominate)


@dataclass(frozen=True)
class KMeansPlan:
    """The resolved settings of one ``minibatch`` run (every ``0 = auto`` decided)."""

    n_centroids: int
    n_coarse: int  # 1 = flat: plain init, exact assignment
    two_level: bool  # streamed rows search nprobe coarse cells, not every centre
    sample_rows: int
    batch_rows: int
    steps: int  # mini-batch steps over the collection
    lloyd_passes: int = 1  # Lloyd passes over every row after the epochs
    route: str = "minibatch"  # minibatch | device (full-batch Lloyd, rows resident or streamed: compute.device_kmeans)
    route_reason: str = ""
    fixed_cells: bool = False  # each centre stays in the coarse cell it was initialised in (no grouped copy)
    spread: int = 4  # coarse cells each centre is listed in
    nprobe: int = 1  # coarse cells each row searches
    init_iters: int = 2  # Lloyd iterations per coarse cell on the sample
    refine_iters: int = 2  # then over the whole sample, across cell borders
    coarse_rows: int = 64  # sample rows per coarse centre for the coarse k-means
    coarse_iters: int = 10

    @property
    def check_sample_rows(self) -> int:
        """Rows the value check should draw for this plan's init (0: the route draws its own)."""
        return self.sample_rows if self.route == "minibatch" else 0

    def describe(self) -> str:
        if self.route == "device":
            return f"k={self.n_centroids:,}, route device ({self.route_reason})"
        assign = ("exact" if not self.two_level else
                  f"in fixed cells ({self.n_coarse} coarse cells: {self.n_centroids / max(self.n_coarse, 1):,.0f} "
                  "centres each, few rows per centre)" if self.fixed_cells else
                  f"two-level ({self.n_coarse} coarse cells, nprobe {self.nprobe}, spread {self.spread})")
        return (f"k={self.n_centroids:,}, init sample {self.sample_rows:,} rows, assignment {assign}, "
                f"{self.steps} mini-batch steps of {self.batch_rows:,} rows, "
                f"{self.lloyd_passes} Lloyd passes over every row"
                + (f", route minibatch ({self.route_reason})" if self.route_reason else ""))


def plan_kmeans(n_rows: int, n_centroids: int, config: CompressConfig, backend: Backend) -> KMeansPlan:
    """Resolve the automatic settings: k1 = round(2 sqrt(K)) (flat below 256 centres), the sample
    (16 rows per centre, at least 65,536, at most max(N / 2, 65,536): the passes over all rows refine it),
    two-level assignment on the CPU, exact on a GPU, and ``epochs`` mini-batch passes up to
    ``MINIBATCH_MAX_ROWS`` rows (above, the reads dominate: the value check draws the sample and one
    Lloyd pass follows the init).

    From ``CELL_MIN_CENTRES`` centres or below ``CELL_ROWS_PER_CENTRE`` rows per centre (a budget of 175,000
    vectors over a few hundred thousand frames) the two-level route becomes hierarchical k-means in fixed cells:
    a sample of 1.5 K rows, one
    Lloyd iteration per cell on it, no cross-cell refinement, and the passes over every row in the cells
    (spread 1, nprobe 1): the sums of a centre come from its own cell's rows, so the centres are updated in
    place and no grouped copy of them exists (memory: 2 x K x D, not 5 x)."""
    n_coarse = config.coarse_centres or (round(2 * math.sqrt(n_centroids)) if n_centroids >= 256 else 1)
    n_coarse = max(1, min(n_coarse, n_centroids))
    if config.assign == "auto":
        two_level = n_coarse > 1 and not backend.is_gpu
    else:
        two_level = config.assign == "two-level" and n_coarse > 1
    sample_rows = config.sample_rows or min(max(16 * n_centroids, 65_536), max(n_rows // 2, 65_536))
    batch_rows = min(config.batch_rows, n_rows)
    steps = int(config.epochs * n_rows) // batch_rows if n_rows <= MINIBATCH_MAX_ROWS else 0
    passes = config.final_passes if n_rows <= MINIBATCH_MAX_ROWS else min(config.final_passes, 1)
    route, reason = kmeans_route(config, backend)
    fixed = two_level and route == "minibatch" and (n_centroids >= CELL_MIN_CENTRES
                                                    or n_rows < CELL_ROWS_PER_CENTRE * n_centroids)
    if fixed:  # 1.5 rows per centre: allocation can leave a cell of duplicates (digital silence) one centre
        sample_rows = config.sample_rows or 3 * n_centroids // 2
        return KMeansPlan(n_centroids, n_coarse, two_level, min(n_rows, max(sample_rows, n_centroids)), batch_rows,
                          0, max(passes, 1), route, reason, fixed_cells=True, spread=1, nprobe=1,
                          init_iters=min(config.init_iters, 1) or 1, refine_iters=0, coarse_rows=16, coarse_iters=4)
    sample_rows = min(n_rows, max(sample_rows, n_centroids))
    return KMeansPlan(n_centroids, n_coarse, two_level, sample_rows, batch_rows, 0 if route == "device" else steps,
                      passes, route, reason, spread=config.spread, nprobe=config.nprobe,
                      init_iters=config.init_iters, refine_iters=config.init_iters)


def kmeans_route(config: CompressConfig, backend: Backend) -> tuple[str, str]:
    """(route, why): full-batch passes on a GPU (the device's matrix rate pays for exact passes over every
    row), streamed mini-batches on a CPU (two-level assignment: ~2 % of an exact pass)."""
    if config.route != "auto":
        return config.route, f"compress.route={config.route}"
    if backend.is_gpu:
        return "device", "a GPU: full-batch exact passes"
    return "minibatch", "a CPU: mini-batches with two-level assignment"


def compress_estimate(n_rows: int, dim: int, plan: CompressPlan, kplan: KMeansPlan | None,
                      stream: int, on_gpu: bool) -> StageEstimate:
    """Host bytes the compress stage holds (``stream``: a streamed pass's chunks; ``kplan`` None: sklearn's
    in-memory call); it keeps the K centroids."""
    row, k = dim * F32, plan.n_centroids
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


def sklearn_centroids(features: FeatureSet, n_centroids: int, seed: int, client: Any | None) -> np.ndarray:
    """RVC's exact call: concatenate, shuffle, ``MiniBatchKMeans(init='random')``. Holds all rows."""
    from sklearn.cluster import MiniBatchKMeans

    rows = np.concatenate(list(iter_blocks(features, client)))
    rows = rows[np.random.default_rng(seed).permutation(rows.shape[0])]
    model = MiniBatchKMeans(n_clusters=n_centroids, batch_size=256 * (os.cpu_count() or 1),
                            compute_labels=False, init="random", random_state=seed)
    return model.fit(rows).cluster_centers_.astype(np.float32)


def initial_state(sample: np.ndarray, plan: KMeansPlan, config: CompressConfig, backend: Backend,
                  rng: np.random.Generator) -> tuple[KMeansState, Any | None]:
    """Phase 1 on ``sample`` [s, d]: two-level k-means (k1 > 1) or a plain random/k-means++ init.
    Returns the state and, for two-level assignment with one probe, each sample row's coarse cell
    (int16 [s, 1], on the device), which the first pass over the collection need not find again."""
    xp = backend.xp
    rows = backend.asarray(sample)
    reseed = int(rng.integers(2**31))
    if plan.n_coarse > 1:
        init = two_level_init(xp, rows, plan.n_centroids, plan.n_coarse, config.init, rng, plan.init_iters,
                              plan.coarse_iters, plan.coarse_rows, reseed_empty=not plan.fixed_cells)
        centres, counts, coarse, cells, norms = init.centres, init.counts, init.coarse, init.cells, init.norms
        buffer = None
        if plan.two_level and plan.refine_iters:  # every sample row against its nprobe nearest cells
            release_freed_memory()  # the per-cell threads' freed arrays, before the whole-sample passes
            centres, counts, buffer = refine(xp, rows, centres, coarse, plan.refine_iters, plan.nprobe,
                                             plan.spread, cells, norms)
        del norms
        state = new_state(xp, centres, counts, coarse if plan.two_level else None, seed=reseed, spread=plan.spread,
                          adopt=True)
        state.tree_buffer = buffer  # the passes' trees group the centres where the refinement's did
        if plan.fixed_cells:
            state.offsets = init.offsets
        return state, cells if plan.two_level and plan.nprobe == 1 else None
    return new_state(xp, init_centres(xp, rows, plan.n_centroids, config.init, rng), seed=reseed), None


def compress(features: FeatureSet, plan: CompressPlan, config: CompressConfig, backend: Backend,
             seed: int, client: Any | None = None, kplan: KMeansPlan | None = None) -> np.ndarray:
    """Centroids [n_centroids, D] float32 summarising the collection."""
    log = get_logger()
    if config.method == "sklearn":
        log.info("compress: sklearn MiniBatchKMeans (RVC parity mode) on %s rows", f"{features.n_rows:,}")
        return sklearn_centroids(features, plan.n_centroids, seed, client)
    state = fit_centroids(features, plan.n_centroids, config, backend, seed, client, kplan)
    return backend.to_host(state.centres).astype(np.float32)


def minibatch_epochs(features: FeatureSet, state: KMeansState, kplan: KMeansPlan, config: CompressConfig,
                     backend: Backend, rng: np.random.Generator, client: Any | None = None) -> None:
    """Phase 2: ``kplan.steps`` mini-batch updates of ``state`` with shuffled batches of every chunk."""
    progress = Progress("compress: mini-batch", kplan.steps * kplan.batch_rows)

    def counted(batches: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        for batch in batches:
            yield batch  # resumed once the step on it is done
            progress.advance(batch.shape[0])

    batches = shuffled_batches(features, kplan.batch_rows, kplan.steps * kplan.batch_rows, rng, client)
    fit_minibatch(backend, counted(batches), state, config.decay, kplan.nprobe, config.dead_threshold)


def fit_centroids(features: FeatureSet, n_centroids: int, config: CompressConfig, backend: Backend,
                  seed: int, client: Any | None = None,
                  kplan: KMeansPlan | None = None) -> KMeansState:
    """Run the three phases of ``method=minibatch``; returns the final state (centres on device)."""
    log = get_logger()
    xp = backend.xp
    rng = np.random.default_rng(seed)
    kplan = kplan or plan_kmeans(features.n_rows, n_centroids, config, backend)  # a build passes its plan's
    log.info("compress: %s", kplan.describe())
    if kplan.route == "device":
        fitted = fit_device(features, n_centroids, config, backend, rng, client)
        return new_state(xp, fitted.centres, fitted.counts, seed=int(rng.integers(2**31)))

    drawn = features.sample.take(kplan.sample_rows, rng)  # drawn during the value check: no read of its own
    if drawn is None:
        ids = sample_row_ids(features.n_rows, kplan.sample_rows, rng)
        drawn = DrawnRows(take_rows(features, ids, client), ids)
    release_freed_memory()  # the value check's freed buffers, before the init's arrays
    state, sample_cells = initial_state(drawn.rows, kplan, config, backend, rng)
    cache = PassCache(keep_norms=kplan.lloyd_passes > 1)
    if sample_cells is not None:  # the first pass finds the coarse cells of the other rows only
        cache.seed_cells(xp, features.chunk_rows, drawn.ids, sample_cells)
    if client is None and not backend.is_gpu and local_threads() > 1 and not features.is_resident \
            and not kplan.fixed_cells:  # (fixed cells: the sample is larger than the chunks in flight: freed)
        # the threaded passes read the chunks into its pages (a kept collection is read by none)
        cache.adopt(drawn.rows, features.max_chunk_rows, local_threads())
    del drawn, sample_cells  # the phases below hold a batch or chunks (some in the sample's memory)
    release_freed_memory()
    log.info("compress: init done (%s, %d Lloyd iterations per coarse cell%s)", config.init, kplan.init_iters,
             f", then {kplan.refine_iters} over the sample, nprobe {kplan.nprobe}, spread {kplan.spread}"
             if kplan.two_level and kplan.refine_iters else "")
    if features.n_rows > MINIBATCH_MAX_ROWS and (config.epochs or config.final_passes > 1):
        log.info("compress: no mini-batch epoch and one Lloyd pass above %s rows (2 reads in all)",
                 f"{MINIBATCH_MAX_ROWS:,}")

    if kplan.steps:
        minibatch_epochs(features, state, kplan, config, backend, rng, client)
        log.info("compress: %d mini-batch steps, %d dead centres re-seeded", state.step, state.reseeded)

    for number in range(1, kplan.lloyd_passes + 1):
        progress = Progress(f"compress: Lloyd pass {number}/{kplan.lloyd_passes}", features.n_rows)
        stats = final_pass_stats(features, state, backend, kplan.nprobe, client, progress, cache)
        reseeded, rows, msd = apply_pass(xp, state, stats), stats.rows, stats.sse / max(stats.rows, 1)
        del stats  # the next pass's running total replaces its sums (two [k, d] arrays at once otherwise)
        log.info("compress: Lloyd pass %d/%d over %s rows, mean squared distance %.4g (%s assignment), "
                 "%d empty centres re-seeded", number, kplan.lloyd_passes, f"{rows:,}", msd,
                 "two-level" if state.coarse is not None else "exact", reseeded)
    return state
