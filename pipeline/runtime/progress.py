"""Logging for people reading build and batch output: stage timers and count-based progress lines.

By default a build logs a few lines (what was decided, counts, the result and its verdict); records
marked ``extra=DETAIL`` (stage start/end, progress steps) are shown with ``-v``. They are still
emitted at INFO, so handlers other than the CLI's (tests, Dask's forwarding) see every line.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

LOGGER_NAME = "rvc_index"
_LISTENERS: list[Callable[[ProgressEvent], None]] = []  # process-wide: embedding UIs (``progress_listener``)
DETAIL = {"detail": True}  # ``log.info(..., extra=DETAIL)``: a line shown only with -v


class SummaryOnly(logging.Filter):
    """Drops records marked ``extra=DETAIL`` below WARNING: the default, quiet log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not getattr(record, "detail", False)


def get_logger(name: str | None = None) -> logging.Logger:
    """The package logger, or a child of it (``rvc_index.<name>``)."""
    return logging.getLogger(LOGGER_NAME if name is None else f"{LOGGER_NAME}.{name}")


def slurm_tag() -> str:
    """``[job 123_4]`` inside a SLURM job or array task, else an empty string."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    if not job:
        return ""
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"[job {job}_{task}] " if task else f"[job {job}] "


def tolerate_console_encoding() -> None:
    """Show what the console's encoding cannot encode as ``\\x..`` escapes instead of failing: on Windows a
    pipe, a file or a GUI wrapper gets the ANSI code page, where printing an experiment named ``Zoë歌``
    raised UnicodeEncodeError after its build had succeeded. Child processes (Dask workers) inherit it."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    encoding = os.environ.get("PYTHONIOENCODING", "")
    if encoding and ":" not in encoding:
        os.environ["PYTHONIOENCODING"] = f"{encoding}:backslashreplace"


def configure_logging(verbosity: int = 0) -> None:
    """Log to stderr with timestamps; ``verbosity`` 0 = INFO without detail lines, 1 = INFO with them
    (stages, progress), 2+ = DEBUG, -1 = WARNING."""
    level = logging.DEBUG if verbosity > 1 else logging.WARNING if verbosity < 0 else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    if verbosity == 0:
        handler.addFilter(SummaryOnly())
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s {slurm_tag()}%(levelname)s %(message)s", "%H:%M:%S")
    )
    root = get_logger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


@dataclass(frozen=True)
class ProgressEvent:
    """What a progress listener receives: a stage starting or ending, or counted progress inside one."""

    label: str  # "<experiment>: <stage>" or a progress line's label
    kind: str  # start | done | progress
    done: int = 0
    total: int = 0
    unit: str = ""
    seconds: float = 0.0


@contextmanager
def progress_listener(callback: Callable[[ProgressEvent], None]) -> Iterator[None]:
    """Send every stage start/end and progress step to ``callback`` while the block runs (for tools that
    embed rvc-index and draw their own progress bar). The callback runs in the building thread: keep it short."""
    _LISTENERS.append(callback)
    try:
        yield
    finally:
        _LISTENERS.remove(callback)


def _notify(event: ProgressEvent) -> None:
    for callback in list(_LISTENERS):
        callback(event)


@contextmanager
def stage(name: str, timings: dict[str, float] | None = None, label: str = "") -> Iterator[None]:
    """Log the start and end of a stage with its duration; record seconds into ``timings``."""
    log = get_logger()
    prefix = f"{label}: " if label else ""
    log.info("%s[%s] start", prefix, name, extra=DETAIL)
    _notify(ProgressEvent(f"{prefix}{name}", "start"))
    started = time.perf_counter()
    try:
        yield
    finally:
        seconds = time.perf_counter() - started
        if timings is not None:
            timings[name] = round(timings.get(name, 0.0) + seconds, 4)
        log.info("%s[%s] done in %.2f s", prefix, name, seconds, extra=DETAIL)
        _notify(ProgressEvent(f"{prefix}{name}", "done", seconds=seconds))


class Progress:
    """Count-based progress: logs about every 10 % with counts, rate and ETA."""

    def __init__(self, label: str, total: int, unit: str = "rows", step_percent: float = 10.0):
        self.label = label
        self.total = max(int(total), 0)
        self.unit = unit
        self.step = max(1, int(self.total * step_percent / 100.0))
        self.done = 0
        self._next_report = self.step
        self._started = time.perf_counter()

    def advance(self, count: int) -> None:
        """Record ``count`` more units done; log when a 10 % step is crossed."""
        self.done += int(count)
        if self.done >= self._next_report or self.done >= self.total:
            self._report()
            while self._next_report <= self.done:
                self._next_report += self.step

    def _report(self) -> None:
        elapsed = time.perf_counter() - self._started
        _notify(ProgressEvent(self.label, "progress", self.done, self.total, self.unit, elapsed))
        rate = self.done / elapsed if elapsed > 0 else 0.0
        remaining = max(self.total - self.done, 0)
        eta = remaining / rate if rate > 0 else 0.0
        percent = 100.0 * self.done / self.total if self.total else 100.0
        get_logger().info(
            "%s: %s/%s %s (%.0f%%, %.0f %s/s, ETA %.0f s)",
            self.label, f"{self.done:,}", f"{self.total:,}", self.unit, percent, rate, self.unit, eta, extra=DETAIL,
        )
