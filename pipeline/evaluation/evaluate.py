"""Quality measures shared by builds, reports, tests and benchmarks.

What RVC's inference does with an index (docs/consumers.md), measured against
exact search: recall@k, the retrieval blend (``(1/score)^2`` weights over k=8) against the same
blend over exact neighbours among the original frames, coverage, single-thread search latency,
index size, and ``-1`` labels. Queries are frames of held-out utterances (``rvc_index.evaluation.holdout``).
The measures are ``rvc_index.evaluation.metrics``; what a build can afford, ``rvc_index.evaluation.sizing``;
the typed result and its JSON, ``rvc_index.evaluation.result``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from rvc_index.compute.backend import Backend, faiss_threads
from rvc_index.config.schema import SEARCH_K, EvaluateConfig, SourceConfig
from rvc_index.data.feature_set import FeatureSet, open_feature_set, resident_fits
from rvc_index.data.layouts import resolve_experiment
from rvc_index.data.sources import scan_manifest
from rvc_index.errors import RvcIndexError
from rvc_index.evaluation.holdout import (
    Holdout,
    HoldoutError,
    check_seed,
    holdout_from_features,
    holdout_from_folder,
    ids_holding,
    row_digests,
)
from rvc_index.evaluation.index_file import read_index_file
from rvc_index.evaluation.measure import (
    index_ram_bytes,
    ivf_or_none,
    reconstruct_blocks,
    search_latency,
    search_params,
    short_search_share,
    stored_rows,
)
from rvc_index.evaluation.metrics import (
    blend_errors,
    coverage,
    exact_knn,
    missing_label_share,
    neighbour_rows,
    recall_at_k,
    rvc_blend,
    rvc_weights,
)
from rvc_index.evaluation.result import Evaluation, EvaluationSkipped, ListSizes, Size, Spread, SweepPoint
from rvc_index.evaluation.sizing import EvaluationPlan, full_plan, nprobe_values, plan_evaluation
from rvc_index.inspection.describe import describe_index, list_sizes
from rvc_index.runtime.memory import F32, StageEstimate
from rvc_index.runtime.outputs import read_json
from rvc_index.runtime.run import Run
from rvc_index.runtime.stream import iter_blocks


@dataclass(frozen=True)
class ExactReference:
    """Exact neighbours of the queries: ``ids`` [q, k] int64, ``scores`` [q, k] float32 (squared distances) and,
    once computed, RVC's blend over them ``blended`` [q, D] float64."""

    ids: np.ndarray
    scores: np.ndarray
    blended: np.ndarray | None = None


def exact_reference(run: Run[Backend], holdout: Holdout, originals: Any, k: int = SEARCH_K) -> ExactReference:
    """RVC's blend over exact neighbours among the original frames (held-out rows left out); computing it once
    lets a benchmark compare several indexes of the same collection against one reference."""
    keep = holdout.keep_mask(int(originals.shape[0]))
    scores, ids = exact_knn(run.backend, holdout.queries, run.blocks(originals), k, keep=keep)
    unique = np.unique(ids[ids >= 0])
    rows = run.take_rows(originals, unique)
    return ExactReference(ids, scores, rvc_blend(neighbour_rows(unique, rows, ids), rvc_weights(scores, ids)))


