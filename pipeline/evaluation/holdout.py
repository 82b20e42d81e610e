"""Held-out utterances: whole files whose frames query an index the way new speech would.

RVC searches its index with frames it has never seen. On a speaker's own data that is measured by
holding out whole utterances (files, never single frames: neighbouring frames of one utterance are
near-copies of each other, so a held-out frame would find its own utterance):

* **builds** and ``rvc-index eval INDEX FEATURE_DIR``: about ``fraction`` of the rows, as whole
  files drawn at random (seeded), are held out. Their frames are the queries; the exact reference
  leaves their rows out, and so does the index's search (a faiss ID selector over the ids that
  store them), as if the index had been built without them; only its training saw them. An index
  that stores centroids (compressed) cannot leave them out: the report says so.
* ``rvc-index eval ... --queries DIR``: utterances in a folder of their own, never indexed;
  nothing needs leaving out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rvc_index.data.feature_set import FeatureSet
from rvc_index.data.layouts import resolve_experiment
from rvc_index.data.sources import load_features, scan_manifest, usable_row_mask
from rvc_index.errors import RvcIndexError
from rvc_index.evaluation.result import HeldOut

MIN_WINDOW = 50  # query frames are taken in runs of at least one second of audio


class HoldoutError(RvcIndexError, ValueError):
    """No whole utterance can be held out (one file only, or too few rows would stay indexed)."""


@dataclass(frozen=True)
class Holdout:
    """Query frames of held-out utterances and where those utterances sit in the collection."""

    queries: np.ndarray  # [q, D] float32, contiguous runs of frames
    ranges: tuple[tuple[int, int], ...]  # collection rows [start, stop) held out; () = not in it
    files: tuple[str, ...]
    total_rows: int  # rows of the collection (held-out ones included); 0 for a separate folder

    @property
    def held_rows(self) -> int:
        return sum(b - a for a, b in self.ranges)

    def row_ids(self) -> np.ndarray:
        """Sorted int64 ids of the held-out rows of the collection."""
        if not self.ranges:
            return np.empty(0, np.int64)
        return np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in self.ranges])

    def keep_mask(self, n_rows: int) -> np.ndarray | None:
        """bool [n_rows]: False on held-out rows; None when nothing is held out of the collection."""
        if not self.ranges:
            return None
        keep = np.ones(n_rows, dtype=bool)
        for a, b in self.ranges:
            keep[a:b] = False
        return keep

    def describe(self, left_out_of_index: int) -> HeldOut:
        """The report's account of how the queries were held out (``left_out_of_index``: stored
        ids the index's searches left out)."""
        if not self.ranges:
            return HeldOut("separate folder", len(self.files), int(len(self.queries)),
                           "queries come from utterances that were never indexed")
        if left_out_of_index >= self.held_rows:
            note = "held-out utterances left out of the reference and of the index's searches"
        elif left_out_of_index:
            note = (f"held-out utterances left out of the reference; {left_out_of_index} stored vectors equal to "
                    "held-out frames left out of the index's searches, the others cannot be traced to frames")
        else:
            note = ("held-out utterances left out of the reference only: the index stores centroids "
                    "(or transformed vectors) that cannot be traced to frames")
        return HeldOut("collection", len(self.files), int(len(self.queries)), note, self.held_rows,
                       round(self.held_rows / max(self.total_rows, 1), 4), int(left_out_of_index))


