"""The compress stage's ``device`` route (a GPU's): where the rows live during k-means, and the fit.

``resident``: every row fits the device budget; chunks are staged once (pinned, double-buffered, overlapping
the reading of the next chunks), then full-batch passes of the k-means core run on the device. ``streamed``:
a uniform sample as large as the budget allows is clustered the same way, then ``stream_passes`` passes
stream every chunk through the device (``stages.passes.StagedRows``). The passes use TF32 products where
the plan says so (``KMeansPlan.precision``) and end with one exact FP32 pass; the resident passes stop once
the mean squared distance moves by less than ``stop_tol`` (one number read per pass). The budget is
``compress.device_budget_mb``, or half of the memory the device has free; the choice and its reason are
logged. On the CPU backend the same code runs on numpy (the route CI checks).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from rvc_index.compute.backend import Backend
from rvc_index.compute.init import init_centres
from rvc_index.compute.lloyd import Exact, LloydResult, ResidentRows, lloyd
from rvc_index.data.feature_set import FeatureSet
from rvc_index.runtime.progress import Progress, get_logger
from rvc_index.runtime.run import Run
from rvc_index.runtime.stream import sample_row_ids
from rvc_index.stages.kmeans_plan import KMeansPlan
from rvc_index.stages.passes import StagedRows

INIT_ROWS_PER_CENTRE = 32  # the init draws from at most max(32 K, 65,536) of the device rows
MIB = 2**20


def tile_rows(n_centres: int, dim: int, tile_bytes: int) -> int:
    """Rows per tile whose scores [t, K] and the sums' sorted, transposed and prefix copies [t, d] fit."""
    return max(1, tile_bytes // (4 * n_centres + 16 * dim + 64))


@dataclass(frozen=True)
class DeviceRoute:
    """The decided device route of one k-means run."""

    name: str  # resident | streamed
    reason: str
    budget_bytes: int
    tile_rows: int
    device_rows: int  # rows held on the device: all of them (resident) or the sample (streamed)
    passes: int  # full-batch passes over the device rows, at most
    stream_passes: int  # passes streamed over every row afterwards (streamed only)


def choose_route(n_rows: int, dim: int, kplan: KMeansPlan, backend: Backend, chunk_rows: int) -> DeviceRoute:
    """Resident when the rows and a pass's working set fit the budget, else streamed (``chunk_rows``: the
    largest chunk, staged twice over). The device's free memory is known only when the stage runs: the route
    is decided then, from the plan's settings."""
    n_centroids = kplan.n_centroids
    if kplan.device_budget_mb:
        budget, source = int(kplan.device_budget_mb * MIB), "compress.device_budget_mb"
    else:
        budget, source = backend.free_bytes() // 2, f"half of the {backend.name}'s free memory"
    tile_bytes = max(1, min(backend.profile.tile_bytes, budget // 4))
    rows_per_tile = tile_rows(n_centroids, dim, tile_bytes)
    working = rows_per_tile * (4 * n_centroids + 16 * dim) + 12 * n_centroids * dim
    data = 4 * n_rows * dim
    if data + working <= budget:
        reason = (f"{data / MIB:,.0f} MiB of rows + {working / MIB:,.0f} MiB of pass tiles fit the "
                  f"{budget / MIB:,.0f} MiB budget ({source}): copied once, up to {kplan.device_passes} "
                  "full-batch passes")
        return DeviceRoute("resident", reason, budget, rows_per_tile, n_rows, kplan.device_passes, 0)
    room = budget - working - 2 * 4 * chunk_rows * dim
    device_rows = int(min(n_rows, max(n_centroids, room // (4 * dim))))
    reason = (f"{data / MIB:,.0f} MiB of rows + {working / MIB:,.0f} MiB of pass tiles exceed the "
              f"{budget / MIB:,.0f} MiB budget ({source}): up to {kplan.device_passes} full-batch passes on a "
              f"{device_rows:,}-row device sample, then {kplan.stream_passes} passes streaming every chunk")
    return DeviceRoute("streamed", reason, budget, rows_per_tile, device_rows, kplan.device_passes,
                       kplan.stream_passes)


def _to_device(backend: Backend, blocks: Iterable[np.ndarray], n: int, dim: int, progress: Progress) -> Any:
    """[n, dim] float32 on the device from host blocks, staged in order."""
    rows = backend.xp.empty((n, dim), dtype=backend.xp.float32)
    for staged in backend.upload(blocks, out=rows):
        progress.advance(staged.shape[0])
    return rows


def fit_device(features: FeatureSet, kplan: KMeansPlan, run: Run[Backend], rng: np.random.Generator) -> LloydResult:
    """k-means of the whole collection on the device route; centres and counts stay on the device."""
    log = get_logger()
    backend = run.backend
    xp, n, dim, k = backend.xp, features.n_rows, features.dim, kplan.n_centroids
    route = choose_route(n, dim, kplan, backend, max(features.chunk_rows, default=0))
    log.info("compress: device route %s: %s", route.name, route.reason)
    if route.name == "resident":
        rows = _to_device(backend, run.blocks(features, prefetch=2), n, dim,
                          Progress("compress: copy to device", n))
    else:
        sample = run.take_rows(features, sample_row_ids(n, route.device_rows, rng))
        rows = _to_device(backend, run.blocks(sample), sample.shape[0], dim,
                          Progress("compress: sample to device", sample.shape[0]))
        del sample
    init_rows = min(rows.shape[0], max(INIT_ROWS_PER_CENTRE * k, 65_536))
    pool = rows if init_rows == rows.shape[0] else rows[xp.asarray(sample_row_ids(rows.shape[0], init_rows, rng))]
    centres = init_centres(xp, pool, k, kplan.init, rng)
    del pool
    assigner = Exact(route.tile_rows, backend.product(kplan.precision), backend.product("fp32"))

    def logged(where: str) -> Any:
        return lambda number, msd, count: log.info("compress: %s pass %d over %s rows, mean squared distance %.5g",
                                                   where, number, f"{count:,}", msd)

    result = lloyd(xp, ResidentRows(rows, route.tile_rows), centres, route.passes, assigner, kplan.stop_tol,
                   on_pass=logged("device"), finish=not route.stream_passes)
    log.info("compress: %d full-batch passes over %s device rows (%s), mean squared distance %s, %d re-seeded",
             len(result.msd), f"{rows.shape[0]:,}", "converged" if result.converged else "every pass",
             " -> ".join(f"{m:.4g}" for m in result.msd[:1] + result.msd[-1:]), result.reseeded)
    del rows
    if route.stream_passes:
        streamed = lloyd(xp, StagedRows(features, run, route.tile_rows), result.centres,
                         route.stream_passes, assigner, on_pass=logged("streamed"))
        result = LloydResult(streamed.centres, streamed.counts, result.msd + streamed.msd,
                             result.reseeded + streamed.reseeded, result.converged)
    return result
