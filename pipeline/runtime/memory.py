"""Memory arithmetic shared by every stage's estimate and the build's guard: what a stage will hold
(``StageEstimate``), what this process may still allocate (``memory_budget``) and its peak so far.

Portable: psutil everywhere; ``resource`` (POSIX only) is imported where it exists, never at import time.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

F32 = 4
MB = 2**20
STREAM_HELD = 2  # chunks held while streaming: 1 prefetched + 1 in use (runtime.stream.iter_blocks)
STREAM_LOADING = 1  # on local threads, a chunk's files being read (sources.load_group) next to the chunk


def mb(n_bytes: float) -> str:
    """``1,234 MB``."""
    return f"{n_bytes / MB:,.0f} MB"


@dataclass(frozen=True)
class StageEstimate:
    """Bytes one stage holds while it runs (``transient``) and leaves held for later stages (``retained``)."""

    stage: str
    transient: int
    retained: int
    detail: str  # the largest terms, for messages

    @property
    def need(self) -> int:
        return self.transient + self.retained


@dataclass(frozen=True)
class Budget:
    """What this process may still allocate, and which limit binds."""

    available: int
    source: str


def _cgroup_available() -> tuple[int, str] | None:
    """limit - (usage - inactive file cache) of this container's cgroup (v2, else v1)."""
    for limit_file, usage_file, inactive_key in (("memory.max", "memory.current", "inactive_file"),
                                                 ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes",
                                                  "total_inactive_file")):
        root = Path("/sys/fs/cgroup")
        try:
            limit_text = (root / limit_file).read_text().strip()
            usage = int((root / usage_file).read_text())
        except (OSError, ValueError):
            continue
        if not limit_text.isdigit() or int(limit_text) >= 2**60:  # "max" or the v1 "unlimited" value
            return None
        inactive = 0
        try:
            for line in (root / Path(limit_file).parent / "memory.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == inactive_key:
                    inactive = int(value)
        except (OSError, ValueError):
            pass
        limit = int(limit_text)
        return limit - (usage - inactive), f"cgroup memory limit {mb(limit)}"
    return None


def _address_space_limit() -> int | None:
    """``ulimit -v`` in bytes, or None (unlimited, or a platform without it)."""
    rlimit_as = getattr(psutil, "RLIMIT_AS", None)
    if rlimit_as is None:
        return None
    soft, _ = psutil.Process().rlimit(rlimit_as)
    return None if soft in (psutil.RLIM_INFINITY, -1) else int(soft)


def _dask_worker_limit() -> int | None:
    """The Dask worker's memory limit times the fraction at which its nanny kills it, if in one."""
    if "distributed" not in sys.modules:  # no worker can be running in this process
        return None
    import dask
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:
        return None
    limit = getattr(getattr(worker, "memory_manager", None), "memory_limit", None)
    if not limit:
        return None
    fraction = dask.config.get("distributed.worker.memory.terminate", 0.95) or 1.0
    return int(limit * fraction)


def memory_budget(limit_mb: float = 0.0) -> Budget:
    """The least of: free memory, the cgroup's room, ``ulimit -v``, the Dask worker's limit, ``limit_mb``."""
    info = psutil.Process().memory_info()
    options = [(int(psutil.virtual_memory().available), "available memory on this machine")]
    cgroup = _cgroup_available()
    if cgroup is not None:
        options.append(cgroup)
    address_space = _address_space_limit()
    if address_space is not None:
        options.append((address_space - info.vms, f"address-space limit (ulimit -v) {mb(address_space)}"))
    worker = _dask_worker_limit()
    if worker is not None:
        options.append((worker - info.rss, f"Dask worker memory limit (nanny kills at {mb(worker)})"))
    if limit_mb:
        options.append((int(limit_mb * MB) - info.rss, f"safety.memory_limit_mb={limit_mb:g}"))
    available, source = min(options)
    return Budget(max(0, available), f"{source}; this process holds {mb(info.rss)}")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (the current RSS where no peak is kept)."""
    try:
        import resource  # POSIX only: the kernel's high-water mark
    except ImportError:
        resource = None
    if resource is not None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (MB if sys.platform == "darwin" else 1024.0)
    info = psutil.Process().memory_info()
    return getattr(info, "peak_wset", info.rss) / MB  # Windows keeps the peak working set


def _glibc() -> Any | None:
    """glibc through ctypes, or None (another platform or libc)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018 (musl has neither)
    except (OSError, AttributeError):
        return None
    return libc


def release_freed_memory() -> None:
    """Hand the heap's freed pages back to the OS (glibc ``malloc_trim``; elsewhere nothing).

    Worker threads allocate from arenas of their own, and glibc keeps what they free: after the init's
    per-cell threads, 150-350 MB of freed arrays stayed resident and the next phase's arrays came on top
    (a 10M-row build peaked at 1,270 MiB, 910 with a trim between phases). Dask's workers trim the same way.
    """
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
HEAP_BELOW = 32 * MB  # allocations below come from the heap, not a mapping of their own
KEEP_FREED = 256 * MB  # freed heap kept for the next allocation, up to this


def keep_freed_memory() -> str | None:
    """Let glibc reuse freed memory instead of unmapping it and faulting fresh pages in for the next array;
    returns what changed (for the log), or None.

    By default glibc maps arrays above an adaptive threshold on their own and trims the heap's freed top
    at twice that: each Lloyd pass's per-chunk arrays and the init's per-cell arrays came back as fresh
    pages, 2 GB of page faults in a 300,000-row build. Arrays below ``HEAP_BELOW`` now come from the heap
    and up to ``KEEP_FREED`` of freed heap stays mapped (:func:`release_freed_memory` still hands all of it
    back between phases): fewer page faults and a faster build (docs/benchmarks.md, "Lab notes").
    """
    libc = _glibc()
    if libc is None:
        return None
    if not (libc.mallopt(M_MMAP_THRESHOLD, HEAP_BELOW) and libc.mallopt(M_TRIM_THRESHOLD, KEEP_FREED)):
        return None
    return f"glibc keeps freed memory: arrays below {mb(HEAP_BELOW)} from the heap, {mb(KEEP_FREED)} of it kept"


THP_DEFRAG = Path("/sys/kernel/mm/transparent_hugepage/defrag")
HUGE_PAGES_FROM = 64 * MB  # ``zeros_in_huge_pages``: smaller arrays are plain ``numpy.zeros``


def zeros_in_huge_pages(shape: tuple[int, ...], dtype: Any) -> Any:
    """``numpy.zeros(shape, dtype)`` in an anonymous mapping of its own advised for transparent huge pages (Linux;
    elsewhere, or below ``HUGE_PAGES_FROM``, plain ``numpy.zeros``).

    For the one large array a k-means pass scatters rows into (its running [K, D] sums: 536 MB at 174,648 x 768):
    with 4 KB pages nearly every row added misses the TLB, and the CLI turns numpy's huge-page advice off for every
    other array (``avoid_compaction_stalls``). The mapping is private: shared anonymous memory takes huge pages
    only where ``shmem_enabled`` allows (docs/benchmarks.md, "Lab notes")."""
    import mmap

    import numpy as np

    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if nbytes < HUGE_PAGES_FROM or advice is None:
        return np.zeros(shape, dtype)
    try:
        region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # private: shared anonymous
        region.madvise(advice)  # memory takes huge pages only where shmem_enabled says so
    except (OSError, ValueError):  # no such advice here: plain pages
        return np.zeros(shape, dtype)
    return np.frombuffer(region, dtype=dtype).reshape(shape)  # zero-filled; unmapped with the array


def avoid_compaction_stalls(defrag: Path = THP_DEFRAG) -> str | None:
    """Turn numpy's huge-page advice off where the kernel compacts memory synchronously for advised
    regions; returns why (for the log), or None when nothing changed.

    numpy advises huge pages for every array of 4 MB and more. With transparent huge pages' ``defrag``
    at ``madvise`` (or ``always``, ``defer+madvise``), each fault of such an array may stall on
    compaction, and a build's page cache full of feature files leaves memory fragmented: a build is
    slower with the advice (docs/benchmarks.md, "Lab notes"). Only before numpy is imported (it reads
    ``NUMPY_MADVISE_HUGEPAGE`` then), and never over a value the user set.
    """
    if "NUMPY_MADVISE_HUGEPAGE" in os.environ or "numpy" in sys.modules:
        return None
    try:
        selected = defrag.read_text().split("[", 1)[1].split("]", 1)[0]
    except (OSError, IndexError):
        return None
    if selected not in ("always", "madvise", "defer+madvise"):
        return None
    os.environ["NUMPY_MADVISE_HUGEPAGE"] = "0"
    return f"numpy's huge-page advice off: transparent huge pages defrag={selected} compacts memory on fault"
