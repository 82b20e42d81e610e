"""The entries of a feature folder: which are feature files, and what their ``.npy`` headers say.

Never a feature file (docs/reliability.md): hidden names (macOS ``._*`` AppleDouble files, our
``.*.tmp-*`` temporary files), any ``*.tmp-*`` name, and ``total_fea.npy`` (the stored vectors of an
index, RVC's or ours, never an utterance). Nothing here opens a file that is not a regular file, so a
FIFO or a device named ``.npy`` cannot hang a scan.
"""

from __future__ import annotations

import errno
import math
import os
import stat
import threading
from pathlib import Path
from typing import Any

import numpy as np
from rvc_index.errors import RvcIndexError
from rvc_index.inspection.rvc_files import TOTAL_FEA
from rvc_index.runtime.outputs import TEMP_MARKER
from rvc_index.runtime.progress import get_logger

# numpy parses a header with ast.literal_eval; CPython 3.11's AST constructor keeps its recursion depth
# in shared state, and headers parsed on several threads at once failed builds with "SystemError: AST
# constructor recursion depth mismatch" (python/cpython#106905). A header takes microseconds: one at a time.
_HEADER_LOCK = threading.Lock()

APPLEDOUBLE_PREFIX = "._"


class SourceError(RvcIndexError, ValueError):
    """A problem with the input as a whole (missing folder, no files, bad files)."""