def evaluate_index(index: faiss.Index, holdout: Holdout, originals: Any, run: Run[Backend], *,
                   exclude_ids: np.ndarray | None = None,
                   stored_is_original: bool = False, reference: ExactReference | None = None,
                   k: int = SEARCH_K, plan: EvaluationPlan | None = None) -> Evaluation:
    """Every measure of one index on ``holdout``'s queries.

    ``originals``: the collection [N, D] (dask or numpy) the index was built from, held-out rows
    included. ``exclude_ids``: stored ids holding the held-out frames, left out of the index's
    searches (None: the index cannot leave them out). ``stored_is_original``: the stored vectors
    are ``originals`` row for row, so one exact pass serves recall and the blend reference.
    ``plan`` (default: everything, every query) says what to measure.
    """
    started = time.perf_counter()
    queries = np.ascontiguousarray(holdout.queries, dtype=np.float32)
    plan = plan or full_plan(len(queries))
    keep = None
    if exclude_ids is not None and len(exclude_ids):
        keep = np.ones(index.ntotal, dtype=bool)
        keep[np.asarray(exclude_ids, np.int64)] = False
    with faiss_threads(1):  # one thread: its time per query sizes the latency repeats and the sweep
        searched = time.perf_counter()
        found_d, found_i = index.search(queries, k, params=search_params(index, keep=keep))
        per_query = (time.perf_counter() - searched) / max(len(queries), 1)
    # what a user gets: stored settings, nothing left out (the search above, when it left nothing out)
    missing = missing_label_share(found_i) if keep is None else short_search_share(index, queries, k)
    resident = stored_is_original and isinstance(originals, FeatureSet) and originals.is_resident
    stored = iter_blocks(originals) if resident else reconstruct_blocks(index)  # the same rows, no copy
    truth_d, truth_i = exact_knn(run.backend, queries, stored, k, keep=keep)
    if stored_is_original and reference is None:
        reference = ExactReference(truth_i, truth_d)
    elif reference is None and plan.reference:
        reference = exact_reference(run, holdout, originals, k)
    wanted = [found_i] if reference is None or reference.blended is not None else [found_i, reference.ids]
    unique = np.unique(np.concatenate([w.ravel() for w in wanted]))
    unique = unique[unique >= 0]
    rows = stored_rows(index, unique)  # by id: no second pass over the stored vectors
    blended = rvc_blend(neighbour_rows(unique, rows, found_i), rvc_weights(found_d, found_i))
    if reference is not None and reference.blended is None:
        reference = dataclasses.replace(reference, blended=rvc_blend(neighbour_rows(unique, rows, reference.ids),
                                                                     rvc_weights(reference.scores, reference.ids)))
    exact_blend = None if reference is None else reference.blended
    timed = queries[:plan.latency_frames]
    latency = search_latency(index, timed, k, repeats=plan.repeats_within(per_query))
    ivf = ivf_or_none(index)
    sizes, sweep = None, []
    if ivf is not None:
        sizes = ListSizes.of(list_sizes(index))
        values = plan.sweep_within(int(ivf.nlist), int(ivf.nprobe), per_query)
        sweep = nprobe_sweep(index, queries, truth_i, keep, k, values, timed, repeats=2 if plan.full else 1)
    ram_bytes = index_ram_bytes(index)
    return Evaluation(
        k=k, queries=int(len(queries)),
        holdout=holdout.describe(left_out_of_index=0 if keep is None else int((~keep).sum())),
        recall_at_k=round(recall_at_k(found_i, truth_i, k), 4),
        missing_label_share=missing,
        blend_error=None if exact_blend is None else Spread.of(blend_errors(blended, exact_blend)),
        coverage=round(float(coverage(queries, blended).mean()), 5),
        coverage_exact=None if exact_blend is None else round(float(coverage(queries, exact_blend).mean()), 5),
        latency=latency, size=Size(ram_bytes, ram_bytes + int(index.ntotal) * int(index.d) * 4),
        list_sizes=sizes, nprobe_sweep=tuple(sweep), plan=plan,
        seconds=round(time.perf_counter() - started, 3))


def nprobe_sweep(index: faiss.Index, queries: np.ndarray, truth: np.ndarray, keep: np.ndarray | None,
                 k: int = SEARCH_K, values: Sequence[int] | None = None, timed: np.ndarray | None = None,
                 repeats: int = 2) -> list[SweepPoint]:
    """recall@k and -1 share of ``queries`` and single-thread µs per frame of ``timed`` (default: the
    queries) at each nprobe of ``values`` (default: ``nprobe_values``)."""
    ivf = faiss.extract_index_ivf(index)
    values = nprobe_values(int(ivf.nlist), int(ivf.nprobe)) if values is None else values
    points = []
    for nprobe in values:
        _, found = index.search(queries, k, params=search_params(index, nprobe, keep))
        timing = search_latency(index, queries if timed is None else timed, k, params=search_params(index, nprobe),
                                repeats=repeats)
        points.append(SweepPoint(nprobe, round(recall_at_k(found, truth, k), 4), missing_label_share(found),
                                 timing.us_per_frame))
    return points


def evaluate_build(index: faiss.Index, features: FeatureSet, config: EvaluateConfig, run: Run[Backend], *,
                   aligned: bool, stored_is_original: bool, k: int = SEARCH_K, build_seconds: float | None = None
                   ) -> tuple[Evaluation | EvaluationSkipped, Holdout | None]:
    """A build's evaluation (report.json ``evaluation``), and the held-out queries it used (the verdict measures
    the index a build replaces on the same). What it measures is planned here, not ahead with the build's:
    it is sized to the ``build_seconds`` the build took so far (``rvc_index.evaluation.sizing``; None:
    everything). ``aligned``: stored id i is feature row i (no compression). Skipped, saying why (and no
    queries), when no whole utterance can be held out."""
    plan = plan_evaluation(config, features.n_rows, int(index.ntotal), features.dim,
                           stored_is_original=stored_is_original, build_seconds=build_seconds,
                           device=run.backend.profile)
    try:
        holdout = holdout_from_features(features, config.holdout_fraction, plan.queries, run.seed, run.client,
                                        min_keep_rows=k)
    except HoldoutError as exc:
        return EvaluationSkipped(str(exc)), None
    return evaluate_index(index, holdout, features, run, k=k,
                          exclude_ids=holdout.row_ids() if aligned else None,
                          stored_is_original=stored_is_original, plan=plan), holdout


