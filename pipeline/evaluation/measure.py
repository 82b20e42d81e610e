"""How an index searches, how fast and how big: search settings per call, single-thread latency, RAM.

Search settings are passed per call (faiss ``SearchParameters``), never written into the index, so
a sweep or an evaluation cannot change what a build then writes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import faiss
import numpy as np
from rvc_index.compute.backend import faiss_threads
from rvc_index.config.schema import SEARCH_K
from rvc_index.evaluation.result import Latency
from rvc_index.evaluation.sizing import FRAMES_PER_SECOND
from rvc_index.inspection.describe import list_sizes


def reconstruct_blocks(index: faiss.Index, block_rows: int = 8192) -> Iterator[np.ndarray]:
    """The stored vectors, as RVC's ``reconstruct_n`` returns them, in id order and in blocks (small
    enough to be recycled memory, not fresh pages)."""
    for start in range(0, index.ntotal, block_rows):
        yield index.reconstruct_n(start, min(block_rows, index.ntotal - start))


def stored_rows(index: faiss.Index, ids: np.ndarray) -> np.ndarray:
    """[len(ids), d] float32: stored vectors ``ids`` (unique, >= 0) as ``reconstruct_n`` returns them, found
    without a pass over the index: flat codes by id, IVF lists through their ids (no direct map needed)."""
    ids = np.asarray(ids, np.int64)
    typed = faiss.downcast_index(index)
    if isinstance(typed, faiss.IndexRefine):
        return stored_rows(typed.refine_index, ids)
    out = np.zeros((len(ids), index.d), np.float32)
    if not len(ids):
        return out
    if not isinstance(typed, faiss.IndexIVF):  # flat codes, or any other index: by id, as faiss can
        return typed.reconstruct_batch(ids)
    order = np.argsort(ids)
    wanted, found = ids[order], 0
    invlists = typed.invlists
    for list_no in range(typed.nlist):
        size = invlists.list_size(list_no)
        if not size:
            continue
        pointer = invlists.get_ids(list_no)
        list_ids = faiss.rev_swig_ptr(pointer, size).copy()
        invlists.release_ids(list_no, pointer)
        for offset in np.nonzero(np.isin(list_ids, wanted))[0].tolist():
            row = int(order[np.searchsorted(wanted, list_ids[offset])])
            typed.reconstruct_from_offset(list_no, offset, faiss.swig_ptr(out[row]))
            found += 1
    if found != len(ids):
        raise IndexError(f"{len(ids) - found} of {len(ids)} ids are not stored in the index")
    return out


def ivf_or_none(index: faiss.Index) -> Any:
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def search_params(index: faiss.Index, nprobe: int | None = None, keep: np.ndarray | None = None,
                  k_factor: float | None = None) -> Any:
    """faiss SearchParameters for one call: ``nprobe`` and ``k_factor`` (default: the stored ones)
    and an optional bool [ntotal] ``keep`` mask of the ids that may be returned."""
    ivf = ivf_or_none(index)
    selector = bitmap = None
    if keep is not None:
        bitmap = np.packbits(np.asarray(keep, dtype=bool), bitorder="little")
        selector = faiss.IDSelectorBitmap(len(keep), faiss.swig_ptr(bitmap))
    if ivf is not None:
        params = faiss.SearchParametersIVF(nprobe=int(nprobe or ivf.nprobe))
    else:
        params = faiss.SearchParameters()
    if selector is not None:
        params.sel = selector
    alive = [selector, bitmap]  # the C++ side holds raw pointers to these
    typed = faiss.downcast_index(index)
    if isinstance(typed, faiss.IndexRefine):
        alive.append(params)
        params = faiss.IndexRefineSearchParameters(k_factor=float(k_factor or typed.k_factor),
                                                    base_index_params=params)
    params.referenced = alive
    return params


def short_search_share(index: faiss.Index, queries: np.ndarray, k: int = SEARCH_K) -> float:
    """Share of ``queries`` whose search at the stored settings returns a ``-1`` label, without searching:
    those whose ``nprobe`` probed lists together hold fewer than ``k`` vectors (a re-ranking index only
    re-ranks what its IVF returns). One coarse search: ``q x n_list`` distances instead of the lists' codes."""
    ivf = ivf_or_none(index)
    if ivf is None:
        return 0.0 if index.ntotal >= k else 1.0
    sizes = list_sizes(index)
    _, probed = ivf.quantizer.search(np.ascontiguousarray(queries, np.float32), min(int(ivf.nprobe), int(ivf.nlist)))
    held = np.where(probed >= 0, sizes[np.maximum(probed, 0)], 0).sum(axis=1)
    return float((held < k).mean()) if len(held) else 0.0


def search_latency(index: faiss.Index, queries: np.ndarray, k: int = SEARCH_K, params: Any = None,
                   batch_frames: int = FRAMES_PER_SECOND, repeats: int = 5) -> Latency:
    """Single-thread search time in batches of ``batch_frames`` (one second of audio).

    ``us_per_frame`` is the searching thread's CPU time (what a thread of its own gets: other
    processes on a shared machine do not change it); ``us_per_frame_wall`` the wall-clock time
    (equal on an idle machine). Each batch keeps its fastest of ``repeats`` runs.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    batches = [queries[i:i + batch_frames] for i in range(0, len(queries), batch_frames)]
    if len(batches) > 1 and len(batches[-1]) < batch_frames:
        batches.pop()
    with faiss_threads(1):
        index.search(batches[0], k, params=params)  # warm-up: first touch of the lists
        cpu = np.full((repeats, len(batches)), np.inf)
        wall = np.full((repeats, len(batches)), np.inf)
        for r in range(repeats):
            for j, batch in enumerate(batches):
                started_cpu, started_wall = time.thread_time(), time.perf_counter()
                index.search(batch, k, params=params)
                cpu[r, j] = time.thread_time() - started_cpu
                wall[r, j] = time.perf_counter() - started_wall
    frames = sum(len(b) for b in batches)
    us_per_frame = float(cpu.min(axis=0).sum() / frames * 1e6)
    return Latency(round(us_per_frame, 2), round(float(wall.min(axis=0).sum() / frames * 1e6), 2),
                   round(us_per_frame * FRAMES_PER_SECOND / 1000, 3), batch_frames, len(batches), repeats)


def index_ram_bytes(index: faiss.Index) -> int:
    """Bytes the index's arrays take in RAM (codes, ids, centroids, codebooks)."""
    typed = faiss.downcast_index(index)
    if isinstance(typed, faiss.IndexRefine):
        return index_ram_bytes(typed.base_index) + index_ram_bytes(typed.refine_index)
    if isinstance(typed, faiss.IndexFlatCodes):
        return int(typed.ntotal * typed.code_size)
    if isinstance(typed, faiss.IndexIVF):
        sizes = list_sizes(typed)
        invlists = faiss.downcast_InvertedLists(typed.invlists)
        if isinstance(invlists, faiss.BlockInvertedLists):
            codes = int((-(-sizes // invlists.n_per_block)).sum() * invlists.block_size)
        else:
            codes = int(sizes.sum() * typed.code_size)
        extra = 0
        if hasattr(typed, "pq"):
            extra = int(typed.pq.M * typed.pq.ksub * typed.pq.dsub * 4)
        return index_ram_bytes(typed.quantizer) + codes + int(sizes.sum()) * 8 + extra
    return int(faiss.serialize_index(index).size)
