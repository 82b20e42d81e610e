"""Mini-batch k-means written once over ``xp`` (numpy or cupy).

Distances by matrix product (``|x|^2 - 2 x.c + |c|^2``). A row's nearest centre is found exactly
(every centre) or in two levels: the K centres are grouped under k1 ~ sqrt(K) coarse centres and a
row is compared with the centres of its ``nprobe`` nearest coarse cells only, about
``(k1 + nprobe * K / k1) / K`` of the arithmetic (2 % for K = 10,000, nprobe 1). Updates use
per-centre learning rates (Sculley) or EMA counts (``decay``); dead centres are re-seeded from the
current batch. Memory depends on the batch and K, never on N. Random choices use a host numpy
generator, so CPU and GPU runs with one seed start from the same centres.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.backend import Backend

MAX_TILE_ELEMENTS = 1 << 24  # one [rows, centres] distance tile: at most 64 MB of float32


def squared_norms(xp: Any, x: Any) -> Any:
    """[n] squared L2 norms of the rows of ``x`` [n, d]."""
    return xp.einsum("ij,ij->i", x, x)


def nearest_centres(xp: Any, x: Any, centres: Any, centre_norms: Any | None = None,
                    tile_rows: int = 0) -> tuple[Any, Any]:
    """(labels int64 [n], squared distances float32 [n]) of each row's nearest centre, exactly."""
    if centre_norms is None:
        centre_norms = squared_norms(xp, centres)
    tile_rows = tile_rows or max(1, min(8192, MAX_TILE_ELEMENTS // max(centres.shape[0], 1)))
    labels = xp.empty(x.shape[0], dtype=xp.int64)
    dists = xp.empty(x.shape[0], dtype=xp.float32)
    for start in range(0, x.shape[0], tile_rows):
        tile = x[start:start + tile_rows]
        scores = centre_norms[None, :] - 2.0 * (tile @ centres.T)  # |c|^2 - 2x.c
        best = xp.argmin(scores, axis=1)
        labels[start:start + tile.shape[0]] = best
        best_scores = xp.take_along_axis(scores, best[:, None], axis=1)[:, 0]
        dists[start:start + tile.shape[0]] = xp.maximum(best_scores + squared_norms(xp, tile), 0.0)
    return labels, dists


def host_ints(array: Any) -> np.ndarray:
    """A small device or host integer array as numpy int64 (loop bounds)."""
    return np.asarray(array.get() if hasattr(array, "get") else array, dtype=np.int64)


def segment_sums(xp: Any, labels: Any, x: Any, k: int) -> tuple[Any, Any]:
    """(sums float32 [k, d], counts float64 [k]) of the rows of ``x`` [n, d] grouped by ``labels``."""
    n = x.shape[0]
    if xp is np:  # a sparse one-hot product: about 10x faster than np.add.at
        from scipy import sparse

        onehot = sparse.csc_matrix((np.ones(n, np.float32), labels, np.arange(n + 1)), shape=(k, n))
        sums = np.asarray(onehot @ x, dtype=np.float32)
    else:
        sums = xp.zeros((k, x.shape[1]), dtype=xp.float32)
        xp.add.at(sums, labels, x)
    return sums, xp.bincount(labels, minlength=k).astype(xp.float64)


def farthest(xp: Any, dists: Any, count: int) -> Any:
    """Indices of the ``count`` largest entries of ``dists``, largest first (ties by index)."""
    order = xp.argsort(-dists.astype(xp.float64), kind="stable") if xp is np else xp.argsort(-dists)
    return order[:count]


def d2_sample(xp: Any, dists: Any, count: int, rng: np.random.Generator) -> Any:
    """``count`` distinct row indices drawn with probability proportional to ``dists`` (k-means++'s
    D^2 weighting; Efraimidis-Spirakis keys), uniformly when every distance is zero."""
    weights = np.asarray(dists.get() if hasattr(dists, "get") else dists, dtype=np.float64)
    keys = np.log(rng.random(weights.shape[0]))
    if weights.max(initial=0.0) > 0.0:
        with np.errstate(divide="ignore"):
            keys = keys / weights  # -inf where the weight is 0: drawn last
    return xp.asarray(np.argsort(-keys, kind="stable")[:count])


def init_centres(xp: Any, sample: Any, n_clusters: int, method: str, rng: np.random.Generator) -> Any:
    """Initial centres [k, d] from ``sample`` [n >= k, d]: ``random`` distinct rows or k-means++."""
    n_rows = sample.shape[0]
    if n_rows < n_clusters:
        raise ValueError(f"k-means init needs at least {n_clusters} rows, got {n_rows}")
    if method == "random":
        return sample[xp.asarray(np.sort(rng.permutation(n_rows)[:n_clusters]))].copy()
    if method != "kmeans++":
        raise ValueError(f"unknown k-means init {method!r}")
    centres = xp.empty((n_clusters, sample.shape[1]), dtype=sample.dtype)
    sample_norms = squared_norms(xp, sample)

    def distances_to(row: int) -> Any:
        return xp.maximum(sample_norms - 2.0 * (sample @ sample[row]) + sample_norms[row], 0.0)

    pick = int(rng.integers(n_rows))
    centres[0] = sample[pick]
    closest = distances_to(pick)
    for i in range(1, n_clusters):
        cumulative = xp.cumsum(closest.astype(xp.float64))
        total = float(cumulative[-1])
        if total <= 0.0:  # every row coincides with a centre already: take any row
            pick = int(rng.integers(n_rows))
        else:
            threshold = xp.asarray([float(rng.random()) * total])
            pick = min(int(xp.searchsorted(cumulative, threshold)[0]), n_rows - 1)
        centres[i] = sample[pick]
        closest = xp.minimum(closest, distances_to(pick))
    return centres


def means_or_reseed(xp: Any, centres: Any, sums: Any, counts: Any, spares: Any) -> tuple[Any, int]:
    """Centres moved to the means ``sums / counts``; empty ones take rows of ``spares`` in order.

    Returns (centres [k, d], number re-seeded). Empty centres beyond ``len(spares)`` stay put.
    """
    hit = counts > 0
    means = xp.where(hit[:, None], sums / xp.maximum(counts, 1.0)[:, None].astype(xp.float32), centres)
    empty = xp.nonzero(~hit)[0][:spares.shape[0]]
    if empty.size:
        means[empty] = spares[:empty.size]
    return means.astype(xp.float32), int(empty.size)


def lloyd(xp: Any, x: Any, centres: Any, iters: int) -> tuple[Any, Any]:
    """``iters`` exact Lloyd iterations on ``x`` [n, d]; returns (centres, counts of the last one)."""
    counts = xp.zeros(centres.shape[0], dtype=xp.float64)
    for _ in range(iters):
        labels, dists = nearest_centres(xp, x, centres)
        sums, counts = segment_sums(xp, labels, x, centres.shape[0])
        spares = x[farthest(xp, dists, int((counts == 0).sum()))]
        centres, _ = means_or_reseed(xp, centres, sums, counts, spares)
    return centres, counts


def allocate(sizes: np.ndarray, total: int) -> np.ndarray:
    """``total`` centres split over cells in proportion to their rows, at most one per row."""
    sizes = np.asarray(sizes, dtype=np.int64)
    share = sizes * (total / max(int(sizes.sum()), 1))
    alloc = np.minimum(np.floor(share).astype(np.int64), sizes)
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
    offsets = host_ints(xp.searchsorted(cell[ids], xp.arange(k1 + 1)))
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
    bounds = host_ints(xp.searchsorted(cells[order], xp.arange(k1 + 1)))
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

    Coarse k-means (on at most 256 rows per coarse centre), then each coarse cell gets centres in
    proportion to its rows, initialised there (``random``, or k-means++ on at most 8 rows per centre)
    and refined by ``iters``
    Lloyd iterations on the cell's rows. Arithmetic per iteration: n * k / k1 distances, not n * k.
    """
    n = sample.shape[0]
    n_coarse = max(1, min(n_coarse, n_clusters))
    sub = sample[xp.asarray(np.sort(rng.permutation(n)[:min(n, 256 * n_coarse)]))]
    coarse, _ = lloyd(xp, sub, init_centres(xp, sub, n_coarse, "random", rng), coarse_iters)
    cell, _ = nearest_centres(xp, sample, coarse)
    order = xp.argsort(cell * n + xp.arange(n))
    offsets = host_ints(xp.searchsorted(cell[order], xp.arange(n_coarse + 1)))
    alloc = allocate(np.diff(offsets), n_clusters)
    pieces, counts = [], []
    for j in np.flatnonzero(alloc):
        rows = sample[order[int(offsets[j]):int(offsets[j + 1])]]
        k, pool = int(alloc[j]), rows
        if method == "kmeans++" and rows.shape[0] > 8 * k:  # k-means++ is k sequential passes: seed on 8k rows
            pool = rows[xp.asarray(np.sort(rng.permutation(rows.shape[0])[:8 * k]))]
        centres, cell_counts = lloyd(xp, rows, init_centres(xp, pool, k, method, rng), iters)
        pieces.append(centres)
        counts.append(cell_counts)
    return xp.concatenate(pieces).astype(xp.float32), xp.concatenate(counts), coarse.astype(xp.float32)


@dataclass
class KMeansState:
    """Centres [k, d] float32, Sculley weights [k], usage EMA [k], optional coarse centres."""

    centres: Any
    counts: Any  # rows behind each centre (decayed by ``decay``): the learning rate is hits / counts
    usage: Any  # EMA of rows per step over the dead-centre window
    coarse: Any | None = None  # [k1, d]: two-level assignment; None: exact
    step: int = 0
    reseeded: int = 0
    tree: CentreTree | None = None  # cell membership, rebuilt every ``4 k`` rows and after re-seeding
    rows_since_tree: int = 0
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))  # re-seeding draws

    def current_tree(self, xp: Any) -> CentreTree | None:
        """The two-level grouping with the centres' current positions (None when exact)."""
        if self.coarse is None:
            return None
        if self.tree is None or self.rows_since_tree >= 4 * self.centres.shape[0]:
            self.tree, self.rows_since_tree = build_tree(xp, self.centres, self.coarse), 0
        else:
            self.tree.centres = self.centres[self.tree.ids]
            self.tree.norms = squared_norms(xp, self.tree.centres)
        return self.tree

    def assign(self, xp: Any, x: Any, nprobe: int = 1) -> tuple[Any, Any]:
        """(labels [n], squared distances [n]) of the rows of ``x`` with the current centres."""
        tree = self.current_tree(xp)
        self.rows_since_tree += x.shape[0]
        if tree is None:
            return nearest_centres(xp, x, self.centres)
        return assign_two_level(xp, tree, x, nprobe)


def minibatch_step(xp: Any, state: KMeansState, batch: Any, decay: float = 1.0, nprobe: int = 1,
                   dead_threshold: float = 1.0, dead_window: int = 0) -> float:
    """One update with ``batch`` [b, d]; returns the batch's mean squared distance.

    Each centre moves toward the mean of its batch rows at rate ``hits / counts`` where
    ``counts = decay * counts + hits``: with ``decay = 1`` a centre is the running mean of every row
    it was given (Sculley), below 1 an EMA that forgets early rows. Centres whose usage (an EMA of
    hits over ``dead_window`` steps, in which an average centre expects 20 rows) falls below
    ``dead_threshold`` rows are re-seeded on batch rows drawn in proportion to their squared
    distance (as k-means++ and sklearn's reassignment do; seeded by ``state.rng``).
    """
    k, b = state.centres.shape[0], batch.shape[0]
    labels, dists = state.assign(xp, batch, nprobe)
    sums, hits = segment_sums(xp, labels, batch, k)
    state.counts = decay * state.counts + hits
    rate = (1.0 / xp.maximum(state.counts, 1e-30)).astype(xp.float32)
    state.centres += rate[:, None] * (sums - hits.astype(xp.float32)[:, None] * state.centres)
    window = dead_window or max(1, int(np.ceil(20.0 * k / b)))
    state.usage = state.usage * (1.0 - 1.0 / window) + hits
    state.step += 1
    if dead_threshold > 0:
        dead = xp.nonzero(state.usage < dead_threshold)[0][:b]
        if dead.size:
            state.centres[dead] = batch[d2_sample(xp, dists, int(dead.size), state.rng)]
            state.counts[dead] = 1.0
            state.usage[dead] = window * b / k  # a grace period: what an average centre gets
            state.reseeded += int(dead.size)
            state.tree = None
    return float(dists.mean())


def new_state(xp: Any, centres: Any, counts: Any | None = None, coarse: Any | None = None,
              usage: float = 20.0, seed: int = 0) -> KMeansState:
    """A state starting at ``centres`` with ``counts`` rows behind them (zeros if None)."""
    k = centres.shape[0]
    counts = xp.zeros(k, dtype=xp.float64) if counts is None else counts.astype(xp.float64)
    return KMeansState(centres.astype(xp.float32), counts, xp.full(k, usage, dtype=xp.float64), coarse,
                       rng=np.random.default_rng(seed))


def fit_minibatch(backend: Backend, batches: Iterable[Any], state: KMeansState, decay: float = 1.0,
                  nprobe: int = 1, dead_threshold: float = 1.0, dead_window: int = 0) -> KMeansState:
    """Run :func:`minibatch_step` over an iterable of host or device batches [b, d]."""
    for batch in batches:
        if batch.shape[0]:
            minibatch_step(backend.xp, state, backend.asarray(batch), decay, nprobe, dead_threshold, dead_window)
    return state


@dataclass
class PassStats:
    """Per-centre sums [k, d] and counts [k] of (part of) a pass, its SSE, and its farthest rows."""

    sums: Any
    counts: Any
    sse: float
    rows: int
    far_rows: Any  # [<= n_far, d], farthest first: spares for centres that got no row
    far_dists: Any


def pass_stats(xp: Any, centres: Any, tree: CentreTree | None, batch: Any, nprobe: int = 1,
               n_far: int = 64) -> PassStats:
    """Assign ``batch`` [b, d] (two-level with ``tree``, else exactly) and sum it per centre."""
    if tree is None:
        labels, dists = nearest_centres(xp, batch, centres)
    else:
        labels, dists = assign_two_level(xp, tree, batch, nprobe)
    sums, counts = segment_sums(xp, labels, batch, centres.shape[0])
    far = farthest(xp, dists, min(n_far, batch.shape[0]))
    return PassStats(sums, counts, float(dists.astype(xp.float64).sum()), int(batch.shape[0]),
                     batch[far].copy(), dists[far])


def merge_stats(xp: Any, a: PassStats | None, b: PassStats) -> PassStats:
    """The stats of two disjoint parts of a pass together (``a`` may be None)."""
    if a is None:
        return b
    far_rows = xp.concatenate([a.far_rows, b.far_rows])
    far_dists = xp.concatenate([a.far_dists, b.far_dists])
    keep = farthest(xp, far_dists, max(a.far_rows.shape[0], b.far_rows.shape[0]))
    return PassStats(a.sums + b.sums, a.counts + b.counts, a.sse + b.sse, a.rows + b.rows,
                     far_rows[keep], far_dists[keep])


def apply_pass(xp: Any, state: KMeansState, stats: PassStats) -> int:
    """Move every centre to the mean of its rows in the pass (Lloyd); empty ones take the farthest
    rows. Returns the number re-seeded."""
    state.centres, reseeded = means_or_reseed(xp, state.centres, stats.sums, stats.counts, stats.far_rows)
    state.counts = stats.counts
    state.reseeded += reseeded
    state.tree = None
    return reseeded


def inertia(backend: Backend, batches: Iterable[np.ndarray], centres: Any) -> float:
    """Mean squared distance of every row of ``batches`` to its nearest centre (exact)."""
    xp = backend.xp
    centres = backend.asarray(centres)
    norms = squared_norms(xp, centres)
    total, count = 0.0, 0
    for batch in batches:
        _, dists = nearest_centres(xp, backend.asarray(batch), centres, norms)
        total += float(dists.astype(xp.float64).sum())
        count += batch.shape[0]
    return total / max(count, 1)
