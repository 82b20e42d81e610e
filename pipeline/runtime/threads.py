"""The one way host work is spread over local threads: ``in_threads`` (results in order, a bounded window
ahead, one BLAS thread per worker), and how many threads a local pass takes (``local_threads``)."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def local_threads(limit: int = 4) -> int:
    """Threads for a local pass: every core, at most ``limit`` (each holds a chunk in flight)."""
    return max(1, min(limit, os.cpu_count() or 1))


def in_threads(fn: Callable[[T], R], items: Iterable[T], workers: int, ahead: int = 0,
               one_blas_thread: bool = True) -> Iterator[R]:
    """``fn(item)`` for every item, results in order. With ``workers`` > 1, on that many threads, with at most
    ``ahead`` items submitted and not yet taken, the one being yielded included (0: two per worker): results
    waiting for an earlier one stay few. ``one_blas_thread``: each thread's matrix products on one BLAS thread (no BLAS
    thread waits for a descheduled sibling, so small products stay fast on a busy machine). Items must write
    disjoint outputs. Written here rather than ``pool.map``: that submits every item at once."""
    if workers <= 1:
        yield from map(fn, items)
        return
    from threadpoolctl import threadpool_limits

    window = max(1, ahead or 2 * workers)
    with threadpool_limits(1, user_api="blas") if one_blas_thread else nullcontext(), \
            ThreadPoolExecutor(workers) as pool:
        pending: deque[Any] = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
