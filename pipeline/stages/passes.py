"""A collection's rows as row sources of the k-means core (``compute.lloyd.Rows``): one Lloyd pass's "assign and
accumulate" on local threads (``ChunkRows``), on the Dask workers that hold the chunks (``DaskRows``) or staged
through the device (``StagedRows``), merged in chunk order (the same sums on any machine); and shuffled
mini-batches. Each holds a few chunks at a time, never the collection.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rvc_index.compute.backend import Backend
from rvc_index.compute.kernels import squared_norms
from rvc_index.compute.knn import distance_tile_rows
from rvc_index.compute.lloyd import Assigner, Exact, PassSums, accumulate, merge
from rvc_index.compute.two_level import FixedCells, TwoLevel
from rvc_index.data.feature_set import FeatureSet
from rvc_index.runtime.progress import Progress
from rvc_index.runtime.run import Run
from rvc_index.runtime.stream import block_tasks, in_order, load_chunks


def shuffled_batches(features: FeatureSet, batch_rows: int, max_rows: int, rng: np.random.Generator,
                     run: Run[Backend]) -> Iterator[np.ndarray]:
    """Batches of ``batch_rows`` rows: chunks in a seeded random order, rows shuffled inside.

    Stops after ``max_rows`` rows (several passes when it exceeds the collection). Every batch is
    the same buffer, refilled in place: use it before asking for the next.
    """
    emitted, have = 0, 0
    batch = np.empty((batch_rows, features.dim), dtype=np.float32)
    while emitted < max_rows:
        order = rng.permutation(len(features.chunks))
        blocks = load_chunks(features, order) if run.local else run.blocks(features.array.blocks[order.tolist()])
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


@dataclass
class PassCache:
    """What one Lloyd pass over a collection leaves for the next: each chunk's coarse cells (int16 [rows,
    probes], -1 where not known yet; the coarse centres never move) and its rows' squared norms (float32
    [rows]: 1/D of the chunk) and, on local threads, the chunk buffers the threads read into (fresh pages cost
    more than the read itself)."""

    keep_norms: bool = True  # False when no pass follows (one Lloyd pass: 40 MB at 10M rows for nothing)
    cells: dict[int, Any] = field(default_factory=dict)
    norms: dict[int, Any] = field(default_factory=dict)
    complete: set[int] = field(default_factory=set)  # chunks whose every row's cells are known
    buffers: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)

    def seed_cells(self, xp: Any, chunk_rows: Sequence[int], row_ids: Any, cells: Any) -> None:
        """Known cells [n, probes] of the rows ``row_ids`` [n] (sorted ids in the collection), e.g. the
        init sample's: the first pass finds the coarse cells of the other rows only."""
        starts = np.concatenate([[0], np.cumsum(chunk_rows)]).astype(np.int64)
        bounds = np.searchsorted(np.asarray(row_ids), starts)
        ids = xp.asarray(row_ids)
        for index, rows in enumerate(chunk_rows):
            known = xp.full((rows, cells.shape[1]), -1, dtype=xp.int16)
            lo, hi = int(bounds[index]), int(bounds[index + 1])
            known[ids[lo:hi] - int(starts[index])] = cells[lo:hi]
            self.cells[index] = known

    def chunk_cells(self, xp: Any, index: int, assigner: Assigner, block: Any) -> Any:
        """Chunk ``index``'s coarse cells (None for exact assignment), found for the rows not known yet and kept."""
        cells = self.cells.get(index)
        if index in self.complete and cells is not None and cells.shape[0] == block.shape[0]:
            return cells
        found = None
        if cells is None or cells.shape[0] != block.shape[0]:
            found = cells = assigner.cells(xp, block)
        else:  # the rows left unknown only, a tile at a time (gathered copies of a few MB; numpy)
            rows = distance_tile_rows(assigner.coarse.shape[0])
            for start in range(0, block.shape[0], rows):
                part = cells[start:start + rows]
                missing = np.flatnonzero(part[:, 0] < 0)
                if missing.size:
                    part[missing] = assigner.cells(xp, block[start:start + rows][missing])
        if cells is not None:
            self.cells[index] = cells
            self.complete.add(index)
        return found if found is not None else cells

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


class CollectionPasses:
    """A row source over a collection's chunks on a ``run``: counts its passes and shows each one's progress."""

    def __init__(self, features: FeatureSet, run: Run[Backend], label: str = "compress: Lloyd pass") -> None:
        self.features, self.run, self.label = features, run, label
        self.n_rows, self.passes = features.n_rows, 0

    def next_pass(self) -> Progress:
        self.passes += 1
        return Progress(f"{self.label} {self.passes}", self.n_rows)


