"""Per-centre sums of rows grouped by label, without atomics: the one ``segment_sums`` of the k-means core.

Two ways to the same sums, chosen by the array module (both run in CI on numpy: ``sorted_segment_sums``
through the counting CuPy stand-in and directly):

- numpy: a sparse [k, n] one-hot matrix times the rows (scipy's CSR product: each centre's rows summed
  straight in float32, one pass; the sorted route below costs 3-5x as much on a CPU).
- a device: the rows sorted by label and transposed to [d, n], so each feature's values lie contiguous;
  float32 prefix sums inside blocks of ``SEGMENT_BLOCK`` rows (contiguous scans, rounding bounded by the
  block), the block totals' prefix in float64 ([d, n / 256]: small), and each segment's sum as the
  difference of two prefixes at its ends. A fixed number of array calls whatever n or k, no host round trip;
  ``add.at`` would serialise on atomics (a cluster of silence takes a third of the rows), a per-centre loop
  would launch k kernels, and a float64 ``cumsum(axis=0)`` of [n, d] strides through memory column by column.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SEGMENT_BLOCK = 256  # rows per float32 prefix block: the rounding of a segment's sum is that of <= 256 additions


def segment_sums(xp: Any, labels: Any, x: Any, k: int) -> tuple[Any, Any]:
    """(sums float32 [k, d], counts int64 [k]) of the rows of ``x`` [n, d] grouped by ``labels`` [n] in [0, k)."""
    if xp is np:
        return one_hot_sums(labels, x, k)
    return sorted_segment_sums(xp, labels, x, k)


def one_hot_sums(labels: np.ndarray, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``segment_sums`` on the CPU: a [k, n] one-hot CSR matrix times ``x`` (float32 accumulation straight over
    each segment: no prefix differences to cancel)."""
    import scipy.sparse  # scikit-learn's dependency; loaded only by the CPU route

    n = labels.shape[0]
    one_hot = scipy.sparse.csr_matrix((np.ones(n, dtype=np.float32), (labels, np.arange(n))), shape=(k, n))
    sums = np.asarray(one_hot @ np.asarray(x, dtype=np.float32), dtype=np.float32)
    return sums, np.bincount(labels, minlength=k).astype(np.int64)


def sorted_segment_sums(xp: Any, labels: Any, x: Any, k: int, block: int = SEGMENT_BLOCK) -> tuple[Any, Any]:
    """``segment_sums`` by sorting (the device's way; any ``xp``)."""
    n, d = x.shape
    order = xp.argsort(labels)
    ends = xp.searchsorted(labels[order], xp.arange(k, dtype=labels.dtype), side="right")  # [k] exclusive
    blocks = max(1, -(-n // block))
    columns = xp.zeros((d, blocks * block), dtype=xp.float32)  # [d, n] padded: each feature contiguous
    columns[:, :n] = x[order].T
    local = xp.cumsum(columns.reshape(d, blocks, block), axis=2)  # float32 prefix inside each block
    totals = xp.cumsum(local[:, :, block - 1], axis=1, dtype=xp.float64)  # [d, blocks] prefix of block totals
    last = xp.maximum(ends - 1, 0)  # the last row of each prefix, as (block, offset)
    at, offset = last // block, last % block
    before = xp.where(at > 0, totals[:, xp.maximum(at - 1, 0)], 0.0)  # [d, k] float64: whole blocks before
    prefix = (before + local[:, at, offset]) * (ends > 0)  # [d, k]: sum of the rows with labels <= j
    sums = xp.concatenate([prefix[:, :1], prefix[:, 1:] - prefix[:, :-1]], axis=1)
    counts = xp.concatenate([ends[:1], ends[1:] - ends[:-1]])
    return xp.ascontiguousarray(sums.T, dtype=xp.float32), counts.astype(xp.int64)
