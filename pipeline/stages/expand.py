"""Expand stage: database-side alpha query expansion, kept in RVC's feature scale.

Each vector ``x`` is replaced by ``|x| * normalise(sum_j max(0, cos(x, n_j)) ** alpha * n_j)`` over
its ``num_expand`` nearest neighbours ``n_j`` by cosine (unit vectors, itself included), so the
index stays in raw HuBERT feature scale (the contract, point 6); ``scale: unit`` keeps unit norm.

Neighbours come from an exact matrix-product top-k when that is cheap, else from an IVF search
written over ``xp``: lists by k-means on a sample, each list's members scored against all the
queries that probe it in one matrix product. ``nprobe`` is the smallest whose recall, measured on
a sample of queries against their exact neighbours, reaches ``target_recall``. With faiss-gpu the
IVF search runs in a ``GpuIndexIVFFlat`` over the same lists. The normalised copy and the result
are [N, D] float32 in memory, or temporary memory-mapped ``.npy`` files above ``spill_mb``.
"""

from __future__ import annotations

import errno
import os
import tempfile
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np
from rvc_index.compute.backend import Backend, to_host
from rvc_index.compute.kernels import squared_norms
from rvc_index.compute.neighbours import (
    exact_neighbours,
    faiss_gpu_neighbours,
    ivf_neighbours,
    probe_lists,
    probe_recall,
    tiles,
)
from rvc_index.compute.warm import ensure_warm
from rvc_index.config.schema import ExpandConfig
from rvc_index.errors import RvcIndexError
from rvc_index.runtime.memory import F32, StageEstimate
from rvc_index.runtime.outputs import temp_name
from rvc_index.runtime.progress import Progress, get_logger
from rvc_index.runtime.run import Run
from rvc_index.runtime.stream import sample_row_ids
from rvc_index.stages.indexing import train_coarse

FLOOR = 1e-9  # norm floor of both normalisations
MIX_CPU_BYTES = 8 * 2**20  # gathered neighbours per mixing batch on a CPU: stays in cache
TRAIN_ROWS_PER_LIST = 40  # k-means sample for the IVF lists (faiss wants >= 39 per centroid)


class ExpandError(RvcIndexError, ValueError):
    """Expansion cannot run on this input (non-finite values, no room for the spill file)."""


@dataclass(frozen=True)
class ExpandPlan:
    """The decisions of one expansion: neighbours and their weights, spill to disk or not, exact or IVF
    neighbour search (and the IVF route's lists, probes and recall target)."""

    n_rows: int
    dim: int
    neighbours: int
    spill: bool  # unit and expanded copies as memory-mapped temporary files
    method: Literal["exact", "ivf"]
    tile_bytes: int
    reason: str
    alpha: float  # neighbour weight max(0, cos) ** alpha
    scale: Literal["feature", "unit"]  # unit: the stored rows stay L2-normalised
    n_list: int = 0  # IVF route: lists (0 on the exact route)
    nprobe: int = 0  # IVF route: lists each row probes; 0 = the smallest reaching target_recall on a sample
    target_recall: float = 0.96
    max_nprobe: int = 64
    recall_queries: int = 128  # rows whose exact neighbours measure the IVF route's recall; 0 = skip
    train_iterations: int = 3  # k-means iterations of the IVF lists


