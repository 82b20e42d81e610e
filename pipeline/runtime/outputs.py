"""Atomic file output: write to a temporary name in the same folder, fsync, rename."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from rvc_index.errors import RvcIndexError

TEMP_MARKER = ".tmp-"
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS, errno.EACCES, errno.EPERM}


class OutputWriteError(RvcIndexError, OSError):
    """An output could not be written (disk full, quota, read-only); nothing was replaced."""


class OutputPathError(RvcIndexError, ValueError):
    """An option names an output that cannot be written: checked before any work."""


def _given(option: str, path: str | os.PathLike[str]) -> Path:
    if not str(path).strip():
        raise OutputPathError(f"{option} {str(path)!r}: an empty path; name where to write")
    return Path(path).expanduser().absolute()


def _writable_folder(option: str, path: str | os.PathLike[str], folder: Path, make: bool) -> None:
    """Raise OutputPathError unless ``folder`` (``make``: or the nearest folder above it that exists, the
    rest being created) is a folder this user can write to."""
    while make and not os.path.lexists(folder) and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputPathError(f"{option} {path}: {folder} is not a folder" + (
            "" if os.path.lexists(folder) else " (it does not exist)"))
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputPathError(f"{option} {path}: {folder} is not a folder this user can write to")


def check_output_file(option: str, path: str | os.PathLike[str], make_folder: bool = False) -> Path:
    """The absolute path of an output file an option names, checked before any work: not empty, not a
    folder, in a folder this user can write to (``make_folder``: one that can be created). Raises
    OutputPathError naming the option."""
    target = _given(option, path)
    if target.is_dir():
        raise OutputPathError(f"{option} {path}: is a folder; name the file to write in it")
    _writable_folder(option, path, target.parent, make_folder)
    return target


def check_output_folder(option: str, path: str | os.PathLike[str]) -> Path:
    """The absolute path of an output folder an option names, checked before any work: not empty, and
    the folder (or the nearest one above it that exists: the rest is created) writable."""
    target = _given(option, path)
    _writable_folder(option, path, target, make=True)
    return target


def check_working_folder() -> None:
    """Raise OutputPathError when the current folder is gone (deleted or moved while a shell stood in it):
    relative paths, Dask's worker processes and faiss's temporary files all need it."""
    try:
        os.getcwd()
    except OSError as exc:
        raise OutputPathError(f"the current folder cannot be found ({exc.strerror or exc}: deleted or moved?); "
                              "cd into a folder that exists and run again") from None


def _write_failure(final: Path, tmp: Path, exc: BaseException) -> OutputWriteError | None:
    """``exc`` as an OutputWriteError naming ``final`` when it is a failure to write the file."""
    if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS and exc.filename in (None, str(tmp)):  # see writing()
        reason, code = exc.strerror or str(exc), exc.errno
    elif isinstance(exc, RuntimeError) and str(tmp) in str(exc):  # faiss's writer: "... (No space left on device)"
        text = str(exc)
        reason, code = (text.rsplit("(", 1)[-1].rstrip(")") if text.endswith(")") else text), None
    else:
        return None
    error = OutputWriteError(f"{final}: could not be written ({reason}); nothing was replaced, "
                             "no partial file left")
    error.errno = code
    return error


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Attribute an ``OSError`` raised inside the block to ``path``: a file object's write error names no
    file, and among several temporary files written together (``atomic_paths``) the full disk is this one's."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from exc


def temp_name(final: Path) -> Path:
    """The temporary sibling of ``final`` that a writer fills before the rename."""
    return final.with_name(f".{final.name}{TEMP_MARKER}{os.getpid()}")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``final`` in one rename.

    On any error the temporary file is removed and ``final`` is left as it was.
    """
    final = Path(final)
    tmp = temp_name(final)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        failure = None if isinstance(exc, OutputWriteError) else _write_failure(final, tmp, exc)
        if failure is not None:
            raise failure from exc
        raise


@contextmanager
def atomic_paths(*finals: Path) -> Iterator[list[Path]]:
    """Temporary paths for several files, renamed into place in the given order only once every
    one is written: a failure while writing (a full disk) replaces none of them."""
    with ExitStack() as stack:  # exits in reverse: the first of ``finals`` is renamed first
        tmps = [stack.enter_context(atomic_path(Path(final))) for final in reversed(finals)]
        yield tmps[::-1]


def write_atomic(final: Path, writer: Callable[[Path], None]) -> Path:
    """Run ``writer(tmp_path)`` and move the result to ``final`` atomically."""
    with atomic_path(final) as tmp:
        writer(tmp)
    return Path(final)


def write_text_atomic(final: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``final`` atomically."""
    return write_atomic(final, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(final: Path, data: Any) -> Path:
    """Write ``data`` as indented JSON to ``final`` atomically."""
    return write_text_atomic(final, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object written by ``write_json_atomic``, or None when it is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete temporary files left in ``folder`` by a killed writer; return what was removed."""
    removed = []
    if not Path(folder).is_dir():
        return removed
    for path in Path(folder).iterdir():
        if path.name.startswith(".") and TEMP_MARKER in path.name and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
