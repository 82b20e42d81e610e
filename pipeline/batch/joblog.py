"""Each experiment's log in its own file (``rvc-index-<exp>-<preset>.log`` in its output folder), appended per attempt.

The build runs in one thread of its worker (a streamed build keeps its thread after it secedes), so
the file takes the package logger's records from that thread only: builds sharing a worker process
never mix their lines.
"""

from __future__ import annotations

import datetime
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rvc_index.runtime.progress import get_logger, slurm_tag


class _ThisThread(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread == self.thread


def log_path(out_dir: str | Path, stem: str, preset: str) -> Path:
    """Where an experiment's log goes: beside its index and report (named as they are)."""
    return Path(out_dir) / f"rvc-index-{stem}-{preset}.log"


@contextmanager
def experiment_log(path: Path, title: str) -> Iterator[Path | None]:
    """Copy this thread's package log records to ``path`` while the block runs (INFO and up, as far as
    the logger's level lets them through: batch workers log at INFO).

    Yields the path, or None when the folder cannot be written (the build then reports why).
    """
    log = get_logger()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, mode="a", encoding="utf-8", errors="backslashreplace")
    except OSError as exc:
        log.debug("%s: no log file (%s)", path, exc)
        yield None
        return
    handler.setLevel(logging.INFO)
    handler.addFilter(_ThisThread())
    handler.setFormatter(logging.Formatter(f"%(asctime)s {slurm_tag()}%(levelname)s %(message)s", "%H:%M:%S"))
    handler.stream.write(f"=== {datetime.datetime.now().isoformat(timespec='seconds')} {title}\n")
    log.addHandler(handler)
    try:
        yield path
    finally:
        log.removeHandler(handler)
        handler.close()
