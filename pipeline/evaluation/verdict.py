"""A verdict in plain words: what a build's evaluation means for someone using the index in RVC.

Read from the evaluation (``rvc_index.evaluation.evaluate``): how much of exact search's neighbours
the index finds (recall@k), whether any search comes back short (``-1`` labels, which make RVC's
realtime GUI drop retrieval for the block), and how far RVC's blend is from the blend over exact
neighbours. When the build replaces an older index, that one is measured on the same held-out
frames (recall against exact search over its own vectors, ``-1`` labels) and quoted beside it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from rvc_index.compute.backend import Backend
from rvc_index.config.schema import Config, EvaluateConfig
from rvc_index.data.feature_set import FeatureSet
from rvc_index.evaluation.evaluate import exact_knn, missing_label_share, recall_at_k
from rvc_index.evaluation.holdout import HoldoutError, holdout_from_features
from rvc_index.evaluation.index_file import IndexFileError, read_index_file
from rvc_index.evaluation.measure import RVC_K, reconstruct_blocks

MIB = 2**20

GRADES = ("good", "fair", "poor")
RECALL_GOOD, RECALL_FAIR = 0.95, 0.80  # share of exact search's neighbours found
BLEND_GOOD, BLEND_FAIR = 0.05, 0.15  # mean relative error of RVC's blend against the exact blend
MISSING_FAIR = 0.01  # share of searches with -1 labels above which retrieval visibly drops out


def _grade(value: float, good: float, fair: float, higher_is_better: bool) -> int:
    if higher_is_better:
        return 0 if value >= good else 1 if value >= fair else 2
    return 0 if value <= good else 1 if value <= fair else 2


def _pct(share: float) -> str:
    text = f"{100 * share:.1f}"
    return f"{text[:-2] if text.endswith('.0') else text} %"


def consumer_lines(consumers: Mapping[str, Any], evaluation: Mapping[str, Any]) -> list[str]:
    """Which tools keep retrieval on with the index and what each holds (``consumers``: ``problems`` and
    ``holdings`` from ``inspection.consumers``; the measured latency when ``evaluation`` has it)."""
    problems, held = consumers.get("problems") or {}, consumers.get("holdings") or {}
    if problems:
        lines = [f"{name} cannot use it: {problem}" for name, problem in problems.items()]
    else:
        lines = ["every tool that loads it keeps retrieval on: RVC and Applio (offline and realtime), the w-okada "
                 "and deiteris voice changers (an IndexIVF faiss-gpu clones)"]
    if held:
        latency = (evaluation.get("latency") or {}).get("us_per_frame")
        speed = f", a frame's search takes {latency:,.0f} us at one thread (measured)" if latency else ""
        lines.append(f"they hold {held['big'] / MIB:,.0f} MB of stored vectors (reconstruct_n) plus the "
                     f"{held['index'] / MIB:,.0f} MB index in RAM; Applio realtime {held['gpu_applio'] / MIB:,.0f} MB "
                     f"on its GPU{speed}")
    return lines


def verdict_lines(evaluation: Mapping[str, Any], replaced: Mapping[str, Any] | None = None,
                  consumers: Mapping[str, Any] | None = None) -> list[str]:
    """A few plain sentences on ``evaluation`` (the ``replaced`` index's measures and the tools that load it,
    when given)."""
    extra = consumer_lines(consumers, evaluation) if consumers else []
    if "recall_at_k" not in evaluation:
        why = evaluation.get("skipped", "evaluation off (evaluate.recall_queries=0)")
        return [f"verdict: not measured: {why}", *extra]
    k, recall, missing = evaluation["k"], float(evaluation["recall_at_k"]), float(evaluation["missing_label_share"])
    blend = float(evaluation["blend_error"]["mean"]) if evaluation.get("blend_error") else None
    grades = [_grade(recall, RECALL_GOOD, RECALL_FAIR, True),
              0 if missing == 0 else 1 if missing <= MISSING_FAIR else 2]
    if blend is not None:
        grades.append(_grade(blend, BLEND_GOOD, BLEND_FAIR, False))
    lines = [f"verdict: {GRADES[max(grades)]}: this index finds {_pct(recall)} of the {k} neighbours exact search "
             f"finds, on {evaluation['queries']} held-out frames (recall@{k} {recall:.3f})"]
    if missing == 0:
        lines.append(f"every search returns {k} neighbours (no -1 labels): RVC's realtime GUI keeps retrieval on")
    else:
        lines.append(f"{_pct(missing)} of searches return fewer than {k} neighbours (-1 labels): RVC's realtime GUI "
                     "drops retrieval for those blocks")
    if blend is None:
        lines.append("RVC's blend against the blend of the exact neighbours: not measured in this build")
    else:
        lines.append(f"RVC's blended features are {_pct(blend)} away from the blend of the exact neighbours on "
                     f"average (blend error {blend:.4f}; under {_pct(BLEND_GOOD)} is good)")
    if replaced:
        lines.append(replaced_line(replaced, k))
    return lines + extra


def replaced_line(replaced: Mapping[str, Any], k: int = RVC_K) -> str:
    """One sentence on the index this build replaces."""
    name = replaced.get("file", "?")
    if "recall_at_k" not in replaced:
        return f"the index it replaces ({name}): not measured ({replaced.get('skipped', 'unknown reason')})"
    missing = float(replaced["missing_label_share"])
    short = "no -1 labels" if missing == 0 else f"-1 labels in {_pct(missing)} of searches"
    return (f"the index it replaces ({name}): finds {_pct(float(replaced['recall_at_k']))} of exact search's "
            f"neighbours (recall@{k} {float(replaced['recall_at_k']):.3f}), {short}")


def measure_replaced(path: Path, features: FeatureSet, config: EvaluateConfig, backend: Backend,
                     client: Any | None = None, seed: int = 0, k: int = RVC_K) -> dict[str, Any]:
    """recall@k (against exact search over its own stored vectors) and the ``-1`` share of the index at
    ``path``, on the held-out frames the build's evaluation used; ``{"file", "skipped"}`` when it cannot
    be measured (unreadable, other width, too small)."""
    result: dict[str, Any] = {"file": Path(path).name}
    try:  # a foreign file: checked first (an IndexIDMap aborts reconstruct_n, a corrupt ntotal loops forever)
        index = read_index_file(path)
    except (IndexFileError, RuntimeError, MemoryError) as exc:
        return {**result, "skipped": f"cannot be used: {str(exc).splitlines()[0][:200]}"}
    if index.d != features.dim or index.ntotal < k:
        return {**result, "skipped": f"holds {index.ntotal} vectors of width {index.d}, the features are "
                                     f"{features.dim}-d"}
    try:
        holdout = holdout_from_features(features, config.holdout_fraction, config.recall_queries, seed, client,
                                        min_keep_rows=k)
    except HoldoutError as exc:
        return {**result, "skipped": str(exc)}
    queries = np.ascontiguousarray(holdout.queries, dtype=np.float32)
    try:
        _, found = index.search(queries, k)
        _, truth = exact_knn(backend, queries, reconstruct_blocks(index), k)
    except RuntimeError as exc:  # e.g. an index type that cannot reconstruct its vectors
        return {**result, "skipped": f"cannot be searched or reconstructed: {str(exc).splitlines()[0][:200]}"}
    return {**result, "ntotal": int(index.ntotal), "recall_at_k": round(recall_at_k(found, truth, k), 4),
            "missing_label_share": missing_label_share(found)}


def judge(evaluation: dict[str, Any], replaced: Path | None, features: FeatureSet, config: Config, backend: Backend,
          client: Any | None = None, consumers: Mapping[str, Any] | None = None) -> list[str]:
    """The verdict of a build (stored as ``evaluation["verdict"]``, with the ``replaced`` index's measures as
    ``evaluation["replaced"]``, when the build was evaluated); its lines, for the end of the log. The
    searches are RVC's k=8 (every consumer's; w-okada's k=1 is filled whenever k=8 is), whatever the config."""
    measured = None
    if replaced is not None and "recall_at_k" in evaluation:
        measured = measure_replaced(replaced, features, config.evaluate, backend, client, config.seed, RVC_K)
        evaluation["replaced"] = measured
    lines = verdict_lines(evaluation, measured, consumers)
    if "recall_at_k" in evaluation:
        evaluation["verdict"] = lines
    return lines


def replaced_index(new: Path, previous: Path | None, competitors: list[Path]) -> Path | None:
    """The index a build replaces: the file it overwrites, else its previous build's, else the first other
    index a lookup could pick; None when there is none."""
    for candidate in (new, previous, *competitors):
        if candidate is not None and candidate.is_file() and not candidate.is_symlink():
            return candidate
    return None
