"""Nearest neighbours by inner product over ``xp``: exact tiled top-k (``knn``), and an IVF route.

The IVF search scores each list's members against all the rows probing it in one matrix product;
on a CPU, tiles and lists run on threads with one BLAS thread each. ``faiss_gpu_neighbours`` runs
the same lists in a faiss ``GpuIndexIVFFlat`` where faiss-gpu is present.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faiss
import numpy as np
from rvc_index.compute.backend import Backend, to_host
from rvc_index.compute.kmeans import squared_norms
from rvc_index.compute.knn import query_tile_rows, select_top_k, tile_top_k
from rvc_index.runtime.progress import Progress
from threadpoolctl import threadpool_limits


def top_k(xp: Any, scores: Any, ids: Any, k: int) -> tuple[Any, Any]:
    """The ``k`` largest scores of each row and their ids; all when a row has <= k. ``scores`` is scratch
    (overwritten); no host round trip (``knn.select_top_k``)."""
    if scores.shape[1] <= k:
        return scores, ids
    values, columns = select_top_k(xp, scores, k)
    return values, xp.take_along_axis(ids, columns, axis=1)


def each(workers: int, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
    """``fn(item)`` for every item, results in order. With ``workers`` > 1 (CPU), on that many
    threads with one BLAS thread each: no BLAS thread ever waits for a descheduled sibling, so
    small matrix products stay fast on a busy machine. Items must write disjoint outputs."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
        yield from pool.map(fn, items)


def tiles(n: int, rows: int, workers: int) -> list[tuple[int, int]]:
    """[start, stop) row ranges of at most ``rows`` rows, at least ~4 per worker."""
    rows = max(1, min(rows, -(-n // (4 * workers)) if workers > 1 else rows))
    return [(start, min(start + rows, n)) for start in range(0, n, rows)]


def exact_neighbours(xp: Any, queries: Any, db: Any, k: int, tile_bytes: int, workers: int = 1) -> Any:
    """Ids [q, k] int64 of each query's ``k`` largest inner products with the rows of ``db`` [n, d].

    Score tiles (``knn.tile_top_k``) are sized so the tiles in flight stay within ``tile_bytes``.
    """
    k = min(k, db.shape[0])
    ids = xp.empty((queries.shape[0], k), dtype=xp.int64)
    per_worker = max(1, tile_bytes // workers)
    rows = query_tile_rows(db.shape[0], k, per_worker)

    def tile(span: tuple[int, int]) -> None:
        ids[span[0]:span[1]] = tile_top_k(xp, queries[span[0]:span[1]], db, k, per_worker)[1]

    for _ in each(workers, tile, tiles(queries.shape[0], rows, workers)):
        pass
    return ids


def list_scores(xp: Any, x: Any, centres: Any, half_norms: Any) -> Any:
    """[n, L] ``x . c - |c|^2 / 2``: larger is nearer in L2, as an IVF quantizer ranks lists."""
    return x @ centres.T - half_norms[None, :]


def probe_lists(xp: Any, x: Any, centres: Any, nprobe: int, tile_bytes: int, workers: int = 1) -> Any:
    """[n, nprobe] int64 ids of each row's nearest lists, nearest first."""
    half = 0.5 * squared_norms(xp, centres)
    probes = xp.empty((x.shape[0], nprobe), dtype=xp.int64)
    lists = xp.arange(centres.shape[0], dtype=xp.int64)

    def tile(span: tuple[int, int]) -> None:
        scores = list_scores(xp, x[span[0]:span[1]], centres, half)
        top, best = top_k(xp, scores, xp.broadcast_to(lists, scores.shape), nprobe)
        probes[span[0]:span[1]] = xp.take_along_axis(best, xp.argsort(-top, axis=1), axis=1)

    for _ in each(workers, tile, tiles(x.shape[0], tile_bytes // (16 * centres.shape[0] * workers), workers)):
        pass
    return probes


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


def ivf_neighbours(xp: Any, unit: Any, probes: Any, n_list: int, k: int, label: str = "",
                   workers: int = 1) -> tuple[Any, float]:
    """(ids [n, k] int64, -1 where fewer were found; GFLOP) of an IVF search, list by list.

    Each vector's home list is ``probes[:, 0]``. Probe rank by probe rank, every list's members
    are scored against all the rows probing it at that rank in one matrix product, and each row
    keeps its ``k`` best so far; within a rank a row probes one list, so lists run in parallel.
    """
    n, nprobe = probes.shape
    members = xp.argsort(probes[:, 0], kind="stable")
    member_bounds = to_host(xp.searchsorted(probes[members, 0], xp.arange(n_list + 1)))
    best_s = xp.full((n, k), -xp.inf, dtype=xp.float32)
    best_i = xp.full((n, k), -1, dtype=xp.int64)
    kth = xp.full(n, -xp.inf, dtype=xp.float32)  # each row's k-th best score so far
    progress = Progress(f"{label}expand: search", nprobe * n_list, "list probes")
    pairs = 0
    for rank in range(nprobe):
        # each list's probing rows, in row order (rank 0: exactly its members)
        probers = members if rank == 0 else xp.argsort(probes[:, rank], kind="stable")
        bounds = member_bounds if rank == 0 else to_host(xp.searchsorted(probes[probers, rank], xp.arange(n_list + 1)))

        def search(lst: int, rank: int = rank, probers: Any = probers, bounds: np.ndarray = bounds) -> int:
            ids = members[member_bounds[lst]:member_bounds[lst + 1]]
            queries = probers[bounds[lst]:bounds[lst + 1]]
            if not (ids.shape[0] and queries.shape[0]):
                return 0
            block = unit[ids]
            scores = (block if rank == 0 else unit[queries]) @ block.T
            size = int(scores.size)
            if rank:  # only rows with a score above their k-th best so far merge
                better = xp.nonzero((scores > kth[queries][:, None]).any(axis=1))[0]
                if not better.shape[0]:
                    return size
                scores, queries = scores[better], queries[better]
            top, found = top_k(xp, scores, xp.broadcast_to(ids, scores.shape), k)
            merged_s = xp.concatenate([best_s[queries], top], axis=1)
            merged_i = xp.concatenate([best_i[queries], found], axis=1)
            best_s[queries], best_i[queries] = top_k(xp, merged_s, merged_i, k)
            kth[queries] = best_s[queries].min(axis=1)
            return size

        costs = np.diff(bounds) * np.diff(member_bounds)
        for size in each(workers, search, np.argsort(-costs, kind="stable").tolist()):  # largest first
            pairs += size
            progress.advance(1)
    return best_i, 2.0 * pairs * unit.shape[1] / 1e9


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
