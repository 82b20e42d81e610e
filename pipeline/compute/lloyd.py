"""Full-batch Lloyd k-means over ``xp``, designed for a GPU: exact assignment by one matrix product and
an ``argmax`` per large tile, per-centre sums by sort + prefix sum (``segments``), empty centres re-seeded
on the device from the pass's farthest rows. A pass costs a fixed number of array calls per tile and
no host round trip; the mean squared distances of all passes come back once, at the end.

Tiles come from a callable, so the same passes run on device-resident rows (slices) or on chunks
streamed through the device (``Backend.stage``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from rvc_index.compute.kmeans import squared_norms
from rvc_index.compute.segments import segment_sums

N_FAR = 256  # farthest rows kept per pass: spares for centres that win no row


def tile_rows(n_centres: int, dim: int, tile_bytes: int) -> int:
    """Rows per tile whose scores [t, K], gathered rows [t, d] and float64 prefix sums [t, d] fit ``tile_bytes``."""
    return max(1, tile_bytes // (4 * n_centres + 12 * dim + 64))


def assign(xp: Any, x: Any, centres: Any, half_norms: Any) -> tuple[Any, Any]:
    """(labels int64 [t], squared distances float32 [t]) of each row of ``x`` [t, d] to its nearest centre.

    ``half_norms`` [K] = ``|c|^2 / 2``: the nearest centre has the largest ``x . c - |c|^2 / 2``.
    """
    scores = x @ centres.T
    scores -= half_norms[None, :]
    labels = xp.argmax(scores, axis=1)
    best = scores[xp.arange(x.shape[0]), labels]
    return labels, xp.maximum(squared_norms(xp, x) - 2.0 * best, 0.0)


def farthest_rows(xp: Any, dists: Any, count: int) -> Any:
    """Indices of the ``count`` largest of ``dists`` [n], unordered."""
    n = dists.shape[0]
    return xp.argpartition(dists, n - count)[n - count:] if count < n else xp.arange(n)


@dataclass
class PassSums:
    """One pass so far: per-centre sums float64 [K, d], counts int64 [K], SSE (0-d device float64),
    and its farthest rows [<= N_FAR, d] with their squared distances."""

    sums: Any
    counts: Any
    sse: Any
    far_rows: Any
    far_dists: Any


def accumulate(xp: Any, total: PassSums | None, tile: Any, centres: Any, half_norms: Any,
               n_far: int = N_FAR) -> PassSums:
    """Assign ``tile`` [t, d] and add its sums to ``total`` (a new total when None)."""
    labels, dists = assign(xp, tile, centres, half_norms)
    sums, counts = segment_sums(xp, labels, tile, centres.shape[0])
    far = farthest_rows(xp, dists, min(n_far, tile.shape[0]))
    part = PassSums(sums, counts, dists.astype(xp.float64).sum(), tile[far], dists[far])
    if total is None:
        return part
    rows = xp.concatenate([total.far_rows, part.far_rows])
    far_dists = xp.concatenate([total.far_dists, part.far_dists])
    keep = farthest_rows(xp, far_dists, n_far)
    return PassSums(total.sums + part.sums, total.counts + part.counts, total.sse + part.sse,
                    rows[keep], far_dists[keep])


def update(xp: Any, centres: Any, total: PassSums) -> tuple[Any, Any]:
    """(centres [K, d] float32 moved to their rows' means, number re-seeded as a 0-d device array).

    Empty centres take the pass's farthest rows, farthest first, as long as there are spares; the rest
    stay put. All on the device: no count of empty centres comes back to the host.
    """
    empty = total.counts == 0
    rank = xp.cumsum(empty) - 1  # each empty centre's rank among the empty ones
    spares = total.far_rows[xp.argsort(-total.far_dists)]
    reseed = empty & (rank < spares.shape[0])
    means = (total.sums / xp.maximum(total.counts, 1)[:, None]).astype(xp.float32)
    moved = xp.where(empty[:, None], centres, means)
    moved = xp.where(reseed[:, None], spares[xp.clip(rank, 0, spares.shape[0] - 1)], moved)
    return moved, reseed.sum()


@dataclass
class LloydResult:
    """Centres [K, d] float32 and counts [K] of the last pass (device), and the passes' mean squared
    distances (host, one transfer for all; pass i measured against the centres it started from)."""

    centres: Any
    counts: Any
    msd: list[float]
    reseeded: int


def lloyd_passes(xp: Any, tiles: Callable[[], Iterable[Any]], centres: Any, passes: int,
                 n_far: int = N_FAR) -> LloydResult:
    """``passes`` exact Lloyd passes over the tiles ``tiles()`` yields (called once per pass)."""
    counts = xp.zeros(centres.shape[0], dtype=xp.int64)
    sse, rows, reseeded = [], 0, xp.zeros((), dtype=xp.int64)
    for _ in range(passes):
        half = 0.5 * squared_norms(xp, centres)
        total: PassSums | None = None
        rows = 0
        for tile in tiles():
            total = accumulate(xp, total, tile, centres, half, n_far)
            rows += tile.shape[0]
        if total is None:
            break
        centres, moved = update(xp, centres, total)
        counts, reseeded = total.counts, reseeded + moved
        sse.append(total.sse)
    if not sse:
        return LloydResult(centres, counts, [], 0)
    host = xp.stack(sse + [reseeded.astype(xp.float64)]).tolist()  # the one device-to-host transfer
    return LloydResult(centres, counts, [value / max(rows, 1) for value in host[:-1]], int(host[-1]))


def resident_tiles(x: Any, rows: int) -> Callable[[], Iterable[Any]]:
    """Tiles of ``rows`` rows of the device-resident ``x`` [n, d] (views, no copy)."""
    return lambda: (x[start:start + rows] for start in range(0, x.shape[0], rows))
