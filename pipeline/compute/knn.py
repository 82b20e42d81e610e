"""Exact nearest neighbours over ``xp``, one implementation for every caller: the evaluation's k-NN over
streamed blocks (L2, rows left out by a mask), the expansion's k-NN of every row (inner product), and the
k-means assignment and init (1-NN by L2: ``nearest``).

A score tile is one matrix product plus a bias: ``q . x - |x|^2 / 2`` ranks by L2 (larger is nearer),
``q . x`` by inner product. Only the best ``k`` of each tile stay and tiles merge, so no row is ever sorted
whole: for ``k <= ROUNDS_MAX_K`` the best columns come from ``k`` rounds of ``argmax`` (CuPy's
``argpartition`` sorts whole rows); above, from ``argpartition``. A tile costs a fixed number of array calls
and no host round trip, whatever its size or the database's. ``product`` (``Backend.product``) chooses the
matrix product's precision (TF32 for the k-means passes that allow it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from rvc_index.compute.kernels import squared_norms

ROUNDS_MAX_K = 16  # rounds of argmax up to this k: k reductions read the tile k times, a sort would log(w) times
MIN_QUERY_ROWS = 256  # a score tile keeps at least this many query rows (matrix products stay efficient)
MAX_TILE_ELEMENTS = 1 << 24  # the k-means assignment's [rows, centres] tile: at most 64 MB of float32
Product = Callable[[Any, Any], Any]  # (a [m, d], b [n, d]) -> a @ b.T [m, n]


def plain_product(a: Any, b: Any) -> Any:
    return a @ b.T


def distance_tile_rows(n_centres: int) -> int:
    """Rows per [rows, centres] assignment tile: at most 8192 rows and ``MAX_TILE_ELEMENTS`` elements."""
    return max(1, min(8192, MAX_TILE_ELEMENTS // max(n_centres, 1)))


def select_top_k(xp: Any, scores: Any, k: int) -> tuple[Any, Any]:
    """(values [t, k], columns [t, k] int64): the ``k`` largest of each row of ``scores`` [t, w].

    Largest first when ``k <= ROUNDS_MAX_K`` (``scores`` is overwritten: it is scratch), unordered above.
    """
    t, width = scores.shape
    k = min(k, width)
    if k > ROUNDS_MAX_K:
        columns = xp.argpartition(scores, width - k, axis=1)[:, width - k:]
        return xp.take_along_axis(scores, columns, axis=1), columns.astype(xp.int64)
    picks, values = [], []
    for r in range(k):
        best = xp.argmax(scores, axis=1)[:, None]
        values.append(xp.take_along_axis(scores, best, axis=1))
        picks.append(best)
        if r < k - 1:
            xp.put_along_axis(scores, best, -xp.inf, axis=1)
    if k == 1:  # the k-means assignment: one reduction and one gather
        return values[0], picks[0].astype(xp.int64)
    return xp.concatenate(values, axis=1), xp.concatenate(picks, axis=1).astype(xp.int64)


def merge_top_k(xp: Any, values: Any, ids: Any, more_values: Any, more_ids: Any, k: int) -> tuple[Any, Any]:
    """The ``k`` best of two candidate sets [t, a] and [t, b] (values, ids), largest first; on ties the first
    set's first (one stable sort of the few columns)."""
    merged = xp.concatenate([values, more_values], axis=1)
    pool = xp.concatenate([ids, more_ids], axis=1)
    order = xp.argsort(-merged, axis=1, kind="stable")[:, :k]
    return xp.take_along_axis(merged, order, axis=1), xp.take_along_axis(pool, order, axis=1)


