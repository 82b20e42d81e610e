"""Atomic file output: write to a temporary name in the same folder, fsync, rename."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TEMP_MARKER = ".tmp-"


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
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
