"""One build per output folder at a time: an advisory lock that a killed process releases.

The lock is ``flock`` (POSIX) or ``msvcrt.locking`` (Windows) on ``<folder>/.rvc-index.lock``.
The kernel drops it when its holder exits, even by SIGKILL, so a stale lock cannot block a rerun.
The holder writes its pid and host into the file (for the message of a build that waits) and
unlinks it before releasing; a waiter that locked a file just unlinked that way tries again.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rvc_index.errors import RvcIndexError
from rvc_index.runtime.progress import get_logger

LOCK_NAME = ".rvc-index.lock"
POLL_S = 0.1
REPORT_EVERY_S = 30.0

if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


class OutputBusy(RvcIndexError, RuntimeError):
    """Another build is writing into the same output folder."""


def holder_of(path: Path) -> str:
    """``pid N on host`` as written by the lock's holder, or ``another process`` if unreadable."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        text = ""
    return text or "another process"


def _open_locked(path: Path) -> int | None:
    """An fd holding the lock on the file now at ``path``, or None while another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    if not _try_lock(fd):
        os.close(fd)
        return None
    try:
        current = os.stat(path)
    except FileNotFoundError:
        current = None
    mine = os.fstat(fd)
    if current is None or (current.st_ino, current.st_dev) != (mine.st_ino, mine.st_dev):
        os.close(fd)  # the previous holder unlinked it as we locked: lock the new file instead
        return None
    return fd


@contextmanager
def output_lock(folder: Path, wait: bool = True, timeout_s: float = 0.0, label: str = "") -> Iterator[Path]:
    """Hold ``folder``'s build lock; wait for it (``timeout_s`` 0 = no limit) or raise OutputBusy."""
    log = get_logger()
    path = Path(folder) / LOCK_NAME
    prefix = f"{label}: " if label else ""
    started = time.monotonic()
    next_report = started
    while (fd := _open_locked(path)) is None:
        holder = holder_of(path)
        waited = time.monotonic() - started
        if not wait:
            raise OutputBusy(f"{folder}: another build ({holder}) is writing into this folder "
                             "(safety.lock=refuse; safety.lock=wait waits for it)")
        if timeout_s and waited >= timeout_s:
            raise OutputBusy(f"{folder}: another build ({holder}) is writing into this folder; "
                             f"gave up after {waited:.0f} s (safety.lock_timeout_s)")
        if time.monotonic() >= next_report:
            log.warning("%s%s: another build (%s) is writing here; waiting for it to finish", prefix, folder, holder)
            next_report = time.monotonic() + REPORT_EVERY_S
        time.sleep(POLL_S)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        if time.monotonic() - started > POLL_S:
            log.info("%s%s: lock acquired after %.1f s", prefix, folder, time.monotonic() - started)
        yield path
    finally:
        if sys.platform != "win32":  # an open file cannot be unlinked on Windows; it stays, unlocked
            try:
                path.unlink()
            except OSError:
                pass
        os.close(fd)
