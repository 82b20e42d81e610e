"""k-means initialisation over ``xp``, without a Python step per centre.

``random``: distinct rows. ``kmeans++`` (``d2_init``): batched D^2 sampling in a fixed number of rounds, as
k-means|| does: each round draws K / rounds rows with probability proportional to their squared distance to
the centres drawn so far (Efraimidis-Spirakis keys, ``d2_keys``), then updates those distances with one exact
1-NN (``knn.nearest``). Random numbers come from a host numpy generator (host-to-device only), so one seed
gives one start on any device.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from rvc_index.compute.kernels import squared_norms
from rvc_index.compute.knn import nearest

D2_ROUNDS = 8  # rounds of batched D^2 sampling: their cost adds up to one assignment pass over the sample


def random_init(xp: Any, x: Any, k: int, rng: np.random.Generator) -> Any:
    """``k`` distinct rows of ``x`` [n >= k, d] drawn uniformly, as a new float32 [k, d] array."""
    if x.shape[0] < k:
        raise ValueError(f"k-means init needs at least {k} rows, got {x.shape[0]}")
    return x[xp.asarray(np.sort(rng.permutation(x.shape[0])[:k]))].astype(xp.float32)


def d2_keys(xp: Any, dists: Any, rng: np.random.Generator) -> Any:
    """Efraimidis-Spirakis keys [n] (float64, on the device) for drawing rows with probability proportional to
    ``dists`` [n]: the largest keys are the draw; a zero distance gets the smallest keys (drawn last)."""
    uniform = xp.asarray(1.0 - rng.random(dists.shape[0]))  # (0, 1]: log <= 0
    return xp.log(uniform) / xp.maximum(dists.astype(xp.float64), 1e-300)


def d2_order(xp: Any, dists: Any, rng: np.random.Generator) -> Any:
    """Every row index ordered as k-means++'s D^2 weighting draws them (``d2_keys``, largest first)."""
    return xp.argsort(-d2_keys(xp, dists, rng))


def d2_init(xp: Any, x: Any, k: int, rng: np.random.Generator, tile_elements: int = 1 << 26,
            rounds: int = D2_ROUNDS) -> Any:
    """``k`` centres [k, d] float32 from ``x`` [n >= k, d] by ``rounds`` rounds of batched D^2 sampling."""
    n = x.shape[0]
    if n < k:
        raise ValueError(f"k-means init needs at least {k} rows, got {n}")
    per_round = -(-k // max(1, rounds))
    centres = xp.empty((k, x.shape[1]), dtype=xp.float32)
    first = min(per_round, k)
    centres[:first] = random_init(xp, x, first, rng)
    x_norms = squared_norms(xp, x)
    closest = nearest(xp, x, centres[:first], x_norms=x_norms, tile_rows=max(1, tile_elements // first))[1]
    filled = first
    while filled < k:
        m = min(per_round, k - filled)
        picks = xp.argpartition(-d2_keys(xp, closest, rng), m - 1)[:m]  # chosen rows: smallest keys, never again
        centres[filled:filled + m] = x[picks]
        found = nearest(xp, x, centres[filled:filled + m], x_norms=x_norms, tile_rows=max(1, tile_elements // m))[1]
        closest = xp.minimum(closest, found)
        filled += m
    return centres


def init_centres(xp: Any, sample: Any, k: int, method: str, rng: np.random.Generator) -> Any:
    """Initial centres [k, d] float32 from ``sample`` [n >= k, d]: ``random`` distinct rows or ``kmeans++``
    (batched D^2 sampling)."""
    if method == "random":
        return random_init(xp, sample, k, rng)
    if method != "kmeans++":
        raise ValueError(f"unknown k-means init {method!r}")
    return d2_init(xp, sample, k, rng)
