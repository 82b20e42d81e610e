"""One build per output folder at a time: a lock that a killed process releases, on any OS.

The lock is ``filelock``'s on ``<folder>/.rvc-index.lock``: ``flock`` on POSIX, ``LockFileEx`` on
Windows; the kernel drops it when its holder exits, even by SIGKILL. Where the filesystem has no
``flock`` (Lustre, some NFS) it falls back to an atomic marker file recording pid and host, which
a later build on the same host takes over once that pid is gone. The lock file is opened without
following symbolic links: a link planted there is refused, its target never written.
``safety.lock: none`` builds without a lock, for filesystems where neither works.

The holder writes ``pid N on host`` into ``.rvc-index.lock.holder`` (atomically, for the message of
a build that waits) and removes it and the lock file when it is done.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import filelock
from rvc_index.errors import RvcIndexError
from rvc_index.runtime.outputs import write_text_atomic
from rvc_index.runtime.progress import get_logger

LOCK_NAME = ".rvc-index.lock"
HOLDER_NAME = ".rvc-index.lock.holder"
POLL_S = 0.1
REPORT_EVERY_S = 30.0


class OutputBusy(RvcIndexError, RuntimeError):
    """Another build is writing into the same output folder."""


class LockError(RvcIndexError, OSError):
    """The output folder's lock cannot be taken (a symbolic link in its place, an unusable filesystem)."""


def holder_of(folder: Path) -> str:
    """``pid N on host`` as written by the lock's holder, or ``another process`` if unknown."""
    path = Path(folder) / HOLDER_NAME
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return "another process"
    try:
        text = os.read(fd, 256).decode("utf-8", "replace").strip()
    finally:
        os.close(fd)
    return text or "another process"


def _refuse_link(path: Path) -> None:
    if path.is_symlink():
        raise LockError(f"{path}: is a symbolic link; the build lock never follows links (a build would "
                        "write into its target): remove it and rerun")


def _try_acquire(lock: filelock.BaseFileLock, path: Path, folder: Path) -> bool:
    """Take ``lock`` now if free; True when taken. Logs the fallback when the filesystem lacks flock."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            lock.acquire(timeout=0, blocking=False)
        except filelock.Timeout:
            return False
        except OSError as exc:
            if exc.errno == errno.ELOOP or path.is_symlink():
                _refuse_link(path)
            raise LockError(f"{path}: cannot take the build lock ({exc.strerror or exc}); on a filesystem "
                            "where no lock works, set safety.lock=none and run one build per folder") from exc
        finally:
            for warning in caught:
                if "soft" in str(warning.message).lower():
                    get_logger().warning("%s: the filesystem does not support flock; locking with a marker file "
                                         "(pid and host; a crashed build's marker is taken over on the same host, "
                                         "one from another host must be removed by hand)", folder)
    return True


@contextmanager
def output_lock(folder: Path, mode: str = "wait", timeout_s: float = 0.0, label: str = "") -> Iterator[Path | None]:
    """Hold ``folder``'s build lock. ``mode``: wait (``timeout_s`` 0 = no limit), refuse (raise OutputBusy
    at once) or none (no lock). Yields the lock file's path (None without a lock)."""
    log = get_logger()
    prefix = f"{label}: " if label else ""
    if mode == "none":
        log.warning("%s%s: safety.lock=none: no build lock; run only one build into this folder at a time",
                    prefix, folder)
        yield None
        return
    path = Path(folder) / LOCK_NAME
    _refuse_link(path)
    lock = filelock.FileLock(str(path), thread_local=False)
    started = time.monotonic()
    next_report = started
    while not _try_acquire(lock, path, Path(folder)):
        holder = holder_of(folder)
        waited = time.monotonic() - started
        if mode != "wait":
            raise OutputBusy(f"{folder}: another build ({holder}) is writing into this folder "
                             "(safety.lock=refuse; safety.lock=wait waits for it)")
        if timeout_s and waited >= timeout_s:
            raise OutputBusy(f"{folder}: another build ({holder}) is writing into this folder; "
                             f"gave up after {waited:.0f} s (safety.lock_timeout_s)")
        if time.monotonic() >= next_report:
            log.warning("%s%s: another build (%s) is writing here; waiting for it to finish", prefix, folder, holder)
            next_report = time.monotonic() + REPORT_EVERY_S
        time.sleep(POLL_S)
    holder_file = Path(folder) / HOLDER_NAME
    try:
        write_text_atomic(holder_file, f"pid {os.getpid()} on {socket.gethostname()}\n")  # replaces a link, never
        if time.monotonic() - started > POLL_S:                                            # writes through one
            log.info("%s%s: lock acquired after %.1f s", prefix, folder, time.monotonic() - started)
        yield path
    finally:
        try:
            holder_file.unlink(missing_ok=True)
            _unlink_flock_file(path)
        finally:
            lock.release()


def _unlink_flock_file(path: Path) -> None:
    """Remove the (empty) flock file while still holding it, so a finished build leaves nothing behind; a waiter
    that then locks the unlinked inode sees it has no name and tries again (filelock checks ``st_nlink``).
    A marker lock (never empty: pid and host) is left to filelock's release, which removes it; Windows removes
    its own after release."""
    if sys.platform == "win32":
        return
    try:
        info = os.lstat(path)
    except OSError:
        return
    if stat.S_ISREG(info.st_mode) and info.st_size == 0:
        path.unlink(missing_ok=True)
