"""Hierarchical k-means init on a sample (the CPU route's): coarse k-means, heavy cells split, then centres
per coarse cell, each cell fitted by the k-means core (``lloyd``) on its own rows, one cell per core.

A host loop runs over the coarse cells (2 sqrt(K) of them) and reads each cell's row count: a CPU design,
where the per-cell work (rows x centres) is what counts. A device starts from batched D^2 sampling over the
whole sample instead (``init.d2_init``: a fixed number of launches, no read).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from rvc_index.compute.backend import to_host
from rvc_index.compute.init import d2_init, d2_order, init_centres
from rvc_index.compute.kernels import squared_norms
from rvc_index.compute.knn import nearest
from rvc_index.compute.lloyd import lloyd, reseed
from rvc_index.compute.two_level import assign_two_level, build_tree
from rvc_index.runtime.threads import in_threads

COARSE_ROWS = 64  # sample rows per coarse centre for the coarse k-means (a coarse cell only routes rows)
HEAVY_CELL = 4  # a coarse cell given more centres than this many times the average is split


def allocate(sizes: np.ndarray, total: int, weights: np.ndarray | None = None) -> np.ndarray:
    """``total`` centres split over cells in proportion to ``weights`` (default: their rows), at
    most one per row; with ``weights``, every non-empty cell first gets one (when ``total`` allows)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    alloc = np.zeros_like(sizes)
    if weights is None:
        share = sizes * (total / max(int(sizes.sum()), 1))
    else:
        if total >= int((sizes > 0).sum()):
            alloc = (sizes > 0).astype(np.int64)
        share = np.where(sizes > alloc, np.maximum(np.asarray(weights, dtype=np.float64), 0.0), 0.0)
        if share.sum() <= 0.0:
            share = (sizes - alloc).astype(np.float64)
        share = alloc + share * ((total - int(alloc.sum())) / max(float(share.sum()), 1e-300))
    alloc = np.maximum(alloc, np.minimum(np.floor(share).astype(np.int64), sizes))
    while alloc.sum() < total:  # the rest by largest shortfall, where rows remain
        order = np.argsort(-(share - alloc), kind="stable")
        order = order[(sizes - alloc)[order] > 0][:total - int(alloc.sum())]
        alloc[order] += 1
    return alloc


class HierarchicalInit(NamedTuple):
    centres: Any  # [k, d] float32, sorted by the coarse cell they were initialised in
    counts: Any  # [k] sample rows per centre
    coarse: Any  # [k1, d] float32
    cells: Any  # int16 [n, 1]: each sample row's nearest coarse cell (``two_level.coarse_cells`` with one probe)
    norms: Any  # [n] the sample rows' squared norms
    offsets: np.ndarray  # host [k1 + 1]: cell j's centres are ``centres[offsets[j]:offsets[j + 1]]``


def split_heavy_cells(xp: Any, sample: Any, coarse: Any, cell: Any, heavy: np.ndarray, parts: np.ndarray,
                      rng: np.random.Generator, iters: int) -> Any:
    """The coarse centres with each cell ``heavy[i]`` (``cell``: each sample row's) split in ``parts[i]`` by a
    small k-means of its own sample rows (D^2 seeding: never two parts on one duplicate); its first part keeps the
    cell's number, the others are appended. A host loop over the few heavy cells, not over centres."""
    extra = []
    coarse = coarse.copy()
    for j, count in zip(heavy.tolist(), parts.tolist()):
        rows = sample[xp.nonzero(cell == j)[0]]
        count = min(int(count), int(rows.shape[0]))
        if count < 2:
            continue
        sub = lloyd(xp, rows, d2_init(xp, rows, count, rng), iters).centres
        coarse[j] = sub[0]
        extra.append(sub[1:])
    return xp.concatenate([coarse, *extra]) if extra else coarse


