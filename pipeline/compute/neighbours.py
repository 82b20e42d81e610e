"""Nearest neighbours by inner product over ``xp`` for the expansion: exact (``knn.top_k`` over query tiles),
and an IVF route.

The IVF search runs probe rank by probe rank. Within a rank every row probes one list; the lists are batched
by size class (members and probing rows within ``SIZE_CLASS`` of each other), and a batch is scored in one
batched product [lists, probing rows, members], padded within its class (a few dozen batches per rank
whatever the number of lists: no loop over lists, no per-list sync). Each rank reads its lists' probing-row
counts back once. On a CPU the batches run on threads with one BLAS thread each. ``faiss_gpu_neighbours``
runs the same lists in a faiss ``GpuIndexIVFFlat`` where faiss-gpu is present.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np
from rvc_index.compute.backend import Backend, to_host
from rvc_index.compute.kernels import squared_norms
from rvc_index.compute.knn import query_tile_rows, select_top_k, top_k
from rvc_index.runtime.progress import Progress
from rvc_index.runtime.threads import in_threads


def tiles(n: int, rows: int, workers: int) -> list[tuple[int, int]]:
    """[start, stop) row ranges of at most ``rows`` rows, at least ~4 per worker."""
    rows = max(1, min(rows, -(-n // (4 * workers)) if workers > 1 else rows))
    return [(start, min(start + rows, n)) for start in range(0, n, rows)]


def exact_neighbours(xp: Any, queries: Any, db: Any, k: int, tile_bytes: int, workers: int = 1) -> Any:
    """Ids [q, k] int64 of each query's ``k`` largest inner products with the rows of ``db`` [n, d]
    (``knn.top_k`` per query tile; the tiles in flight stay within ``tile_bytes``)."""
    k = min(k, db.shape[0])
    ids = xp.empty((queries.shape[0], k), dtype=xp.int64)
    per_worker = max(1, tile_bytes // workers)
    rows = query_tile_rows(db.shape[0], k, per_worker)

    def tile(span: tuple[int, int]) -> None:
        ids[span[0]:span[1]] = top_k(xp, queries[span[0]:span[1]], db, k, per_worker)[1]

    for _ in in_threads(tile, tiles(queries.shape[0], rows, workers), workers):
        pass
    return ids


def list_scores(xp: Any, x: Any, centres: Any, half_norms: Any) -> Any:
    """[n, L] ``x . c - |c|^2 / 2``: larger is nearer in L2, as an IVF quantizer ranks lists."""
    return x @ centres.T - half_norms[None, :]


def probe_lists(xp: Any, x: Any, centres: Any, nprobe: int, tile_bytes: int, workers: int = 1) -> Any:
    """[n, nprobe] int64 ids of each row's nearest lists, nearest first."""
    half = 0.5 * squared_norms(xp, centres)
    probes = xp.empty((x.shape[0], nprobe), dtype=xp.int64)

    def tile(span: tuple[int, int]) -> None:
        scores = list_scores(xp, x[span[0]:span[1]], centres, half)
        probes[span[0]:span[1]] = select_top_k(xp, scores, nprobe)[1] if nprobe <= 16 else \
            _ordered(xp, *select_top_k(xp, scores, nprobe))

    for _ in in_threads(tile, tiles(x.shape[0], tile_bytes // (16 * centres.shape[0] * workers), workers), workers):
        pass
    return probes


def _ordered(xp: Any, values: Any, columns: Any) -> Any:
    return xp.take_along_axis(columns, xp.argsort(-values, axis=1), axis=1)


def probe_recall(xp: Any, unit: Any, centres: Any, queries: Any, truth: Any, max_nprobe: int) -> np.ndarray:
    """Recall [max_nprobe] of an IVF search with nprobe = 1.. on ``queries`` with exact ``truth``.

    The search is exact inside the lists it probes, so a true neighbour is found exactly when its
    own list ranks within the query's ``nprobe`` nearest lists.
    """
    half = 0.5 * squared_norms(xp, centres)
    q_scores = list_scores(xp, unit[queries], centres, half)  # [s, L]
    homes = xp.argmax(list_scores(xp, unit[truth.ravel()], centres, half), axis=1).reshape(truth.shape)
    home_scores = xp.take_along_axis(q_scores, homes, axis=1)  # [s, k]
    ranks = (q_scores[:, None, :] > home_scores[:, :, None]).sum(axis=2)  # lists nearer than the home
    counts = xp.bincount(ranks.ravel(), minlength=max_nprobe)[:max_nprobe]
    return np.cumsum(np.asarray(to_host(counts), dtype=np.float64)) / ranks.size


SIZE_CLASS = 1.5  # lists batched together differ at most this much in members and in probing rows


def plan_groups(probers: np.ndarray, members: np.ndarray, budget: int, dim: int) -> list[tuple[np.ndarray, int, int]]:
    """Batches of lists for one probe rank (host): (list ids, first probing row, probing rows per list), lists of
    one size class (``SIZE_CLASS`` apart in both counts: the padding wastes at most ``SIZE_CLASS ** 2`` of the
    products), as many per batch as ``budget`` bytes of scores and gathered rows hold; a list too large for the
    budget alone is cut into slices of its probing rows. Vectorised: no loop over the lists."""
    live = np.flatnonzero((probers > 0) & (members > 0))
    if not live.size:
        return []
    step = np.log(SIZE_CLASS)
    key = np.floor(np.log(members[live]) / step) * 4096 + np.floor(np.log(probers[live]) / step)
    live = live[np.argsort(key, kind="stable")]
    key = np.sort(key, kind="stable")
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    groups = []
    for lo, hi in zip(starts, np.r_[starts[1:], live.size]):  # one iteration per size class (a few dozen)
        lists = live[lo:hi]
        p_max, m_max = int(probers[lists].max()), int(members[lists].max())
        per_list = 4 * p_max * m_max + 4 * (p_max + m_max) * dim
        count = max(1, budget // per_list)
        if count == 1 and per_list > budget:  # each list alone, its probing rows in slices
            rows = max(1, (budget - 4 * m_max * dim) // (4 * (m_max + dim)))
            groups += [(lists[i:i + 1], first, rows) for i in range(lists.size) for first in range(0, p_max, rows)]
        else:
            groups += [(lists[i:i + count], 0, p_max) for i in range(0, lists.size, count)]
    return groups


def ivf_neighbours(xp: Any, unit: Any, probes: Any, n_list: int, k: int, label: str = "",
                   workers: int = 1, tile_bytes: int = 64 << 20) -> tuple[Any, float]:
    """(ids [n, k] int64, -1 where fewer were found; GFLOP) of an IVF search over ``unit`` [n, d], every row a
    query and a member of its home list ``probes[:, 0]`` (``probes`` [n, nprobe]: each row's lists, nearest
    first). Rank by rank, the lists in batches of one size class (``plan_groups``), each batch one batched
    product [lists, probing rows, members], padded within the class; each rank reads its lists' probing-row
    counts back once."""
    n, nprobe = probes.shape
    dim = unit.shape[1]
    home = probes[:, 0]
    members = xp.argsort(home, kind="stable")  # every row by home list: each list's members contiguous
    lists = xp.arange(n_list + 1)
    member_bounds = xp.searchsorted(home[members], lists)
    member_host = to_host(member_bounds)
    best_s = xp.full((n + 1, k), -xp.inf, dtype=xp.float32)  # row n: where padding rows write
    best_i = xp.full((n + 1, k), -1, dtype=xp.int64)
    budget = max(1, tile_bytes // max(1, workers))
    progress = Progress(f"{label}expand: search", nprobe * n_list, "list probes")
    pairs = 0
    for rank in range(nprobe):
        probers = members if rank == 0 else xp.argsort(probes[:, rank], kind="stable")
        prober_bounds = member_bounds if rank == 0 else xp.searchsorted(probes[probers, rank], lists)
        prober_host = member_host if rank == 0 else to_host(prober_bounds)  # the rank's one read
        groups = plan_groups(np.diff(prober_host), np.diff(member_host), budget, dim)

        def search(group: tuple[np.ndarray, int, int], probers: Any = probers, prober_bounds: Any = prober_bounds,
                   prober_host: np.ndarray = prober_host) -> int:
            chosen, first, count = group
            ids = xp.asarray(chosen)
            rows, row_ok = _padded(xp, probers, prober_bounds[ids] + first, prober_bounds[ids + 1],
                                   min(count, int(np.diff(prober_host)[chosen].max()) - first), n)
            cols, col_ok = _padded(xp, members, member_bounds[ids], member_bounds[ids + 1],
                                   int(np.diff(member_host)[chosen].max()), 0)
            scores = xp.matmul(unit[xp.minimum(rows, n - 1)], unit[cols].transpose(0, 2, 1))  # [g, p, m]
            scores = xp.where(col_ok[:, None, :], scores, -xp.inf).reshape(-1, cols.shape[1])
            found_s, found_c = select_top_k(xp, scores, k)
            group_of = xp.arange(scores.shape[0])[:, None] // rows.shape[1]
            found_i = xp.where(found_s > -xp.inf, cols.ravel()[group_of * cols.shape[1] + found_c], -1)
            targets = rows.ravel()
            merged = xp.concatenate([best_s[targets], found_s], axis=1)
            pool = xp.concatenate([best_i[targets], found_i], axis=1)
            values, picks = select_top_k(xp, merged, k)
            best_s[targets], best_i[targets] = values, xp.take_along_axis(pool, picks, axis=1)
            return int(rows.size) * int(cols.shape[1])

        for group, size in zip(groups, in_threads(search, groups, workers)):
            pairs += size
            if group[1] == 0:
                progress.advance(len(group[0]))
    return best_i[:n], 2.0 * pairs * dim / 1e9


def _padded(xp: Any, order: Any, starts: Any, stops: Any, width: int, pad: int) -> tuple[Any, Any]:
    """([g, width] ids ``order[starts[i] + j]`` where ``j < stops[i] - starts[i]``, ``pad`` elsewhere; the mask)."""
    position = starts[:, None] + xp.arange(max(1, width))[None, :]
    valid = position < stops[:, None]
    return xp.where(valid, order[xp.minimum(position, order.shape[0] - 1)], pad), valid


def faiss_gpu_neighbours(backend: Backend, unit: np.ndarray, centres: np.ndarray, nprobe: int, k: int,
                         batch_rows: int) -> np.ndarray:
    """Ids [n, k] from a ``GpuIndexIVFFlat`` over the same lists (L2 on unit vectors = cosine order)."""
    dim = unit.shape[1]
    quantizer = faiss.IndexFlatL2(dim)
    quantizer.add(np.ascontiguousarray(centres, dtype=np.float32))
    cpu_index = faiss.IndexIVFFlat(quantizer, dim, centres.shape[0], faiss.METRIC_L2)
    index = faiss.index_cpu_to_gpu(backend.gpu_resources(), backend.device, cpu_index)
    faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", nprobe)
    for start in range(0, unit.shape[0], batch_rows):
        index.add(np.ascontiguousarray(unit[start:start + batch_rows]))
    ids = np.empty((unit.shape[0], k), dtype=np.int64)
    for start in range(0, unit.shape[0], batch_rows):
        ids[start:start + batch_rows] = index.search(np.ascontiguousarray(unit[start:start + batch_rows]), k)[1]
    return ids
