"""Streamed passes of the compress stage over a whole collection: one Lloyd pass's per-centre sums
(on local threads, on the Dask workers that hold the chunks, or through the device) and shuffled
mini-batches. Each holds a few chunks at a time, never the collection.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dask
import dask.local
import numpy as np
from rvc_index.compute.backend import Backend
from rvc_index.compute.lloyd import N_FAR
from rvc_index.compute.minibatch import KMeansState, PassStats, merge_stats, pass_stats
from rvc_index.compute.two_level import build_tree, coarse_cells
from rvc_index.data.feature_set import FeatureSet
from rvc_index.runtime.progress import Progress
from rvc_index.runtime.stream import block_tasks, iter_blocks, local_threads


def shuffled_batches(features: FeatureSet, batch_rows: int, max_rows: int, rng: np.random.Generator,
                     client: Any | None = None) -> Iterator[np.ndarray]:
    """Batches of ``batch_rows`` rows: chunks in a seeded random order, rows shuffled inside.

    Stops after ``max_rows`` rows (several passes when it exceeds the collection). Every batch is
    the same buffer, refilled in place: use it before asking for the next.
    """
    emitted, have = 0, 0
    batch = np.empty((batch_rows, features.dim), dtype=np.float32)
    while emitted < max_rows:
        order = rng.permutation(len(features.chunks))
        for block in iter_blocks(features.array.blocks[order.tolist()], client):
            perm = rng.permutation(block.shape[0])
            start = 0
            while start < perm.shape[0]:
                take = min(batch_rows - have, perm.shape[0] - start)
                batch[have:have + take] = block[perm[start:start + take]]
                have, start = have + take, start + take
                if have == batch_rows:
                    yield batch
                    emitted, have = emitted + batch_rows, 0
                    if emitted >= max_rows:
                        return
    # a final partial batch is dropped: every update sees a full batch


def chunk_stats(block: np.ndarray, centres: np.ndarray, coarse: np.ndarray | None, nprobe: int,
                spread: int = 1) -> PassStats:
    """One chunk's per-centre sums against ``centres`` (numpy): what a Dask worker computes."""
    tree = build_tree(np, centres, coarse, spread) if coarse is not None else None
    return pass_stats(np, centres, tree, np.ascontiguousarray(block, dtype=np.float32), nprobe, N_FAR)


def final_pass_stats(features: FeatureSet, state: KMeansState, backend: Backend, nprobe: int,
                     client: Any | None, progress: Progress | None = None,
                     cell_cache: dict[int, Any] | None = None) -> PassStats:
    """Per-centre sums of the whole collection, merged in chunk order (deterministic).

    With a Dask client and the CPU backend the sums are computed on the workers that hold the
    chunks (the centres are broadcast once, at most two chunks per worker in flight); otherwise
    chunks stream to this process and its device, and ``cell_cache`` (chunk index -> int16 [rows,
    nprobe]) keeps each row's nearest coarse cells for the next pass (the coarse centres never move).
    """
    xp = backend.xp
    total: PassStats | None = None
    if client is not None and not backend.is_gpu:
        centres = backend.to_host(state.centres)
        coarse = None if state.coarse is None else backend.to_host(state.coarse)
        shared = client.scatter([centres] if coarse is None else [centres, coarse], broadcast=True,
                                hash=False)  # own keys: the last pass's, being cancelled, may hold the same data
        coarse_f = shared[1] if len(shared) > 1 else None
        tasks = [dask.delayed(chunk_stats, pure=False)(block, shared[0], coarse_f, nprobe, state.spread)
                 for block in block_tasks(features.array)]
        window = 2 * max(1, len(client.scheduler_info().get("workers", {})))
        pending: deque[Any] = deque()
        for task in tasks + [None] * window:
            if task is not None:
                pending.append(client.compute(task))
            if len(pending) >= window or (task is None and pending):
                future = pending.popleft()
                part = future.result()
                future.release()
                total = merge_stats(np, total, part)
                if progress is not None:
                    progress.advance(part.rows)
        client.cancel(shared)
        return total
    tree = state.current_tree(xp)

    def chunk_part(index: int, block: Any) -> PassStats:
        cells = None
        if tree is not None and cell_cache is not None:
            cells = cell_cache.get(index)
            if cells is None:
                cells = cell_cache[index] = coarse_cells(xp, tree, block, nprobe)
        return pass_stats(xp, state.centres, tree, block, nprobe, N_FAR, cells)

    if backend.is_gpu or client is not None or local_threads() == 1:
        for index, block in enumerate(iter_blocks(features.array, client)):
            part = chunk_part(index, backend.asarray(block))
            total = merge_stats(xp, total, part)
            if progress is not None:
                progress.advance(part.rows)
        return total
    from threadpoolctl import threadpool_limits

    def one_chunk(index: int, task: Any) -> PassStats:
        return chunk_part(index, np.asarray(task.compute(scheduler=dask.local.get_sync)))

    threads = local_threads()
    with threadpool_limits(1), ThreadPoolExecutor(threads) as pool:  # one chunk per core, one BLAS thread each
        pending: deque[Any] = deque()
        for index, task in enumerate(block_tasks(features.array) + [None] * threads):
            if task is not None:
                pending.append(pool.submit(one_chunk, index, task))
            if len(pending) >= threads or (task is None and pending):
                part = pending.popleft().result()  # merged in chunk order: the same sums on any machine
                total = merge_stats(np, total, part)
                if progress is not None:
                    progress.advance(part.rows)
    return total
