"""Mini-batch k-means written once over ``xp`` (numpy or cupy).

Distances by matrix product (``|x|^2 - 2 x.c + |c|^2``), per-centre learning rates (Sculley),
dead centres re-seeded from the current batch. Memory depends on the batch and K, never on N.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.backend import Backend


def squared_norms(xp: Any, x: Any) -> Any:
    """[n] squared L2 norms of the rows of ``x`` [n, d]."""
    return xp.einsum("ij,ij->i", x, x)


def nearest_centres(xp: Any, x: Any, centres: Any, centre_norms: Any | None = None,
                    tile_rows: int = 4096) -> tuple[Any, Any]:
    """(labels int64 [n], squared distances float32 [n]) of each row's nearest centre."""
    if centre_norms is None:
        centre_norms = squared_norms(xp, centres)
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


def init_centres(xp: Any, sample: Any, n_clusters: int, method: str, rng: Any) -> Any:
    """Initial centres [k, d] from ``sample`` [n >= k, d]: ``random`` rows or k-means++."""
    n_rows = sample.shape[0]
    if n_rows < n_clusters:
        raise ValueError(f"k-means init needs at least {n_clusters} rows, got {n_rows}")
    if method == "random":
        return sample[rng.permutation(n_rows)[:n_clusters]].copy()
    if method != "kmeans++":
        raise ValueError(f"unknown k-means init {method!r}")
    centres = xp.empty((n_clusters, sample.shape[1]), dtype=sample.dtype)
    sample_norms = squared_norms(xp, sample)

    def distances_to(row: int) -> Any:
        return xp.maximum(sample_norms - 2.0 * (sample @ sample[row]) + sample_norms[row], 0.0)

    first = int(rng.integers(n_rows))
    centres[0] = sample[first]
    closest = distances_to(first)
    for i in range(1, n_clusters):
        total = float(closest.sum())
        if total <= 0.0:  # every row coincides with a centre already: take any row
            pick = int(rng.integers(n_rows))
        else:
            threshold = float(rng.random()) * total
            pick = min(int(xp.searchsorted(xp.cumsum(closest), threshold)), n_rows - 1)
        centres[i] = sample[pick]
        closest = xp.minimum(closest, distances_to(pick))
    return centres


@dataclass
class KMeansState:
    """Centres [k, d] float32, accumulated counts [k], and per-centre last-hit step."""

    centres: Any
    counts: Any
    last_hit: Any
    step: int = 0
    reseeded: int = 0


def minibatch_step(xp: Any, state: KMeansState, batch: Any, rng: Any, dead_after: int) -> float:
    """One Sculley update with ``batch`` [b, d]; returns the batch's mean squared distance.

    Each centre moves to the running mean of every row it has ever been assigned
    (learning rate ``n_batch / count``). Centres that got no row for ``dead_after`` steps are
    re-seeded on the batch rows farthest from their centres.
    """
    labels, dists = nearest_centres(xp, batch, state.centres)
    k = state.centres.shape[0]
    hits = xp.bincount(labels, minlength=k).astype(xp.float32)
    sums = xp.zeros_like(state.centres)
    xp.add.at(sums, labels, batch)
    hit = hits > 0
    new_counts = state.counts + hits
    rate = xp.where(hit, hits / xp.maximum(new_counts, 1.0), 0.0)
    means = sums / xp.maximum(hits, 1.0)[:, None]
    state.centres += rate[:, None] * (means - state.centres)
    state.counts = new_counts
    state.step += 1
    state.last_hit = xp.where(hit, state.step, state.last_hit)

    dead = xp.nonzero(state.step - state.last_hit >= dead_after)[0]
    if dead.size:
        n_dead = min(int(dead.size), batch.shape[0])
        farthest = xp.argsort(dists)[::-1][:n_dead]
        state.centres[dead[:n_dead]] = batch[farthest]
        state.counts[dead[:n_dead]] = 1.0
        state.last_hit[dead[:n_dead]] = state.step
        state.reseeded += n_dead
    return float(dists.mean())


def fit_minibatch(backend: Backend, batches: Iterable[np.ndarray], init_sample: np.ndarray,
                  n_clusters: int, init: str = "random", seed: int = 0,
                  dead_after: int | None = None) -> KMeansState:
    """Mini-batch k-means over an iterable of host batches [b, d]; returns the final state.

    ``dead_after`` defaults to the number of steps in which every centre would expect about
    ten rows if rows were spread evenly.
    """
    xp = backend.xp
    rng = backend.rng(seed)
    sample = backend.asarray(init_sample)
    centres = init_centres(xp, sample, n_clusters, init, rng).astype(xp.float32)
    state = KMeansState(centres, xp.zeros(n_clusters, xp.float32), xp.zeros(n_clusters, xp.int64))
    for batch in batches:
        if batch.shape[0] == 0:
            continue
        window = dead_after or max(2, int(np.ceil(10.0 * n_clusters / batch.shape[0])))
        minibatch_step(xp, state, backend.asarray(batch), rng, window)
    return state


def inertia(backend: Backend, batches: Iterable[np.ndarray], centres: Any) -> float:
    """Mean squared distance of every row of ``batches`` to its nearest centre."""
    xp = backend.xp
    centres = backend.asarray(centres)
    norms = squared_norms(xp, centres)
    total, count = 0.0, 0
    for batch in batches:
        _, dists = nearest_centres(xp, backend.asarray(batch), centres, norms)
        total += float(dists.astype(xp.float64).sum())
        count += batch.shape[0]
    return total / max(count, 1)
