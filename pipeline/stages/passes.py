"""Streamed passes of the compress stage over a whole collection: one Lloyd pass's per-centre sums
(on local threads, on the Dask workers that hold the chunks, or through the device) and shuffled
mini-batches. Each holds a few chunks at a time, never the collection.
"""

from __future__ import annotations

import queue
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rvc_index.compute.backend import Backend
from rvc_index.compute.kmeans import distance_tile_rows, squared_norms
from rvc_index.compute.lloyd import N_FAR
from rvc_index.compute.minibatch import KMeansState, PassStats, merge_stats, pass_stats
from rvc_index.compute.two_level import CentreTree, build_tree, coarse_cells, fixed_tree
from rvc_index.data.feature_set import FeatureSet
from rvc_index.runtime.progress import Progress
from rvc_index.runtime.stream import block_tasks, iter_blocks, load_chunks, local_threads


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
        blocks = load_chunks(features, order) if client is None else \
            iter_blocks(features.array.blocks[order.tolist()], client)
        for block in blocks:
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
                spread: int = 1, offsets: np.ndarray | None = None) -> PassStats:
    """One chunk's per-centre sums against ``centres`` (numpy): what a Dask worker computes (``offsets``:
    the centres' fixed cells, else grouped by nearness)."""
    tree = None
    if coarse is not None:
        tree = fixed_tree(np, centres, coarse, offsets) if offsets is not None else build_tree(np, centres, coarse,
                                                                                                spread)
    block = np.ascontiguousarray(block, dtype=np.float32)
    cells = coarse_cells(np, tree, block, nprobe) if offsets is not None else None  # fixed cells: spares keep theirs
    return pass_stats(np, centres, tree, block, nprobe, N_FAR, cells)