def plan_expansion(n_rows: int, dim: int, config: ExpandConfig, backend: Backend) -> ExpandPlan:
    """Spill when a copy of the vectors passes ``spill_mb``; exact k-NN up to ``exact_max_rows`` (0: the device
    profile's limit), else IVF over ``n_list`` lists (0: round(sqrt(N)), at most N / 40)."""
    exact_limit = config.exact_max_rows or backend.profile.exact_max_rows
    method = config.method if config.method != "auto" else "exact" if n_rows <= exact_limit else "ivf"
    reason = (f"expand.method={config.method}" if config.method != "auto" else
              f"{n_rows:,} rows {'<=' if method == 'exact' else '>'} {exact_limit:,} on the {backend.name}")
    n_list = 0
    if method == "ivf":
        n_list = max(1, min(config.n_list or int(round(np.sqrt(n_rows))), n_rows // TRAIN_ROWS_PER_LIST))
        reason += f": {n_list:,} lists"
    return ExpandPlan(n_rows, dim, min(config.num_expand, n_rows), F32 * n_rows * dim > config.spill_mb * 2**20,
                      method, int(config.tile_mb * 2**20), reason, config.alpha, config.scale, n_list,
                      min(config.nprobe, n_list), config.target_recall, config.max_nprobe, config.recall_queries,
                      config.train_iterations)


def expand_estimate(plan: ExpandPlan, threads: int, stream: int) -> StageEstimate:
    """Unit and expanded copies (unless spilled), tiles, neighbour ids; keeps the expanded copy."""
    row = plan.dim * F32
    buffers = 0 if plan.spill else plan.n_rows * row
    work = plan.tile_bytes + MIX_CPU_BYTES * threads + 3 * plan.n_rows * plan.neighbours * 8
    if plan.method != "exact":
        work += plan.n_rows * row // 4  # IVF route: list-training sample and probes
    return StageEstimate("expand", buffers + work + stream, buffers,
                         f"{plan.n_rows:,} x {plan.dim} unit and expanded vectors "
                         f"{'spilled to disk' if plan.spill else 'in memory'}, {work / 2**20:,.0f} MB of tiles")


@dataclass
class Expansion:
    """The expanded vectors [N, D] float32 (in memory or a memory map) and what was done."""

    vectors: np.ndarray
    neighbours: int  # neighbours mixed into each vector, itself included
    alpha: float
    scale: str  # feature: each row has its original norm; unit: rows are L2-normalised
    method: str  # exact | ivf | ivf-faiss-gpu
    mean_cosine: float  # mean cos(vector, its expansion) over non-zero rows
    storage: str  # memory | memmap
    n_list: int = 0
    nprobe: int = 0
    neighbour_recall: float | None = None  # vs exact neighbours, on recall_queries sampled rows
    recall_queries: int = 0
    knn_gflop: float = 0.0  # matrix-product work of the neighbour search
    neighbour_ids: np.ndarray | None = field(default=None, repr=False)  # [N, k] int64, -1 = none
    timings: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def alpha_weights(xp: Any, cos: Any, alpha: float) -> Any:
    """``max(0, cos) ** alpha``: the clamp keeps non-integer alpha from producing NaN."""
    return xp.maximum(cos, 0.0) ** alpha


def expand_rows(xp: Any, unit: Any, rows: Any, ids: Any, norms: Any, alpha: float, scale: str) -> tuple[Any, Any]:
    """(expanded rows [b, d], cos of each row to its expansion [b]) for ``rows`` [b, d] of ``unit``.

    ``ids`` [b, k] are the rows' neighbours in ``unit`` (-1 = none, weight 0). A row with nothing
    to mix in (weights all 0) keeps its own direction; zero rows stay zero.
    """
    neighbours = unit[xp.maximum(ids, 0)]  # [b, k, d]
    weights = alpha_weights(xp, xp.einsum("bd,bkd->bk", rows, neighbours), alpha) * (ids >= 0)
    total = xp.einsum("bk,bkd->bd", weights.astype(rows.dtype), neighbours)
    length = xp.sqrt(squared_norms(xp, total))
    direction = xp.where((length > FLOOR)[:, None], total / xp.maximum(length, FLOOR)[:, None], rows)
    cosine = xp.einsum("ij,ij->i", rows, direction)
    scaled = direction * (norms > 0)[:, None] if scale == "unit" else direction * norms[:, None]
    return scaled, cosine


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def row_buffer(n: int, dim: int, spill_dir: Path | None, spill: bool, name: str) -> np.ndarray:
    """An [n, dim] float32 buffer: in memory, or a memory-mapped temporary ``.npy`` in ``spill_dir``.

    The file has a temporary name (a killed build's leftover is removed by the next build) and is
    unlinked as soon as it is mapped where the OS allows it (POSIX), else when the map is freed.
    """
    if not spill:
        return np.empty((n, dim), dtype=np.float32)
    folder = Path(spill_dir) if spill_dir is not None else Path(tempfile.gettempdir())
    path = temp_name(folder / f"expand-{name}.npy")
    size = 4 * n * dim
    try:
        with open(path, "wb") as handle:
            np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False, "shape": (n, dim)})
            offset = handle.tell()
            size = offset + 4 * n * dim
            if hasattr(os, "posix_fallocate"):  # reserve the space: ENOSPC now rather than SIGBUS later
                os.posix_fallocate(handle.fileno(), 0, size)
            else:
                handle.truncate(size)
    except OSError as exc:
        _unlink_quietly(path)
        if exc.errno == errno.ENOSPC:
            raise ExpandError(f"{folder}: no room for {size / 2**20:.0f} MB of {name} vectors "
                              "(free space there or raise expand.spill_mb)") from exc
        raise ExpandError(f"{path}: cannot create the spill file: {exc.strerror or exc}") from exc
    array = np.memmap(path, dtype=np.float32, mode="r+", offset=offset, shape=(n, dim))
    try:
        path.unlink()
    except OSError:  # Windows: an open map cannot be deleted
        weakref.finalize(array, _unlink_quietly, path)
    return array