def check_seed(seed: int) -> int:
    """``seed`` when numpy can seed with it (an int >= 0); HoldoutError otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise HoldoutError(f"seed must be an integer >= 0, got {seed!r}")
    return int(seed)


def choose_files(file_rows: Sequence[int], fraction: float, min_keep_rows: int,
                 rng: np.random.Generator) -> list[int]:
    """Indices (sorted) of whole files holding about ``fraction`` of the rows, drawn at random.

    At least one file is held out; at least ``min_keep_rows`` rows stay in the collection.
    """
    if not 0.0 < fraction < 1.0:
        raise HoldoutError(f"the held-out fraction must be in (0, 1), got {fraction}")
    rows = np.asarray(file_rows, dtype=np.int64)
    total = int(rows.sum())
    if len(rows) < 2:
        raise HoldoutError(f"{len(rows)} feature file: whole utterances can only be held out from 2 or more")
    budget = max(1, int(round(fraction * total)))
    chosen: list[int] = []
    held = 0
    for f in rng.permutation(len(rows)).tolist():
        if rows[f] == 0 or total - held - rows[f] < min_keep_rows or (chosen and held + rows[f] > budget):
            continue
        chosen.append(f)
        held += int(rows[f])
        if held >= budget:
            break
    if not chosen:
        raise HoldoutError(f"no file can be held out while keeping {min_keep_rows} rows indexed")
    return sorted(chosen)


def choose_windows(file_rows: Sequence[int], files: Sequence[int], max_queries: int,
                   rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """(file, start, stop) runs of consecutive frames, at most ``max_queries`` frames in all.

    Each file gives one run at a random offset of its share of what is left to take (at least
    ``MIN_WINDOW`` frames), so the queries spread over utterances yet keep real-time blocks.
    """
    if max_queries <= 0:
        raise HoldoutError(f"max_queries must be > 0, got {max_queries}")
    windows, taken = [], 0
    for position, f in enumerate(files):
        share = max(MIN_WINDOW, -(-(max_queries - taken) // (len(files) - position)))
        take = min(share, int(file_rows[f]), max_queries - taken)
        if take <= 0:
            break
        start = int(rng.integers(0, int(file_rows[f]) - take + 1))
        windows.append((int(f), start, start + take))
        taken += take
    return windows


def finite_rows(features: FeatureSet, file: int) -> np.ndarray:
    """File ``file`` of ``features`` as the collection holds it: float32, rows with NaN/Inf dropped."""
    path = features.manifest.path(features.manifest.files[file].name)
    array = load_features(path, features.dim)
    mask = usable_row_mask(path, array)
    return array if mask.all() else array[mask]


def holdout_from_features(features: FeatureSet, fraction: float, max_queries: int, seed: int,
                          client: Any | None = None, min_keep_rows: int = 8) -> Holdout:
    """Hold out whole files of ``features``; queries are runs of their frames, read from just the files
    holding them (never the collection's chunks: a chunk of 128 MB for 50 frames). ``client`` is unused."""
    rng = np.random.default_rng([check_seed(seed), 6])
    file_rows = features.file_rows
    files = choose_files(file_rows, fraction, min_keep_rows, rng)
    offsets = np.concatenate([[0], np.cumsum(file_rows)]).astype(np.int64)
    windows = choose_windows(file_rows, files, max_queries, rng)
    queries = np.concatenate([finite_rows(features, f)[a:b] for f, a, b in windows])
    ranges = tuple((int(offsets[f]), int(offsets[f + 1])) for f in files)
    names = tuple(features.manifest.files[f].name for f in files)
    return Holdout(np.ascontiguousarray(queries, np.float32), ranges, names, features.n_rows)


def holdout_from_folder(path: str | Path, max_queries: int, seed: int, dim: int | None = None) -> Holdout:
    """Queries from a folder of never-indexed utterances (RVC layout or plain ``.npy`` files)."""
    experiment = resolve_experiment(path)
    manifest = scan_manifest(experiment)
    if dim is not None and manifest.dim != dim:
        raise HoldoutError(f"{experiment.feature_dir}: width {manifest.dim}, the index holds {dim}-d vectors")
    arrays, names = [], []
    for entry in manifest.files:
        array = load_features(manifest.path(entry.name), manifest.dim)
        finite = array[usable_row_mask(manifest.path(entry.name), array)]
        if len(finite):  # an all-NaN utterance has no frame to query with
            arrays.append(finite)
            names.append(entry.name)
    if not arrays:
        raise HoldoutError(f"{experiment.feature_dir}: every query frame holds NaN or Inf")
    rng = np.random.default_rng([check_seed(seed), 7])
    windows = choose_windows([len(a) for a in arrays], rng.permutation(len(arrays)).tolist(), max_queries, rng)
    queries = np.concatenate([arrays[f][a:b] for f, a, b in windows])
    return Holdout(np.ascontiguousarray(queries, np.float32), (), tuple(names), 0)


def row_digests(rows: np.ndarray) -> np.ndarray:
    """uint64 [n]: a content hash of each float32 row (equal rows, equal digests)."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    return np.array([int.from_bytes(hashlib.blake2b(r.tobytes(), digest_size=8).digest(), "little")
                     for r in rows], dtype=np.uint64)


def ids_holding(stored_blocks: Iterable[np.ndarray], digests: np.ndarray) -> np.ndarray:
    """Sorted ids of the stored rows whose content is one of ``digests`` (held-out frames)."""
    wanted = np.unique(digests)
    found, offset = [], 0
    for block in stored_blocks:
        hits = np.nonzero(np.isin(row_digests(block), wanted))[0]
        found.append(hits + offset)
        offset += block.shape[0]
    return np.concatenate(found).astype(np.int64) if found else np.empty(0, np.int64)
