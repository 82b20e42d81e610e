"""Two-level assignment (the CPU's assigners of the k-means core): K centres grouped under k1 ~ 2 sqrt(K)
coarse centres (over ``xp``).

Each centre is listed in its ``spread`` nearest coarse cells, and a row is compared with the centres
listed in its ``nprobe`` nearest cells only, about ``(k1 + nprobe * spread * K / k1) / K`` of the
arithmetic of an exact search (4 % for K = 10,000, k1 = 200, spread 4, nprobe 1; the coarse part
once per row, its cells kept between passes: ``TwoLevel``). ``FixedCells``: each centre stays in the cell
it was initialised in (hierarchical k-means, the large-K route). A Python loop runs over the cells a chunk's
rows fall in: a CPU design (``stages.compress`` plans exact assignment on a device).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from rvc_index.compute.backend import to_host
from rvc_index.compute.kernels import squared_norms
from rvc_index.compute.knn import MIN_QUERY_ROWS, distance_tile_rows, top_k


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
    _close_empty_cells(xp, coarse_norms, offsets)
    if buffer is None:
        buffer = xp.empty((k * spread, centres.shape[1]), dtype=centres.dtype)  # room for any later listing
    grouped, buffer = gather_rows(xp, centres, ids, buffer)
    return CentreTree(coarse, coarse_norms, grouped, squared_norms(xp, centres)[ids], ids, offsets, buffer)


def _close_empty_cells(xp: Any, coarse_norms: Any, offsets: np.ndarray) -> None:
    empty = np.flatnonzero(np.diff(offsets) == 0)
    if empty.size:
        coarse_norms[xp.asarray(empty)] = xp.inf


def fixed_tree(xp: Any, centres: Any, coarse: Any, offsets: np.ndarray) -> CentreTree:
    """The tree of centres [k, d] already sorted by cell (cell j's are ``centres[offsets[j]:offsets[j + 1]]``,
    as ``hierarchy.two_level_init`` makes them): it views ``centres`` (no grouped copy: at k = 175,000 x 768
    one copy is 537 MB), so a row meets the centres of its own cell only."""
    coarse_norms = squared_norms(xp, coarse)
    _close_empty_cells(xp, coarse_norms, offsets)
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
    1-NN search (``knn.top_k``): one gathered copy of every row would be ``nprobe`` times the chunk,
    allocated afresh (its page faults cost more than the arithmetic on a CPU).
    """
    n, k1 = x.shape[0], tree.coarse.shape[0]
    if cells is None:
        cells = coarse_cells(xp, tree, x, nprobe)
    probes = cells.shape[1]
    flat = cells.ravel().astype(xp.int64)
    order = xp.argsort(flat * (n * probes) + xp.arange(n * probes))  # (row, probe) pairs by cell
    bounds = to_host(xp.searchsorted(flat[order], xp.arange(k1 + 1)))
    rows = order // probes
    found_d = xp.full(n * probes, -xp.inf, dtype=xp.float32)  # a cell that has lost its centres finds nothing
    found_l = xp.zeros(n * probes, dtype=xp.int64)
    bias = -0.5 * tree.norms
    for j in np.flatnonzero(np.diff(bounds) * (np.diff(tree.offsets) > 0)):
        a, b = int(bounds[j]), int(bounds[j + 1])
        lo, hi = int(tree.offsets[j]), int(tree.offsets[j + 1])
        best, column = top_k(xp, x[rows[a:b]], tree.centres[lo:hi], 1, 4 * MIN_QUERY_ROWS * (hi - lo), bias[lo:hi])
        found_d[order[a:b]] = best[:, 0]  # x.c - |c|^2 / 2: larger is nearer
        found_l[order[a:b]] = column[:, 0] + lo
    found_d, found_l = found_d.reshape(n, probes), found_l.reshape(n, probes)
    pick = xp.argmax(found_d, axis=1)[:, None]
    best_d = xp.take_along_axis(found_d, pick, axis=1)[:, 0]
    labels = tree.ids[xp.take_along_axis(found_l, pick, axis=1)[:, 0]]
    lost = xp.nonzero(xp.isinf(best_d))[0]  # only with stale ``cells``: search those rows afresh
    if lost.size:
        labels[lost], again = assign_two_level(xp, tree, x[lost], probes)
        best_d[lost] = -0.5 * (again - squared_norms(xp, x[lost]))
    dists = xp.maximum((squared_norms(xp, x) if x_norms is None else x_norms) - 2.0 * best_d, 0.0)
    return labels, dists.astype(xp.float32)


class TwoLevel:
    """The two-level assigner: a tree rebuilt each pass (in the last tree's buffer), each row searching the
    centres listed in its ``nprobe`` nearest coarse cells (``coarse_cells``, which a row source keeps)."""

    centre_cells = None
    n_cells = 1

    def __init__(self, coarse: Any, spread: int = 1, nprobe: int = 1, buffer: Any = None) -> None:
        self.coarse, self.spread, self.nprobe, self.buffer = coarse, spread, nprobe, buffer
        self.tree: CentreTree | None = None
        self.centres: Any = None

    def prepare(self, xp: Any, centres: Any) -> None:
        self.tree = None  # its buffer is free for the new tree
        self.tree = build_tree(xp, centres, self.coarse, self.spread, self.buffer)
        self.buffer, self.centres = self.tree.buffer, centres

    def refresh(self, xp: Any, centres: Any) -> None:
        """The centres moved (a mini-batch step): the same listing, their new positions and norms."""
        self.tree.centres, self.tree.buffer = gather_rows(xp, centres, self.tree.ids, self.tree.buffer)
        self.tree.norms = squared_norms(xp, centres)[self.tree.ids]
        self.centres = centres

    def cells(self, xp: Any, rows: Any) -> Any:
        return coarse_cells(xp, self.tree, rows, self.nprobe)

    def assign(self, xp: Any, rows: Any, norms: Any, cells: Any) -> tuple[Any, Any]:
        return assign_two_level(xp, self.tree, rows, self.nprobe, cells, norms)


class FixedCells:
    """The fixed-cell assigner: centres sorted by the cell they were initialised in (``offsets``, host
    [k1 + 1]), each row searching its own cell's; the tree views the centres, whose update is in place, and a
    centre left empty takes a far row of its own cell (``centre_cells``)."""

    def __init__(self, xp: Any, coarse: Any, offsets: np.ndarray) -> None:
        self.coarse, self.offsets = coarse, np.asarray(offsets, np.int64)
        self.n_cells = len(self.offsets) - 1
        self.centre_cells = xp.asarray(np.repeat(np.arange(self.n_cells), np.diff(self.offsets)).astype(np.int64))
        self.tree: CentreTree | None = None
        self.centres: Any = None

    def prepare(self, xp: Any, centres: Any) -> None:
        if self.tree is None or self.tree.centres is not centres:
            self.tree = fixed_tree(xp, centres, self.coarse, self.offsets)
        else:  # moved in place: only the norms are new
            self.tree.norms = squared_norms(xp, centres)
        self.centres = centres

    refresh = prepare

    def cells(self, xp: Any, rows: Any) -> Any:
        return coarse_cells(xp, self.tree, rows, 1)

    def assign(self, xp: Any, rows: Any, norms: Any, cells: Any) -> tuple[Any, Any]:
        return assign_two_level(xp, self.tree, rows, 1, cells, norms)