def two_level_init(xp: Any, sample: Any, n_clusters: int, n_coarse: int, method: str,
                   rng: np.random.Generator, iters: int, coarse_iters: int = 10,
                   coarse_rows: int = COARSE_ROWS, reseed_empty: bool = True, workers: int = 1) -> HierarchicalInit:
    """Hierarchical k-means on ``sample`` [n >= k, d].

    Coarse k-means (on ``coarse_rows`` rows per coarse centre), then each coarse cell gets centres,
    initialised there (``random``, or for ``kmeans++`` batched D^2 sampling, ``init.d2_init``, on at most 8
    rows per centre) and refined by ``iters`` Lloyd iterations on the cell's rows (n * k / k1 distances per
    iteration, not n * k). ``random`` shares the centres in proportion to the cells' rows; ``kmeans++`` in
    proportion to their squared distances to the coarse centre (k-means++'s D^2 mass: a cell of duplicates
    gets one centre, a cell of many small clusters many, not its share of rows). A cell given more than
    ``HEAVY_CELL`` times the average (speech's long pauses can be one cell with an eighth of the rows and of
    the centres) is split by a small k-means of its rows into cells of about the average: the per-cell work
    (rows x centres) stays balanced. Centres left without rows (duplicates give one centre all their rows)
    are re-seeded on sample rows drawn in proportion to their squared distance (``reseed_empty``; else they
    stay for the passes to re-seed in their cell).
    """
    n = sample.shape[0]
    n_coarse = max(1, min(n_coarse, n_clusters))
    sub = sample[xp.asarray(np.sort(rng.permutation(n)[:min(n, coarse_rows * n_coarse)]))]
    coarse = lloyd(xp, sub, init_centres(xp, sub, n_coarse, "random", rng), coarse_iters).centres
    norms = squared_norms(xp, sample)
    cell, dists = nearest(xp, sample, coarse, x_norms=norms)
    average = -(-n_clusters // n_coarse)
    for split in range(3):  # a split cell's parts are rarely heavy again: two rounds of splits at most
        sizes = to_host(xp.bincount(cell, minlength=coarse.shape[0]))
        sse = to_host(xp.bincount(cell, weights=dists.astype(xp.float64), minlength=coarse.shape[0]))
        alloc = allocate(sizes, n_clusters, sse if method == "kmeans++" else None)
        heavy = np.flatnonzero(alloc > HEAVY_CELL * average)
        if not heavy.size or split == 2:
            break
        coarse = split_heavy_cells(xp, sample, coarse, cell, heavy, -(-alloc[heavy] // average), rng, coarse_iters)
        cell, dists = nearest(xp, sample, coarse, x_norms=norms)  # the nearest of all: as the passes find
    n_coarse = coarse.shape[0]
    order = xp.argsort(cell * n + xp.arange(n))
    offsets = to_host(xp.searchsorted(cell[order], xp.arange(n_coarse + 1)))
    cells = np.flatnonzero(alloc)
    seeds = rng.integers(2**63, size=cells.size)  # one generator per cell: the same centres on any thread count
    starts = np.concatenate([[0], np.cumsum(alloc)]).astype(np.int64)  # cell j's centres: starts[j]:starts[j + 1]
    centres = xp.empty((n_clusters, sample.shape[1]), dtype=xp.float32)  # filled in place, cell by cell
    counts = xp.zeros(n_clusters, dtype=xp.int64)

    def fit_cell(i: int) -> None:
        j, cell_rng = cells[i], np.random.default_rng(seeds[i])
        rows = sample[order[int(offsets[j]):int(offsets[j + 1])]]
        k, pool = int(alloc[j]), rows
        if method == "kmeans++" and rows.shape[0] > 8 * k:  # seed on 8k rows: the cell's Lloyd sees them all
            pool = rows[xp.asarray(np.sort(cell_rng.permutation(rows.shape[0])[:8 * k]))]
        fitted = lloyd(xp, rows, init_centres(xp, pool, k, method, cell_rng), iters)
        centres[starts[j]:starts[j + 1]] = fitted.centres
        counts[starts[j]:starts[j + 1]] = fitted.counts

    for _ in in_threads(fit_cell, range(cells.size), workers):  # ``workers`` cells at a time (numpy)
        pass
    coarse = coarse.astype(xp.float32)
    empty = counts == 0
    missing = int(to_host(empty.sum())) if reseed_empty else 0
    if missing:
        _, found = assign_two_level(xp, build_tree(xp, centres, coarse), sample, 1, x_norms=norms)
        reseed(xp, centres, empty, sample[d2_order(xp, found, rng)[:missing]])
    return HierarchicalInit(centres, counts, coarse, cell[:, None].astype(xp.int16), norms, starts)