def evaluate_estimate(queries: int, n_vectors: int, dim: int, n_list: int, k: int, stream: int) -> StageEstimate:
    """Queries; exact k-NN tiles of 8192 rows (distances, masked copy, int64 partition); float64 blends."""
    row = dim * F32
    work = (queries * row * 4 + queries * 8192 * 24 + 2 * queries * k * dim * 8 + min(n_vectors, 65536) * row
            + queries * n_list * F32)
    return StageEstimate("evaluate", work + stream, 0, f"{queries:,} queries")


class EvaluationError(RvcIndexError, ValueError):
    """The index and the features cannot be evaluated together (width, empty index, ...)."""


def _built_from(index_path: Path, features: FeatureSet) -> bool:
    """True when a report of ours beside the index says its ids are this collection's rows."""
    for path in sorted(index_path.parent.glob("rvc-index-*.report.json")):
        report = read_json(path)
        if (report is not None and report.get("index_file") == index_path.name
                and report.get("feature_dir") == str(features.experiment.feature_dir)
                and report.get("rows") == features.n_rows
                and not report.get("compression", {}).get("applied", True)):
            return True
    return False


def stores_rows_of(index: faiss.Index, features: FeatureSet, run: Run[Backend], spots: int = 4,
                   spot_rows: int = 64) -> bool:
    """True when the index holds the collection's rows as they are, id i = row i (spot checks)."""
    if index.ntotal != features.n_rows:
        return False
    for start in run.rng().integers(0, max(1, index.ntotal - spot_rows), size=spots).tolist():
        stop = min(start + spot_rows, index.ntotal)
        rows = run.take_rows(features, np.arange(start, stop))
        if not np.array_equal(index.reconstruct_n(start, stop - start), rows):
            return False
    return True


def evaluate_files(index_path: str | Path, feature_dir: str | Path, backend: Backend, *,
                   fraction: float = 0.05, queries_dir: str | Path | None = None, max_queries: int = 1000,
                   seed: int = 0, client: Any | None = None, sweep: bool = True) -> Evaluation:
    """``rvc-index eval``: an existing index against the speaker's features (see rvc_index.evaluation.holdout);
    always a full evaluation (every query, the exact reference, the sweep when ``sweep``)."""
    index_path = Path(index_path)
    if not index_path.is_file():
        raise EvaluationError(f"{index_path}: no such index file")
    index = read_index_file(index_path)  # type and counts checked: faiss would abort or loop forever
    check_seed(seed)
    if index.ntotal < SEARCH_K:
        raise EvaluationError(f"{index_path}: holds {index.ntotal} vectors, RVC needs {SEARCH_K}")
    experiment = resolve_experiment(feature_dir)
    manifest = scan_manifest(experiment)
    if manifest.dim != index.d:
        raise EvaluationError(f"{experiment.feature_dir}: {manifest.dim}-d features, {index_path.name} "
                              f"holds {index.d}-d vectors (v1 and v2 mixed?)")
    chunk_mb = SourceConfig.chunk_mb
    run = Run(backend, client, seed, "eval")
    features = open_feature_set(experiment, manifest, chunk_mb, run=run,  # small: read once
                                resident=resident_fits(manifest, chunk_mb, run.local))
    same_rows = stores_rows_of(index, features, run)
    exclude = None
    if queries_dir is not None:
        holdout = holdout_from_folder(queries_dir, max_queries, seed, index.d)
    else:
        holdout = holdout_from_features(features, fraction, max_queries, run.seed, run.client)
        if same_rows or _built_from(index_path, features):
            exclude = holdout.row_ids()
        else:  # e.g. RVC's own index: rows shuffled; find the held-out frames by content
            held = run.take_rows(features, holdout.row_ids())
            exclude = ids_holding(reconstruct_blocks(index), row_digests(held))
    result = evaluate_index(index, holdout, features, run, exclude_ids=exclude,
                            stored_is_original=same_rows, plan=full_plan(len(holdout.queries), sweep))
    return dataclasses.replace(result, size=dataclasses.replace(result.size, disk_bytes=index_path.stat().st_size),
                               index=describe_index(index))