@dataclass
class PassCache:
    """What one Lloyd pass over a collection leaves for the next: each chunk's nearest coarse cells
    (int16 [rows, nprobe], -1 where not known yet; the coarse centres never move) and its rows' squared
    norms (float32 [rows]: 1/D of the chunk) and, on local threads, the chunk buffers the threads read
    into (fresh pages cost more than the read itself)."""

    keep_norms: bool = True  # False when no pass follows (one Lloyd pass: 40 MB at 10M rows for nothing)
    cells: dict[int, Any] = field(default_factory=dict)
    norms: dict[int, Any] = field(default_factory=dict)
    complete: set[int] = field(default_factory=set)  # chunks whose every row's cells are known
    buffers: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)

    def seed_cells(self, xp: Any, chunk_rows: Sequence[int], row_ids: Any, cells: Any) -> None:
        """Known cells [n, nprobe] of the rows ``row_ids`` [n] (sorted ids in the collection), e.g. the
        init sample's: the first pass finds the coarse cells of the other rows only."""
        starts = np.concatenate([[0], np.cumsum(chunk_rows)]).astype(np.int64)
        bounds = np.searchsorted(np.asarray(row_ids), starts)
        ids = xp.asarray(row_ids)
        for index, rows in enumerate(chunk_rows):
            known = xp.full((rows, cells.shape[1]), -1, dtype=xp.int16)
            lo, hi = int(bounds[index]), int(bounds[index + 1])
            known[ids[lo:hi] - int(starts[index])] = cells[lo:hi]
            self.cells[index] = known

    def chunk_cells(self, xp: Any, index: int, tree: CentreTree, block: Any, nprobe: int) -> Any:
        """Chunk ``index``'s coarse cells, found for the rows not known yet and kept."""
        cells = self.cells.get(index)
        if cells is None or cells.shape != (block.shape[0], nprobe):
            cells = self.cells[index] = coarse_cells(xp, tree, block, nprobe)
        elif index not in self.complete:
            if xp is np:  # the rows left unknown only, a tile at a time (gathered copies of a few MB)
                rows = distance_tile_rows(tree.coarse.shape[0])
                for start in range(0, block.shape[0], rows):
                    part = cells[start:start + rows]
                    missing = np.flatnonzero(part[:, 0] < 0)
                    if missing.size:
                        part[missing] = coarse_cells(xp, tree, block[start:start + rows][missing], nprobe)
            else:  # a device finds every row's: no host round trip to count the unknown ones
                cells = self.cells[index] = xp.where(cells < 0, coarse_cells(xp, tree, block, nprobe), cells)
        self.complete.add(index)
        return cells

    def chunk_norms(self, xp: Any, index: int, block: Any) -> Any:
        """Chunk ``index``'s squared row norms, computed in the first pass and kept (``keep_norms``)."""
        norms = self.norms.get(index)
        if norms is None or norms.shape[0] != block.shape[0]:
            norms = squared_norms(xp, block)
            if self.keep_norms:
                self.norms[index] = norms
        return norms

    def adopt(self, memory: np.ndarray, rows: int, count: int) -> int:
        """Carve up to ``count`` chunk buffers of ``rows`` rows out of ``memory`` (a C-contiguous float32
        [n, D] array the caller is done with, e.g. the init sample): its pages are resident already, where
        new buffers would fault fresh pages in. Returns how many it made."""
        if not (isinstance(memory, np.ndarray) and memory.dtype == np.float32 and memory.ndim == 2
                and memory.flags.c_contiguous and rows > 0):
            return 0
        made = min(count, memory.shape[0] // rows)
        for i in range(made):
            self.buffers.put(memory[i * rows:(i + 1) * rows])
        return made

    def buffer(self, rows: int, dim: int) -> np.ndarray:
        """A float32 [rows, dim] chunk buffer: one a finished chunk handed back, else a new one."""
        try:
            buffer = self.buffers.get_nowait()
        except queue.Empty:
            return np.empty((rows, dim), np.float32)
        return buffer if buffer.shape[0] >= rows and buffer.shape[1] == dim else np.empty((rows, dim), np.float32)


def final_pass_stats(features: FeatureSet, state: KMeansState, backend: Backend, nprobe: int,
                     client: Any | None, progress: Progress | None = None,
                     cache: PassCache | None = None) -> PassStats:
    """Per-centre sums of the whole collection, merged in chunk order (deterministic).

    With a Dask client and the CPU backend the sums are computed on the workers that hold the
    chunks (the centres are broadcast once, at most two chunks per worker in flight); otherwise
    chunks stream to this process and its device, and ``cache`` keeps each row's nearest coarse cells
    and the chunk buffers for the next pass.
    """
    xp = backend.xp
    total: PassStats | None = None
    if client is not None and not backend.is_gpu:
        import dask

        centres = backend.to_host(state.centres)
        coarse = None if state.coarse is None else backend.to_host(state.coarse)
        shared = client.scatter([centres] if coarse is None else [centres, coarse], broadcast=True,
                                hash=False)  # own keys: the last pass's, being cancelled, may hold the same data
        coarse_f = shared[1] if len(shared) > 1 else None
        tasks = [dask.delayed(chunk_stats, pure=False)(block, shared[0], coarse_f, nprobe, state.spread, state.offsets)
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
    cache = cache if cache is not None else PassCache()

    def chunk_part(index: int, block: Any) -> PassStats:
        cells = None if tree is None else cache.chunk_cells(xp, index, tree, block, nprobe)
        return pass_stats(xp, state.centres, tree, block, nprobe, N_FAR, cells, cache.chunk_norms(xp, index, block))

    if backend.is_gpu or client is not None or local_threads() == 1:
        for index, block in enumerate(iter_blocks(features, client)):
            part = chunk_part(index, backend.asarray(block))
            total = merge_stats(xp, total, part)
            if progress is not None:
                progress.advance(part.rows)
        return total
    from threadpoolctl import threadpool_limits

    rows = features.max_chunk_rows

    def one_chunk(index: int) -> PassStats:
        if features.is_resident:  # the chunk is in memory already: no buffer to read it into
            return chunk_part(index, features.load_chunk(index))
        buffer = cache.buffer(rows, features.dim)
        try:
            return chunk_part(index, features.load_chunk(index, buffer))
        finally:
            cache.buffers.put(buffer)  # the stats hold copies: the next chunk may overwrite it

    threads = local_threads()
    with threadpool_limits(1), ThreadPoolExecutor(threads) as pool:  # one chunk per core, one BLAS thread each
        pending: deque[Any] = deque()
        for index in list(range(len(features.chunks))) + [None] * threads:
            if index is not None:
                pending.append(pool.submit(one_chunk, index))
            if len(pending) >= threads or (index is None and pending):
                part = pending.popleft().result()  # merged in chunk order: the same sums on any machine
                total = merge_stats(np, total, part)
                if progress is not None:
                    progress.advance(part.rows)
    return total
