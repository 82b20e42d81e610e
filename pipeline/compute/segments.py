"""Per-centre sums over ``xp`` without atomics: sort rows by label, one prefix sum, differences at the ends.

A fixed number of array calls whatever the row count or K, and no host round trip: the GPU routes' sum step
(``add.at`` would serialise on atomics, a per-centre loop would launch K kernels).
"""

from __future__ import annotations

from typing import Any


def segment_sums(xp: Any, labels: Any, x: Any, k: int) -> tuple[Any, Any]:
    """(sums float64 [k, d], counts int64 [k]) of the rows of ``x`` [n, d] grouped by ``labels`` [n] in [0, k).

    The prefix sum runs in float64 (8 n d bytes of scratch): the differences of float32 prefixes over a
    large tile would lose the small segments to cancellation.
    """
    order = xp.argsort(labels)
    ends = xp.searchsorted(labels[order], xp.arange(k, dtype=labels.dtype), side="right")  # [k] exclusive
    prefix = xp.cumsum(x[order], axis=0, dtype=xp.float64)  # [n, d]
    at_end = prefix[xp.maximum(ends - 1, 0)] * (ends > 0)[:, None]  # [k, d]: sum of labels <= j
    sums = xp.concatenate([at_end[:1], at_end[1:] - at_end[:-1]])
    counts = xp.concatenate([ends[:1], ends[1:] - ends[:-1]])
    return sums, counts
