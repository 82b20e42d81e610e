"""An experiment's validated files as one lazy dask array (``FeatureSet``).

The chunks are groups of whole files (about ``chunk_mb`` each), each loaded by a delayed
``sources.load_group``: the graph names files, it does not carry their data, and no process ever
holds more than a few chunks. Row ``i`` of the array is id ``i`` of the index.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from rvc_index.data.sources import (
    Experiment,
    Manifest,
    SourceError,
    load_group,
)
from rvc_index.data.value_check import RowCodes, check_and_sample
from rvc_index.runtime.memory import F32, MB, STREAM_HELD, STREAM_LOADING, StageEstimate, mb
from rvc_index.runtime.progress import DETAIL, get_logger
from rvc_index.runtime.run import HOST_RUN, Run
from rvc_index.runtime.stream import counted_load
from rvc_index.runtime.threads import local_threads

if TYPE_CHECKING:
    import dask.array as da


def plan_chunks(file_bytes: Sequence[int], chunk_bytes: int, parallel: int = 1) -> list[tuple[int, int]]:
    """Split files (in order) into contiguous [start, stop) groups of at most ``chunk_bytes``.

    Every group holds at least one file; a file larger than ``chunk_bytes`` is a group alone. The
    groups aim at ``ceil(total / chunk_bytes)`` rounded up to a multiple of ``parallel`` equal shares
    (each group closes at the file boundary nearest its share), so ``parallel`` threads streaming the
    chunks finish together instead of one core reading and computing the last chunk alone.
    """
    total = sum(file_bytes)
    count = max(1, -(-total // max(1, chunk_bytes)))
    count = -(-count // max(1, parallel)) * max(1, parallel)
    groups: list[tuple[int, int]] = []
    start, size, done = 0, 0, 0  # done: bytes in the closed groups
    for i, nbytes in enumerate(file_bytes):
        boundary = total * (len(groups) + 1) / count  # where the open group's share ends
        if i > start and (size + nbytes > chunk_bytes or done + size + nbytes / 2 > boundary):
            groups.append((start, i))
            start, size, done = i, 0, done + size
        size += nbytes
    if start < len(file_bytes):
        groups.append((start, len(file_bytes)))
    return groups


class DrawnRows(NamedTuple):
    rows: np.ndarray  # [n, D] float32
    ids: np.ndarray  # [n] int64, sorted: each row's id in the collection (row i of ``FeatureSet.array``)


class RowSample:
    """Rows drawn from every chunk during the value check (stratified by chunk, uniform inside): the
    k-means init sample without a read of its own. :meth:`take` hands them over once."""

    def __init__(self, rows: np.ndarray | None = None, ids: np.ndarray | None = None) -> None:
        self.rows = rows
        self.ids = ids

    def __len__(self) -> int:
        return 0 if self.rows is None else int(self.rows.shape[0])

    def take(self, n_rows: int, rng: np.random.Generator) -> DrawnRows | None:
        """``n_rows`` of the rows [n_rows, D] (all when fewer were drawn) with their ids, then forget
        them; None when fewer than 90 % of ``n_rows`` were drawn (the caller reads its own sample)."""
        rows, ids, self.rows, self.ids = self.rows, self.ids, None, None
        if rows is None or ids is None or rows.shape[0] < 0.9 * n_rows:
            return None
        if rows.shape[0] > n_rows:
            keep = np.sort(rng.choice(rows.shape[0], size=n_rows, replace=False))
            rows, ids = rows[keep], ids[keep]
        return DrawnRows(rows, ids)


def share_rows(sizes: Sequence[int], total: int) -> list[int]:
    """``total`` split over parts in proportion to ``sizes`` (largest remainders), at most ``sizes``."""
    sizes_a = np.asarray(sizes, dtype=np.float64)
    exact = sizes_a * (min(total, int(sizes_a.sum())) / max(sizes_a.sum(), 1.0))
    parts = np.floor(exact).astype(np.int64)
    short = int(min(total, sizes_a.sum())) - int(parts.sum())
    parts[np.argsort(-(exact - parts), kind="stable")[:short]] += 1
    return parts.tolist()


@dataclass(frozen=True)
class FeatureSet:
    """A validated collection: manifest, finite rows per file, and its lazy dask array."""

    experiment: Experiment
    manifest: Manifest
    file_rows: tuple[int, ...]  # finite rows per manifest file (NaN/Inf rows dropped)
    chunks: tuple[tuple[int, int], ...]  # [start, stop) file ranges
    dropped_rows: int = 0
    sample: RowSample = field(repr=False, compare=False, default_factory=RowSample)
    resident: tuple[np.ndarray, ...] = field(repr=False, compare=False, default=())  # every chunk, read once

    @property
    def is_resident(self) -> bool:
        """The chunks are in memory (kept by the value check): a pass over them reads no file."""
        return bool(self.resident)

    @functools.cached_property
    def array(self) -> da.Array:
        """The rows as a lazy dask array [n_rows, D] float32: one delayed ``load_group`` per chunk (built,
        and ``dask.array`` imported, on first use: a local build streams through :meth:`load_chunk`)."""
        return build_array(self.manifest, self.chunks, self.chunk_rows)

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_rows, self.dim

    @property
    def n_rows(self) -> int:
        return int(sum(self.file_rows))

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def chunk_rows(self) -> tuple[int, ...]:
        return tuple(sum(self.file_rows[a:b]) for a, b in self.chunks)

    @property
    def max_chunk_rows(self) -> int:
        """Rows of the largest chunk as the headers count them: a buffer any chunk loads into."""
        return max(sum(_header_rows(self.manifest, chunk)) for chunk in self.chunks)

    def load_chunk(self, index: int, out: np.ndarray | None = None) -> np.ndarray:
        """Chunk ``index`` as float32 [rows, D] (what block ``index`` of :attr:`array` computes), read
        into ``out`` (float32 [>= max_chunk_rows, D]) when given: a local pass reuses its buffers. A
        resident collection returns the chunk it holds (read-only to the caller; ``out`` is left alone)."""
        if self.resident:
            return self.resident[index]
        chunk = self.chunks[index]
        return counted_load(load_group, _chunk_paths(self.manifest, chunk), self.dim,
                            _header_rows(self.manifest, chunk), out)


def _chunk_paths(manifest: Manifest, chunk: tuple[int, int]) -> list[str]:
    return [str(manifest.path(f.name)) for f in manifest.files[chunk[0]:chunk[1]]]


def _header_rows(manifest: Manifest, chunk: tuple[int, int]) -> list[int]:
    """Each file's rows in ``chunk`` as its header says (``load_group`` checks each against the file)."""
    return [f.rows for f in manifest.files[chunk[0]:chunk[1]]]


