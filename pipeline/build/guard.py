"""Memory guard: estimate each stage's peak from the plan, refuse what cannot fit before it starts.

A build killed by the kernel's OOM killer (or a Dask nanny) loses its work without a word; a
refusal names the stage, its estimate and what limits memory. The estimate is computed from
what the headers say (rows, width, file sizes) and the config (chunk size, K, index layout),
before any value is read, and checked again before every stage against the memory available
then. Each stage is (transient, retained): bytes held while it runs, and bytes it leaves
held for the stages after it (the index, expanded vectors). Terms are upper bounds; see
``docs/reliability.md`` for how they compare with measured peaks.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil

from rvc_index.errors import RvcIndexError
from rvc_index.compute.backend import Backend
from rvc_index.stages.compress import plan_compression, plan_kmeans
from rvc_index.config.schema import Config
from rvc_index.stages.expand import EXACT_MAX_ROWS, MIX_CPU_BYTES
from rvc_index.data.feature_set import plan_chunks
from rvc_index.stages.indexing import IVF_FLAT, plan_index
from rvc_index.compute.kmeans import MAX_TILE_ELEMENTS
from rvc_index.runtime.progress import get_logger
from rvc_index.data.sources import Manifest

F32 = 4
MB = 2**20
FAISS_BLOCK = 4096 * 1024  # faiss's exhaustive search block (queries x database) of float32 distances
STREAM_HELD = 2  # chunks held while streaming: 1 prefetched + 1 in use (stream.iter_blocks)
STREAM_LOADING = 1  # on local threads, a chunk's files being read (sources.load_group) next to the chunk
LIST_GROWTH = 1.5  # inverted lists and the refine store grow as std::vectors (capacity up to 2x)
MIN_CHUNK_MB = 1.0
STAGE_HINTS = {
    "check": "lower source.chunk_mb or run it with a Dask client (batch)",
    "compress": "lower compress.n_centroids, compress.sample_rows or compress.batch_rows",
    "expand": "lower expand.spill_mb (spill to disk) or expand.tile_mb",
    "train": "lower index.max_train_rows_per_list",
    "add": "enable compression (compress.row_threshold) to store centroids instead of every row",
    "evaluate": "lower evaluate.recall_queries",
    "write": "lower source.chunk_mb",
}


class StageMemoryError(RvcIndexError, MemoryError):
    """A stage's estimated peak does not fit in the memory available to this process."""


def mb(n_bytes: float) -> str:
    """``1,234 MB``."""
    return f"{n_bytes / MB:,.0f} MB"


@dataclass(frozen=True)
class StageEstimate:
    stage: str
    transient: int  # bytes held while the stage runs
    retained: int  # bytes the stage leaves held for later stages
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
        stat_file = root / Path(limit_file).parent / "memory.stat"
        inactive = 0
        try:
            for line in stat_file.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == inactive_key:
                    inactive = int(value)
        except (OSError, ValueError):
            pass
        limit = int(limit_text)
        return limit - (usage - inactive), f"cgroup memory limit {mb(limit)}"
    return None


def _dask_worker_limit() -> int | None:
    """The Dask worker's memory limit times the fraction at which its nanny kills it, if in one."""
    try:
        import dask
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return None
    limit = getattr(getattr(worker, "memory_manager", None), "memory_limit", None)
    if not limit:
        return None
    fraction = dask.config.get("distributed.worker.memory.terminate", 0.95) or 1.0
    return int(limit * fraction)


def memory_budget(limit_mb: float = 0.0) -> Budget:
    """The least of: free memory, the cgroup's room, ``ulimit -v``, the Dask worker's limit, ``limit_mb``."""
    process = psutil.Process()
    info = process.memory_info()
    options = [(int(psutil.virtual_memory().available), "available memory on this machine")]
    cgroup = _cgroup_available()
    if cgroup is not None:
        options.append(cgroup)
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        options.append((soft - info.vms, f"address-space limit (ulimit -v) {mb(soft)}"))
    worker = _dask_worker_limit()
    if worker is not None:
        options.append((worker - info.rss, f"Dask worker memory limit (nanny kills at {mb(worker)})"))
    if limit_mb:
        options.append((int(limit_mb * MB) - info.rss, f"safety.memory_limit_mb={limit_mb:g}"))
    available, source = min(options)
    return Budget(max(0, available), f"{source}; this process holds {mb(info.rss)}")


