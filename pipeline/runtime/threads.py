"""The one way host work is spread over local threads: ``in_threads`` (results in order, optionally a bounded
window ahead, one BLAS thread per worker), and how many threads a local pass takes (``local_threads``)."""

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
    """``fn(item)`` for every item, results in order. With ``workers`` > 1, on that many threads; ``ahead`` > 0:
    at most that many items submitted and not yet taken, the one being yielded included, so that large results
    (a chunk's sums, a loaded chunk) waiting for an earlier one stay few; 0: every item at once (small results,
    uneven items: no worker waits for a slow item ahead of it). ``one_blas_thread``: each thread's matrix
    products on one BLAS thread (no BLAS thread waits for a descheduled sibling, so small products stay fast on
    a busy machine). Items must write disjoint outputs."""
    if workers <= 1:
        yield from map(fn, items)
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas") if one_blas_thread else nullcontext(), \
            ThreadPoolExecutor(workers) as pool:
        if not ahead:
            yield from pool.map(fn, items)
            return
        pending: deque[Any] = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