def build_array(manifest: Manifest, chunks: Sequence[tuple[int, int]], chunk_rows: Sequence[int]) -> da.Array:
    """The lazy [rows, dim] float32 array: one delayed ``load_group`` per chunk of files."""
    import dask
    import dask.array as da

    pieces = []
    for chunk, rows in zip(chunks, chunk_rows):
        paths = _chunk_paths(manifest, chunk)
        token = dask.base.tokenize(paths, [(f.bytes, f.mtime_ns) for f in manifest.files[chunk[0]:chunk[1]]])
        header_rows = _header_rows(manifest, chunk)
        loader = dask.delayed(counted_load, pure=True, name=f"load-features-{token}")(
            load_group, paths, manifest.dim, header_rows)
        pieces.append(da.from_delayed(loader, shape=(rows, manifest.dim), dtype=np.float32))
    return da.concatenate(pieces, axis=0) if len(pieces) > 1 else pieces[0]


def open_feature_set(experiment: Experiment, manifest: Manifest, chunk_mb: float = 128.0,
                     on_bad_file: str = "error", run: Run[Any] | None = None, sample_rows: int = 0,
                     resident: bool = False, row_codes: RowCodes | None = None) -> FeatureSet:
    """Check every file's values on ``run``'s Dask workers or local threads (None: local threads, seed 0; NaN/Inf
    rows counted) and open it lazily. ``sample_rows`` > 0: the same read also draws about that many rows, in
    proportion to each chunk's rows (``FeatureSet.sample``, for the k-means init). On local threads the chunks are
    a multiple of the threads (``plan_chunks``). ``resident`` (local only: ``resident_fits``): the
    check keeps every chunk it reads (``FeatureSet.resident``), unless a file had to be skipped.
    ``row_codes`` (local only; a GPU build's ``compute.values.device_row_codes``): each chunk's values are
    checked on the device in one call while the threads read the next chunks (``check_and_sample``)."""
    log = get_logger()
    run = run or HOST_RUN
    local, seed = run.local, run.seed
    chunk_bytes = max(1, int(chunk_mb * 2**20))
    parallel = local_threads() if local else 1
    chunks = plan_chunks([f.bytes for f in manifest.files], chunk_bytes, parallel)
    header_rows = [_header_rows(manifest, chunk) for chunk in chunks]
    shares = share_rows([sum(rows) for rows in header_rows], sample_rows)
    offsets = np.concatenate([[0], np.cumsum(shares)]).astype(np.int64)
    sample = np.empty((int(offsets[-1]), manifest.dim), np.float32)
    resident = resident and local
    kept = [np.empty((sum(rows), manifest.dim), np.float32) for rows in header_rows] if resident else []
    tasks = [functools.partial(check_and_sample,  # locally the rows land in ``sample``
                               _chunk_paths(manifest, c), manifest.dim, rows, n, (seed, i),
                               sample[offsets[i]:offsets[i + 1]] if local else None,
                               kept[i] if resident else None, row_codes if local else None)
             for i, (c, rows, n) in enumerate(zip(chunks, header_rows, shares))]
    filled = np.zeros(len(chunks), dtype=np.int64)
    checked: list[list[int | str]] = [[] for _ in chunks]
    sample_file = np.empty(len(sample), np.int64)  # each drawn row's file (manifest index) and finite row in it
    sample_row = np.empty(len(sample), np.int64)
    for i, (results, rows, file_of, row_in_file) in run.completed(tasks):
        checked[i] = results
        at = slice(offsets[i], offsets[i] + rows.shape[0])
        if not local:
            sample[at] = rows
        sample_file[at], sample_row[at] = file_of + chunks[i][0], row_in_file
        filled[i] = rows.shape[0]
    if (filled < shares).any():  # chunks with fewer finite rows than their share: close the gaps, in order
        keep = np.concatenate([np.arange(offsets[i], offsets[i] + filled[i]) for i in range(len(chunks))])
        keep = keep.astype(np.int64)
        sample, sample_file, sample_row = sample[keep], sample_file[keep], sample_row[keep]
    per_file = [result for chunk_result in checked for result in chunk_result]

    kept_files = np.arange(len(manifest.files))
    problems = [(f.name, r) for f, r in zip(manifest.files, per_file) if isinstance(r, str)]
    if problems:
        if on_bad_file == "error":
            listed = "\n".join(f"  {manifest.path(name)}: {problem}" for name, problem in problems[:20])
            raise SourceError(f"{len(problems)} bad feature file(s) in {manifest.feature_dir}:\n{listed}")
        for name, problem in problems:
            log.warning("skipping %s: %s", manifest.path(name), problem)
        bad = {name for name, _ in problems}
        kept_files = np.array([i for i, f in enumerate(manifest.files) if f.name not in bad], dtype=np.int64)
        if not kept_files.size:
            raise SourceError(f"{manifest.feature_dir}: no usable feature rows (all files bad or empty)")
        manifest = Manifest(manifest.feature_dir, manifest.dim, manifest.version,
                            tuple(manifest.files[i] for i in kept_files),
                            tuple(sorted(manifest.skipped + tuple(problems))),
                            manifest.ignored, manifest.empty_files)
        per_file = [per_file[i] for i in kept_files]
        chunks = plan_chunks([f.bytes for f in manifest.files], chunk_bytes, parallel)

    file_rows = tuple(int(r) for r in per_file)
    dropped = manifest.rows - sum(file_rows)
    if dropped:
        log.warning("%s: dropped %d rows holding NaN or Inf", manifest.feature_dir, dropped)
    log.info("%s: %d files, %s rows x %d (%s), %d chunks of about %.0f MB",
             experiment.name, len(manifest.files), f"{sum(file_rows):,}", manifest.dim,
             manifest.version, len(chunks), manifest.bytes / max(1, len(chunks)) / 2**20)
    first_row = np.concatenate([[0], np.cumsum(file_rows)]).astype(np.int64)  # of each kept file
    sample_ids = first_row[np.searchsorted(kept_files, sample_file)] + sample_row  # bad files drew no rows
    if resident and problems:  # the chunks were planned again without the skipped files
        log.info("%s: streamed from its files after all (files were skipped)", experiment.name, extra=DETAIL)
    in_memory = tuple(buffer[:sum(checked[i])] for i, buffer in enumerate(kept)) if not problems else ()
    return FeatureSet(experiment, manifest, file_rows, tuple(chunks), dropped,
                      RowSample(sample, sample_ids) if sample_rows else RowSample(), in_memory)


