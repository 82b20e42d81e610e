"""Dask at the edge: compute per-chunk tasks and stream chunks of a dask array in order.

With a ``distributed`` client the work runs on the cluster's workers; with ``client=None`` it
runs on local threads. Nothing here holds more than ``prefetch`` chunks at once. A ``ChunkSource``
(a feature collection that loads its own chunks) streams on local threads without a dask graph,
so a build without a cluster never imports dask (a quarter of a command's start: docs/benchmarks.md, "Lab notes").
"""

from __future__ import annotations

import functools
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from rvc_index.runtime.threads import in_threads, local_threads

if TYPE_CHECKING:
    import dask.array as da


class ReadCounter:
    """Feature rows read from files in this process (thread-safe): the data passes a build makes.

    Loaders add to :data:`ROWS_READ`; a build with local threads divides by its rows to count its
    full reads (with a ``distributed`` cluster the workers' processes count their own).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rows = 0

    def add(self, rows: int) -> None:
        with self._lock:
            self.rows += int(rows)


ROWS_READ = ReadCounter()


def counted_load(loader: Callable[..., np.ndarray], *args: Any) -> np.ndarray:
    """``loader(*args)``, its rows added to :data:`ROWS_READ`."""
    rows = loader(*args)
    ROWS_READ.add(rows.shape[0])
    return rows


@runtime_checkable
class ChunkSource(Protocol):
    """Rows in chunks that this process loads itself (``data.feature_set.FeatureSet``); its ``array``
    attribute, the same rows as a lazy dask array, serves a cluster (not a protocol member: checking
    for it would build it)."""

    @property
    def chunk_rows(self) -> tuple[int, ...]: ...

    @property
    def shape(self) -> tuple[int, int]: ...

    def load_chunk(self, index: int, out: np.ndarray | None = None) -> np.ndarray: ...


def block_tasks(array: da.Array) -> list[Any]:
    """One delayed object per row-chunk of a 2-D dask array, in row order."""
    return list(array.to_delayed().ravel())


def each_result(tasks: Sequence[functools.partial[Any]], client: Any | None = None) -> Iterator[tuple[int, Any]]:
    """(index, result) of every task (a ``functools.partial``): on the cluster as dask tasks keyed by their
    arguments, as each completes, or called on local threads, in order."""
    if not tasks:
        return
    if client is not None:
        import dask
        from distributed import as_completed

        futures = client.compute([dask.delayed(task.func, pure=True)(*task.args, **task.keywords)
                                  for task in tasks])
        index = {future.key: i for i, future in enumerate(futures)}
        for future in as_completed(futures):
            result = future.result()
            future.release()
            yield index[future.key], result
        return
    calls = in_threads(lambda task: task(), tasks, local_threads(os.cpu_count() or 1), one_blas_thread=False)
    yield from enumerate(calls)


def iter_blocks(array: da.Array | np.ndarray | ChunkSource, client: Any | None = None, prefetch: int = 1,
                block_rows: int = 65536) -> Iterator[np.ndarray]:
    """Yield the row-chunks of ``array`` as numpy arrays, in order, loading ahead ``prefetch``.

    An in-memory numpy array is yielded in slices of ``block_rows``.
    """
    if isinstance(array, np.ndarray):
        for start in range(0, array.shape[0], block_rows):
            yield array[start:start + block_rows]
        return
    if isinstance(array, ChunkSource):
        if client is None:
            yield from load_chunks(array, range(len(array.chunk_rows)), prefetch)
            return
        array = array.array
    tasks = block_tasks(array)
    if client is not None:
        yield from map(np.asarray, in_order(client.compute, tasks, prefetch))
        return
    import dask.local  # a dask array is here: dask is imported already

    yield from _on_threads([lambda task=task: task.compute(scheduler=dask.local.get_sync) for task in tasks], prefetch)


def load_chunks(source: ChunkSource, indices: Sequence[int], prefetch: int = 1) -> Iterator[np.ndarray]:
    """Chunks ``indices`` of ``source``, loaded on ``prefetch`` local threads, in order."""
    yield from _on_threads([lambda index=index: source.load_chunk(index) for index in indices], prefetch)


def _on_threads(loads: Sequence[Callable[[], Any]], prefetch: int) -> Iterator[np.ndarray]:
    """The results of ``loads``, in order, at most ``prefetch`` running ahead on local threads."""
    for result in in_threads(lambda load: load(), loads, max(1, prefetch), ahead=max(1, prefetch),
                             one_blas_thread=False):
        yield np.asarray(result)


def in_order(submit: Callable[[Any], Any], items: Sequence[Any], ahead: int) -> Iterator[Any]:
    """``submit(item)`` for each item (a ``distributed`` client's ``compute``, a pool's ``submit``), at most
    ``ahead`` submitted; each future's result in order. A ``distributed`` future is released once the caller is
    done with its result."""
    pending: deque[Any] = deque()
    next_item = 0
    while next_item < len(items) or pending:
        while next_item < len(items) and len(pending) < max(1, ahead):
            pending.append(submit(items[next_item]))
            next_item += 1
        future = pending.popleft()
        yield future.result()
        if hasattr(future, "release"):
            future.release()


def iter_batches(array: da.Array | np.ndarray | ChunkSource, batch_rows: int,
                 client: Any | None = None) -> Iterator[np.ndarray]:
    """Yield consecutive [<= batch_rows, D] slices of the array, streaming chunk by chunk."""
    for block in iter_blocks(array, client):
        for start in range(0, block.shape[0], batch_rows):
            yield block[start:start + batch_rows]


def take_rows(array: da.Array | np.ndarray | ChunkSource, row_ids: np.ndarray,
              client: Any | None = None) -> np.ndarray:
    """Rows ``row_ids`` (sorted, unique) of ``array`` as a numpy array [len(row_ids), D].

    Only the chunks holding those rows load, streamed in order into one preallocated result: the
    peak is the result plus the chunks in flight, never the gathered pieces and their copy.
    """
    row_ids = np.asarray(row_ids, dtype=np.int64)
    if isinstance(array, np.ndarray):
        return array[row_ids]
    local = isinstance(array, ChunkSource) and client is None
    if isinstance(array, ChunkSource) and not local:
        array = array.array
    chunk_rows = array.chunk_rows if local else array.chunks[0]
    out = np.empty((len(row_ids), array.shape[1]), dtype=np.float32 if local else array.dtype)
    if not len(row_ids):
        return out
    bounds = np.concatenate([[0], np.cumsum(chunk_rows)])
    per_block = np.searchsorted(row_ids, bounds)  # row_ids[per_block[b]:per_block[b + 1]] lie in block b
    needed = [b for b in range(len(chunk_rows)) if per_block[b + 1] > per_block[b]]
    blocks = load_chunks(array, needed, 1) if local else iter_blocks(array.blocks[needed], client)
    for block_id, block in zip(needed, blocks):
        lo, hi = per_block[block_id], per_block[block_id + 1]
        out[lo:hi] = block[row_ids[lo:hi] - bounds[block_id]]
    return out


def sample_row_ids(n_rows: int, n_sample: int, rng: np.random.Generator) -> np.ndarray:
    """``min(n_sample, n_rows)`` distinct row ids drawn uniformly, sorted."""
    if n_sample >= n_rows:
        return np.arange(n_rows, dtype=np.int64)
    return np.sort(rng.choice(n_rows, size=n_sample, replace=False)).astype(np.int64)
