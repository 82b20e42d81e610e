"""The compress stage's k-means plan: the route (``kmeans_route``: full-batch passes on a device, a sample then
streamed passes on a CPU) and every automatic setting of the run (``plan_kmeans``), decided once from the row
count, K, the config and the backend, and logged by the route (``KMeansPlan.describe``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

from rvc_index.compute.backend import Backend
from rvc_index.config.schema import CompressConfig

KMeansRoute = Literal["minibatch", "device"]
MINIBATCH_MAX_ROWS = 4_000_000  # above, no mini-batch epoch and one Lloyd pass: the sample's k-means, then 2 reads

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
    route: KMeansRoute = "minibatch"  # device: full-batch Lloyd, rows resident or streamed (stages.compress_device)
    route_reason: str = ""
    init: Literal["hierarchical", "kmeans++", "random"] = "hierarchical"  # hierarchical: per coarse cell (a CPU);
    # kmeans++: batched D^2 sampling
    precision: Literal["fp32", "tf32"] = "fp32"  # the device route's assignment products (tf32: then one fp32 pass)
    stop_tol: float = 0.0  # the device route stops once the mean squared distance changes by less than this share
    fixed_cells: bool = False  # each centre stays in the coarse cell it was initialised in (no grouped copy)
    spread: int = 4  # coarse cells each centre is listed in
    nprobe: int = 1  # coarse cells each row searches
    init_iters: int = 2  # Lloyd iterations per coarse cell on the sample
    refine_iters: int = 2  # then over the whole sample, across cell borders
    coarse_rows: int = 64  # sample rows per coarse centre for the coarse k-means
    coarse_iters: int = 10
    cell_init: Literal["kmeans++", "random"] = "kmeans++"  # each coarse cell's init (hierarchical)
    decay: float = 1.0  # mini-batch centre weights *= decay per step
    dead_threshold: float = 1.0  # mini-batch: re-seed centres hit fewer times than this in 20 expected rows
    device_budget_mb: float = 0.0  # device route: memory its rows and tiles may take; 0 = half the free memory
    device_passes: int = 10  # device route: at most this many full-batch passes over the device rows
    stream_passes: int = 2  # device route over budget: exact passes streaming every chunk after the sample's

    @property
    def check_sample_rows(self) -> int:
        """Rows the value check should draw for this plan's init (0: the route draws its own)."""
        return self.sample_rows if self.route == "minibatch" else 0

    def describe(self) -> str:
        if self.route == "device":
            finish = ", then one fp32 pass" if self.precision == "tf32" else ""
            return (f"k={self.n_centroids:,}, init {self.init}, {self.precision} assignment{finish}, stop when the "
                    f"mean squared distance moves < {self.stop_tol:g}, route device ({self.route_reason})")
        assign = ("exact" if not self.two_level else
                  f"in fixed cells ({self.n_coarse} coarse cells: {self.n_centroids / max(self.n_coarse, 1):,.0f} "
                  "centres each, few rows per centre)" if self.fixed_cells else
                  f"two-level ({self.n_coarse} coarse cells, nprobe {self.nprobe}, spread {self.spread})")
        init = "" if self.init == "hierarchical" else f" ({self.init})"
        return (f"k={self.n_centroids:,}, init sample {self.sample_rows:,} rows{init}, assignment {assign}, "
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
    init = "hierarchical" if n_coarse > 1 and not backend.is_gpu else config.init  # a device: batched D^2, no host loop
    fixed = two_level and route == "minibatch" and (n_centroids >= CELL_MIN_CENTRES
                                                    or n_rows < CELL_ROWS_PER_CENTRE * n_centroids)
    if fixed:  # 1.5 rows per centre: allocation can leave a cell of duplicates (digital silence) one centre
        sample_rows = config.sample_rows or 3 * n_centroids // 2
        plan = KMeansPlan(n_centroids, n_coarse, two_level, min(n_rows, max(sample_rows, n_centroids)), batch_rows,
                          0, max(passes, 1), route, reason, init, fixed_cells=True, spread=1, nprobe=1,
                          init_iters=min(config.init_iters, 1) or 1, refine_iters=0, coarse_rows=16, coarse_iters=4)
    elif route == "device":
        tf32 = config.precision == "tf32" or (config.precision == "auto" and backend.tf32)
        plan = KMeansPlan(n_centroids, n_coarse, False, min(n_rows, max(sample_rows, n_centroids)), batch_rows, 0,
                          passes, route, reason, config.init, "tf32" if tf32 else "fp32", config.stop_tol)
    else:
        plan = KMeansPlan(n_centroids, n_coarse, two_level, min(n_rows, max(sample_rows, n_centroids)), batch_rows,
                          steps, passes, route, reason, init, spread=config.spread, nprobe=config.nprobe,
                          init_iters=config.init_iters, refine_iters=config.init_iters)
    return dataclasses.replace(plan, cell_init=config.init, decay=config.decay, dead_threshold=config.dead_threshold,
                               device_budget_mb=config.device_budget_mb, device_passes=config.lloyd_passes,
                               stream_passes=config.stream_passes)


def kmeans_route(config: CompressConfig, backend: Backend) -> tuple[KMeansRoute, str]:
    """(route, why): full-batch passes on a GPU (the device's matrix rate pays for exact passes over every
    row), streamed mini-batches on a CPU (two-level assignment: ~2 % of an exact pass)."""
    if config.route != "auto":
        return config.route, f"compress.route={config.route}"
    if backend.is_gpu:
        return "device", "a GPU: full-batch exact passes"
    return "minibatch", "a CPU: mini-batches with two-level assignment"
