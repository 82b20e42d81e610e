"""Find an experiment's feature files, validate them from their headers, load them.

Files are taken in ``sorted()`` name order, as RVC does. ``rvc_index.data.feature_set`` turns the
validated files into a lazy dask array.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rvc_index.errors import RvcIndexError
from rvc_index.runtime.progress import get_logger

FEATURE_DIRS = {"3_feature256": ("v1", 256), "3_feature768": ("v2", 768)}
VERSION_BY_DIM = {256: "v1", 768: "v2"}


class SourceError(RvcIndexError, ValueError):
    """A problem with the input as a whole (missing folder, no files, bad files)."""


class FeatureFileError(SourceError):
    """A problem with one feature file; the message starts with the file's path."""

    def __init__(self, path: Path | str, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


@dataclass(frozen=True)
class Experiment:
    """Where an experiment's features live and what they should look like."""

    name: str
    feature_dir: Path
    exp_dir: Path  # RVC's logs/<exp> folder: the default output folder
    version: str | None  # v1 / v2 from the folder name, None when the folder is not RVC's
    expected_dim: int | None


def _has_npy(folder: Path) -> bool:
    return folder.is_dir() and any(name.endswith(".npy") for name in os.listdir(folder))


def resolve_experiment(path: str | Path) -> Experiment:
    """Accept ``<exp>``, ``<exp>/3_feature256|768`` or any folder of ``.npy`` files."""
    path = Path(path).expanduser().absolute()
    if not path.exists():
        raise SourceError(f"{path}: no such folder")
    if not path.is_dir():
        raise SourceError(f"{path}: not a folder")
    if path.name in FEATURE_DIRS:
        version, dim = FEATURE_DIRS[path.name]
        return Experiment(path.parent.name, path, path.parent, version, dim)
    candidates = [path / name for name in FEATURE_DIRS if _has_npy(path / name)]
    if len(candidates) > 1:
        raise SourceError(
            f"{path}: holds both 3_feature256 (v1) and 3_feature768 (v2) features; "
            "pass the one feature folder to index"
        )
    if candidates:
        version, dim = FEATURE_DIRS[candidates[0].name]
        return Experiment(path.name, candidates[0], path, version, dim)
    if any((path / name).is_dir() for name in FEATURE_DIRS):
        empty = [name for name in FEATURE_DIRS if (path / name).is_dir()]
        raise SourceError(f"{path / empty[0]}: folder holds no .npy feature files")
    return Experiment(path.name, path, path.parent, None, None)


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
    ignored: tuple[str, ...] = ()  # non-.npy entries
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
        for name, size, mtime in sorted(entries):
            digest.update(f"\0{name}\0{size}\0{mtime}".encode())
        return digest.hexdigest()


def check_array_meta(path: Path | str, shape: tuple[int, ...], dtype: np.dtype, dim: int | None) -> None:
    """Raise FeatureFileError unless ``shape``/``dtype`` describe a [T, dim] float array."""
    if len(shape) != 2:
        raise FeatureFileError(path, f"expected a 2-D [frames, dim] array, got {len(shape)}-D shape {shape}")
    if dtype.kind != "f":
        raise FeatureFileError(path, f"expected floating-point features, got dtype {dtype}")
    if dim is not None and shape[1] != dim:
        raise FeatureFileError(path, f"width {shape[1]} does not match the folder's {dim}")


def read_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) from an ``.npy`` header, checking the file is complete."""
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
            else:
                raise FeatureFileError(path, f"not a valid .npy file (unknown format version {version})")
            offset = handle.tell()
    except FeatureFileError:
        raise
    except OSError as exc:
        raise FeatureFileError(path, f"cannot read: {exc.strerror or exc}") from exc
    except (ValueError, SyntaxError, EOFError) as exc:
        raise FeatureFileError(path, f"not a valid .npy file ({exc})") from exc
    if dtype.hasobject:
        raise FeatureFileError(path, "holds Python objects, not numbers")
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    size = path.stat().st_size
    if size < expected:
        raise FeatureFileError(path, f"truncated: {size} bytes on disk, header promises {expected}")
    return tuple(int(s) for s in shape), dtype, offset


def scan_manifest(experiment: Experiment, on_bad_file: str = "error") -> Manifest:
    """Read every ``.npy`` header of the feature folder and validate shapes and dtypes.

    ``on_bad_file='error'`` raises a SourceError listing every bad file and its problem;
    ``'skip'`` leaves them out and records them in ``Manifest.skipped``.
    """
    log = get_logger()
    folder = experiment.feature_dir
    try:
        names = sorted(os.listdir(folder))
    except OSError as exc:
        raise SourceError(f"{folder}: cannot list folder: {exc.strerror or exc}") from exc
    npy_names = [n for n in names if n.endswith(".npy") and (folder / n).is_file()]
    ignored = tuple(n for n in names if n not in npy_names and not n.startswith("."))
    if ignored:
        log.warning("%s: ignoring %d entries that are not .npy files (%s)", folder, len(ignored),
                    ", ".join(ignored[:5]) + (" ..." if len(ignored) > 5 else ""))
    if not str(folder).isascii():
        log.warning("%s: path is not ASCII; RVC's GUI and faiss on Windows refuse such paths", folder)
    if not npy_names:
        raise SourceError(f"{folder}: folder holds no .npy feature files")

    headers: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    problems: list[tuple[str, str]] = []
    for name in npy_names:
        try:
            shape, dtype, _ = read_header(folder / name)
            check_array_meta(folder / name, shape, dtype, None)
            headers[name] = (shape, dtype)
        except FeatureFileError as exc:
            problems.append((name, exc.problem))

    dim = experiment.expected_dim
    if dim is None and headers:
        dim = Counter(shape[1] for shape, _ in headers.values()).most_common(1)[0][0]
    files, empty = [], []
    for name, (shape, dtype) in headers.items():
        if shape[1] != dim:
            problems.append((name, f"width {shape[1]} does not match the folder's {dim}"
                             + (" (v1 and v2 features mixed?)" if shape[1] in VERSION_BY_DIM else "")))
            continue
        if shape[0] == 0:
            empty.append(name)
            continue
        stat = (folder / name).stat()
        files.append(FeatureFile(name, shape[0], shape[1], dtype.str, stat.st_size, stat.st_mtime_ns))
    problems.sort()
    if problems and on_bad_file == "error":
        listed = "\n".join(f"  {folder / name}: {problem}" for name, problem in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise SourceError(f"{len(problems)} bad feature file(s) in {folder}:\n{listed}{more}")
    for name, problem in problems:
        log.warning("skipping %s: %s", folder / name, problem)
    if empty:
        log.warning("%s: %d files hold 0 rows and are left out", folder, len(empty))
    if not files:
        raise SourceError(f"{folder}: no usable feature rows (all files bad or empty)")
    files.sort(key=lambda f: f.name)
    version = experiment.version or VERSION_BY_DIM.get(dim, f"d{dim}")
    return Manifest(str(folder), int(dim), version, tuple(files), tuple(problems), ignored, tuple(sorted(empty)))


def load_features(path: Path | str, dim: int) -> np.ndarray:
    """One file as float32 [T, dim] (float16/float64 converted); raises FeatureFileError."""
    try:
        array = np.load(path, allow_pickle=False)
    except OSError as exc:
        raise FeatureFileError(path, f"cannot read: {exc.strerror or exc}") from exc
    except (ValueError, EOFError) as exc:
        raise FeatureFileError(path, f"not a valid .npy file ({exc})") from exc
    check_array_meta(path, array.shape, array.dtype, dim)
    return np.ascontiguousarray(array, dtype=np.float32)


def finite_row_mask(array: np.ndarray) -> np.ndarray:
    """Boolean [T]: rows with no NaN or Inf."""
    return np.isfinite(array).all(axis=1)


def count_finite_rows(paths: Sequence[str], dim: int) -> list[int | str]:
    """Per file: the number of finite rows, or a problem string for a file that cannot be used."""
    results: list[int | str] = []
    for path in paths:
        try:
            array = load_features(path, dim)
        except FeatureFileError as exc:
            results.append(exc.problem)
            continue
        finite = int(finite_row_mask(array).sum())
        results.append(finite if finite else f"all {array.shape[0]} rows are NaN or Inf")
    return results


def load_group(paths: Sequence[str], dim: int, header_rows: int) -> np.ndarray:
    """Files concatenated as float32 [rows, dim], rows with NaN/Inf dropped.

    ``header_rows`` is the files' total rows by their headers (the manifest's): each file is copied
    into one result of that size as soon as it is read, so the peak is the result plus one file,
    not every file and their concatenation.
    """
    if len(paths) == 1:
        array = load_features(paths[0], dim)
        mask = finite_row_mask(array)
        return array if mask.all() else array[mask]
    out = np.empty((header_rows, dim), np.float32)
    filled = 0
    for path in paths:
        array = load_features(path, dim)
        mask = finite_row_mask(array)
        rows = array if mask.all() else array[mask]
        if filled + rows.shape[0] > out.shape[0]:
            raise FeatureFileError(path, "changed while it was being read (rerun the build)")
        out[filled:filled + rows.shape[0]] = rows
        filled += rows.shape[0]
    return out[:filled]
