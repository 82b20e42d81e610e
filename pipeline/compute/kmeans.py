"""k-means primitives written once over ``xp`` (numpy or cupy): distances, sums, init, Lloyd.

Distances by matrix product (``|x|^2 - 2 x.c + |c|^2``), exact over every centre; the two-level
assignment is ``rvc_index.compute.two_level``, the streamed mini-batch updates ``rvc_index.compute.minibatch``.
Random choices use a host numpy generator, so CPU and GPU runs with one seed start from the same
centres.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from rvc_index.compute.backend import to_host

MAX_TILE_ELEMENTS = 1 << 24  # one [rows, centres] distance tile: at most 64 MB of float32


def distance_tile_rows(n_centres: int) -> int:
    """Rows per [rows, centres] distance tile: at most 8192 rows and ``MAX_TILE_ELEMENTS`` elements."""
    return max(1, min(8192, MAX_TILE_ELEMENTS // max(n_centres, 1)))


def squared_norms(xp: Any, x: Any) -> Any:
    """[n] squared L2 norms of the rows of ``x`` [n, d]."""
    return xp.einsum("ij,ij->i", x, x)


def nearest_centres(xp: Any, x: Any, centres: Any, centre_norms: Any | None = None,
                    tile_rows: int = 0, x_norms: Any | None = None) -> tuple[Any, Any]:
    """(labels int64 [n], squared distances float32 [n]) of each row's nearest centre, exactly
    (``x_norms`` [n]: the rows' squared norms, when the caller has them)."""
    if centre_norms is None:
        centre_norms = squared_norms(xp, centres)
    tile_rows = tile_rows or distance_tile_rows(centres.shape[0])
    labels = xp.empty(x.shape[0], dtype=xp.int64)
    dists = xp.empty(x.shape[0], dtype=xp.float32)
    for start in range(0, x.shape[0], tile_rows):
        tile = x[start:start + tile_rows]
        scores = tile @ centres.T  # in place from here: one [tile, k] buffer per tile
        scores *= -2.0
        scores += centre_norms[None, :]  # |c|^2 - 2x.c
        best = xp.argmin(scores, axis=1)
        labels[start:start + tile.shape[0]] = best
        best_scores = xp.take_along_axis(scores, best[:, None], axis=1)[:, 0]
        norms = squared_norms(xp, tile) if x_norms is None else x_norms[start:start + tile.shape[0]]
        dists[start:start + tile.shape[0]] = xp.maximum(best_scores + norms, 0.0)
    return labels, dists


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
    if count <= 0:  # the usual case (no centre went empty): no sort
        return xp.zeros(0, dtype=xp.int64)
    order = xp.argsort(-dists.astype(xp.float64), kind="stable") if xp is np else xp.argsort(-dists)
    return order[:count]


def d2_sample(xp: Any, dists: Any, count: int, rng: np.random.Generator) -> Any:
    """``count`` distinct row indices drawn with probability proportional to ``dists`` (k-means++'s
    D^2 weighting; Efraimidis-Spirakis keys), uniformly when every distance is zero."""
    weights = np.asarray(to_host(dists), dtype=np.float64)
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
    return kmeanspp(xp, sample, n_clusters, rng)[0]


def kmeanspp(xp: Any, sample: Any, n_clusters: int, rng: np.random.Generator) -> tuple[Any, np.ndarray]:
    """k-means++ seeding: (centres [k, d] from the rows of ``sample`` [n >= k, d], host float64 [k]
    total squared distance of the sample to its nearest centre after each pick)."""
    n_rows = sample.shape[0]
    centres = xp.empty((n_clusters, sample.shape[1]), dtype=sample.dtype)
    costs = np.empty(n_clusters, dtype=np.float64)
    sample_norms = squared_norms(xp, sample)

    def distances_to(row: int) -> Any:
        return xp.maximum(sample_norms - 2.0 * (sample @ sample[row]) + sample_norms[row], 0.0)

    pick = int(rng.integers(n_rows))
    centres[0] = sample[pick]
    closest = distances_to(pick)
    for i in range(1, n_clusters + 1):
        cumulative = xp.cumsum(closest.astype(xp.float64))
        total = float(cumulative[-1])
        costs[i - 1] = total
        if i == n_clusters:
            break
        if total <= 0.0:  # every row coincides with a centre already: the rest are any rows
            rest = n_clusters - i
            centres[i:] = sample[xp.asarray(rng.integers(n_rows, size=rest))]
            costs[i:] = 0.0
            break
        threshold = xp.asarray([float(rng.random()) * total])
        pick = min(int(xp.searchsorted(cumulative, threshold)[0]), n_rows - 1)
        centres[i] = sample[pick]
        closest = xp.minimum(closest, distances_to(pick))
    return centres, costs


def means_or_reseed(xp: Any, centres: Any, sums: Any, counts: Any, spares: Any) -> tuple[Any, int]:
    """Centres moved to the means ``sums / counts``; empty ones take rows of ``spares`` in order.

    Returns (centres [k, d], number re-seeded). Empty centres beyond ``len(spares)`` stay put. One new
    [k, d] array (the division); the empty centres are patched in it.
    """
    means = (sums / xp.maximum(counts, 1.0).astype(sums.dtype)[:, None]).astype(xp.float32, copy=False)
    empty = xp.nonzero(counts == 0)[0]
    if empty.size:
        means[empty] = centres[empty]
        reseed = empty[:spares.shape[0]]
        means[reseed] = spares[:reseed.size]
        return means, int(reseed.size)
    return means, 0


def lloyd(xp: Any, x: Any, centres: Any, iters: int) -> tuple[Any, Any]:
    """``iters`` exact Lloyd iterations on ``x`` [n, d]; returns (centres, counts of the last one)."""
    counts = xp.zeros(centres.shape[0], dtype=xp.float64)
    norms = squared_norms(xp, x) if iters > 1 else None  # the rows' norms, once for every iteration
    for _ in range(iters):
        labels, dists = nearest_centres(xp, x, centres, x_norms=norms)
        sums, counts = segment_sums(xp, labels, x, centres.shape[0])
        spares = x[farthest(xp, dists, int((counts == 0).sum()))]
        centres, _ = means_or_reseed(xp, centres, sums, counts, spares)
    return centres, counts