class ChunkRows(CollectionPasses):
    """The chunks of a collection on local threads (one chunk per core, one BLAS thread each; numpy), each
    read into a buffer ``cache`` hands from chunk to chunk and pass to pass, assigned and summed there
    (sparse sums when the centres outnumber its rows), merged in chunk order."""

    def __init__(self, features: FeatureSet, run: Run[Backend], cache: PassCache | None = None,
                 label: str = "compress: Lloyd pass") -> None:
        super().__init__(features, run, label)
        self.cache, self.threads = cache or PassCache(), run.workers()

    def pass_sums(self, xp: Any, assigner: Assigner, n_far: int) -> PassSums | None:
        progress = self.next_pass()
        features, cache = self.features, self.cache
        rows = features.max_chunk_rows

        def one_chunk(index: int) -> PassSums:
            buffer = None if features.is_resident else cache.buffer(rows, features.dim)
            try:  # a kept collection's chunk is in memory already: no buffer to read it into
                block = features.load_chunk(index, buffer)
                return accumulate(xp, assigner, block, cache.chunk_norms(xp, index, block),
                                  cache.chunk_cells(xp, index, assigner, block), n_far, compact=True)
            finally:
                if buffer is not None:
                    cache.buffers.put(buffer)  # the sums hold copies: the next chunk may overwrite it

        total = None  # merged in chunk order: the same sums on any machine
        for part in self.run.map(one_chunk, range(len(features.chunks)), self.threads, ahead=self.threads):
            total = merge(xp, total, part, n_far)
            progress.advance(part.rows)
        return total


@dataclass(frozen=True)
class AssignSpec:
    """What a Dask worker needs to rebuild the assigner (small: the coarse centres and cell bounds)."""

    kind: str  # exact | two-level | fixed
    coarse: np.ndarray | None = None
    spread: int = 1
    nprobe: int = 1
    offsets: np.ndarray | None = None

    @staticmethod
    def of(backend: Backend, assigner: Assigner) -> AssignSpec:
        if isinstance(assigner, FixedCells):
            return AssignSpec("fixed", backend.to_host(assigner.coarse), offsets=assigner.offsets)
        if isinstance(assigner, TwoLevel):
            return AssignSpec("two-level", backend.to_host(assigner.coarse), assigner.spread, assigner.nprobe)
        return AssignSpec("exact")

    def build(self) -> Assigner:
        if self.kind == "fixed":
            return FixedCells(np, self.coarse, self.offsets)
        if self.kind == "two-level":
            return TwoLevel(self.coarse, self.spread, self.nprobe)
        return Exact()


def chunk_sums(block: np.ndarray, centres: np.ndarray, spec: AssignSpec, n_far: int) -> PassSums:
    """One chunk's sums against ``centres`` (numpy): what a Dask worker computes."""
    assigner = spec.build()
    assigner.prepare(np, centres)
    block = np.ascontiguousarray(block, dtype=np.float32)
    return accumulate(np, assigner, block, None, assigner.cells(np, block), n_far, compact=True)


class DaskRows(CollectionPasses):
    """The chunks on the Dask workers that hold them: the centres broadcast once per pass, at most two chunks per
    worker in flight, the parts merged here in chunk order."""

    def pass_sums(self, xp: Any, assigner: Assigner, n_far: int) -> PassSums | None:
        import dask

        progress = self.next_pass()
        client, backend = self.run.client, self.run.backend
        shared = client.scatter([backend.to_host(assigner.centres), AssignSpec.of(backend, assigner)],
                                broadcast=True, hash=False)  # own keys: the last pass's may still be cancelled
        tasks = [dask.delayed(chunk_sums, pure=False)(block, shared[0], shared[1], n_far)
                 for block in block_tasks(self.features.array)]
        window = 2 * max(1, len(client.scheduler_info().get("workers", {})))
        total = None
        for part in in_order(client.compute, tasks, window):  # two chunks per worker in flight
            total = merge(np, total, part, n_far)
            progress.advance(part.rows)
        client.cancel(shared)
        return total


class StagedRows(CollectionPasses):
    """The chunks read on host threads (or fetched from a cluster) and staged through the device
    (``Backend.upload``: pinned, double-buffered, the copy of one chunk overlapping the reading of the next and
    the compute on the last), in tiles of ``tile_rows``; nothing comes back to the host."""

    def __init__(self, features: FeatureSet, run: Run[Backend], tile_rows: int,
                 label: str = "compress: streamed pass") -> None:
        super().__init__(features, run, label)
        self.tile_rows = tile_rows

    def pass_sums(self, xp: Any, assigner: Assigner, n_far: int) -> PassSums | None:
        progress = self.next_pass()
        total = None
        for block in self.run.backend.upload(self.run.blocks(self.features, prefetch=2)):
            for start in range(0, block.shape[0], self.tile_rows):
                tile = block[start:start + self.tile_rows]
                total = merge(xp, total, accumulate(xp, assigner, tile, None, assigner.cells(xp, tile), n_far), n_far)
            progress.advance(block.shape[0])
        return total


def collection_rows(features: FeatureSet, run: Run[Backend], cache: PassCache | None = None, tile_rows: int = 0,
                    label: str = "compress: Lloyd pass") -> Any:
    """The row source of a pass over the whole collection: staged through a device, on the Dask workers, or on
    local threads."""
    if run.backend.is_gpu:
        return StagedRows(features, run, tile_rows or features.max_chunk_rows, label)
    if not run.local:
        return DaskRows(features, run, label)
    return ChunkRows(features, run, cache, label)
