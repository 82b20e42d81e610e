"""The compress stage's ``minibatch`` route (a CPU's): the k-means core on a sample, then over the collection.

1. **init** on a uniform sample drawn by the value check's read: hierarchical (``compute.hierarchy``: coarse
   k-means, heavy cells split, centres per coarse cell, each cell's Lloyd iterations on its rows, one cell per
   core), then ``refine_iters`` Lloyd iterations over the whole sample with two-level assignment (one slice
   per core); on a device batched D^2 sampling instead;
2. ``epochs`` of **mini-batch** updates over batches streamed from every chunk (when asked);
3. **Lloyd passes** over the whole collection (``stages.passes``: chunks on local threads, on the Dask
   workers that hold them, or staged through the device), the same loop and assigner as the refinement.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from rvc_index.compute.backend import Backend
from rvc_index.compute.hierarchy import two_level_init
from rvc_index.compute.init import init_centres
from rvc_index.compute.lloyd import ResidentRows, lloyd
from rvc_index.compute.minibatch import KMeansState, fit_minibatch, new_state
from rvc_index.compute.two_level import TwoLevel
from rvc_index.data.feature_set import DrawnRows, FeatureSet
from rvc_index.runtime.memory import release_freed_memory
from rvc_index.runtime.progress import Progress, get_logger
from rvc_index.runtime.run import Run
from rvc_index.runtime.stream import sample_row_ids
from rvc_index.stages.kmeans_plan import KMeansPlan
from rvc_index.stages.passes import PassCache, collection_rows, shuffled_batches


def initial_state(sample: np.ndarray, plan: KMeansPlan, run: Run[Backend],
                  rng: np.random.Generator) -> tuple[KMeansState, Any | None]:
    """Phase 1 on ``sample`` [s, d]: hierarchical k-means (then a refinement over the whole sample) or a flat
    random / batched D^2 init. Returns the state and, for two-level assignment with one probe, each sample
    row's coarse cell (int16 [s, 1], on the device), which the first pass over the collection need not find."""
    backend = run.backend
    xp = backend.xp
    rows = backend.asarray(sample)
    reseed = int(rng.integers(2**31))
    if plan.init != "hierarchical":
        return new_state(xp, init_centres(xp, rows, plan.n_centroids, plan.init, rng), seed=reseed, adopt=True), None
    init = two_level_init(xp, rows, plan.n_centroids, plan.n_coarse, plan.cell_init, rng, plan.init_iters,
                          plan.coarse_iters, plan.coarse_rows, reseed_empty=not plan.fixed_cells, workers=run.workers())
    centres, counts, buffer = init.centres, init.counts, None
    if plan.two_level and plan.refine_iters:  # every sample row against its nprobe nearest cells
        release_freed_memory()  # the per-cell threads' freed arrays, before the whole-sample passes
        assigner = TwoLevel(init.coarse, plan.spread, plan.nprobe)
        source = ResidentRows(rows, threads=run.workers(), norms=init.norms,
                              cells=init.cells if plan.nprobe == 1 else None)
        counts = lloyd(xp, source, centres, plan.refine_iters, assigner).counts
        buffer = assigner.buffer  # the passes' trees group the centres where the refinement's did
    state = new_state(xp, centres, counts, init.coarse if plan.two_level else None, seed=reseed, spread=plan.spread,
                      adopt=True, offsets=init.offsets if plan.fixed_cells else None, nprobe=plan.nprobe,
                      buffer=buffer)
    return state, init.cells if plan.two_level and plan.nprobe == 1 else None


def minibatch_epochs(features: FeatureSet, state: KMeansState, kplan: KMeansPlan, run: Run[Backend],
                     rng: np.random.Generator) -> None:
    """Phase 2: ``kplan.steps`` mini-batch updates of ``state`` with shuffled batches of every chunk."""
    progress = Progress("compress: mini-batch", kplan.steps * kplan.batch_rows)

    def counted(batches: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        for batch in batches:
            yield batch  # resumed once the step on it is done
            progress.advance(batch.shape[0])

    batches = shuffled_batches(features, kplan.batch_rows, kplan.steps * kplan.batch_rows, rng, run)
    fit_minibatch(run.backend, counted(batches), state, kplan.decay, kplan.nprobe, kplan.dead_threshold)


def fit_on_sample_then_passes(features: FeatureSet, kplan: KMeansPlan, run: Run[Backend],
                              rng: np.random.Generator) -> KMeansState:
    """The three phases; returns the final state (centres on the device)."""
    log = get_logger()
    backend = run.backend
    xp = backend.xp
    drawn = features.sample.take(kplan.sample_rows, rng)  # drawn during the value check: no read of its own
    if drawn is None:
        ids = sample_row_ids(features.n_rows, kplan.sample_rows, rng)
        drawn = DrawnRows(run.take_rows(features, ids), ids)
    release_freed_memory()  # the value check's freed buffers, before the init's arrays
    state, sample_cells = initial_state(drawn.rows, kplan, run, rng)
    cache = PassCache(keep_norms=kplan.lloyd_passes > 1)
    if sample_cells is not None:  # the first pass finds the coarse cells of the other rows only
        cache.seed_cells(xp, features.chunk_rows, drawn.ids, sample_cells)
    if run.local and run.workers() > 1 and not features.is_resident \
            and not kplan.fixed_cells:  # (fixed cells: the sample is larger than the chunks in flight: freed)
        # the threaded passes read the chunks into its pages (a kept collection is read by none)
        cache.adopt(drawn.rows, features.max_chunk_rows, run.workers())
    del drawn, sample_cells  # the phases below hold a batch or chunks (some in the sample's memory)
    release_freed_memory()
    log.info("compress: init done (%s, %d Lloyd iterations per coarse cell%s)", kplan.cell_init, kplan.init_iters,
             f", then {kplan.refine_iters} over the sample, nprobe {kplan.nprobe}, spread {kplan.spread}"
             if kplan.two_level and kplan.refine_iters else "")
    if kplan.steps:
        minibatch_epochs(features, state, kplan, run, rng)
        log.info("compress: %d mini-batch steps, %d dead centres re-seeded", state.step, int(state.reseeded))
    how = "two-level" if kplan.two_level else "exact"

    def logged(number: int, msd: float, rows: int) -> None:
        log.info("compress: Lloyd pass %d/%d over %s rows, mean squared distance %.4g (%s assignment)", number,
                 kplan.lloyd_passes, f"{rows:,}", msd, how)

    rows = collection_rows(features, run, cache)
    result = lloyd(xp, rows, state.centres, kplan.lloyd_passes, state.assigner, on_pass=logged)
    if result.reseeded:
        log.info("compress: %d empty centres re-seeded in the Lloyd passes", result.reseeded)
    state.counts, state.reseeded, state.msd = result.counts, int(state.reseeded) + result.reseeded, result.msd
    return state
