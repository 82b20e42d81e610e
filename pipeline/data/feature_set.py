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
from rvc_index.data.sources import (
    Experiment,
    FeatureFileError,
    Manifest,
    SourceError,
    finite_row_mask,
    load_features,
    load_group,
)
from rvc_index.runtime.memory import F32, MB, STREAM_HELD, STREAM_LOADING, StageEstimate, mb
from rvc_index.runtime.progress import get_logger
from rvc_index.runtime.stream import ROWS_READ, counted_load, each_result


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


class RowSample:
    """Rows drawn from every chunk during the value check (stratified by chunk, uniform inside): the
    k-means init sample without a read of its own. :meth:`take` hands them over once."""

    def __init__(self, rows: np.ndarray | None = None) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return 0 if self.rows is None else int(self.rows.shape[0])

    def take(self, n_rows: int, rng: np.random.Generator) -> np.ndarray | None:
        """``n_rows`` of the rows [n_rows, D] (all when fewer were drawn), then forget them; None
        when fewer than 90 % of ``n_rows`` were drawn (the caller reads its own sample)."""
        rows, self.rows = self.rows, None
        if rows is None or rows.shape[0] < 0.9 * n_rows:
            return None
        if rows.shape[0] > n_rows:
            rows = rows[np.sort(rng.choice(rows.shape[0], size=n_rows, replace=False))]
        return rows


def check_and_sample(paths: Sequence[str], dim: int, n_sample: int,
                     seed: Sequence[int]) -> tuple[list[int | str], np.ndarray]:
    """Per file: finite rows, or a problem string for a file that cannot be used; and ``n_sample``
    finite rows of the good files [<= n_sample, dim] drawn uniformly (seeded): one read of each file."""
    results: list[int | str] = []
    kept: list[np.ndarray] = []
    for path in paths:
        try:
            array = load_features(path, dim)
        except FeatureFileError as exc:
            results.append(exc.problem)
            continue
        ROWS_READ.add(array.shape[0])
        mask = finite_row_mask(array)
        finite = int(mask.sum())
        results.append(finite if finite else f"all {array.shape[0]} rows are NaN or Inf")
        if n_sample and finite:
            kept.append(array if finite == array.shape[0] else array[mask])
    total = sum(k.shape[0] for k in kept)
    picks = np.sort(np.random.default_rng(list(seed)).choice(total, size=min(n_sample, total), replace=False))
    sample = np.empty((len(picks), dim), np.float32)
    start = 0
    for rows in kept:  # picks are sorted: each file's share is a contiguous run of them
        lo, hi = np.searchsorted(picks, [start, start + rows.shape[0]])
        sample[lo:hi] = rows[picks[lo:hi] - start]
        start += rows.shape[0]
    return results, sample


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
    array: da.Array = field(repr=False, compare=False, default=None)
    sample: RowSample = field(repr=False, compare=False, default_factory=RowSample)

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
        loader = dask.delayed(counted_load, pure=True, name=f"load-features-{token}")(
            load_group, paths, manifest.dim, header_rows)
        pieces.append(da.from_delayed(loader, shape=(rows, manifest.dim), dtype=np.float32))
    return da.concatenate(pieces, axis=0) if len(pieces) > 1 else pieces[0]


def open_feature_set(experiment: Experiment, manifest: Manifest, chunk_mb: float = 128.0,
                     on_bad_file: str = "error", client: object | None = None, sample_rows: int = 0,
                     seed: int = 0) -> FeatureSet:
    """Check every file's values on the Dask workers or local threads (NaN/Inf rows counted) and open
    it lazily. ``sample_rows`` > 0: the same read also draws about that many rows, in proportion to
    each chunk's rows (``FeatureSet.sample``, for the k-means init)."""
    log = get_logger()
    chunk_bytes = max(1, int(chunk_mb * 2**20))
    chunks = plan_chunks([f.bytes for f in manifest.files], chunk_bytes)
    shares = share_rows([sum(f.rows for f in manifest.files[a:b]) for a, b in chunks], sample_rows)
    tasks = [dask.delayed(check_and_sample, pure=True)(_chunk_paths(manifest, c), manifest.dim, n, (seed, i))
             for i, (c, n) in enumerate(zip(chunks, shares))]
    offsets = np.concatenate([[0], np.cumsum(shares)]).astype(np.int64)
    sample = np.empty((int(offsets[-1]), manifest.dim), np.float32)
    filled = np.zeros(len(chunks), dtype=np.int64)
    checked: list[list[int | str]] = [[] for _ in chunks]
    for i, (results, rows) in each_result(tasks, client):  # sample pieces land in place: no second copy
        checked[i] = results
        sample[offsets[i]:offsets[i] + rows.shape[0]] = rows
        filled[i] = rows.shape[0]
    if (filled < shares).any():  # chunks with fewer finite rows than their share: close the gaps, in order
        keep = np.concatenate([np.arange(offsets[i], offsets[i] + filled[i]) for i in range(len(chunks))])
        sample = sample[keep.astype(np.int64)]
    per_file = [result for chunk_result in checked for result in chunk_result]

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
                      build_array(manifest, chunks, chunk_rows), RowSample(sample if sample_rows else None))


def stream_bytes(manifest: Manifest, chunk_mb: float, local: bool) -> int:
    """Bytes a streamed pass over the collection holds: the chunks in flight, plus one being read
    when the chunks load on local threads."""
    chunks = plan_chunks([f.bytes for f in manifest.files], max(1, int(chunk_mb * MB)))
    chunk = max(sum(f.rows for f in manifest.files[a:b]) for a, b in chunks) * manifest.dim * F32
    return chunk * (min(len(chunks), STREAM_HELD) + (min(len(chunks), STREAM_LOADING) if local else 0))


def check_estimate(manifest: Manifest, chunk_mb: float, local: bool, threads: int,
                   sample_rows: int = 0) -> StageEstimate:
    """The value check: on local threads, up to ``threads`` files read at once (file, float32 copy, finite
    mask); with ``sample_rows`` (it draws the k-means sample in the same read) each also keeps its chunk's
    finite rows until the chunk's share is drawn. With a client it runs on the workers. The sample itself
    is the compress stage's (it holds it until its init)."""
    chunks = plan_chunks([f.bytes for f in manifest.files], max(1, int(chunk_mb * MB)))
    biggest = max(f.bytes + f.rows * manifest.dim * F32 * 5 // 4 for f in manifest.files)
    chunk = max(sum(f.rows for f in manifest.files[a:b]) for a, b in chunks) * manifest.dim * F32
    at_once = min(threads, len(chunks)) if local else 0
    kept = at_once * chunk if sample_rows else 0
    return StageEstimate("check", at_once * biggest + kept, 0,
                         f"{at_once} files of up to {mb(biggest)} checked at once"
                         + (f", {at_once} chunks kept while the sample is drawn" if kept else ""))
