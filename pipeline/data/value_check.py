"""The value check's read of one chunk: every file's values checked (NaN/Inf rows dropped and counted, a value too
large for float32 distances makes its file bad) and the k-means init sample drawn, in one read; on a GPU build
the chunk's rows are checked on the device in one call (``row_codes``), the host only reading files.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import numpy as np
from rvc_index.data.sources import FeatureFileError, check_unchanged, load_features, usable_row_mask
from rvc_index.runtime.stream import ROWS_READ

_scratch = threading.local()


def scratch_rows(rows: int, dim: int) -> np.ndarray:
    """A float32 [rows, dim] buffer of the calling thread's own, reused by its next call: the value
    check reads each file into it instead of into fresh pages (page faults cost more than the read)."""
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or buffer.shape[1] != dim or buffer.shape[0] < rows:
        buffer = _scratch.buffer = np.empty((max(rows, 1), dim), np.float32)
    return buffer[:rows]


RowCodes = Callable[[np.ndarray], np.ndarray]  # float32 [n, D] -> int [n]: 0 usable, 1 too large, 2 NaN or Inf


def check_and_sample(paths: Sequence[str], dim: int, file_rows: Sequence[int], n_sample: int,
                     seed: Sequence[int], out: np.ndarray | None = None, keep: np.ndarray | None = None,
                     row_codes: RowCodes | None = None) -> tuple[list[int | str], np.ndarray, np.ndarray, np.ndarray]:
    """Check each file's values and draw ``n_sample`` of the chunk's rows (seeded, uniform over the
    headers' ``file_rows``; a drawn row holding NaN/Inf is left out): one read of each file. A value too
    large for float32 distances makes its file unusable (``sources.usable_row_mask``).

    Returns (per file: finite rows, or a problem string for a file that cannot be used; the drawn
    rows [<= n_sample, dim], written into ``out`` when given; each one's file (index into ``paths``);
    its index among that file's finite rows). ``keep``: a float32 [sum(file_rows), dim] buffer that
    ends up holding the chunk's finite rows in order, as ``load_group`` reads them (a resident
    collection is read once); a file whose row count changed since its header was read is then a problem.
    ``row_codes`` (a device's check, ``compute.values.device_row_codes``): the chunk's files are read into one
    buffer and their rows checked in one call there (the host reads files and keeps the books); a file with
    a value beyond the bound is checked again on the host for its message.
    """
    results: list[int | str] = []
    total = sum(file_rows)
    picks = np.sort(np.random.default_rng(list(seed)).choice(total, size=min(n_sample, total), replace=False))
    rows_out = np.empty((len(picks), dim), np.float32) if out is None else out[:len(picks)]
    file_of = np.empty(len(picks), np.int64)
    row_in_file = np.empty(len(picks), np.int64)
    read = _read_and_code(paths, dim, file_rows, keep, row_codes) if row_codes is not None else None
    filled, start, kept = 0, 0, 0
    for index, (path, expected) in enumerate(zip(paths, file_rows)):
        lo, hi = np.searchsorted(picks, [start, start + expected])
        local = picks[lo:hi] - start
        start += expected
        try:
            if read is None:
                array = load_features(path, dim, scratch_rows(expected, dim) if keep is None else keep[kept:])
                if keep is not None:
                    check_unchanged(path, expected, array.shape[0])
                ROWS_READ.add(array.shape[0])
                mask = usable_row_mask(path, array)  # a value too large for float32 distances: a bad file
            else:
                array, mask = _coded(path, read[index])
        except FeatureFileError as exc:
            results.append(exc.problem)
            continue
        finite = int(mask.sum())
        results.append(finite if finite else f"all {array.shape[0]} rows are NaN or Inf")
        local = local[local < array.shape[0]]  # a file shorter than its header now: the chunk's load says so
        local = local[mask[local]]
        if local.size:
            np.take(array, local, axis=0, out=rows_out[filled:filled + local.size], mode="clip")  # one copy, in range
            file_of[filled:filled + local.size] = index
            row_in_file[filled:filled + local.size] = local if finite == array.shape[0] else \
                (np.cumsum(mask) - 1)[local]
            filled += local.size
        if keep is not None:
            if finite < array.shape[0] or not np.shares_memory(array, keep):  # NaN rows out, or not read in place
                keep[kept:kept + finite] = array[mask]
            kept += finite
    return results, rows_out[:filled], file_of[:filled], row_in_file[:filled]


def _read_and_code(paths: Sequence[str], dim: int, file_rows: Sequence[int], keep: np.ndarray | None,
                   row_codes: RowCodes) -> list[tuple[np.ndarray, np.ndarray] | FeatureFileError]:
    """Every file of a chunk read into one buffer (``keep``, else this thread's scratch), then every row coded in
    one ``row_codes`` call: per file (its rows, their codes), or the error that stopped its read."""
    buffer = keep if keep is not None else scratch_rows(sum(file_rows), dim)
    spans: list[tuple[int, int] | FeatureFileError] = []
    offset = 0
    for path, expected in zip(paths, file_rows):
        try:
            array = load_features(path, dim, buffer[offset:])
            check_unchanged(path, expected, array.shape[0])
        except FeatureFileError as exc:
            spans.append(exc)
            continue
        ROWS_READ.add(array.shape[0])
        if not np.shares_memory(array, buffer):  # not float32 on disk: converted, then placed
            buffer[offset:offset + array.shape[0]] = array
        spans.append((offset, offset + array.shape[0]))
        offset += array.shape[0]
    codes = np.asarray(row_codes(buffer[:offset])) if offset else np.zeros(0, np.int32)
    return [span if isinstance(span, FeatureFileError) else (buffer[span[0]:span[1]], codes[span[0]:span[1]])
            for span in spans]


def _coded(path: str, read: tuple[np.ndarray, np.ndarray] | FeatureFileError) -> tuple[np.ndarray, np.ndarray]:
    """(rows, the usable ones) of a file read by ``_read_and_code``: raises its read error, or, for a value beyond
    the bound, the host check's error naming the row and the value."""
    if isinstance(read, FeatureFileError):
        raise read
    array, codes = read
    if (codes == 1).any():
        usable_row_mask(path, array)  # raises FeatureFileError with the message every route gives
    return array, codes == 0
