"""An experiment's feature files: validated from their headers (the manifest), loaded, their values checked.

Files are taken in ``sorted()`` name order, as RVC does (``rvc_index.data.layouts`` says where they are,
``rvc_index.data.files`` which entries are feature files). ``rvc_index.data.feature_set`` opens the validated
files as one collection.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rvc_index.data.files import (
    FeatureFileError,
    SourceError,
    check_array_meta,
    list_feature_files,
    load_checked,
    read_header_and_stat,
    shown_name,
)
from rvc_index.data.layouts import VERSION_BY_DIM, Experiment
from rvc_index.runtime.progress import get_logger


@dataclass(frozen=True)
class FeatureFile:
    """One utterance's features as its header describes them."""

    name: str
    rows: int
    dim: int
    dtype: str
    bytes: int
    mtime_ns: int


@dataclass(frozen=True)
class Manifest:
    """The validated files of one feature folder, in sorted name order."""

    feature_dir: str
    dim: int
    version: str
    files: tuple[FeatureFile, ...]
    skipped: tuple[tuple[str, str], ...] = ()  # (file name, problem) left out by on_bad_file=skip
    ignored: tuple[str, ...] = ()  # entries that are not feature files (non-.npy, total_fea.npy, ._*)
    empty_files: tuple[str, ...] = ()  # valid files with 0 rows, left out

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    def path(self, name: str) -> Path:
        return Path(self.feature_dir) / name

    def fingerprint(self) -> str:
        """sha256 over (name, size, mtime) of every file considered, bad ones included."""
        digest = hashlib.sha256(f"{self.dim}|{self.version}".encode())
        entries = [(f.name, f.bytes, f.mtime_ns) for f in self.files]
        entries += [(name, -1, -1) for name, _ in self.skipped]
        entries += [(name, 0, 0) for name in self.empty_files]
        for name, size, mtime in sorted(entries):  # names that are not UTF-8 keep their bytes
            digest.update(f"\0{name}\0{size}\0{mtime}".encode("utf-8", "surrogateescape"))
        return digest.hexdigest()


def scan_manifest(experiment: Experiment, on_bad_file: str = "error") -> Manifest:
    """Read every ``.npy`` header of the feature folder and validate shapes and dtypes.

    ``on_bad_file='error'`` raises a SourceError listing every bad file and its problem;
    ``'skip'`` leaves them out and records them in ``Manifest.skipped``.
    """
    log = get_logger()
    folder = experiment.feature_dir
    npy_names, ignored, problems = list_feature_files(folder)
    if not str(folder).isascii():
        log.warning("%s: path is not ASCII; RVC's GUI and faiss on Windows refuse such paths", folder)
    if not npy_names and not problems:
        raise SourceError(f"{folder}: folder holds no .npy feature files")
    if any(shown_name(name) != name for name in npy_names):
        log.warning("%s: some file names are not UTF-8 (shown with \\x escapes); they are read as they are", folder)

    headers: dict[str, tuple[tuple[int, ...], np.dtype, os.stat_result]] = {}
    for name in npy_names:
        path = os.path.join(folder, name)
        try:
            shape, dtype, _, info = read_header_and_stat(path)
            check_array_meta(path, shape, dtype, None)
            headers[name] = (shape, dtype, info)
        except FeatureFileError as exc:
            problems.append((name, exc.problem))

    dim = experiment.expected_dim
    if dim is None and headers:
        dim = Counter(shape[1] for shape, _, _ in headers.values()).most_common(1)[0][0]
    files, empty = [], []
    for name, (shape, dtype, info) in headers.items():
        if shape[1] != dim:
            problems.append((name, f"width {shape[1]} does not match the folder's {dim}"
                             + (" (v1 and v2 features mixed?)" if shape[1] in VERSION_BY_DIM else "")))
            continue
        if shape[0] == 0:
            empty.append(name)
            continue
        files.append(FeatureFile(name, shape[0], shape[1], dtype.str, info.st_size, info.st_mtime_ns))
    problems.sort()
    settle_bad_files(folder, problems, on_bad_file)
    if empty:
        log.warning("%s: %d files hold 0 rows and are left out", folder, len(empty))
    if not files:
        raise SourceError(f"{folder}: no usable feature rows (all files bad or empty)")
    files.sort(key=lambda f: f.name)
    version = experiment.version or VERSION_BY_DIM.get(dim, f"d{dim}")
    return Manifest(str(folder), int(dim), version, tuple(files), tuple(problems), tuple(ignored),
                    tuple(sorted(empty)))