RESIDENT_CHUNKS = 2  # a collection of up to this many chunks' worth of float32 rows is kept in memory


def resident_fits(manifest: Manifest, chunk_mb: float, local: bool) -> bool:
    """Keep the whole collection in memory, read once by the value check, when a local build's streamed
    pass would hold about as much anyway: up to ``RESIDENT_CHUNKS`` chunks (256 MB by default, 87k rows
    at 768-D; a pass on 2 cores holds three chunks in flight, on more cores one per core). Then train,
    add, the k-means passes and the evaluation read no file."""
    return local and manifest.rows * manifest.dim * F32 <= RESIDENT_CHUNKS * chunk_mb * MB


def stream_bytes(manifest: Manifest, chunk_mb: float, local: bool) -> int:
    """Bytes a streamed pass over the collection holds: the chunks in flight, plus one being read
    when the chunks load on local threads."""
    chunks = plan_chunks([f.bytes for f in manifest.files], max(1, int(chunk_mb * MB)), local_threads() if local else 1)
    chunk = max(sum(_header_rows(manifest, c)) for c in chunks) * manifest.dim * F32
    return chunk * (min(len(chunks), STREAM_HELD) + (min(len(chunks), STREAM_LOADING) if local else 0))


def check_estimate(manifest: Manifest, chunk_mb: float, local: bool, threads: int,
                   resident: bool = False) -> StageEstimate:
    """The value check: on local threads, up to ``threads`` files read at once (each thread's reused
    float32 buffer, the file's own array when it is not float32, the finite mask); the rows it draws
    for the k-means init go straight into the sample, which is the compress stage's (it holds it until
    its init). With a client it runs on the workers. ``resident``: files are read into the collection's
    float32 rows, which it keeps (``resident_fits``), instead of into the threads' buffers."""
    chunks = plan_chunks([f.bytes for f in manifest.files], max(1, int(chunk_mb * MB)), local_threads() if local else 1)
    scratch = 0 if resident else F32
    biggest = max(f.bytes + f.rows * manifest.dim * (scratch + 1) for f in manifest.files)  # + the bool mask
    at_once = min(threads, len(chunks)) if local else 0
    kept = manifest.rows * manifest.dim * F32 if resident else 0
    detail = f"{at_once} files of up to {mb(biggest)} checked at once"
    return StageEstimate("check", at_once * biggest, kept,
                         f"{detail}, the collection kept in memory ({mb(kept)})" if kept else detail)
