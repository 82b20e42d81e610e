"""Open an index file someone hands us (``eval``, ``inspect``) and check it before any use.

faiss trusts its files: an ``IndexIDMap`` aborts the process in ``reconstruct_n`` (SIGABRT, no
Python exception), and a header whose ``ntotal`` says 10^15 makes every loop over the stored
vectors run forever. Only the layouts RVC and this package write are accepted: an ``IndexIVF``
(``IVF…,Flat``, ``IVF…,PQ…``), alone or inside ``IndexRefine`` (``…,RFlat``), whose ``ntotal``
agrees with its inverted lists, its refine store and the file's size.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
from rvc_index.errors import RvcIndexError
from rvc_index.inspection.describe import IndexDescription, describe_index

ID_BYTES = 8  # an IVF list stores one int64 id per vector


class IndexFileError(RvcIndexError, ValueError):
    """An index file that cannot be used safely; the message names the file and the problem."""


def read_index_file(path: str | Path) -> faiss.Index:
    """The index in ``path``, read by faiss and checked (``check_index``); raises IndexFileError."""
    path = Path(path)
    try:
        info = os.stat(path)
    except OSError as exc:
        raise IndexFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(info.st_mode):  # faiss would block on a FIFO
        raise IndexFileError(f"{path}: not a regular file")
    try:
        index = faiss.read_index(str(path))
    except (RuntimeError, MemoryError) as exc:  # faiss: "Error in ... read_index ..."
        raise IndexFileError(f"{path}: not a faiss index file faiss can read ({str(exc).strip()[-200:]})") from exc
    check_index(index, path, info.st_size)
    return index


def check_index(index: faiss.Index, path: str | Path, file_bytes: int) -> None:
    """Raise IndexFileError unless ``index`` is an IVF (or IVF in IndexRefine) whose counts agree."""
    typed = faiss.downcast_index(index)
    base = faiss.downcast_index(typed.base_index) if isinstance(typed, faiss.IndexRefine) else typed
    if not isinstance(base, faiss.IndexIVF):
        kind = type(typed).__name__ + (f" over {type(base).__name__}" if base is not typed else "")
        raise IndexFileError(f"{path}: {kind} is not supported: only IVF indexes (IVF…,Flat, IVF…,PQ…, with or "
                             "without RFlat) as RVC and rvc-index write them")
    ntotal = int(index.ntotal)
    if index.d <= 0 or ntotal < 0:
        raise IndexFileError(f"{path}: corrupted header (d={index.d}, ntotal={ntotal})")
    invlists = base.invlists
    listed = int(np.sum([invlists.list_size(i) for i in range(invlists.nlist)], dtype=np.int64))
    counts = {"the header": ntotal, "the inverted lists": listed, "the IVF header": int(base.ntotal)}
    if typed is not base:
        refine = faiss.downcast_index(typed.refine_index)
        counts["the refine store"] = int(refine.ntotal)
        if isinstance(refine, faiss.IndexFlatCodes):
            counts["the refine codes"] = int(refine.codes.size()) // max(1, int(refine.code_size))
    if len(set(counts.values())) > 1:
        said = ", ".join(f"{where} {count}" for where, count in counts.items())
        raise IndexFileError(f"{path}: corrupted: vector counts disagree ({said})")
    if ntotal * ID_BYTES > file_bytes:
        raise IndexFileError(f"{path}: corrupted: {ntotal} vectors cannot fit in {file_bytes} bytes")


@dataclass(frozen=True)
class Inspection(IndexDescription):
    """What ``rvc-index inspect`` prints: the index's description, which tools can use it and why not
    (docs/consumers.md), what each holds (MB) and its search time per frame at one thread."""

    consumers: dict[str, str] = field(default_factory=dict)  # tool: "ok" or why it cannot use the index
    holdings_mb: dict[str, float] = field(default_factory=dict)
    us_per_frame: float = 0.0


def inspect_index_file(path: str | Path, frames: int = 500, seed: int = 0) -> Inspection:
    """Inspect the index at ``path``; its search time is measured with ``frames`` of its own stored vectors,
    slightly moved, as queries."""
    from rvc_index.evaluation.measure import search_latency, stored_rows
    from rvc_index.inspection.consumers import CONSUMERS, holdings, static_problems

    index = read_index_file(path)
    problems = static_problems(index)
    rng = np.random.default_rng(seed)
    ids = np.unique(rng.integers(0, index.ntotal, size=min(frames, index.ntotal)))
    rows = stored_rows(index, ids)
    queries = rows + rng.standard_normal(rows.shape).astype(np.float32) * rows.std() * np.float32(0.1)
    return Inspection(**vars(describe_index(index)), consumers={name: problems.get(name, "ok") for name in CONSUMERS},
                      holdings_mb={key: round(value / 2**20, 1) for key, value in holdings(index).items()
                                   if key != "exact_flops_per_frame"},
                      us_per_frame=search_latency(index, queries).us_per_frame)
