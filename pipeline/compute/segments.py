"""Per-centre sums without atomics, by device: on a GPU sort rows by label, one prefix sum, differences at
the ends (a fixed number of array calls whatever the row count or K, no host round trip; ``add.at`` would
serialise on atomics, a per-centre loop would launch K kernels); on numpy a sparse one-hot product, one
float32 pass over the rows (the sort, gather and float64 prefix took 1 s per 32,768 x 768 batch on 2
cores, the one-hot product 0.03 s).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def segment_sums(xp: Any, labels: Any, x: Any, k: int) -> tuple[Any, Any]:
    """(sums float64 [k, d], counts int64 [k]) of the rows of ``x`` [n, d] grouped by ``labels`` [n] in [0, k).

    The prefix sum runs in float64 (8 n d bytes of scratch): the differences of float32 prefixes over a
    large tile would lose the small segments to cancellation.
    """
    if xp is np:
        return one_hot_sums(labels, x, k)
    order = xp.argsort(labels)
    ends = xp.searchsorted(labels[order], xp.arange(k, dtype=labels.dtype), side="right")  # [k] exclusive
    prefix = xp.cumsum(x[order], axis=0, dtype=xp.float64)  # [n, d]
    at_end = prefix[xp.maximum(ends - 1, 0)] * (ends > 0)[:, None]  # [k, d]: sum of labels <= j
    sums = xp.concatenate([at_end[:1], at_end[1:] - at_end[:-1]])
    counts = xp.concatenate([ends[:1], ends[1:] - ends[:-1]])
    return sums, counts


def one_hot_sums(labels: np.ndarray, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(sums float64 [k, d], counts int64 [k]) on the CPU: a [k, n] one-hot CSR matrix times ``x``."""
    import scipy.sparse  # scikit-learn's dependency; loaded only by the CPU route

    n = labels.shape[0]
    one_hot = scipy.sparse.csr_matrix((np.ones(n, dtype=x.dtype), (labels, np.arange(n))), shape=(k, n))
    # float32 accumulation straight over each segment (no prefix differences to cancel): relative error
    # about sqrt(rows) * 6e-8; float64 would copy x (8 n d bytes) and take 8x the time
    sums = np.asarray(one_hot @ x, dtype=np.float64)
    return sums, np.bincount(labels, minlength=k).astype(np.int64)
