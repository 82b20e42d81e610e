"""An experiment's validated files as one lazy dask array (``FeatureSet``).

The chunks are groups of whole files (about ``chunk_mb`` each), each loaded by a delayed
``sources.load_group``: the graph names files, it does not carry their data, and no process ever
holds more than a few chunks. Row ``i`` of the array is id ``i`` of the index.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import dask
import dask.array as da
import numpy as np
from rvc_index.data.sources import Experiment, Manifest, SourceError, count_finite_rows, load_group
from rvc_index.runtime.memory import F32, MB, STREAM_HELD, STREAM_LOADING, StageEstimate, mb
from rvc_index.runtime.progress import get_logger
from rvc_index.runtime.stream import compute_each


def plan_chunks(file_bytes: Sequence[int], chunk_bytes: int) -> list[tuple[int, int]]:
    """Split files (in order) into contiguous [start, stop) groups of about ``chunk_bytes``.

    Every group holds at least one file; a file larger than ``chunk_bytes`` is a group alone.
    """
    groups: list[tuple[int, int]] = []
    start, size = 0, 0
    for i, nbytes in enumerate(file_bytes):
        if i > start and size + nbytes > chunk_bytes:
            groups.append((start, i))
            start, size = i, 0
        size += nbytes
    if start < len(file_bytes):
        groups.append((start, len(file_bytes)))
    return groups


@dataclass(frozen=True)
class FeatureSet:
    """A validated collection: manifest, finite rows per file, and its lazy dask array."""

    experiment: Experiment
    manifest: Manifest
    file_rows: tuple[int, ...]  # finite rows per manifest file (NaN/Inf rows dropped)
    chunks: tuple[tuple[int, int], ...]  # [start, stop) file ranges
    dropped_rows: int = 0
    array: da.Array = field(repr=False, compare=False, default=None)

    @property
    def n_rows(self) -> int:
        return int(sum(self.file_rows))

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def chunk_rows(self) -> tuple[int, ...]:
        return tuple(sum(self.file_rows[a:b]) for a, b in self.chunks)


def _chunk_paths(manifest: Manifest, chunk: tuple[int, int]) -> list[str]:
    return [str(manifest.path(f.name)) for f in manifest.files[chunk[0]:chunk[1]]]


def build_array(manifest: Manifest, chunks: Sequence[tuple[int, int]], chunk_rows: Sequence[int]) -> da.Array:
    """The lazy [rows, dim] float32 array: one delayed ``load_group`` per chunk of files."""
    pieces = []
    for chunk, rows in zip(chunks, chunk_rows):
        paths = _chunk_paths(manifest, chunk)
        token = dask.base.tokenize(paths, [(f.bytes, f.mtime_ns) for f in manifest.files[chunk[0]:chunk[1]]])
        header_rows = [f.rows for f in manifest.files[chunk[0]:chunk[1]]]  # per file: load_group checks each
        loader = dask.delayed(load_group, pure=True, name=f"load-features-{token}")(paths, manifest.dim, header_rows)
        pieces.append(da.from_delayed(loader, shape=(rows, manifest.dim), dtype=np.float32))
    return da.concatenate(pieces, axis=0) if len(pieces) > 1 else pieces[0]


def open_feature_set(experiment: Experiment, manifest: Manifest, chunk_mb: float = 128.0,
                     on_bad_file: str = "error", client: object | None = None) -> FeatureSet:
    """Check every file's values on the Dask workers (NaN/Inf rows counted) and open it lazily."""
    log = get_logger()
    chunk_bytes = max(1, int(chunk_mb * 2**20))
    chunks = plan_chunks([f.bytes for f in manifest.files], chunk_bytes)
    tasks = [dask.delayed(count_finite_rows, pure=True)(_chunk_paths(manifest, c), manifest.dim) for c in chunks]
    per_file = [result for chunk_result in compute_each(tasks, client) for result in chunk_result]

    problems = [(f.name, r) for f, r in zip(manifest.files, per_file) if isinstance(r, str)]
    if problems:
        if on_bad_file == "error":
            listed = "\n".join(f"  {manifest.path(name)}: {problem}" for name, problem in problems[:20])
            raise SourceError(f"{len(problems)} bad feature file(s) in {manifest.feature_dir}:\n{listed}")
        for name, problem in problems:
            log.warning("skipping %s: %s", manifest.path(name), problem)
        bad = {name for name, _ in problems}
        keep = [i for i, f in enumerate(manifest.files) if f.name not in bad]
        if not keep:
            raise SourceError(f"{manifest.feature_dir}: no usable feature rows (all files bad or empty)")
        manifest = Manifest(manifest.feature_dir, manifest.dim, manifest.version,
                            tuple(manifest.files[i] for i in keep),
                            tuple(sorted(manifest.skipped + tuple(problems))),
                            manifest.ignored, manifest.empty_files)
        per_file = [per_file[i] for i in keep]
        chunks = plan_chunks([f.bytes for f in manifest.files], chunk_bytes)

    file_rows = tuple(int(r) for r in per_file)
    dropped = manifest.rows - sum(file_rows)
    if dropped:
        log.warning("%s: dropped %d rows holding NaN or Inf", manifest.feature_dir, dropped)
    chunk_rows = [sum(file_rows[a:b]) for a, b in chunks]
    log.info("%s: %d files, %s rows x %d (%s), %d chunks of about %.0f MB",
             experiment.name, len(manifest.files), f"{sum(file_rows):,}", manifest.dim,
             manifest.version, len(chunks), chunk_mb)
    return FeatureSet(experiment, manifest, file_rows, tuple(chunks), dropped,
                      build_array(manifest, chunks, chunk_rows))


def stream_bytes(manifest: Manifest, chunk_mb: float, local: bool) -> int:
    """Bytes a streamed pass over the collection holds: the chunks in flight, plus one being read
    when the chunks load on local threads."""
    chunks = plan_chunks([f.bytes for f in manifest.files], max(1, int(chunk_mb * MB)))
    chunk = max(sum(f.rows for f in manifest.files[a:b]) for a, b in chunks) * manifest.dim * F32
    return chunk * (min(len(chunks), STREAM_HELD) + (min(len(chunks), STREAM_LOADING) if local else 0))


def check_estimate(manifest: Manifest, chunk_mb: float, local: bool, threads: int) -> StageEstimate:
    """The value check: on local threads, up to ``threads`` files read at once (file, float32 copy, finite
    mask); with a client it runs on the workers."""
    chunks = plan_chunks([f.bytes for f in manifest.files], max(1, int(chunk_mb * MB)))
    biggest = max(f.bytes + f.rows * manifest.dim * F32 * 5 // 4 for f in manifest.files)
    at_once = min(threads, len(chunks)) if local else 0
    return StageEstimate("check", at_once * biggest, 0, f"{at_once} files of up to {mb(biggest)} checked at once")