def expand(vectors: Any, plan: ExpandPlan, run: Run[Backend], spill_dir: str | Path | None = None) -> Expansion:
    """Alpha-query-expand ``vectors`` [N, D] (numpy, memmap or dask; streamed once) as ``plan`` says; the
    temporary files of a spilled expansion go in ``spill_dir`` (None: the system's).

    CPU work runs on ``faiss.omp_get_max_threads()`` threads (the build's thread budget).
    """
    log = get_logger()
    backend = run.backend
    xp = backend.xp
    prefix = run.prefix
    n, dim = int(vectors.shape[0]), int(vectors.shape[1])
    if n == 0:
        raise ExpandError("expand: there are no vectors to expand")
    if (n, dim) != (plan.n_rows, plan.dim):
        raise ExpandError(f"expand: the plan is for {plan.n_rows:,} x {plan.dim} vectors, not {n:,} x {dim}")
    ensure_warm(backend)
    k, tile_bytes, spill = plan.neighbours, plan.tile_bytes, plan.spill
    workers = 1 if backend.is_gpu else max(1, faiss.omp_get_max_threads())
    timings: dict[str, float] = {}
    began = started = time.perf_counter()
    unit = row_buffer(n, dim, spill_dir, spill, "unit")
    norms = _normalise_into(unit, run.blocks(vectors), Progress(f"{prefix}expand: normalise", n), run, workers)
    dev = backend.to_device(unit)
    timings["normalise"] = round(time.perf_counter() - started, 4)

    started = time.perf_counter()
    steps: dict[str, float] = {}
    method = plan.method
    result: dict[str, Any] = {}
    if method == "exact":
        log.info("%sexpand: exact %d-NN by matrix products (%s)", prefix, k, plan.reason)
        ids = exact_neighbours(xp, dev, dev, k, tile_bytes, workers)
        knn_gflop = 2.0 * n * n * dim / 1e9
    else:
        ids, knn_gflop, result = _ivf(run, unit, dev, plan, workers, steps)
        method = result.pop("method")
    backend.sync()
    previous = started
    for step, ended in steps.items():  # the IVF route's own steps
        timings[f"neighbours.{step}"], previous = round(ended - previous, 4), ended
    timings["neighbours"] = round(time.perf_counter() - started, 4)

    started = time.perf_counter()
    out = row_buffer(n, dim, spill_dir, spill, "expanded")
    batch = max(1, (tile_bytes if backend.is_gpu else MIX_CPU_BYTES) // (4 * k * dim))
    device_norms = backend.asarray(norms)
    progress = Progress(f"{prefix}expand: mix", n)

    def mix(span: tuple[int, int]) -> Any:
        rows_ids = backend.asarray(ids[span[0]:span[1]], dtype=xp.int64)
        expanded, cosine = expand_rows(xp, dev, dev[span[0]:span[1]], rows_ids, device_norms[span[0]:span[1]],
                                       plan.alpha, plan.scale)
        out[span[0]:span[1]] = backend.to_host(expanded)
        return cosine.astype(xp.float64).sum()  # stays on the device: summed there, read once

    cos_total, spans = xp.zeros((), dtype=xp.float64), tiles(n, batch, 1)
    for span, total in zip(spans, run.map(mix, spans, workers)):
        cos_total = cos_total + total
        progress.advance(span[1] - span[0])
    cos_sum = float(cos_total)
    if isinstance(out, np.memmap):
        out.flush()
    timings["mix"] = round(time.perf_counter() - started, 4)

    expansion = Expansion(out, k, float(plan.alpha), plan.scale, method, cos_sum / max(int((norms > 0).sum()), 1),
                          "memmap" if spill else "memory", knn_gflop=round(knn_gflop, 3), timings=timings,
                          neighbour_ids=backend.to_host(ids), seconds=time.perf_counter() - began,
                          **result)
    log.info("%sexpand: %d neighbours, alpha %g, %s, mean cos to expansion %.4f, %s scale, %s, %.2f s",
             prefix, k, plan.alpha, method, expansion.mean_cosine, plan.scale,
             "spilled to a memory-mapped temporary file" if spill else "in memory", expansion.seconds)
    return expansion


def _normalise_into(unit: np.ndarray, blocks: Iterable[np.ndarray], progress: Progress, run: Run[Backend],
                    workers: int) -> np.ndarray:
    """Write the L2-normalised rows of ``blocks`` (floor 1e-9) into ``unit``; return their norms [N]."""
    norms = np.empty(unit.shape[0], dtype=np.float32)
    offset = 0
    for block in blocks:
        block = np.asarray(block, dtype=np.float32)

        def tile(span: tuple[int, int], block: np.ndarray = block, offset: int = offset) -> None:
            rows = block[span[0]:span[1]]
            lengths = np.sqrt(squared_norms(np, rows))
            if not np.isfinite(lengths).all():
                if not np.isfinite(rows).all():
                    raise ExpandError(f"expand: rows {offset + span[0]:,}..{offset + span[1]:,} hold NaN or Inf values")
                lengths = np.sqrt(squared_norms(np, rows.astype(np.float64))).astype(np.float32)  # squares overflowed
            np.divide(rows, np.maximum(lengths, FLOOR)[:, None], out=unit[offset + span[0]:offset + span[1]])
            norms[offset + span[0]:offset + span[1]] = lengths

        for _ in run.map(tile, tiles(block.shape[0], 8192, workers), workers):
            pass
        offset += block.shape[0]
        progress.advance(block.shape[0])
    return norms


def _ivf(run: Run[Backend], unit: np.ndarray, dev: Any, plan: ExpandPlan, workers: int,
         timings: dict[str, float]) -> tuple[Any, float, dict[str, Any]]:
    """Neighbour ids by the IVF route, its GFLOP, and what it decided (method, lists, nprobe, recall).

    ``timings`` gets the end time of each step (``time.perf_counter()``).
    """
    log = get_logger()
    backend, prefix = run.backend, run.prefix
    xp = backend.xp
    n, dim = unit.shape
    k, n_list, tile_bytes = plan.neighbours, plan.n_list, plan.tile_bytes
    rng = run.rng()
    sample = np.ascontiguousarray(unit[sample_row_ids(n, TRAIN_ROWS_PER_LIST * n_list, rng)])
    centres_host = train_coarse(sample, n_list, backend, plan.train_iterations, run.seed)
    centres = backend.asarray(centres_host)
    gflop = 2.0 * n * n_list * dim / 1e9  # probing
    timings["lists"] = time.perf_counter()

    nprobe, recall, queries = plan.nprobe, None, 0
    if plan.recall_queries:
        sample_ids = backend.asarray(sample_row_ids(n, plan.recall_queries, rng), dtype=xp.int64)
        queries = int(sample_ids.shape[0])
        truth = exact_neighbours(xp, dev[sample_ids], dev, k, tile_bytes, workers)
        gflop += 2.0 * queries * n * dim / 1e9
        by_nprobe = probe_recall(xp, dev, centres, sample_ids, truth,
                                 min(n_list, max(plan.max_nprobe, plan.nprobe)))
        if not nprobe:
            reached = np.nonzero(by_nprobe >= plan.target_recall)[0]
            nprobe = int(reached[0]) + 1 if len(reached) else len(by_nprobe)
            if not len(reached):
                log.warning("%sexpand: recall %.3f at expand.max_nprobe=%d is below the target %.2f",
                            prefix, by_nprobe[-1], nprobe, plan.target_recall)
        recall = float(by_nprobe[nprobe - 1])
    timings["recall_sample"] = time.perf_counter()
    log.info("%sexpand: IVF %d-NN over %d lists, nprobe %d (neighbour recall %s on %d sampled rows)",
             prefix, k, n_list, nprobe, "n/a" if recall is None else f"{recall:.3f}", queries)

    if backend.faiss_gpus:
        ids = faiss_gpu_neighbours(backend, np.asarray(unit), centres_host, nprobe, k, max(1, tile_bytes // (8 * dim)))
        method = "ivf-faiss-gpu"
    else:
        probes = probe_lists(xp, dev, centres, nprobe, tile_bytes, workers)
        timings["probe"] = time.perf_counter()
        ids, search_gflop = ivf_neighbours(xp, dev, probes, n_list, k, prefix, workers, tile_bytes)
        gflop += search_gflop
        method = "ivf"
    timings["search"] = time.perf_counter()
    short = int(to_host((ids < 0).any(axis=1)).sum())
    if short:
        log.warning("%sexpand: %d rows found fewer than %d neighbours in their %d probed lists (mixed with "
                    "what was found)", prefix, short, k, nprobe)
    return ids, gflop, {"method": method, "n_list": n_list, "nprobe": nprobe, "neighbour_recall": recall,
                        "recall_queries": queries}
