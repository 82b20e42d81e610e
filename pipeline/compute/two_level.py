"""Two-level k-means: K centres grouped under k1 ~ 2 sqrt(K) coarse centres (over ``xp``).

Each centre is listed in its ``spread`` nearest coarse cells, and a row is compared with the centres
listed in its ``nprobe`` nearest cells only, about ``(k1 + nprobe * spread * K / k1) / K`` of the
arithmetic of an exact search (4 % for K = 10,000, k1 = 200, spread 4, nprobe 1; the coarse part
once per row, its cells kept between passes). The same grouping gives a hierarchical init: coarse
k-means, then centres per cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from rvc_index.compute.backend import thread_map, to_host
from rvc_index.compute.init import d2_init
from rvc_index.compute.kmeans import (
    d2_sample,
    distance_tile_rows,
    farthest,
    init_centres,
    lloyd,
    means_or_reseed,
    nearest_centres,
    segment_sums,
    squared_norms,
)
from rvc_index.runtime.stream import local_threads

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


@dataclass
class CentreTree:
    """Centres grouped by their nearest coarse centre, for two-level assignment.

    ``centres[offsets[j]:offsets[j + 1]]`` are cell j's centres; ``ids`` maps them back to the
    caller's order (a centre listed in several cells appears once per cell). Cells without centres get
    an infinite coarse norm so no row probes them.
    """

    coarse: Any  # [k1, d]
    coarse_norms: Any  # [k1]
    centres: Any  # [entries, d], sorted by cell
    norms: Any  # [entries]
    ids: Any  # [entries] int64
    offsets: np.ndarray  # host [k1 + 1]
    buffer: Any = None  # [k * spread, d]: ``centres`` is its first rows; the next tree of these centres reuses it


def gather_rows(xp: Any, x: Any, ids: Any, buffer: Any = None) -> tuple[Any, Any]:
    """(``x[ids]`` [m, d], the buffer it lives in): written into the first rows of ``buffer`` when that fits, so
    a tree rebuilt every pass does not fault in a fresh copy of the centres (spread x K rows) each time."""
    if buffer is None or buffer.shape[0] < ids.shape[0] or buffer.shape[1:] != x.shape[1:] or buffer.dtype != x.dtype:
        return x[ids], None
    out = buffer[:ids.shape[0]]
    if xp is np:
        np.take(x, ids, axis=0, out=out, mode="clip")  # "clip": numpy buffers ``out`` in the default mode
    else:
        xp.take(x, ids, axis=0, out=out)
    return out, buffer


def build_tree(xp: Any, centres: Any, coarse: Any, spread: int = 1, buffer: Any = None) -> CentreTree:
    """Group ``centres`` [k, d] under their ``spread`` nearest of ``coarse`` [k1, d] (k * k1 distances).

    With ``spread`` > 1 a centre is also listed in its next nearest cells, so a row that searches only
    its own cell still meets the centres just across the border: one gathered copy of each row instead
    of one per probed cell. A cell keeps every centre of its own and at most ``4 spread k / k1`` in all:
    the foreign ones nearest its coarse centre (a coarse centre amid the others, e.g. over a block of
    silence, would otherwise be among the nearest cells of thousands of centres, and its rows search them all).
    ``buffer``: an earlier tree's (``CentreTree.buffer``), for the grouped centres.
    """
    k, k1 = centres.shape[0], coarse.shape[0]
    spread = max(1, min(spread, k1))
    coarse_norms = squared_norms(xp, coarse)
    scores = centres @ coarse.T
    scores *= -2.0
    scores += coarse_norms[None, :]
    if spread == 1:
        nearest = xp.argmin(scores, axis=1)
        ids = xp.argsort(nearest * k + xp.arange(k))  # by cell, then by centre
        cell = nearest[ids]
    else:
        near = nearest_cells(xp, scores.copy(), spread)  # [k, spread]
        near_scores = xp.take_along_axis(scores, near, axis=1)  # |q|^2 - 2 c.q
        order = xp.argsort(near_scores, axis=1)
        near = xp.take_along_axis(near, order, axis=1)  # nearest first: column 0 is the centre's own cell
        cell = near.ravel()
        foreign = (xp.arange(k * spread) % spread) > 0
        gap = (xp.take_along_axis(near_scores, order, axis=1) + squared_norms(xp, centres)[:, None]).ravel()
        entries = xp.lexsort(xp.stack([gap, foreign.astype(xp.float32), cell.astype(xp.float32)]))
        group = cell[entries]
        starts = xp.searchsorted(group, xp.arange(k1))
        rank = xp.arange(k * spread) - starts[group]
        cap = 4 * spread * -(-k // k1)
        entries = entries[~foreign[entries] | (rank < cap)]
        cell = cell[entries]
        ids = entries // spread
    offsets = to_host(xp.searchsorted(cell, xp.arange(k1 + 1)))  # cell: each listing's, sorted
    empty = np.flatnonzero(np.diff(offsets) == 0)
    if empty.size:
        coarse_norms[xp.asarray(empty)] = xp.inf
    if buffer is None:
        buffer = xp.empty((k * spread, centres.shape[1]), dtype=centres.dtype)  # room for any later listing
    grouped, buffer = gather_rows(xp, centres, ids, buffer)
    return CentreTree(coarse, coarse_norms, grouped, squared_norms(xp, centres)[ids], ids, offsets, buffer)


def fixed_tree(xp: Any, centres: Any, coarse: Any, offsets: np.ndarray) -> CentreTree:
    """The tree of centres [k, d] already sorted by cell (cell j's are ``centres[offsets[j]:offsets[j + 1]]``,
    as :func:`two_level_init` makes them): it views ``centres`` (no grouped copy: at k = 175,000 x 768 one
    copy is 537 MB) and keeps each centre in the cell it was initialised in, so a row meets the centres of
    its own cell only (hierarchical k-means: the large-K route of ``stages.compress``)."""
    coarse_norms = squared_norms(xp, coarse)
    empty = np.flatnonzero(np.diff(offsets) == 0)
    if empty.size:
        coarse_norms[xp.asarray(empty)] = xp.inf
    return CentreTree(coarse, coarse_norms, centres, squared_norms(xp, centres), xp.arange(centres.shape[0]),
                      np.asarray(offsets, np.int64))


def nearest_cells(xp: Any, scores: Any, probes: int) -> Any:
    """[n, probes] column indices of the ``probes`` smallest entries of each row of ``scores`` [n, k1]
    (any order); ``scores`` is overwritten. Up to 4 probes by repeated ``argmin``: 2 of 100 cells came
    4.6x faster than from ``argpartition`` (11.5 vs 53 ms for 43,000 rows)."""
    if probes == 1:
        return xp.argmin(scores, axis=1)[:, None]
    if probes > 4:
        return xp.argpartition(scores, probes - 1, axis=1)[:, :probes]
    every = xp.arange(scores.shape[0])
    picks = []
    for p in range(probes):
        picks.append(xp.argmin(scores, axis=1))
        if p < probes - 1:
            scores[every, picks[-1]] = xp.inf
    return xp.stack(picks, axis=1)


def coarse_cells(xp: Any, tree: CentreTree, x: Any, nprobe: int) -> Any:
    """int16 [n, probes]: the ``nprobe`` nearest coarse cells holding centres of each row of ``x`` [n, d].

    The coarse centres stay fixed once the init has made them, so a caller that sees the same rows
    again (the next Lloyd pass) can keep these and skip the coarse product. Tiles of
    ``distance_tile_rows`` rows: their scores reuse the same few MB instead of a fresh [n, k1] array."""
    probes = max(1, min(nprobe, int((np.diff(tree.offsets) > 0).sum())))
    cells = xp.empty((x.shape[0], probes), dtype=xp.int16)
    rows = distance_tile_rows(tree.coarse.shape[0])
    for start in range(0, x.shape[0], rows):
        scores = x[start:start + rows] @ tree.coarse.T
        scores *= -2.0
        scores += tree.coarse_norms[None, :]
        cells[start:start + rows] = nearest_cells(xp, scores, probes)
    return cells


def assign_two_level(xp: Any, tree: CentreTree, x: Any, nprobe: int = 1, cells: Any = None,
                     x_norms: Any = None) -> tuple[Any, Any]:
    """(labels int64 [n] in the caller's order, squared distances float32 [n]): the nearest
    centre among those of each row's ``nprobe`` nearest coarse cells (``cells`` [n, probes]: those
    cells, as :func:`coarse_cells` found them earlier; ``x_norms`` [n]: the rows' squared norms).

    The (row, probe) pairs are grouped by cell and each cell's rows are gathered just before its
    matrix product: one gathered copy of every row would be ``nprobe`` times the chunk, allocated
    afresh (its page faults cost more than the arithmetic on a CPU).
    """
    n, k1 = x.shape[0], tree.coarse.shape[0]
    if cells is None:
        cells = coarse_cells(xp, tree, x, nprobe)
    probes = cells.shape[1]
    flat = cells.ravel().astype(xp.int64)
    order = xp.argsort(flat * (n * probes) + xp.arange(n * probes))  # (row, probe) pairs by cell
    bounds = to_host(xp.searchsorted(flat[order], xp.arange(k1 + 1)))
    rows = order // probes
    found_d = xp.full(n * probes, xp.inf, dtype=xp.float32)  # a cell that has lost its centres finds nothing
    found_l = xp.zeros(n * probes, dtype=xp.int64)
    for j in np.flatnonzero(np.diff(bounds) * (np.diff(tree.offsets) > 0)):
        a, b = int(bounds[j]), int(bounds[j + 1])
        lo, hi = int(tree.offsets[j]), int(tree.offsets[j + 1])
        scores = x[rows[a:b]] @ tree.centres[lo:hi].T
        scores *= -2.0
        scores += tree.norms[None, lo:hi]  # |c|^2 - 2 x.c
        best = xp.argmin(scores, axis=1)
        found_d[order[a:b]] = xp.take_along_axis(scores, best[:, None], axis=1)[:, 0]
        found_l[order[a:b]] = best + lo
    found_d, found_l = found_d.reshape(n, probes), found_l.reshape(n, probes)
    pick = xp.argmin(found_d, axis=1)[:, None]
    best_d = xp.take_along_axis(found_d, pick, axis=1)[:, 0]
    labels = tree.ids[xp.take_along_axis(found_l, pick, axis=1)[:, 0]]
    lost = xp.nonzero(xp.isinf(best_d))[0]  # only with stale ``cells``: search those rows afresh
    if lost.size:
        labels[lost], best_d[lost] = assign_two_level(xp, tree, x[lost], probes)
        best_d[lost] -= squared_norms(xp, x[lost])
    dists = xp.maximum(best_d + (squared_norms(xp, x) if x_norms is None else x_norms), 0.0)
    return labels, dists.astype(xp.float32)


def sums_parallel(xp: Any, tree: CentreTree, x: Any, nprobe: int, cells: Any, x_norms: Any,
                  k: int) -> tuple[Any, Any, Any]:
    """(sums float32 [k, d], counts float64 [k], squared distances [n]) of the rows of ``x`` [n, d] by their
    two-level nearest centre: one slice of rows per core, each assigned and summed there (numpy; whole on
    a GPU), the slices' sums added in order."""
    parts = local_threads() if xp is np else 1
    bounds = np.linspace(0, x.shape[0], parts + 1).astype(np.int64)

    def part(i: int) -> tuple[Any, Any, Any]:
        rows = slice(int(bounds[i]), int(bounds[i + 1]))
        labels, dists = assign_two_level(xp, tree, x[rows], nprobe, cells[rows], x_norms[rows])
        return (*segment_sums(xp, labels, x[rows], k), dists)

    found = thread_map(xp, part, range(parts))
    sums, counts, _ = found[0]
    for more, more_counts, _ in found[1:]:
        sums += more
        counts += more_counts
    return sums, counts, xp.concatenate([dists for _, _, dists in found])


class HierarchicalInit(NamedTuple):
    centres: Any  # [k, d] float32, sorted by the coarse cell they were initialised in
    counts: Any  # [k] sample rows per centre
    coarse: Any  # [k1, d] float32
    cells: Any  # int16 [n, 1]: each sample row's nearest coarse cell (``coarse_cells`` with one probe)
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
        sub, _ = lloyd(xp, rows, d2_init(xp, rows, count, rng), iters)
        coarse[j] = sub[0]
        extra.append(sub[1:])
    return xp.concatenate([coarse, *extra]) if extra else coarse


def two_level_init(xp: Any, sample: Any, n_clusters: int, n_coarse: int, method: str,
                   rng: np.random.Generator, iters: int, coarse_iters: int = 10,
                   coarse_rows: int = COARSE_ROWS, reseed_empty: bool = True) -> HierarchicalInit:
    """Hierarchical k-means on ``sample`` [n >= k, d].

    Coarse k-means (on ``coarse_rows`` rows per coarse centre), then each coarse cell gets centres,
    initialised there (``random``, or for ``kmeans++`` k-means++'s D^2 weighting in batched rounds,
    ``init.d2_init``, on at most 8 rows per centre) and refined by ``iters``
    Lloyd iterations on the cell's rows (n * k / k1 distances per iteration, not n * k). ``random``
    shares the centres in proportion to the cells' rows; ``kmeans++`` in proportion to their squared
    distances to the coarse centre (k-means++'s D^2 mass: a cell of duplicates gets one centre, a
    cell of many small clusters many, not its share of rows). A cell given more than ``HEAVY_CELL`` times the
    average (speech's long pauses can be one cell with an eighth of the rows and of the centres) is split by a
    small k-means of its rows into cells of about the average: the per-cell work (rows x centres) stays
    balanced. Centres left without rows (duplicates give one centre all their rows) are re-seeded on sample
    rows drawn in proportion to their squared distance (``reseed_empty``; else they stay for the passes to
    re-seed in their cell).
    """
    n = sample.shape[0]
    n_coarse = max(1, min(n_coarse, n_clusters))
    sub = sample[xp.asarray(np.sort(rng.permutation(n)[:min(n, coarse_rows * n_coarse)]))]
    coarse, _ = lloyd(xp, sub, init_centres(xp, sub, n_coarse, "random", rng), coarse_iters)
    norms = squared_norms(xp, sample)
    cell, dists = nearest_centres(xp, sample, coarse, x_norms=norms)
    average = -(-n_clusters // n_coarse)
    for split in range(3):  # a split cell's parts are rarely heavy again: two rounds of splits at most
        sizes = to_host(xp.bincount(cell, minlength=coarse.shape[0]))
        sse = to_host(xp.bincount(cell, weights=dists.astype(xp.float64), minlength=coarse.shape[0]))
        alloc = allocate(sizes, n_clusters, sse if method == "kmeans++" else None)
        heavy = np.flatnonzero(alloc > HEAVY_CELL * average)
        if not heavy.size or split == 2:
            break
        coarse = split_heavy_cells(xp, sample, coarse, cell, heavy, -(-alloc[heavy] // average), rng, coarse_iters)
        cell, dists = nearest_centres(xp, sample, coarse, x_norms=norms)  # the nearest of all: as the passes find
    n_coarse = coarse.shape[0]
    order = xp.argsort(cell * n + xp.arange(n))
    offsets = to_host(xp.searchsorted(cell[order], xp.arange(n_coarse + 1)))
    cells = np.flatnonzero(alloc)
    seeds = rng.integers(2**63, size=cells.size)  # one generator per cell: the same centres on any thread count
    starts = np.concatenate([[0], np.cumsum(alloc)]).astype(np.int64)  # cell j's centres: starts[j]:starts[j + 1]
    centres = xp.empty((n_clusters, sample.shape[1]), dtype=xp.float32)  # filled in place, cell by cell
    counts = xp.zeros(n_clusters, dtype=xp.float64)

    def fit_cell(i: int) -> None:
        j, cell_rng = cells[i], np.random.default_rng(seeds[i])
        rows = sample[order[int(offsets[j]):int(offsets[j + 1])]]
        k, pool = int(alloc[j]), rows
        if method == "kmeans++" and rows.shape[0] > 8 * k:  # k-means++ is k sequential passes: seed on 8k rows
            pool = rows[xp.asarray(np.sort(cell_rng.permutation(rows.shape[0])[:8 * k]))]
        start = d2_init(xp, pool, k, cell_rng) if method == "kmeans++" else init_centres(xp, pool, k, method, cell_rng)
        fitted, fitted_counts = lloyd(xp, rows, start, iters)
        centres[starts[j]:starts[j + 1]] = fitted
        counts[starts[j]:starts[j + 1]] = fitted_counts

    thread_map(xp, fit_cell, range(cells.size))
    coarse = coarse.astype(xp.float32)
    empty = xp.nonzero(counts == 0)[0] if reseed_empty else xp.zeros(0, dtype=xp.int64)
    if empty.size:
        _, found = assign_two_level(xp, build_tree(xp, centres, coarse), sample, 1, x_norms=norms)
        centres[empty] = sample[d2_sample(xp, found, int(empty.size), rng)]
    return HierarchicalInit(centres, counts, coarse, cell[:, None].astype(xp.int16), norms, starts)


class Refined(NamedTuple):
    centres: Any  # [k, d] float32
    counts: Any  # [k] sample rows per centre in the last iteration
    buffer: Any  # the last tree's (``CentreTree.buffer``): the next tree of these centres can reuse it


def refine(xp: Any, sample: Any, centres: Any, coarse: Any, iters: int, nprobe: int,
           spread: int = 1, cells: Any = None, norms: Any = None) -> Refined:
    """``iters`` Lloyd iterations of ``centres`` [k, d] on all of ``sample`` [n, d] with two-level
    assignment (``nprobe`` cells, centres listed in ``spread``): centres near a cell's border see the rows
    across it, which the per-cell iterations of :func:`two_level_init` cannot. ``cells``: the sample's
    nearest coarse cells when known (``HierarchicalInit.cells``, for ``nprobe`` 1); ``norms``: its rows'
    squared norms (``HierarchicalInit.norms``)."""
    counts = xp.zeros(centres.shape[0], dtype=xp.float64)
    if cells is not None and cells.shape[1] != nprobe:
        cells = None
    norms = squared_norms(xp, sample) if norms is None else norms
    buffer = None
    for _ in range(iters):
        tree = build_tree(xp, centres, coarse, spread, buffer)
        if cells is None:
            cells = coarse_cells(xp, tree, sample, nprobe)
        sums, counts, dists = sums_parallel(xp, tree, sample, nprobe, cells, norms, centres.shape[0])
        buffer = tree.buffer  # the next tree's grouped centres go where these were
        del tree
        spares = sample[farthest(xp, dists, int((counts == 0).sum()))]
        centres, _ = means_or_reseed(xp, centres, sums, counts, spares)
    return Refined(centres, counts, buffer)
