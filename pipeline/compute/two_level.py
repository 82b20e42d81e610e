"""Two-level k-means: K centres grouped under k1 ~ sqrt(K) coarse centres (over ``xp``).

A row is compared with the centres of its ``nprobe`` nearest coarse cells only, about
``(k1 + nprobe * K / k1) / K`` of the arithmetic of an exact search (2 % for K = 10,000,
nprobe 1). The same grouping gives a hierarchical init: coarse k-means, then centres per cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from rvc_index.compute.backend import to_host
from rvc_index.compute.kmeans import (
    d2_sample,
    farthest,
    init_centres,
    lloyd,
    means_or_reseed,
    nearest_centres,
    segment_sums,
    squared_norms,
)


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
    caller's order. Cells without centres get an infinite coarse norm so no row probes them.
    """

    coarse: Any  # [k1, d]
    coarse_norms: Any  # [k1]
    centres: Any  # [k, d], sorted by cell
    norms: Any  # [k]
    ids: Any  # [k] int64
    offsets: np.ndarray  # host [k1 + 1]


def build_tree(xp: Any, centres: Any, coarse: Any) -> CentreTree:
    """Group ``centres`` [k, d] under their nearest of ``coarse`` [k1, d] (k * k1 distances)."""
    k, k1 = centres.shape[0], coarse.shape[0]
    cell, _ = nearest_centres(xp, centres, coarse)
    ids = xp.argsort(cell * k + xp.arange(k))  # by cell, then by id: deterministic on any device
    offsets = to_host(xp.searchsorted(cell[ids], xp.arange(k1 + 1)))
    coarse_norms = squared_norms(xp, coarse)
    empty = np.flatnonzero(np.diff(offsets) == 0)
    if empty.size:
        coarse_norms[xp.asarray(empty)] = xp.inf
    grouped = centres[ids]
    return CentreTree(coarse, coarse_norms, grouped, squared_norms(xp, grouped), ids, offsets)


def assign_two_level(xp: Any, tree: CentreTree, x: Any, nprobe: int = 1) -> tuple[Any, Any]:
    """(labels int64 [n] in the caller's order, squared distances float32 [n]): the nearest
    centre among those of each row's ``nprobe`` nearest coarse cells."""
    n, k1 = x.shape[0], tree.coarse.shape[0]
    probes = max(1, min(nprobe, int((np.diff(tree.offsets) > 0).sum())))
    coarse_scores = tree.coarse_norms[None, :] - 2.0 * (x @ tree.coarse.T)
    if probes == 1:
        cells = xp.argmin(coarse_scores, axis=1)
    else:
        cells = xp.argpartition(coarse_scores, probes - 1, axis=1)[:, :probes].ravel()
    order = xp.argsort(cells * (n * probes) + xp.arange(n * probes))  # (row, probe) pairs by cell
    bounds = to_host(xp.searchsorted(cells[order], xp.arange(k1 + 1)))
    rows = order // probes
    found_d = xp.empty(n * probes, dtype=xp.float32)
    found_l = xp.empty(n * probes, dtype=xp.int64)
    for j in np.flatnonzero(np.diff(bounds)):
        a, b = int(bounds[j]), int(bounds[j + 1])
        lo, hi = int(tree.offsets[j]), int(tree.offsets[j + 1])
        labels, dists = nearest_centres(xp, x[rows[a:b]], tree.centres[lo:hi], tree.norms[lo:hi])
        found_d[order[a:b]] = dists
        found_l[order[a:b]] = labels + lo
    found_d, found_l = found_d.reshape(n, probes), found_l.reshape(n, probes)
    pick = xp.argmin(found_d, axis=1)[:, None]
    best = xp.take_along_axis(found_l, pick, axis=1)[:, 0]
    return tree.ids[best], xp.take_along_axis(found_d, pick, axis=1)[:, 0]


def two_level_init(xp: Any, sample: Any, n_clusters: int, n_coarse: int, method: str,
                   rng: np.random.Generator, iters: int, coarse_iters: int = 10) -> tuple[Any, Any, Any]:
    """Hierarchical k-means on ``sample`` [n >= k, d]: (centres [k, d], counts [k], coarse [k1, d]).

    Coarse k-means (on at most 256 rows per coarse centre), then each coarse cell gets centres,
    initialised there (``random``, or k-means++ on at most 8 rows per centre) and refined by ``iters``
    Lloyd iterations on the cell's rows (n * k / k1 distances per iteration, not n * k). ``random``
    shares the centres in proportion to the cells' rows; ``kmeans++`` in proportion to their squared
    distances to the coarse centre (k-means++'s D^2 mass: a cell of duplicates gets one centre, a
    cell of many small clusters many, not its share of rows). Centres left without rows (duplicates
    give one centre all their rows) are re-seeded on sample rows drawn in proportion to their squared
    distance.
    """
    n = sample.shape[0]
    n_coarse = max(1, min(n_coarse, n_clusters))
    sub = sample[xp.asarray(np.sort(rng.permutation(n)[:min(n, 256 * n_coarse)]))]
    coarse, _ = lloyd(xp, sub, init_centres(xp, sub, n_coarse, "random", rng), coarse_iters)
    cell, dists = nearest_centres(xp, sample, coarse)
    order = xp.argsort(cell * n + xp.arange(n))
    offsets = to_host(xp.searchsorted(cell[order], xp.arange(n_coarse + 1)))
    sse = to_host(xp.bincount(cell, weights=dists.astype(xp.float64), minlength=n_coarse))
    alloc = allocate(np.diff(offsets), n_clusters, sse if method == "kmeans++" else None)
    pieces, counts = [], []
    for j in np.flatnonzero(alloc):
        rows = sample[order[int(offsets[j]):int(offsets[j + 1])]]
        k, pool = int(alloc[j]), rows
        if method == "kmeans++" and rows.shape[0] > 8 * k:  # k-means++ is k sequential passes: seed on 8k rows
            pool = rows[xp.asarray(np.sort(rng.permutation(rows.shape[0])[:8 * k]))]
        centres, cell_counts = lloyd(xp, rows, init_centres(xp, pool, k, method, rng), iters)
        pieces.append(centres)
        counts.append(cell_counts)
    centres, counts = xp.concatenate(pieces).astype(xp.float32), xp.concatenate(counts)
    coarse = coarse.astype(xp.float32)
    empty = xp.nonzero(counts == 0)[0]
    if empty.size:
        _, found = assign_two_level(xp, build_tree(xp, centres, coarse), sample, 1)
        centres[empty] = sample[d2_sample(xp, found, int(empty.size), rng)]
    return centres, counts, coarse


def refine(xp: Any, sample: Any, centres: Any, coarse: Any, iters: int, nprobe: int) -> tuple[Any, Any]:
    """``iters`` Lloyd iterations of ``centres`` [k, d] on all of ``sample`` [n, d] with two-level
    assignment (``nprobe`` cells): centres near a cell's border see the rows across it, which the
    per-cell iterations of :func:`two_level_init` cannot. Returns (centres, counts of the last one)."""
    counts = xp.zeros(centres.shape[0], dtype=xp.float64)
    for _ in range(iters):
        labels, dists = assign_two_level(xp, build_tree(xp, centres, coarse), sample, nprobe)
        sums, counts = segment_sums(xp, labels, sample, centres.shape[0])
        spares = sample[farthest(xp, dists, int((counts == 0).sum()))]
        centres, _ = means_or_reseed(xp, centres, sums, counts, spares)
    return centres, counts
