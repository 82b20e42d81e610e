"""Streamed mini-batch k-means over ``xp``: Sculley or EMA updates, dead-centre re-seeding, and
Lloyd passes assembled from per-part sums. Memory depends on the batch and K, never on N.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rvc_index.compute.backend import Backend, to_host
from rvc_index.compute.kmeans import d2_sample, farthest, means_or_reseed, nearest_centres, segment_sums, squared_norms
from rvc_index.compute.two_level import CentreTree, assign_two_level, build_tree, fixed_tree, gather_rows


@dataclass
class KMeansState:
    """Centres [k, d] float32, Sculley weights [k], usage EMA [k], optional coarse centres."""

    centres: Any
    counts: Any  # rows behind each centre (decayed by ``decay``): the learning rate is hits / counts
    usage: Any  # rows won since the centre was (re)seeded
    coarse: Any | None = None  # [k1, d]: two-level assignment; None: exact
    seeded_at: Any = None  # [k] step at which each centre was (re)seeded
    spent: Any = None  # [k] bool: re-seeded once already (a centre is re-seeded at most once)
    step: int = 0
    reseeded: int = 0
    tree: CentreTree | None = None  # cell membership, rebuilt every ``4 k`` rows and after re-seeding
    rows_since_tree: int = 0
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))  # re-seeding draws
    spread: int = 1  # coarse cells each centre is listed in (two_level.build_tree)
    tree_buffer: Any = None  # a dropped tree's buffer, for the next one's grouped centres
    offsets: np.ndarray | None = None  # host [k1 + 1]: fixed cells (the centres sorted by cell), or None: by nearness

    def current_tree(self, xp: Any) -> CentreTree | None:
        """The two-level grouping with the centres' current positions (None when exact)."""
        if self.coarse is None:
            return None
        if self.offsets is not None:  # fixed cells: the tree views the centres (no grouped copy), norms refreshed
            if self.tree is None:
                self.tree = fixed_tree(xp, self.centres, self.coarse, self.offsets)
            else:
                self.tree.centres, self.tree.norms = self.centres, squared_norms(xp, self.centres)
            return self.tree
        if self.tree is None or self.rows_since_tree >= 4 * self.centres.shape[0]:
            buffer = self.tree.buffer if self.tree is not None else self.tree_buffer
            self.tree, self.rows_since_tree = build_tree(xp, self.centres, self.coarse, self.spread, buffer), 0
            self.tree_buffer = None
        else:
            self.tree.centres, self.tree.buffer = gather_rows(xp, self.centres, self.tree.ids, self.tree.buffer)
            self.tree.norms = squared_norms(xp, self.centres)[self.tree.ids]
        return self.tree

    def drop_tree(self) -> None:
        """The centres moved or were re-seeded: the next :meth:`current_tree` regroups them (in the same buffer)."""
        if self.tree is not None:
            self.tree_buffer, self.tree = self.tree.buffer, None

    def assign(self, xp: Any, x: Any, nprobe: int = 1) -> tuple[Any, Any]:
        """(labels [n], squared distances [n]) of the rows of ``x`` with the current centres."""
        tree = self.current_tree(xp)
        self.rows_since_tree += x.shape[0]
        if tree is None:
            return nearest_centres(xp, x, self.centres)
        return assign_two_level(xp, tree, x, nprobe)


DEAD_ROWS = 50  # a centre is dead when it wins nothing while an average centre wins this many rows


