"""k-means initialisation on the device, without a Python step per centre.

``random``: distinct rows. ``d2`` (what ``init: kmeans++`` means on the device route): batched D^2
sampling in a fixed number of rounds, as k-means|| does: each round draws K / rounds rows with
probability proportional to their squared distance to the centres drawn so far (Efraimidis-Spirakis
keys, top keys by ``argpartition``), then updates those distances with one tiled matrix product. Random
numbers come from a host numpy generator (host-to-device only), so one seed gives one start on any device.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from rvc_index.compute.kmeans import squared_norms

D2_ROUNDS = 8  # rounds of batched D^2 sampling: their cost adds up to one assignment pass over the sample


def random_init(xp: Any, x: Any, k: int, rng: np.random.Generator) -> Any:
    """``k`` distinct rows of ``x`` [n >= k, d] drawn uniformly, as float32 [k, d]."""
    if x.shape[0] < k:
        raise ValueError(f"k-means init needs at least {k} rows, got {x.shape[0]}")
    return x[xp.asarray(np.sort(rng.permutation(x.shape[0])[:k]))].astype(xp.float32)


def nearest_distances(xp: Any, x: Any, centres: Any, rows: int, x_norms: Any = None) -> Any:
    """[n] squared distance of each row of ``x`` to its nearest of ``centres``, ``rows`` rows per tile
    (``x_norms`` [n]: the rows' squared norms, when the caller has them)."""
    x_norms = squared_norms(xp, x) if x_norms is None else x_norms
    half = 0.5 * squared_norms(xp, centres)
    best = []
    for start in range(0, x.shape[0], rows):
        scores = x[start:start + rows] @ centres.T
        scores -= half[None, :]
        best.append(scores.max(axis=1))  # x.c - |c|^2 / 2 of the nearest centre
    return xp.maximum(x_norms - 2.0 * xp.concatenate(best), 0.0)


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
    closest = nearest_distances(xp, x, centres[:first], max(1, tile_elements // first), x_norms)
    filled = first
    while filled < k:
        m = min(per_round, k - filled)
        uniform = xp.asarray(1.0 - rng.random(n))  # (0, 1]: log <= 0
        keys = xp.log(uniform) / xp.maximum(closest.astype(xp.float64), 1e-300)  # chosen rows: -huge, last
        picks = xp.argpartition(-keys, m - 1)[:m]
        centres[filled:filled + m] = x[picks]
        closest = xp.minimum(closest, nearest_distances(xp, x, centres[filled:filled + m], max(1, tile_elements // m),
                                                        x_norms))
        filled += m
    return centres
