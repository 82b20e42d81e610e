"""The measures, as pure array code: exact k-NN over streamed blocks (``compute.knn``, on the backend's device),
recall@k, the ``-1`` share, RVC's retrieval blend (``(1/score)^2`` weights over k=8, see
``../shared/docs/rvc-contract.md``), its relative error and coverage.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from rvc_index.compute.backend import Backend
from rvc_index.compute.knn import MIN_QUERY_ROWS, knn
from rvc_index.compute.warm import ensure_warm

SCORE_FLOOR = 1e-12  # a query equal to a stored vector scores 0: RVC's weight would be inf


def exact_knn(backend: Backend, queries: np.ndarray, blocks: Iterable[np.ndarray], k: int,
              tile_rows: int = 8192, keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact L2 k-NN of ``queries`` [q, D] over the rows of ``blocks`` (streamed, in id order): the one exact
    k-NN (``compute.knn.knn``), the blocks staged through the device (``Backend.upload``: on a GPU the reading of
    the next block, its copy and the compute on this one overlap), ``tile_rows`` rows per score tile.

    Returns (squared distances [q, k] float32, ids [q, k] int64), nearest first; ids count rows
    across blocks from 0. ``keep`` (bool [rows]) leaves out rows where it is False; a query with
    fewer than k kept rows gets ``inf`` distances and ``-1`` ids.
    """
    ensure_warm(backend)
    xp = backend.xp
    mask = None if keep is None else (lambda start, stop: backend.asarray(keep[start:stop], dtype=bool))
    values, ids = knn(xp, backend.asarray(queries), backend.upload(blocks), k, 4 * tile_rows * MIN_QUERY_ROWS,
                      keep=mask)
    return backend.to_host(values), backend.to_host(ids)


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean over queries of |found[:, :k] ∩ truth[:, :k]| / k (-1 labels never count)."""
    found, truth = np.asarray(found)[:, :k], np.asarray(truth)[:, :k]
    hits = [len(set(f[f >= 0].tolist()) & set(t.tolist())) for f, t in zip(found, truth)]
    return float(np.mean(hits) / k) if len(hits) else 0.0


def missing_label_share(labels: np.ndarray) -> float:
    """Share of queries with at least one -1 label (RVC's realtime GUI drops those blocks)."""
    labels = np.asarray(labels)
    return float((labels < 0).any(axis=1).mean()) if labels.size else 0.0


def rvc_weights(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """RVC's blend weights [q, k] float64: ``(1/score)^2`` normalised per query.

    A ``-1`` label weighs 0 (in RVC its huge score underflows to a 0 weight); scores are floored
    at ``SCORE_FLOOR`` so an exact match takes all the weight instead of producing NaN. A query
    with no label at all gets all-zero weights (its blend is 0: retrieval lost).
    """
    scores = np.maximum(np.asarray(scores, dtype=np.float64), SCORE_FLOOR)
    weights = np.where(np.asarray(labels) >= 0, 1.0 / np.square(scores), 0.0)
    total = weights.sum(axis=1, keepdims=True)
    return np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)


def rvc_blend(neighbours: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """RVC's blended retrieval [q, D] float64 from neighbour rows [q, k, D] and weights [q, k]."""
    return np.einsum("qkd,qk->qd", np.asarray(neighbours, dtype=np.float64), weights)


def blend_errors(blended: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per query relative L2 error [q]: ``|blended - reference| / |reference|``."""
    diff = np.linalg.norm(np.asarray(blended, np.float64) - reference, axis=1)
    return diff / np.maximum(np.linalg.norm(reference, axis=1), 1e-30)


def coverage(queries: np.ndarray, blended: np.ndarray) -> np.ndarray:
    """Per query L2 distance [q] from each frame to its blended retrieval (lower: better covered)."""
    return np.linalg.norm(np.asarray(queries, np.float64) - blended, axis=1)


def gather_rows(blocks: Iterable[np.ndarray], ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique ids >= 0, their rows [u, D] float32) picked from ``blocks`` in one pass."""
    unique = np.unique(np.asarray(ids)[np.asarray(ids) >= 0]).astype(np.int64)
    rows: np.ndarray | None = None
    offset = 0
    for block in blocks:
        if rows is None:
            rows = np.zeros((len(unique), block.shape[1]), np.float32)
        lo, hi = np.searchsorted(unique, [offset, offset + block.shape[0]])
        rows[lo:hi] = block[unique[lo:hi] - offset]
        offset += block.shape[0]
    if len(unique) and (rows is None or unique[-1] >= offset):
        raise IndexError(f"id {int(unique[-1])} is past the {offset} rows available")
    return unique, rows if rows is not None else np.zeros((0, 0), np.float32)


def neighbour_rows(unique: np.ndarray, rows: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """[q, k, D] rows of ``ids`` [q, k] from ``gather_rows`` output (a -1 id gets some row: weight 0)."""
    positions = np.searchsorted(unique, np.maximum(ids, 0))
    return rows[np.minimum(positions, max(len(unique) - 1, 0))]