def minibatch_step(xp: Any, state: KMeansState, batch: Any, decay: float = 1.0, nprobe: int = 1,
                   dead_threshold: float = 1.0, dead_window: int = 0) -> float:
    """One update with ``batch`` [b, d]; returns the batch's mean squared distance.

    Each centre moves toward the mean of its batch rows at rate ``hits / counts`` where
    ``counts = decay * counts + hits``: with ``decay = 1`` a centre is the running mean of every row
    it was given (Sculley), below 1 an EMA that forgets early rows. A centre that has won fewer
    than ``dead_threshold`` rows in the ``dead_window`` steps since it was seeded (default: the steps
    in which an average centre wins ``DEAD_ROWS``) is re-seeded on a batch row drawn in proportion
    to its squared distance (as k-means++ does; seeded by ``state.rng``), at most once per centre:
    a centre in a sparse region that wins a few rows is kept, so unbalanced data does not churn.
    """
    k, b = state.centres.shape[0], batch.shape[0]
    labels, dists = state.assign(xp, batch, nprobe)
    sums, hits = segment_sums(xp, labels, batch, k)
    state.counts = decay * state.counts + hits
    rate = (1.0 / xp.maximum(state.counts, 1e-30)).astype(xp.float32)
    state.centres += rate[:, None] * (sums - hits.astype(xp.float32)[:, None] * state.centres)
    window = dead_window or max(1, int(np.ceil(DEAD_ROWS * k / b)))
    state.usage = state.usage + hits
    state.step += 1
    if dead_threshold > 0:
        if state.seeded_at is None:
            state.seeded_at = xp.zeros(k, dtype=xp.int64)
            state.spent = xp.zeros(k, dtype=bool)
        dead = xp.nonzero((state.usage < dead_threshold) & (state.step - state.seeded_at >= window)
                          & ~state.spent)[0][:b]
        if dead.size:
            state.centres[dead] = batch[d2_sample(xp, dists, int(dead.size), state.rng)]
            state.counts[dead] = 1.0
            state.usage[dead] = 0.0
            state.seeded_at[dead] = state.step
            state.spent[dead] = True
            state.reseeded += int(dead.size)
            state.drop_tree()
    return float(dists.mean())


def new_state(xp: Any, centres: Any, counts: Any | None = None, coarse: Any | None = None,
              seed: int = 0, spread: int = 1, adopt: bool = False) -> KMeansState:
    """A state starting at ``centres`` with ``counts`` rows behind them (zeros if None); ``adopt``: the state
    takes float32 ``centres`` as its own (the caller's fresh array, not a copy: 537 MB at 175,000 x 768)."""
    k = centres.shape[0]
    counts = xp.zeros(k, dtype=xp.float64) if counts is None else counts.astype(xp.float64)
    return KMeansState(centres.astype(xp.float32, copy=not adopt), counts, xp.zeros(k, dtype=xp.float64), coarse,
                       rng=np.random.default_rng(seed), spread=spread)


def fit_minibatch(backend: Backend, batches: Iterable[Any], state: KMeansState, decay: float = 1.0,
                  nprobe: int = 1, dead_threshold: float = 1.0, dead_window: int = 0) -> KMeansState:
    """Run :func:`minibatch_step` over an iterable of host or device batches [b, d]."""
    for batch in batches:
        if batch.shape[0]:
            minibatch_step(backend.xp, state, backend.asarray(batch), decay, nprobe, dead_threshold, dead_window)
    return state


@dataclass
class PassStats:
    """Per-centre sums and counts [k] of (part of) a pass, its SSE, and its farthest rows.

    ``sums`` is [k, d], or, for a part with far fewer rows than centres, [u, d] for the centres ``ids`` [u]
    only (a chunk of 40,000 rows against 175,000 centres need not carry a [175,000, d] array)."""

    sums: Any
    counts: Any
    sse: float
    rows: int
    far_rows: Any  # [<= n_far, d], farthest first: spares for centres that got no row
    far_dists: Any
    ids: Any = None  # [u] the centres of ``sums``' rows; None: ``sums`` covers every centre
    far_cells: Any = None  # [<= n_far] each far row's coarse cell (fixed cells: a spare stays in its cell)

    def dense_sums(self, xp: Any) -> Any:
        """[k, d] sums of every centre (the sparse rows scattered into zeros)."""
        if self.ids is None:
            return self.sums
        dense = xp.zeros((self.counts.shape[0], self.sums.shape[1]), dtype=self.sums.dtype)
        dense[self.ids] = self.sums
        return dense


SPARSE_RATIO = 2  # a part sums sparsely when the centres outnumber its rows this many times