class FeatureFileError(SourceError):
    """A problem with one feature file; the message starts with the file's path."""

    def __init__(self, path: Path | str, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


def broken_link(path: Path) -> str | None:
    """Why ``path``, a symbolic link, leads nowhere (dangling or a loop); None when it resolves."""
    if not path.is_symlink():
        return None
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop"
        return f"symbolic link to {os.readlink(path)}, which does not exist (storage not mounted?)"
    return None


def shown_name(name: str) -> str:
    """A file name as text can print it: bytes that are not UTF-8 shown as ``\\xe9``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def check_array_meta(path: Path | str, shape: tuple[int, ...], dtype: np.dtype, dim: int | None) -> None:
    """Raise FeatureFileError unless ``shape``/``dtype`` describe a [T, dim] float array."""
    if len(shape) != 2:
        raise FeatureFileError(path, f"expected a 2-D [frames, dim] array, got {len(shape)}-D shape {shape}")
    if dtype.kind != "f":
        raise FeatureFileError(path, f"expected floating-point features, got dtype {dtype}")
    if shape[1] == 0:
        raise FeatureFileError(path, f"width 0: shape {shape} holds no feature values")
    if dim is not None and shape[1] != dim:
        raise FeatureFileError(path, f"width {shape[1]} does not match the folder's {dim}")


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return kind
    return "not a regular file"


def read_header_and_stat(path: Path | str) -> tuple[tuple[int, ...], np.dtype, int, os.stat_result]:
    """(shape, dtype, data offset, ``stat``) of an ``.npy`` file, checking it is complete, from one open."""
    return _read_checked(path, load=False)[:4]


def load_checked(path: Path | str, into: np.ndarray | None = None) -> np.ndarray:
    """The array of a regular, complete ``.npy`` file, read through the same open that checked its header
    (a FIFO or a device named ``.npy`` is never read; raises FeatureFileError).

    ``into``: a C-ordered float32 [rows, dim] buffer. A little-endian float32 [T <= rows, dim] file is
    read straight into its first T rows and that view returned (no array of its own, no copy)."""
    return _read_checked(path, load=True, into=into)[4]


def _read_checked(path: Path | str, load: bool,
                  into: np.ndarray | None = None) -> tuple[tuple[int, ...], np.dtype, int, os.stat_result, Any]:
    """Opened without blocking and checked to be a regular file first; then the header, then (``load``)
    the data from the same handle."""
    label = shown_name(str(path))  # messages name a non-UTF-8 file with \x escapes
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise FeatureFileError(label, f"cannot read: {exc.strerror or exc}") from exc
    array = None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FeatureFileError(label, f"{_file_kind(info.st_mode)}, not a feature file")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            version = np.lib.format.read_magic(handle)
            if version not in ((1, 0), (2, 0), (3, 0)):
                raise FeatureFileError(label, f"not a valid .npy file (unknown format version {version})")
            with _HEADER_LOCK:
                shape, fortran, dtype = (np.lib.format.read_array_header_1_0(handle) if version == (1, 0)
                                         else np.lib.format.read_array_header_2_0(handle))
            offset = handle.tell()
            _check_header(label, shape, dtype, offset, info)
            if load and _fits(shape, fortran, dtype, into):
                array = into[:shape[0]]
                if handle.readinto(memoryview(array).cast("B")) != array.nbytes:
                    raise FeatureFileError(label, "truncated while being read")
            elif load:  # any other layout or type: a fresh array, the header not parsed a second time
                array = np.empty(shape, dtype=dtype, order="F" if fortran else "C")
                target = array.T if fortran else array  # C-contiguous either way, for a byte view
                if array.nbytes and handle.readinto(memoryview(target).cast("B")) != array.nbytes:
                    raise FeatureFileError(label, "truncated while being read")
    except FeatureFileError:
        raise
    except OSError as exc:
        raise FeatureFileError(label, f"cannot read: {exc.strerror or exc}") from exc
    except (ValueError, SyntaxError, EOFError, RecursionError, MemoryError) as exc:
        raise FeatureFileError(label, f"not a valid .npy file ({str(exc)[:200]})") from exc
    finally:
        os.close(fd)
    return tuple(int(s) for s in shape), dtype, offset, info, array


def _fits(shape: tuple[int, ...], fortran: bool, dtype: np.dtype, into: np.ndarray | None) -> bool:
    return (into is not None and len(shape) == 2 and not fortran and dtype == np.dtype("<f4")
            and into.dtype == np.dtype("<f4") and into.flags.c_contiguous and shape[1] == into.shape[1]
            and shape[0] <= into.shape[0])


def _check_header(label: str, shape: tuple[int, ...], dtype: np.dtype, offset: int, info: os.stat_result) -> None:
    if dtype.hasobject:
        raise FeatureFileError(label, "holds Python objects, not numbers")
    if any(s < 0 for s in shape):
        raise FeatureFileError(label, f"not a valid .npy file (negative dimension in shape {shape})")
    expected = offset + math.prod(shape) * dtype.itemsize  # Python ints: a lying header cannot overflow
    if info.st_size < expected:
        raise FeatureFileError(label, f"truncated: {info.st_size} bytes on disk, header promises {expected}")


def _not_features(name: str) -> str | None:
    """Why an entry named ``name`` is never a feature file (None: it may be one)."""
    if name.startswith(APPLEDOUBLE_PREFIX) and name.endswith(".npy"):
        return "macOS AppleDouble metadata"
    if name.startswith(".") or TEMP_MARKER in name:
        return "hidden or temporary"
    if name == TOTAL_FEA:
        return "an index's stored vectors (RVC's or ours), not an utterance"
    if not name.endswith(".npy"):
        return "not .npy"
    return None


def is_feature_name(name: str) -> bool:
    """True when an entry named ``name`` may be a feature file (an ``.npy`` that is not hidden, temporary or
    an index's stored vectors)."""
    return _not_features(name) is None


def list_feature_files(folder: Path) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """(``.npy`` feature file names, ignored entries, (name, problem) of unusable ``.npy`` entries),
    sorted; linear in the number of entries, and no file is opened."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as exc:
        raise SourceError(f"{folder}: cannot list folder: {exc.strerror or exc}") from exc
    log = get_logger()
    npy, ignored, problems = [], [], []
    reasons: dict[str, list[str]] = {}
    for name in names:
        reason = _not_features(name)
        if reason is None:
            try:
                mode = os.stat(os.path.join(folder, name)).st_mode  # str paths: pathlib costs more than the stat
            except OSError as exc:
                problems.append((name, broken_link(folder / name) or f"cannot read: {exc.strerror or exc}"))
                continue
            if stat.S_ISREG(mode):
                npy.append(name)
            elif stat.S_ISDIR(mode):
                reason = "a folder"
            else:
                problems.append((name, f"{_file_kind(mode)}, not a feature file"))
        if reason is not None and reason != "hidden or temporary":
            ignored.append(name)
            reasons.setdefault(reason, []).append(name)
    for reason, entries in reasons.items():
        listed = ", ".join(shown_name(n) for n in entries[:5]) + (" ..." if len(entries) > 5 else "")
        log.warning("%s: ignoring %d entries: %s (%s)", folder, len(entries), reason, listed)
    return npy, ignored, problems
