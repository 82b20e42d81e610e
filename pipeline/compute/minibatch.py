"""Streamed mini-batch k-means over ``xp`` (``compress.epochs`` > 0): Sculley or EMA updates and dead-centre
re-seeding, with the assigners, sums and re-seeding rule of the k-means core (``compute.lloyd``). A step reads
nothing back to the host. Memory depends on the batch and K, never on N.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rvc_index.compute.backend import Backend
from rvc_index.compute.init import d2_order
from rvc_index.compute.kernels import squared_norms
from rvc_index.compute.knn import nearest
from rvc_index.compute.lloyd import Assigner, Exact, reseed
from rvc_index.compute.segments import segment_sums
from rvc_index.compute.two_level import FixedCells, TwoLevel

DEAD_ROWS = 50  # a centre is dead when it wins nothing while an average centre wins this many rows
DEAD_SPARES = 256  # batch rows drawn per step for dead centres (at most this many re-seeded per step)


@dataclass
class KMeansState:
    """Centres [k, d] float32 and what a fit keeps beside them: Sculley weights [k] (after Lloyd passes: the
    last pass's counts), usage [k], the assigner (exact, two-level or fixed cells) and the step count."""

    centres: Any
    counts: Any  # rows behind each centre (decayed by ``decay``): the learning rate is hits / counts
    usage: Any  # rows won since the centre was (re)seeded
    assigner: Any  # compute.lloyd.Assigner: the passes after the steps use it too (its tree buffer included)
    coarse: Any | None = None  # [k1, d]: two-level or fixed-cell assignment; None: exact
    seeded_at: Any = None  # [k] step at which each centre was (re)seeded
    spent: Any = None  # [k] bool: re-seeded once already (a centre is re-seeded at most once)
    step: int = 0
    reseeded: Any = 0  # an int, or a 0-d device count (read when logged)
    rows_since_tree: int = -1  # -1: the assigner has not seen the centres yet
    msd: list[float] = field(default_factory=list)  # each Lloyd pass's mean squared distance (host)
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))  # re-seeding draws


def new_state(xp: Any, centres: Any, counts: Any | None = None, coarse: Any | None = None, seed: int = 0,
              spread: int = 1, adopt: bool = False, offsets: np.ndarray | None = None, nprobe: int = 1,
              buffer: Any = None) -> KMeansState:
    """A state starting at ``centres`` with ``counts`` rows behind them (zeros if None); ``coarse``: two-level
    assignment (``spread``, ``nprobe``; ``buffer``: an earlier tree's), in fixed cells with ``offsets``;
    ``adopt``: the state takes float32 ``centres`` as its own (the caller's fresh array: 537 MB at 175,000 x 768)."""
    k = centres.shape[0]
    counts = xp.zeros(k, dtype=xp.float64) if counts is None else counts.astype(xp.float64)
    assigner: Assigner = Exact() if coarse is None else FixedCells(xp, coarse, offsets) if offsets is not None \
        else TwoLevel(coarse, spread, nprobe, buffer)
    return KMeansState(centres.astype(xp.float32, copy=not adopt), counts, xp.zeros(k, dtype=xp.float64), assigner,
                       coarse, rng=np.random.default_rng(seed))


def minibatch_step(xp: Any, state: KMeansState, batch: Any, decay: float = 1.0, nprobe: int = 1,
                   dead_threshold: float = 1.0, dead_window: int = 0) -> Any:
    """One update with ``batch`` [b, d]; returns the batch's mean squared distance (0-d, on the device).

    Each centre moves toward the mean of its batch rows at rate ``hits / counts`` where
    ``counts = decay * counts + hits``: with ``decay = 1`` a centre is the running mean of every row
    it was given (Sculley), below 1 an EMA that forgets early rows. A centre that has won fewer
    than ``dead_threshold`` rows in the ``dead_window`` steps since it was seeded (default: the steps
    in which an average centre wins ``DEAD_ROWS``) is re-seeded on a batch row drawn in proportion
    to its squared distance (as k-means++ does; seeded by ``state.rng``), at most once per centre:
    a centre in a sparse region that wins a few rows is kept, so unbalanced data does not churn. A two-level
    tree is regrouped every ``4 k`` rows (a re-seeded centre is found in its old cell until then).
    """
    k, b = state.centres.shape[0], batch.shape[0]
    assigner = state.assigner
    if hasattr(assigner, "nprobe"):
        assigner.nprobe = nprobe
    if state.rows_since_tree < 0 or state.rows_since_tree >= 4 * k:
        assigner.prepare(xp, state.centres)
        state.rows_since_tree = 0
    else:
        assigner.refresh(xp, state.centres)
    state.rows_since_tree += b
    labels, dists = assigner.assign(xp, batch, squared_norms(xp, batch), None)
    sums, hits = segment_sums(xp, labels, batch, k)
    hits = hits.astype(xp.float64)
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
        dead = (state.usage < dead_threshold) & (state.step - state.seeded_at >= window) & ~state.spent
        if xp is not np or dead.any():  # numpy: a free look saves the draw when nothing is dead
            spares = batch[d2_order(xp, dists, state.rng)[:DEAD_SPARES]]
            fresh = reseed(xp, state.centres, dead, spares)
            state.counts = xp.where(fresh, 1.0, state.counts)
            state.usage = xp.where(fresh, 0.0, state.usage)
            state.seeded_at = xp.where(fresh, state.step, state.seeded_at)
            state.spent = state.spent | fresh
            state.reseeded = state.reseeded + fresh.sum()
    return dists.astype(xp.float64).mean()


def fit_minibatch(backend: Backend, batches: Iterable[Any], state: KMeansState, decay: float = 1.0,
                  nprobe: int = 1, dead_threshold: float = 1.0, dead_window: int = 0) -> KMeansState:
    """Run :func:`minibatch_step` over an iterable of host or device batches [b, d]."""
    for batch in batches:
        if batch.shape[0]:
            minibatch_step(backend.xp, state, backend.asarray(batch), decay, nprobe, dead_threshold, dead_window)
    return state


def inertia(backend: Backend, batches: Iterable[Any], centres: Any) -> float:
    """Mean squared distance of every row of ``batches`` to its nearest centre (exact)."""
    xp = backend.xp
    centres = backend.asarray(centres)
    half = 0.5 * squared_norms(xp, centres)
    total, count = xp.zeros((), dtype=xp.float64), 0
    for batch in batches:
        total = total + nearest(xp, backend.asarray(batch), centres, half)[1].astype(xp.float64).sum()
        count += batch.shape[0]
    return float(total) / max(count, 1)