def db_tile_columns(n: int, k: int, tile_bytes: int) -> int:
    """Database rows per score tile: all of them when a tile of ``MIN_QUERY_ROWS`` rows fits ``tile_bytes``."""
    return max(min(n, k), min(n, tile_bytes // (4 * MIN_QUERY_ROWS)))


def query_tile_rows(n: int, k: int, tile_bytes: int) -> int:
    """Query rows per score tile against ``db_tile_columns`` database rows."""
    return max(1, tile_bytes // (4 * db_tile_columns(n, k, tile_bytes)))


def top_k(xp: Any, queries: Any, db: Any, k: int, tile_bytes: int, bias: Any | None = None, keep: Any | None = None,
          first_id: int = 0, best: tuple[Any, Any] | None = None, product: Product = plain_product) -> tuple[Any, Any]:
    """(scores [q, k], ids [q, k] int64) of the ``k`` largest ``queries . db_j + bias_j`` over the rows of ``db``
    [n, d] (ids from ``first_id``), merged into ``best`` (an earlier (scores, ids), or None).

    ``bias`` [n]: ``-|db_j|^2 / 2`` ranks by L2, None by inner product; ``keep`` (bool [n]) leaves rows out
    (score ``-inf``). The database is scored in column tiles of ``db_tile_columns`` rows, each reduced to
    its top ``k`` and merged."""
    n = db.shape[0]
    step = max(1, db_tile_columns(n, min(k, n), tile_bytes))
    for start in range(0, n, step):
        scores = product(queries, db[start:start + step])
        if bias is not None:
            scores += bias[None, start:start + step]
        if keep is not None:
            scores = xp.where(keep[None, start:start + step], scores, -xp.inf)
        values, columns = select_top_k(xp, scores, k)
        if first_id + start:
            columns += first_id + start
        best = (values, columns) if best is None else merge_top_k(xp, *best, values, columns, k)
    return best


def knn(xp: Any, queries: Any, blocks: Iterable[Any], k: int, tile_bytes: int, l2: bool = True,
        keep: Callable[[int, int], Any] | None = None) -> tuple[Any, Any]:
    """Exact ``k`` nearest rows of the ``blocks`` (device arrays [b, d] in id order, streamed once) for each
    of ``queries`` [q, d]: (values [q, k], ids [q, k] int64), nearest first.

    ``l2``: values are squared L2 distances (``inf`` and id ``-1`` where fewer than ``k`` rows were kept);
    else inner products (largest first). ``keep(start, stop)``: bool [stop - start] device mask of the rows
    to consider among ids ``start:stop`` (None: all)."""
    q = queries.shape[0]
    rows = max(1, min(q, max(MIN_QUERY_ROWS, tile_bytes // (4 * 65_536))))  # against 64k-row blocks: one tile
    best: list[tuple[Any, Any] | None] = [None] * (-(-q // rows))
    first = 0
    for block in blocks:
        bias = -0.5 * squared_norms(xp, block) if l2 else None
        mask = None if keep is None else keep(first, first + block.shape[0])
        for i, start in enumerate(range(0, q, rows)):
            best[i] = top_k(xp, queries[start:start + rows], block, k, tile_bytes, bias, mask, first, best[i])
        first += block.shape[0]
    if best[0] is None:
        return (xp.full((q, k), xp.inf if l2 else -xp.inf, dtype=xp.float32), xp.full((q, k), -1, dtype=xp.int64))
    values = xp.concatenate([b[0] for b in best]) if len(best) > 1 else best[0][0]
    ids = xp.concatenate([b[1] for b in best]) if len(best) > 1 else best[0][1]
    if values.shape[1] < k:  # fewer rows than k in all
        values = xp.concatenate([values, xp.full((q, k - values.shape[1]), -xp.inf, dtype=values.dtype)], axis=1)
        ids = xp.concatenate([ids, xp.full((q, k - ids.shape[1]), -1, dtype=xp.int64)], axis=1)
    order = xp.argsort(-values, axis=1, kind="stable")  # rounds give them in order; argpartition does not
    values, ids = xp.take_along_axis(values, order, axis=1), xp.take_along_axis(ids, order, axis=1)
    found = values > -xp.inf
    ids = xp.where(found, ids, -1)
    if l2:
        values = xp.where(found, xp.maximum(squared_norms(xp, queries)[:, None] - 2.0 * values, 0.0), xp.inf)
    return values.astype(xp.float32), ids


def nearest(xp: Any, x: Any, centres: Any, half_norms: Any | None = None, x_norms: Any | None = None,
            tile_rows: int = 0, product: Product = plain_product) -> tuple[Any, Any]:
    """(labels int64 [n], squared distances float32 [n]): each row of ``x`` [n, d]'s nearest of ``centres``
    [k, d], exactly (the 1-NN of ``top_k``; ``half_norms`` [k] = ``|c|^2 / 2`` and ``x_norms`` [n] when known),
    ``tile_rows`` rows at a time (default ``distance_tile_rows``)."""
    half_norms = 0.5 * squared_norms(xp, centres) if half_norms is None else half_norms
    tile_rows = tile_rows or distance_tile_rows(centres.shape[0])
    labels = xp.empty(x.shape[0], dtype=xp.int64)
    best = xp.empty(x.shape[0], dtype=xp.float32)
    one_tile = 4 * MIN_QUERY_ROWS * centres.shape[0]  # every centre in one column tile
    bias = -half_norms
    for start in range(0, x.shape[0], tile_rows):
        tile = x[start:start + tile_rows]
        values, columns = top_k(xp, tile, centres, 1, one_tile, bias, product=product)
        labels[start:start + tile.shape[0]] = columns[:, 0]
        best[start:start + tile.shape[0]] = values[:, 0]
    x_norms = squared_norms(xp, x) if x_norms is None else x_norms
    return labels, xp.maximum(x_norms - 2.0 * best, 0.0).astype(xp.float32)