def estimate_stages(manifest: Manifest, config: Config, backend: Backend, chunk_mb: float,
                    local: bool) -> list[StageEstimate]:
    """(transient, retained) bytes of each stage of a build of ``manifest`` with ``config``."""
    n, dim = manifest.rows, manifest.dim
    row = dim * F32
    threads = os.cpu_count() or 1
    chunks = plan_chunks([f.bytes for f in manifest.files], max(1, int(chunk_mb * MB)))
    chunk = max(sum(f.rows for f in manifest.files[a:b]) for a, b in chunks) * row
    stream = chunk * (min(len(chunks), STREAM_HELD) + (min(len(chunks), STREAM_LOADING) if local else 0))
    biggest = max(f.bytes + f.rows * row * 5 // 4 for f in manifest.files)  # file, float32 copy, finite mask
    at_once = min(threads, len(chunks)) if local else 0  # on local threads; with a client, on the workers
    stages = [StageEstimate("check", at_once * biggest, 0, f"{at_once} files of up to {mb(biggest)} checked at once")]

    compression = plan_compression(n, config.compress)
    vectors = n
    if compression.apply:
        k = compression.n_centroids
        if config.compress.method == "sklearn":
            transient, what = 2 * n * row + stream, f"all {n:,} rows held twice (sklearn)"
        else:
            kplan = plan_kmeans(n, k, config.compress, backend)
            tile = min(8192, MAX_TILE_ELEMENTS // k) * k * F32  # one [rows, centres] distance tile
            sample = kplan.sample_rows * row  # filled in place from the chunks in flight (stream.take_rows)
            transient = sample + stream + 5 * k * row + 2 * tile + 2 * kplan.batch_rows * row
            what = f"sample {kplan.sample_rows:,} rows, {k:,} centres, batches of {kplan.batch_rows:,} rows"
        stages.append(StageEstimate("compress", transient, k * row, what))
        vectors = k

    if config.expand.enabled:
        spill = F32 * vectors * dim > config.expand.spill_mb * MB
        neighbours = min(config.expand.num_expand, vectors)
        exact_limit = config.expand.exact_max_rows or EXACT_MAX_ROWS[backend.name]
        exact = config.expand.method == "exact" or (config.expand.method == "auto" and vectors <= exact_limit)
        buffers = 0 if spill else vectors * row
        work = int(config.expand.tile_mb * MB) + MIX_CPU_BYTES * threads + 3 * vectors * neighbours * 8
        if not exact:
            work += vectors * row // 4  # IVF route: list-training sample and probes
        stages.append(StageEstimate("expand", buffers + work + stream, buffers,
                                    f"{vectors:,} x {dim} unit and expanded vectors "
                                    f"{'spilled to disk' if spill else 'in memory'}, {mb(work)} of tiles"))

    plan = plan_index(vectors, dim, config.index)
    sample = plan.train_rows * row  # filled from the chunks in flight, then shuffled into a copy (+ PQ residuals)
    train = max(sample + stream, 2 * sample) + (sample if plan.recipe != IVF_FLAT else 0) + 2 * plan.n_list * row
    stages.append(StageEstimate("train", train, plan.n_list * row,
                                f"{plan.train_rows:,} training rows, {plan.n_list:,} lists"))
    per_vector = row + 8 + (plan.pq_m // 2 if plan.recipe != IVF_FLAT else 0)
    index = int(vectors * per_vector * LIST_GROWTH)
    batch = config.index.add_batch_rows * row * 2 + min(config.index.add_batch_rows * plan.n_list, FAISS_BLOCK) * F32
    stages.append(StageEstimate("add", batch + stream, index,
                                f"index of {vectors:,} x {dim} vectors ({mb(index)} with list growth)"))
    if config.evaluate.recall_queries:
        q = min(config.evaluate.recall_queries, n)
        k = config.index.search_k
        # queries; exact k-NN tiles of 8192 rows (distances, masked copy, int64 partition); float64 blends
        work = q * row * 4 + q * 8192 * 24 + 2 * q * k * dim * 8 + min(vectors, 65536) * row + q * plan.n_list * F32
        stages.append(StageEstimate("evaluate", work + stream, 0, f"{q:,} queries, chunks of up to {mb(chunk)}"))
    stages.append(StageEstimate("write", stream if config.output.write_total_fea else 0, 0, "streamed"))
    return stages


def peak(stages: list[StageEstimate]) -> tuple[int, StageEstimate, list[StageEstimate]]:
    """The largest (bytes held by earlier stages + this stage's need), the stage reaching it, and
    the earlier stages whose retained bytes are held then."""
    held: list[StageEstimate] = []
    best: tuple[int, StageEstimate, list[StageEstimate]] = (0, stages[0], [])
    for estimate in stages:
        total = sum(s.retained for s in held) + estimate.need
        if total > best[0]:
            best = (total, estimate, list(held))
        if estimate.retained:
            held.append(estimate)
    return best


@dataclass
class MemoryGuard:
    """The checked plan of one build: ``check(stage)`` before each stage; ``report()`` for report.json."""

    stages: dict[str, StageEstimate]
    chunk_mb: float
    mode: str
    limit_mb: float
    headroom: float
    label: str = ""
    peak_bytes: int = 0
    shrunk_from: float | None = None
    rss_start: int = field(default_factory=lambda: psutil.Process().memory_info().rss)

    def check(self, stage: str) -> None:
        """Refuse ``stage`` if its need no longer fits in what is available now.

        What this process grew by beyond the bytes earlier stages retain is freed memory its
        allocator kept: the stage can reuse it, so it counts as available.
        """
        estimate = self.stages.get(stage)
        if self.mode == "off" or estimate is None or not estimate.need:
            return
        held = 0
        for name, earlier in self.stages.items():
            if name == stage:
                break
            held += earlier.retained
        grown = max(0, psutil.Process().memory_info().rss - self.rss_start - held)
        budget = memory_budget(self.limit_mb)
        budget = Budget(budget.available + grown, budget.source)
        if estimate.need > budget.available * self.headroom:
            raise StageMemoryError(refusal(self.label, estimate, estimate.need, budget, self.headroom))

    def report(self) -> dict[str, Any]:
        return {"guard": self.mode, "chunk_mb": self.chunk_mb, "shrunk_from_chunk_mb": self.shrunk_from,
                "estimated_peak_mb": round(self.peak_bytes / MB, 1),
                "stages_mb": {name: round(s.need / MB, 1) for name, s in self.stages.items()}}


def refusal(label: str, estimate: StageEstimate, need: int, budget: Budget, headroom: float,
            held: list[StageEstimate] | None = None) -> str:
    """The message of a refused plan or stage: what, how much, what limits it, what to change."""
    prefix = f"{label}: " if label else ""
    if held:  # the whole plan: its peak is this stage on top of what earlier stages keep
        biggest = max(held, key=lambda s: s.retained)
        what = (f"the plan would peak at about {mb(need)} in the {estimate.stage} stage ("
                f"{mb(sum(s.retained for s in held))} kept from earlier stages, {biggest.detail}; "
                f"this stage {mb(estimate.need)}: {estimate.detail})")
        hints = [STAGE_HINTS[estimate.stage], STAGE_HINTS[biggest.stage]]
    else:
        what = f"the {estimate.stage} stage would need about {mb(need)} ({estimate.detail})"
        hints = [STAGE_HINTS[estimate.stage]]
    return (f"{prefix}{what} but only {mb(budget.available * headroom)} can be used ({budget.source}, "
            f"safety.memory_headroom={headroom:g}); {', or '.join(dict.fromkeys(hints))}; "
            "or set safety.memory_guard=off to try anyway")


def guard_build(manifest: Manifest, config: Config, backend: Backend, local: bool, label: str = "") -> MemoryGuard:
    """Check the whole plan against the memory available now; in ``shrink`` mode try smaller chunks.

    Raises StageMemoryError (naming the stage) when no plan fits.
    """
    safety = config.safety
    chunk_mb = config.source.chunk_mb

    def make(size: float) -> tuple[MemoryGuard, int, StageEstimate, list[StageEstimate]]:
        stages = estimate_stages(manifest, config, backend, size, local)
        top, stage, held = peak(stages)
        guard = MemoryGuard({s.stage: s for s in stages}, size, safety.memory_guard, safety.memory_limit_mb,
                            safety.memory_headroom, label, top)
        return guard, top, stage, held

    guard, top, stage, held = make(chunk_mb)
    if safety.memory_guard == "off":
        return guard
    budget = memory_budget(safety.memory_limit_mb)
    usable = budget.available * safety.memory_headroom
    if top <= usable:
        return guard
    size = chunk_mb
    while safety.memory_guard == "shrink" and size / 2 >= MIN_CHUNK_MB:
        size /= 2
        smaller, smaller_top, _, _ = make(size)
        if smaller_top <= usable:
            get_logger().warning("%s%s: memory: source.chunk_mb lowered from %g to %g so that the plan's peak "
                                 "(%s) fits in %s (%s)", f"{label}: " if label else "", manifest.feature_dir,
                                 chunk_mb, size, mb(smaller_top), mb(usable), budget.source)
            return replace(smaller, shrunk_from=chunk_mb)
    raise StageMemoryError(refusal(label, stage, top, budget, safety.memory_headroom, held))
