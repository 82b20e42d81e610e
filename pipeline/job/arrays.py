"""An in-memory array as the features of a build (``rvc_index.build_index(frames, ...)``).

The rows are checked in memory first (named as rows of "the array"), then written as RVC's layout into
a hidden folder *inside the output folder* (nothing is written outside it, and a full disk is the usual
write error), removed when the build ends. Every message and log line of the build names "the array's
rows a..b", never those files.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
from rvc_index.data.layouts import feature_dir_name
from rvc_index.data.sources import to_float32, usable_row_mask
from rvc_index.errors import RvcIndexError
from rvc_index.runtime.outputs import OutputWriteError
from rvc_index.runtime.progress import get_logger

FILE_ROWS = 500  # rows per pseudo-utterance (10 s): the evaluation holds some out, as it does with files
STAGE_PREFIX = ".rvc-index-array-"  # hidden: never read as features, never an experiment of a batch
LABEL = "the array"


class ArrayError(RvcIndexError, ValueError):
    """An array that cannot be indexed (not 2-D float, empty, every row NaN)."""


def as_frames(source: object, function: str = "build_index") -> np.ndarray:
    """``source`` (a numpy array, a list of rows, a memoryview, anything with ``__array__``) as a float [N, D]
    numpy array without a copy where it is one; ArrayError in one line naming its type otherwise."""
    try:
        frames = np.asarray(source)
    except Exception as exc:  # noqa: BLE001 - whatever the object raises (a CUDA tensor, ragged lists)
        raise ArrayError(f"{function}: source {type(source).__name__} is neither a folder (str or os.PathLike) nor "
                         f"an array numpy can read ({str(exc).splitlines()[0][:120] if str(exc) else exc!r})") from None
    if frames.ndim != 2 or 0 in frames.shape or frames.dtype.kind != "f":
        raise ArrayError(f"{function}: source {type(source).__name__} must be a non-empty float [N, D] array, got "
                         f"{frames.dtype} of shape {tuple(frames.shape)}")
    return frames


@dataclass(frozen=True)
class StagedArray:
    """Where the array's rows were written, and which rows each file holds."""

    folder: Path  # the feature folder: <out>/.rvc-index-array-…/array/3_feature<D>
    rows: tuple[tuple[int, int], ...]  # [start, stop) of the array in file i (``{i:06d}.npy``)

    def relabel(self, text: str) -> str:
        """``text`` with the staged files named as rows of the array, and the folders as the array."""
        def rows(match: re.Match[str]) -> str:
            start, stop = self.rows[int(match[1])]
            return f"{LABEL}'s rows {start}..{stop - 1}"

        text = re.sub(re.escape(str(self.folder)) + r"[/\\](\d{6})\.npy", rows, text)
        for folder in (self.folder, self.folder.parent, self.folder.parent.parent):
            text = text.replace(str(folder), LABEL)
        return text


def _file_rows(finite: np.ndarray) -> tuple[tuple[int, int], ...]:
    """[start, stop) of each file: ``FILE_ROWS`` rows without NaN each (the NaN rows among them), so no file
    is all NaN (a bad file) while NaN rows are still dropped and counted as in any file."""
    kept = np.flatnonzero(finite)
    starts = [0, *kept[FILE_ROWS::FILE_ROWS].tolist()]
    return tuple(zip(starts, [*starts[1:], finite.shape[0]]))


def _save(path: Path, rows: np.ndarray) -> None:
    """``rows`` (C-ordered float32) as an ``.npy`` file, written by Python's own file object: a full disk is an
    OSError with its errno (numpy's ``tofile`` reports only byte counts)."""
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, np.lib.format.header_data_from_array_1_0(rows))
        handle.write(memoryview(rows).cast("B"))


def _remove_stale_stages(out: Path) -> None:
    """Remove staging folders this host's killed builds left in ``out`` (their process is gone)."""
    host = socket.gethostname()
    for path in out.glob(f"{STAGE_PREFIX}*"):
        owner, _, pid = path.name[len(STAGE_PREFIX):].rpartition("-")[0].rpartition("-")
        if owner == host and pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


@contextmanager
def staged_array(frames: np.ndarray, out: Path) -> Iterator[StagedArray]:
    """Check ``frames`` (float [N, D]) and write them as a feature folder inside ``out`` (an existing folder)
    for the block; removed afterwards. Errors and log lines inside name rows of the array, not files."""
    finite = np.empty(frames.shape[0], dtype=bool)
    for start in range(0, frames.shape[0], FILE_ROWS):  # float32 copies of a few rows, not of the array
        finite[start:start + FILE_ROWS] = usable_row_mask(LABEL, to_float32(LABEL, frames[start:start + FILE_ROWS],
                                                                            start), start)
    if not finite.any():
        raise ArrayError(f"{LABEL}: all {frames.shape[0]} rows hold NaN or Inf")
    _remove_stale_stages(out)
    with tempfile.TemporaryDirectory(prefix=f"{STAGE_PREFIX}{socket.gethostname()}-{os.getpid()}-", dir=out) as root:
        staged = StagedArray(Path(root) / "array" / feature_dir_name(frames.shape[1]), _file_rows(finite))
        try:
            staged.folder.mkdir(parents=True)
            for number, (start, stop) in enumerate(staged.rows):
                _save(staged.folder / f"{number:06d}.npy", to_float32(LABEL, frames[start:stop], start))
        except OSError as exc:
            error = OutputWriteError(f"{out}: {LABEL} could not be written there for the build "
                                     f"({exc.strerror or exc}); nothing was replaced, no partial file left")
            error.errno = exc.errno
            raise error from exc
        relabel = _Relabel(staged)
        get_logger().addFilter(relabel)
        try:
            yield staged
        except RvcIndexError as exc:
            exc.args = (staged.relabel(str(exc)), *exc.args[1:])
            raise
        finally:
            get_logger().removeFilter(relabel)


class _Relabel(logging.Filter):
    """Names the staged files as rows of the array in every log record of the build."""

    def __init__(self, staged: StagedArray) -> None:
        super().__init__()
        self.staged = staged

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        relabeled = self.staged.relabel(message)
        if relabeled != message:
            record.msg, record.args = relabeled, ()
        return True