def settle_bad_files(folder: Path | str, problems: Sequence[tuple[str, str]], on_bad_file: str) -> None:
    """The bad-file policy, for the headers' check and the values' alike: ``source.on_bad_file=error`` raises one
    SourceError listing every bad file of ``folder`` with its problem (the first 20); ``skip`` logs each as left
    out (the caller leaves them out and records them)."""
    if problems and on_bad_file == "error":
        listed = "\n".join(f"  {Path(folder) / shown_name(name)}: {problem}" for name, problem in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise SourceError(f"{len(problems)} bad feature file(s) in {folder}:\n{listed}{more}")
    for name, problem in problems:
        get_logger().warning("skipping %s: %s", Path(folder) / shown_name(name), problem)


def load_features(path: Path | str, dim: int, into: np.ndarray | None = None) -> np.ndarray:
    """One file as float32 [T, dim] (float16/float64 converted); raises FeatureFileError. ``into``: a
    float32 buffer the rows of a float32 file are read straight into (``files.load_checked``). A finite
    float64 value that float32 cannot hold is a problem, as ``usable_row_mask`` says, not an Inf."""
    array = load_checked(path, into)  # one open: header checked (regular, complete), then the data
    check_array_meta(shown_name(str(path)), array.shape, array.dtype, dim)
    return to_float32(path, array)


def to_float32(path: Path | str, array: np.ndarray, first_row: int = 0) -> np.ndarray:
    """A float [T, D] array as C-ordered float32; raises FeatureFileError naming ``path`` (and the row,
    counted from ``first_row``) for a finite value float32 cannot hold (it would become an Inf row)."""
    if array.dtype.itemsize <= 4:
        return np.ascontiguousarray(array, dtype=np.float32)
    with np.errstate(over="ignore"):
        narrow = np.ascontiguousarray(array, dtype=np.float32)
    overflowed = np.flatnonzero(~np.isfinite(narrow).all(axis=1) & np.isfinite(array).all(axis=1))
    if overflowed.size:
        row = int(overflowed[0])
        raise FeatureFileError(shown_name(str(path)), _too_large(first_row + row, float(np.abs(array[row]).max()),
                                                                array.shape[1]))
    return narrow


# Every stage compares rows by squared L2 distances in float32 (faiss's k-means and search, our k-means,
# the evaluation): for rows whose values lie within +-B that is at most 4 * D * B^2, and a k-means sums it
# over the rows. B = sqrt(float32's largest value / (4 * D * 2^40)) keeps all of it finite with room for
# 2^40 rows: about 3.2e11 at D = 768, 5.5e11 at 256. HuBERT features stay within about +-100, so a finite
# value beyond B marks a corrupt file (random bytes, a wrong dtype, swapped bytes) whose other rows cannot
# be trusted either: the file is bad, not its row dropped (faiss would abort the process on the overflow).
DISTANCE_ROOM = 2.0**40


def value_bound(dim: int) -> float:
    """The largest magnitude a feature value may have at width ``dim`` (float32 distances stay finite)."""
    return float(np.sqrt(float(np.finfo(np.float32).max) / (4.0 * max(1, dim) * DISTANCE_ROOM)))


def _too_large(row: int, magnitude: float, dim: int) -> str:
    return (f"row {row} holds a value of magnitude {magnitude:.3g}, beyond {value_bound(dim):.3g} (at width {dim} "
            "float32 distances would overflow; HuBERT features stay within about 100): corrupt data?")


def usable_row_mask(path: Path | str, array: np.ndarray, first_row: int = 0) -> np.ndarray:
    """Boolean [T] of a float [T, D] array: the rows without NaN or Inf (callers drop the others).

    Raises FeatureFileError naming ``path`` (and the row, counted from ``first_row``) when a row holds a
    finite value beyond ``value_bound``. The common case costs one min and one max over the array."""
    bound = value_bound(array.shape[1])
    if array.size and -bound <= array.min() and array.max() <= bound:  # NaN fails both comparisons
        return np.ones(array.shape[0], dtype=bool)
    high, low = array.max(axis=1), array.min(axis=1)  # NaN for a row holding NaN, +-inf for one holding Inf
    finite = np.isfinite(high) & np.isfinite(low)
    over = np.flatnonzero(finite & ((high > bound) | (low < -bound)))
    if over.size:
        row = int(over[0])
        raise FeatureFileError(shown_name(str(path)), _too_large(first_row + row, max(float(high[row]),
                                                                                      -float(low[row])),
                                                                array.shape[1]))
    return finite


def check_unchanged(path: Path | str, header_rows: int, rows: int) -> None:
    """Raise FeatureFileError when a file read holds other than the ``header_rows`` the scan found."""
    if rows != header_rows:
        raise FeatureFileError(shown_name(str(path)), f"changed during the build: {header_rows} rows when the "
                               f"build started, {rows} now (rerun the build once it stays put)")


def load_group(paths: Sequence[str], dim: int, file_rows: Sequence[int], out: np.ndarray | None = None) -> np.ndarray:
    """Files concatenated as float32 [rows, dim], rows with NaN/Inf dropped (``usable_row_mask``).

    ``file_rows``: each file's rows as the scan read them from its header. A file whose shape
    changed since (rewritten while the build runs) is an error naming it. Each file is copied into
    one result as soon as it is read, so the peak is the result plus one file. ``out``: a float32
    [>= sum(file_rows), dim] buffer to fill (a pass reuses one per thread); the result is a view of it.
    """
    if len(file_rows) != len(paths):
        raise ValueError(f"{len(paths)} paths but {len(file_rows)} row counts")
    if out is None or out.shape[0] < sum(file_rows) or out.shape[1:] != (dim,) or out.dtype != np.float32:
        out = np.empty((sum(file_rows), dim), np.float32) if len(paths) > 1 else None
    filled = 0
    for path, expected in zip(paths, file_rows):
        array = load_features(path, dim, None if out is None else out[filled:])  # float32: read in place
        check_unchanged(path, expected, array.shape[0])
        mask = usable_row_mask(path, array)
        rows = array if mask.all() else array[mask]
        if out is None:
            return rows
        if rows is not array or not np.shares_memory(array, out):
            out[filled:filled + rows.shape[0]] = rows
        filled += rows.shape[0]
    return out[:filled]
