"""Dask's routine noise goes to the debug log: messages about Dask itself, not about the user's builds.

"Port 8787 is already in use" (another dashboard runs: Dask picks another port, and the batch
reports its dashboard address), "Worker process still alive after 3 s, killing" (a normal
shutdown), "Event loop was unresponsive" (a long build holding the GIL) and the like are shown
with ``-v`` only. Real trouble (a worker that died, a lost task) stays a warning.
"""

from __future__ import annotations

import logging
import re
import warnings

NOISE: dict[str, tuple[str, ...]] = {
    "distributed.node": (r"Port \d+ is already in use",),
    "distributed.nanny": (r"Worker process still alive after", r"Nanny asking worker to close",
                          r"Closing Nanny at"),
    "distributed.core": (r"Event loop was unresponsive", r"Creating scratch directories is taking"),
    "distributed.utils_perf": (r"full garbage collections took",),
    "distributed.gc": (r"full garbage collections took",),
    "distributed.http.proxy": (r"jupyter-server-proxy",),
    "distributed.worker.memory": (r"Unmanaged memory use is high",),
    "distributed.worker": (r"Failed to communicate with scheduler during heartbeat",),  # when the batch stops
    "distributed.worker.state_machine": (r"Async instruction for .* ended with CancelledError",),
}


class DaskNoise(logging.Filter):
    """Turns a known routine message into a DEBUG record, dropped unless ``verbose``."""

    def __init__(self, patterns: tuple[str, ...], verbose: bool):
        super().__init__()
        self.pattern = re.compile("|".join(patterns))
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG and self.pattern.search(str(record.msg)):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return self.verbose
        return True


WARNINGS = (r"Port \d+ is already in use",)  # distributed.node says it with warnings.warn


def quiet_dask_noise(verbose: bool = False) -> None:
    """Install the filters in this process (again: replaces the previous ones)."""
    if not verbose:
        for pattern in WARNINGS:
            warnings.filterwarnings("ignore", message=pattern, category=UserWarning)
    for name, patterns in NOISE.items():
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, DaskNoise)]:
            logger.removeFilter(old)
        logger.addFilter(DaskNoise(patterns, verbose))
