"""Exact top-k over ``xp`` by tiled matrix products: only the best ``k`` of each tile stay, tiles merge.

No row is ever sorted whole: for ``k <= ROUNDS_MAX_K`` the best columns come from ``k`` rounds of
``argmax`` (CuPy's ``argpartition`` sorts whole rows); above, from ``argpartition``. A tile costs a
fixed number of array calls and no host round trip, whatever its size or the database's.
"""

from __future__ import annotations

from typing import Any

ROUNDS_MAX_K = 16  # rounds of argmax up to this k: k reductions read the tile k times, a sort would log(w) times
MIN_QUERY_ROWS = 256  # a score tile keeps at least this many query rows (matrix products stay efficient)


def select_top_k(xp: Any, scores: Any, k: int) -> tuple[Any, Any]:
    """(values [t, k], columns [t, k] int64): the ``k`` largest of each row of ``scores`` [t, w].

    Largest first when ``k <= ROUNDS_MAX_K`` (``scores`` is overwritten: it is scratch), unordered above.
    """
    t, width = scores.shape
    k = min(k, width)
    if k > ROUNDS_MAX_K:
        columns = xp.argpartition(scores, width - k, axis=1)[:, width - k:]
        return xp.take_along_axis(scores, columns, axis=1), columns.astype(xp.int64)
    rows = xp.arange(t)
    values = xp.empty((t, k), dtype=scores.dtype)
    columns = xp.empty((t, k), dtype=xp.int64)
    for r in range(k):
        best = xp.argmax(scores, axis=1)
        values[:, r] = scores[rows, best]
        columns[:, r] = best
        scores[rows, best] = -xp.inf
    return values, columns


def merge_top_k(xp: Any, values: Any, ids: Any, more_values: Any, more_ids: Any, k: int) -> tuple[Any, Any]:
    """The ``k`` best of two candidate sets [t, a] and [t, b] (values, ids)."""
    merged = xp.concatenate([values, more_values], axis=1)
    pool = xp.concatenate([ids, more_ids], axis=1)
    best, columns = select_top_k(xp, merged, k)
    return best, xp.take_along_axis(pool, columns, axis=1)


def db_tile_columns(n: int, k: int, tile_bytes: int) -> int:
    """Database rows per score tile: all of them when a tile of ``MIN_QUERY_ROWS`` rows fits ``tile_bytes``."""
    return max(min(n, k), min(n, tile_bytes // (4 * MIN_QUERY_ROWS)))


def query_tile_rows(n: int, k: int, tile_bytes: int) -> int:
    """Query rows per score tile against ``db_tile_columns`` database rows."""
    return max(1, tile_bytes // (4 * db_tile_columns(n, k, tile_bytes)))


def tile_top_k(xp: Any, queries: Any, db: Any, k: int, tile_bytes: int, bias: Any | None = None) -> tuple[Any, Any]:
    """(scores [q, k], ids [q, k] int64) of the ``k`` largest ``queries . db_j + bias_j`` over the rows of ``db``.

    ``bias`` [n] = ``-|db_j|^2 / 2`` ranks by L2 distance; None ranks by inner product. The database is
    scored in column tiles of ``db_tile_columns`` rows, each reduced to its top ``k`` and merged.
    """
    n = db.shape[0]
    k = min(k, n)
    step = db_tile_columns(n, k, tile_bytes)
    best_s = best_i = None
    for start in range(0, n, step):
        scores = queries @ db[start:start + step].T
        if bias is not None:
            scores += bias[None, start:start + step]
        values, columns = select_top_k(xp, scores, k)
        if start:
            columns += start
        if best_s is None:
            best_s, best_i = values, columns
        else:
            best_s, best_i = merge_top_k(xp, best_s, best_i, values, columns, k)
    return best_s, best_i