def pass_stats(xp: Any, centres: Any, tree: CentreTree | None, batch: Any, nprobe: int = 1,
               n_far: int = 64, cells: Any = None, norms: Any = None) -> PassStats:
    """Assign ``batch`` [b, d] (two-level with ``tree``, searching ``cells`` when given; else exactly)
    and sum it per centre (``norms`` [b]: its rows' squared norms, when known)."""
    k = centres.shape[0]
    if tree is None:
        labels, dists = nearest_centres(xp, batch, centres, x_norms=norms)
    else:
        labels, dists = assign_two_level(xp, tree, batch, nprobe, cells, norms)
    counts = xp.bincount(labels, minlength=k).astype(xp.float64)
    ids = None
    if k > SPARSE_RATIO * batch.shape[0]:
        ids = xp.unique(labels)
        sums, _ = segment_sums(xp, xp.searchsorted(ids, labels), batch, int(ids.shape[0]))
    else:
        sums, _ = segment_sums(xp, labels, batch, k)
    far = farthest(xp, dists, min(n_far, batch.shape[0]))
    far_cells = cells[far, 0].astype(xp.int64) if cells is not None and tree is not None else None
    return PassStats(sums, counts, float(dists.astype(xp.float64).sum()), int(batch.shape[0]),
                     batch[far].copy(), dists[far], ids, far_cells)


def merge_stats(xp: Any, a: PassStats | None, b: PassStats) -> PassStats:
    """The stats of two disjoint parts of a pass together (``a`` may be None; its sums are added to, and
    become dense: the running total of a pass is one [k, d] array)."""
    if a is None:
        return dataclasses.replace(b, sums=b.dense_sums(xp).copy() if b.ids is not None else b.sums, ids=None)
    far_rows = xp.concatenate([a.far_rows, b.far_rows])
    far_dists = xp.concatenate([a.far_dists, b.far_dists])
    far_cells = xp.concatenate([a.far_cells, b.far_cells]) if a.far_cells is not None and b.far_cells is not None \
        else None
    keep = farthest(xp, far_dists, max(a.far_rows.shape[0], b.far_rows.shape[0]))
    if b.ids is None:
        a.sums += b.sums  # in place: a pass's running total is its own array
    else:
        a.sums[b.ids] += b.sums  # ids are unique: no repeated index to lose
    a.counts += b.counts
    return PassStats(a.sums, a.counts, a.sse + b.sse, a.rows + b.rows, far_rows[keep], far_dists[keep],
                     None, None if far_cells is None else far_cells[keep])


def apply_pass(xp: Any, state: KMeansState, stats: PassStats) -> int:
    """Move every centre to the mean of its rows in the pass (Lloyd); empty ones take the farthest
    rows (with fixed cells: the farthest rows of their own cell, updated in place). Returns the number
    re-seeded."""
    sums = stats.dense_sums(xp)
    if state.offsets is not None:
        reseeded = update_in_cells(xp, state.centres, sums, stats.counts, state.offsets, stats.far_rows,
                                   stats.far_cells)
    else:
        state.centres, reseeded = means_or_reseed(xp, state.centres, sums, stats.counts, stats.far_rows)
        state.drop_tree()
    state.counts = stats.counts
    state.reseeded += reseeded
    return reseeded


def update_in_cells(xp: Any, centres: Any, sums: Any, counts: Any, offsets: np.ndarray, far_rows: Any,
                    far_cells: Any) -> int:
    """Lloyd's update of ``centres`` [k, d] in place (``sums`` [k, d] is overwritten by the means: no second
    [k, d] array), each empty centre re-seeded on a far row of its own cell (``far_cells``), farthest first."""
    sums /= xp.maximum(counts, 1.0).astype(sums.dtype)[:, None]
    xp.copyto(centres, sums, where=(counts > 0)[:, None])
    if far_cells is None or not far_rows.shape[0]:
        return 0
    empty = to_host(xp.nonzero(counts == 0)[0])
    if not empty.size:
        return 0
    cell_of = np.searchsorted(offsets, empty, side="right") - 1  # offsets are host-side: a small host loop
    free: dict[int, list[int]] = {}
    for centre, cell in zip(empty.tolist(), cell_of.tolist()):
        free.setdefault(cell, []).append(centre)
    taken = [(row, free[cell].pop()) for row, cell in enumerate(to_host(far_cells).tolist()) if free.get(cell)]
    if taken:
        rows, targets = (xp.asarray(np.array(column, np.int64)) for column in zip(*taken))
        centres[targets] = far_rows[rows]
    return len(taken)


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
