"""Quality measures shared by builds, reports, tests and benchmarks.

What RVC's inference does with an index (``../shared/docs/rvc-contract.md``), measured against
exact search: recall@k, the retrieval blend (``(1/score)^2`` weights over k=8) against the same
blend over exact neighbours among the original frames, coverage, single-thread search latency,
index size, and ``-1`` labels. Queries are frames of held-out utterances (``rvc_index.evaluation.holdout``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from rvc_index.build.resume import read_report
from rvc_index.compute.backend import Backend
from rvc_index.compute.kmeans import squared_norms
from rvc_index.config.schema import EvaluateConfig
from rvc_index.data.feature_set import FeatureSet, open_feature_set
from rvc_index.data.sources import resolve_experiment, scan_manifest
from rvc_index.errors import RvcIndexError
from rvc_index.evaluation.holdout import (
    Holdout,
    HoldoutError,
    holdout_from_features,
    holdout_from_folder,
    ids_holding,
    row_digests,
)
from rvc_index.evaluation.measure import (
    RVC_K,
    index_ram_bytes,
    ivf_or_none,
    nprobe_values,
    reconstruct_blocks,
    search_latency,
    search_params,
)
from rvc_index.runtime.stream import iter_blocks, take_rows
from rvc_index.stages.indexing import describe_index, list_sizes

SCORE_FLOOR = 1e-12  # a query equal to a stored vector scores 0: RVC's weight would be inf


def exact_knn(backend: Backend, queries: np.ndarray, blocks: Iterable[np.ndarray], k: int,
              tile_rows: int = 8192, keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact L2 k-NN of ``queries`` [q, D] over the rows of ``blocks`` (streamed, in id order).

    Returns (squared distances [q, k] float32, ids [q, k] int64), nearest first; ids count rows
    across blocks from 0. ``keep`` (bool [rows]) leaves out rows where it is False; a query with
    fewer than k kept rows gets ``inf`` distances and ``-1`` ids.
    """
    xp = backend.xp
    q = backend.asarray(queries)
    q_norms = squared_norms(xp, q)
    best_d = xp.full((q.shape[0], k), xp.inf, dtype=xp.float32)
    best_i = xp.full((q.shape[0], k), -1, dtype=xp.int64)
    offset = 0
    for block in blocks:
        for start in range(0, block.shape[0], tile_rows):
            tile = backend.asarray(block[start:start + tile_rows])
            dist = xp.maximum(q_norms[:, None] - 2.0 * (q @ tile.T) + squared_norms(xp, tile)[None, :], 0.0)
            if keep is not None:
                kept = backend.asarray(keep[offset + start:offset + start + tile.shape[0]], dtype=bool)
                dist = xp.where(kept[None, :], dist, xp.inf)
            ids = xp.broadcast_to(xp.arange(offset + start, offset + start + tile.shape[0]), dist.shape)
            if tile.shape[0] > k:  # keep each query's k best of the tile before merging
                part = xp.argpartition(dist, k - 1, axis=1)[:, :k]
                dist, ids = xp.take_along_axis(dist, part, axis=1), xp.take_along_axis(ids, part, axis=1)
            all_d = xp.concatenate([best_d, dist.astype(xp.float32)], axis=1)
            all_i = xp.concatenate([best_i, ids], axis=1)
            order = xp.argsort(all_d, axis=1, kind="stable")[:, :k]
            best_d = xp.take_along_axis(all_d, order, axis=1)
            best_i = xp.take_along_axis(all_i, order, axis=1)
        offset += block.shape[0]
    best_i = xp.where(xp.isfinite(best_d), best_i, -1)
    return backend.to_host(best_d), backend.to_host(best_i)


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean over queries of |found[:, :k] ∩ truth[:, :k]| / k (-1 labels never count)."""
    found, truth = np.asarray(found)[:, :k], np.asarray(truth)[:, :k]
    hits = [len(set(f[f >= 0].tolist()) & set(t.tolist())) for f, t in zip(found, truth)]
    return float(np.mean(hits) / k) if len(hits) else 0.0


def missing_label_share(labels: np.ndarray) -> float:
    """Share of queries with at least one -1 label (RVC's realtime GUI drops those blocks)."""
    labels = np.asarray(labels)
    return float((labels < 0).any(axis=1).mean()) if labels.size else 0.0


def rvc_weights(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """RVC's blend weights [q, k] float64: ``(1/score)^2`` normalised per query.

    A ``-1`` label weighs 0 (in RVC its huge score underflows to a 0 weight); scores are floored
    at ``SCORE_FLOOR`` so an exact match takes all the weight instead of producing NaN. A query
    with no label at all gets all-zero weights (its blend is 0: retrieval lost).
    """
    scores = np.maximum(np.asarray(scores, dtype=np.float64), SCORE_FLOOR)
    weights = np.where(np.asarray(labels) >= 0, 1.0 / np.square(scores), 0.0)
    total = weights.sum(axis=1, keepdims=True)
    return np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)


def rvc_blend(neighbours: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """RVC's blended retrieval [q, D] float64 from neighbour rows [q, k, D] and weights [q, k]."""
    return np.einsum("qkd,qk->qd", np.asarray(neighbours, dtype=np.float64), weights)


def blend_errors(blended: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per query relative L2 error [q]: ``|blended - reference| / |reference|``."""
    diff = np.linalg.norm(np.asarray(blended, np.float64) - reference, axis=1)
    return diff / np.maximum(np.linalg.norm(reference, axis=1), 1e-30)


def coverage(queries: np.ndarray, blended: np.ndarray) -> np.ndarray:
    """Per query L2 distance [q] from each frame to its blended retrieval (lower: better covered)."""
    return np.linalg.norm(np.asarray(queries, np.float64) - blended, axis=1)


def gather_rows(blocks: Iterable[np.ndarray], ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique ids >= 0, their rows [u, D] float32) picked from ``blocks`` in one pass."""
    unique = np.unique(np.asarray(ids)[np.asarray(ids) >= 0]).astype(np.int64)
    rows: np.ndarray | None = None
    offset = 0
    for block in blocks:
        if rows is None:
            rows = np.zeros((len(unique), block.shape[1]), np.float32)
        lo, hi = np.searchsorted(unique, [offset, offset + block.shape[0]])
        rows[lo:hi] = block[unique[lo:hi] - offset]
        offset += block.shape[0]
    if len(unique) and (rows is None or unique[-1] >= offset):
        raise IndexError(f"id {int(unique[-1])} is past the {offset} rows available")
    return unique, rows if rows is not None else np.zeros((0, 0), np.float32)


def neighbour_rows(unique: np.ndarray, rows: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """[q, k, D] rows of ``ids`` [q, k] from ``gather_rows`` output (a -1 id gets some row: weight 0)."""
    positions = np.searchsorted(unique, np.maximum(ids, 0))
    return rows[np.minimum(positions, max(len(unique) - 1, 0))]


def histogram(values: np.ndarray, bins: int = 30) -> dict[str, list[float]]:
    """JSON-able histogram: ``edges`` [bins+1] and ``counts`` [bins]."""
    counts, edges = np.histogram(np.asarray(values, np.float64), bins=bins)
    return {"edges": [round(float(e), 6) for e in edges], "counts": counts.astype(int).tolist()}


def summarise(values: np.ndarray) -> dict[str, float]:
    """mean / median / p95 / max of a 1-D array, rounded for reports."""
    values = np.asarray(values, np.float64)
    return {"mean": round(float(values.mean()), 5), "median": round(float(np.median(values)), 5),
            "p95": round(float(np.quantile(values, 0.95)), 5), "max": round(float(values.max()), 5)}


def exact_reference(backend: Backend, holdout: Holdout, originals: Any, client: Any | None = None,
                    k: int = RVC_K) -> dict[str, np.ndarray]:
    """RVC's blend over exact neighbours among the original frames (held-out rows left out).

    Returns ``ids`` [q, k], ``scores`` [q, k] and ``blended`` [q, D]; computing it once lets a
    benchmark compare several indexes of the same collection against one reference.
    """
    keep = holdout.keep_mask(int(originals.shape[0]))
    scores, ids = exact_knn(backend, holdout.queries, iter_blocks(originals, client), k, keep=keep)
    unique = np.unique(ids[ids >= 0])
    rows = take_rows(originals, unique, client)
    blended = rvc_blend(neighbour_rows(unique, rows, ids), rvc_weights(scores, ids))
    return {"ids": ids, "scores": scores, "blended": blended}


def evaluate_index(index: faiss.Index, holdout: Holdout, originals: Any, backend: Backend, *,
                   client: Any | None = None, exclude_ids: np.ndarray | None = None,
                   stored_is_original: bool = False, reference: dict[str, np.ndarray] | None = None,
                   k: int = RVC_K, sweep: bool = True, repeats: int = 5) -> dict[str, Any]:
    """Every measure of one index on ``holdout``'s queries; a JSON-able dict.

    ``originals``: the collection [N, D] (dask or numpy) the index was built from, held-out rows
    included. ``exclude_ids``: stored ids holding the held-out frames, left out of the index's
    searches (None: the index cannot leave them out). ``stored_is_original``: the stored vectors
    are ``originals`` row for row, so one exact pass serves recall and the blend reference.
    """
    queries = np.ascontiguousarray(holdout.queries, dtype=np.float32)
    keep = None
    if exclude_ids is not None and len(exclude_ids):
        keep = np.ones(index.ntotal, dtype=bool)
        keep[np.asarray(exclude_ids, np.int64)] = False
    found_d, found_i = index.search(queries, k, params=search_params(index, keep=keep))
    # what a user gets: stored settings, nothing left out (the search above, when it left nothing out)
    plain_ids = found_i if keep is None else index.search(queries, k)[1]
    truth_d, truth_i = exact_knn(backend, queries, reconstruct_blocks(index), k, keep=keep)
    if stored_is_original and reference is None:
        reference = {"ids": truth_i, "scores": truth_d}
    wanted = [found_i] if reference is None or "blended" in reference else [found_i, reference["ids"]]
    unique, rows = gather_rows(reconstruct_blocks(index), np.concatenate([w.ravel() for w in wanted]))
    blended = rvc_blend(neighbour_rows(unique, rows, found_i), rvc_weights(found_d, found_i))
    if reference is None:
        reference = exact_reference(backend, holdout, originals, client, k)
    elif "blended" not in reference:
        reference = {**reference, "blended": rvc_blend(neighbour_rows(unique, rows, reference["ids"]),
                                                       rvc_weights(reference["scores"], reference["ids"]))}
    errors = blend_errors(blended, reference["blended"])
    ivf = ivf_or_none(index)
    ram_bytes = index_ram_bytes(index)
    result: dict[str, Any] = {
        "k": k,
        "queries": int(len(queries)),
        "holdout": holdout.describe(left_out_of_index=0 if keep is None else int((~keep).sum())),
        "recall_at_k": round(recall_at_k(found_i, truth_i, k), 4),
        "missing_label_share": missing_label_share(plain_ids),
        "blend_error": {**summarise(errors), "histogram": histogram(errors)},
        "coverage": round(float(coverage(queries, blended).mean()), 5),
        "coverage_exact": round(float(coverage(queries, reference["blended"]).mean()), 5),
        "latency": search_latency(index, queries, k, repeats=repeats),
        "size": {"ram_bytes": ram_bytes,
                 "ram_with_big_npy_bytes": ram_bytes + int(index.ntotal) * int(index.d) * 4},
    }
    if ivf is not None:
        sizes = list_sizes(index)
        result["list_sizes"] = {**histogram(sizes, bins=min(40, max(5, len(sizes) // 4))),
                                "min": int(sizes.min()), "max": int(sizes.max()), "n_list": int(len(sizes))}
        if sweep:
            result["nprobe_sweep"] = nprobe_sweep(index, queries, truth_i, keep, k)
    return result


def nprobe_sweep(index: faiss.Index, queries: np.ndarray, truth: np.ndarray, keep: np.ndarray | None,
                 k: int = RVC_K, repeats: int = 2) -> list[dict[str, Any]]:
    """recall@k, -1 share and single-thread µs per frame at each of ``nprobe_values``."""
    ivf = faiss.extract_index_ivf(index)
    rows = []
    for nprobe in nprobe_values(int(ivf.nlist), int(ivf.nprobe)):
        _, found = index.search(queries, k, params=search_params(index, nprobe, keep))
        timing = search_latency(index, queries, k, params=search_params(index, nprobe), repeats=repeats)
        rows.append({"nprobe": nprobe, "recall_at_k": round(recall_at_k(found, truth, k), 4),
                     "missing_label_share": missing_label_share(found), "us_per_frame": timing["us_per_frame"]})
    return rows


def evaluate_build(index: faiss.Index, features: FeatureSet, config: EvaluateConfig, backend: Backend,
                   client: Any | None = None, *, aligned: bool, stored_is_original: bool, seed: int = 0,
                   k: int = RVC_K) -> dict[str, Any]:
    """A build's evaluation (report.json ``evaluation``); ``{"skipped": why}`` when no whole
    utterance can be held out. ``aligned``: stored id i is feature row i (no compression)."""
    try:
        holdout = holdout_from_features(features, config.holdout_fraction, config.recall_queries, seed,
                                        client, min_keep_rows=k)
    except HoldoutError as exc:
        return {"skipped": str(exc)}
    return evaluate_index(index, holdout, features.array, backend, client=client, k=k,
                          exclude_ids=holdout.row_ids() if aligned else None,
                          stored_is_original=stored_is_original, sweep=config.nprobe_sweep)


class EvaluationError(RvcIndexError, ValueError):
    """The index and the features cannot be evaluated together (width, empty index, ...)."""


def _built_from(index_path: Path, features: FeatureSet) -> bool:
    """True when a report of ours beside the index says its ids are this collection's rows."""
    for path in sorted(index_path.parent.glob("rvc-index-*.report.json")):
        report = read_report(path)
        if (report is not None and report.get("index_file") == index_path.name
                and report.get("feature_dir") == str(features.experiment.feature_dir)
                and report.get("rows") == features.n_rows
                and not report.get("compression", {}).get("applied", True)):
            return True
    return False


def stores_rows_of(index: faiss.Index, features: FeatureSet, client: Any | None = None, runs: int = 4,
                   run_rows: int = 64, seed: int = 0) -> bool:
    """True when the index holds the collection's rows as they are, id i = row i (spot checks)."""
    if index.ntotal != features.n_rows:
        return False
    rng = np.random.default_rng(seed)
    for start in rng.integers(0, max(1, index.ntotal - run_rows), size=runs).tolist():
        stop = min(start + run_rows, index.ntotal)
        rows = take_rows(features.array, np.arange(start, stop), client)
        if not np.array_equal(index.reconstruct_n(start, stop - start), rows):
            return False
    return True


def evaluate_files(index_path: str | Path, feature_dir: str | Path, backend: Backend, *,
                   fraction: float = 0.05, queries_dir: str | Path | None = None, max_queries: int = 1000,
                   seed: int = 0, client: Any | None = None, sweep: bool = True) -> dict[str, Any]:
    """``rvc-index eval``: an existing index against the speaker's features (see rvc_index.evaluation.holdout)."""
    index_path = Path(index_path)
    if not index_path.is_file():
        raise EvaluationError(f"{index_path}: no such index file")
    index = faiss.read_index(str(index_path))
    if index.ntotal < RVC_K:
        raise EvaluationError(f"{index_path}: holds {index.ntotal} vectors, RVC needs {RVC_K}")
    experiment = resolve_experiment(feature_dir)
    manifest = scan_manifest(experiment)
    if manifest.dim != index.d:
        raise EvaluationError(f"{experiment.feature_dir}: {manifest.dim}-d features, {index_path.name} "
                              f"holds {index.d}-d vectors (v1 and v2 mixed?)")
    features = open_feature_set(experiment, manifest, client=client)
    same_rows = stores_rows_of(index, features, client, seed=seed)
    exclude = None
    if queries_dir is not None:
        holdout = holdout_from_folder(queries_dir, max_queries, seed, index.d)
    else:
        holdout = holdout_from_features(features, fraction, max_queries, seed, client)
        if same_rows or _built_from(index_path, features):
            exclude = holdout.row_ids()
        else:  # e.g. RVC's own index: rows shuffled; find the held-out frames by content
            held = take_rows(features.array, holdout.row_ids(), client)
            exclude = ids_holding(reconstruct_blocks(index), row_digests(held))
    result = evaluate_index(index, holdout, features.array, backend, client=client, exclude_ids=exclude,
                            stored_is_original=same_rows, sweep=sweep)
    result["size"]["disk_bytes"] = index_path.stat().st_size
    result["index"] = describe_index(index)
    return result
