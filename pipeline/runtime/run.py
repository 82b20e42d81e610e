"""One build's execution context, made once at the edge and handed to every stage with its data and its plan
(the model: cuVS's one ``resources`` handle): the device, the Dask client (None: this process's threads), the
seed and the label its log lines carry. ``Run.map`` spreads host work over local threads (``threads.in_threads``,
which the array code below the stages calls with the thread count a stage hands it), and ``Run.blocks`` /
``Run.batches`` / ``Run.take_rows`` / ``Run.completed`` are the one local-or-Dask source of a collection's rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
from rvc_index.runtime.stream import each_result, iter_batches, iter_blocks, take_rows
from rvc_index.runtime.threads import in_threads, local_threads

T = TypeVar("T")
R = TypeVar("R")


class Device(Protocol):
    """What the context needs to know of a device (``compute.backend.Backend`` is one)."""

    @property
    def is_gpu(self) -> bool: ...


D = TypeVar("D", bound=Device)


@dataclass(frozen=True)
class HostOnly:
    """The device of a run that computes nothing on one: reading and checking a collection (``HOST_RUN``)."""

    is_gpu: bool = False


@dataclass(frozen=True)
class Run(Generic[D]):
    """Where and how one build computes: ``backend`` (the device), ``client`` (a Dask client, None: local
    threads), ``seed`` (every random draw of the build starts from it) and ``label`` (its log lines' prefix)."""

    backend: D
    client: Any | None = None
    seed: int = 0
    label: str = ""

    @property
    def local(self) -> bool:
        """The chunks load on this process's threads (no Dask client)."""
        return self.client is None

    @property
    def prefix(self) -> str:
        """``"<label>: "`` for a log line ("" without a label)."""
        return f"{self.label}: " if self.label else ""

    def rng(self) -> np.random.Generator:
        """A generator seeded with the run's seed: each call starts the same sequence."""
        return np.random.default_rng(self.seed)

    def workers(self) -> int:
        """Threads for host work spread by ``map``: every core (at most 4: each holds a chunk in flight); one on
        a GPU, whose one stream runs the items in order."""
        return 1 if self.backend.is_gpu else local_threads()

    def map(self, fn: Callable[[T], R], items: Iterable[T], workers: int = 0, ahead: int = 0) -> Iterator[R]:
        """``fn(item)`` for every item, results in order, on ``workers`` local threads (0: ``self.workers()``)
        with one BLAS thread each; ``ahead`` > 0: at most that many in hand at once (``threads.in_threads``)."""
        return in_threads(fn, items, workers or self.workers(), ahead)

    def blocks(self, source: Any, prefetch: int = 1) -> Iterator[np.ndarray]:
        """The row blocks of ``source`` (a chunked collection, a dask or numpy array), in order: loaded on local
        threads, or computed on the cluster, ``prefetch`` ahead."""
        return iter_blocks(source, self.client, prefetch)

    def batches(self, source: Any, batch_rows: int) -> Iterator[np.ndarray]:
        """``source``'s rows in consecutive batches of ``batch_rows`` (the last one shorter)."""
        return iter_batches(source, batch_rows, self.client)

    def take_rows(self, source: Any, row_ids: np.ndarray) -> np.ndarray:
        """Rows ``row_ids`` of ``source``, in that order, reading only the chunks that hold them."""
        return take_rows(source, row_ids, self.client)

    def completed(self, tasks: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        """(index, result) of every task (a ``functools.partial``): Dask tasks on the cluster as each completes,
        or calls on local threads in order."""
        return each_result(tasks, self.client)


HOST_RUN: Run[HostOnly] = Run(HostOnly())  # local threads, seed 0: a collection opened outside a build
