"""A verdict in plain words: what a build's evaluation means for someone using the index in RVC.

Read from the evaluation (``rvc_index.evaluation.evaluate``): how much of exact search's neighbours
the index finds (recall@k), whether any search comes back short (``-1`` labels, which make RVC's
realtime GUI drop retrieval for the block), and how far RVC's blend is from the blend over exact
neighbours. When the build replaces an older index, that one is measured on the same held-out
frames (recall against exact search over its own vectors, ``-1`` labels) and quoted beside it.
``judge`` returns the verdict; it changes nothing it is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from rvc_index.compute.backend import Backend
from rvc_index.config.schema import SEARCH_K
from rvc_index.evaluation.holdout import Holdout
from rvc_index.evaluation.index_file import IndexFileError, read_index_file
from rvc_index.evaluation.measure import reconstruct_blocks
from rvc_index.evaluation.metrics import exact_knn, missing_label_share, recall_at_k
from rvc_index.evaluation.result import Evaluation, EvaluationSkipped, ReplacedIndex, Verdict

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


def consumer_lines(problems: Mapping[str, str], held: Mapping[str, int], us_per_frame: float | None) -> list[str]:
    """Which tools keep retrieval on with the index (``problems``: ``inspection.consumers.static_problems``) and
    what each holds (``held``: ``holdings``; ``us_per_frame``: the measured search time, when there is one)."""
    if problems:
        lines = [f"{name} cannot use it: {problem}" for name, problem in problems.items()]
    else:
        lines = ["every tool that loads it keeps retrieval on: RVC and Applio (offline and realtime), the w-okada "
                 "and deiteris voice changers (an IndexIVF faiss-gpu clones)"]
    if held:
        speed = f", a frame's search takes {us_per_frame:,.0f} us at one thread (measured)" if us_per_frame else ""
        lines.append(f"they hold {held['big'] / MIB:,.0f} MB of stored vectors (reconstruct_n) plus the "
                     f"{held['index'] / MIB:,.0f} MB index in RAM; Applio realtime {held['gpu_applio'] / MIB:,.0f} MB "
                     f"on its GPU{speed}")
    return lines


def verdict_lines(evaluation: Evaluation | EvaluationSkipped | None,
                  replaced: ReplacedIndex | None = None) -> list[str]:
    """A few plain sentences on ``evaluation`` (and on the ``replaced`` index, when given)."""
    if not isinstance(evaluation, Evaluation):
        why = evaluation.skipped if evaluation is not None else "evaluation off (evaluate.recall_queries=0)"
        return [f"verdict: not measured: {why}"]
    k, recall, missing = evaluation.k, evaluation.recall_at_k, evaluation.missing_label_share
    blend = evaluation.blend_error.mean if evaluation.blend_error is not None else None
    grades = [_grade(recall, RECALL_GOOD, RECALL_FAIR, True),
              0 if missing == 0 else 1 if missing <= MISSING_FAIR else 2]
    if blend is not None:
        grades.append(_grade(blend, BLEND_GOOD, BLEND_FAIR, False))
    lines = [f"verdict: {GRADES[max(grades)]}: this index finds {_pct(recall)} of the {k} neighbours exact search "
             f"finds, on {evaluation.queries} held-out frames (recall@{k} {recall:.3f})"]
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
    if replaced is not None:
        lines.append(replaced_line(replaced, k))
    return lines


def replaced_line(replaced: ReplacedIndex, k: int = SEARCH_K) -> str:
    """One sentence on the index this build replaces."""
    if replaced.recall_at_k is None or replaced.missing_label_share is None:
        return f"the index it replaces ({replaced.file}): not measured ({replaced.skipped or 'unknown reason'})"
    missing = replaced.missing_label_share
    short = "no -1 labels" if missing == 0 else f"-1 labels in {_pct(missing)} of searches"
    return (f"the index it replaces ({replaced.file}): finds {_pct(replaced.recall_at_k)} of exact search's "
            f"neighbours (recall@{k} {replaced.recall_at_k:.3f}), {short}")


def measure_replaced(path: Path, holdout: Holdout, dim: int, backend: Backend, k: int = SEARCH_K) -> ReplacedIndex:
    """recall@k (against exact search over its own stored vectors) and the ``-1`` share of the index at
    ``path`` on ``holdout``'s queries (the build's evaluation's); ``skipped`` says why when it cannot be
    measured (unreadable, other width, too small)."""
    name = Path(path).name
    try:  # a foreign file: checked first (an IndexIDMap aborts reconstruct_n, a corrupt ntotal loops forever)
        index = read_index_file(path)
    except (IndexFileError, RuntimeError, MemoryError) as exc:
        return ReplacedIndex(name, skipped=f"cannot be used: {str(exc).splitlines()[0][:200]}")
    if index.d != dim or index.ntotal < k:
        return ReplacedIndex(name, skipped=f"holds {index.ntotal} vectors of width {index.d}, the features are "
                                           f"{dim}-d")
    queries = np.ascontiguousarray(holdout.queries, dtype=np.float32)
    try:
        _, found = index.search(queries, k)
        _, truth = exact_knn(backend, queries, reconstruct_blocks(index), k)
    except RuntimeError as exc:  # e.g. an index type that cannot reconstruct its vectors
        return ReplacedIndex(name, skipped=f"cannot be searched or reconstructed: {str(exc).splitlines()[0][:200]}")
    return ReplacedIndex(name, int(index.ntotal), round(recall_at_k(found, truth, k), 4), missing_label_share(found))


def judge(evaluation: Evaluation | EvaluationSkipped | None, replaced: Path | None, holdout: Holdout | None,
          dim: int, backend: Backend, problems: Mapping[str, str], held: Mapping[str, int]) -> Verdict:
    """The verdict of a build: its evaluation in plain words, the ``replaced`` index measured on the same
    held-out frames (when the build was evaluated), and the tools that load it (``problems``, ``held``:
    ``inspection.consumers``). The searches are RVC's k=8 (every consumer's; w-okada's k=1 is filled whenever
    k=8 is), whatever the config."""
    measured = None
    if replaced is not None and holdout is not None and isinstance(evaluation, Evaluation):
        measured = measure_replaced(replaced, holdout, dim, backend, SEARCH_K)
    latency = evaluation.latency.us_per_frame if isinstance(evaluation, Evaluation) else None
    return Verdict((*verdict_lines(evaluation, measured), *consumer_lines(problems, held, latency)), measured)


def replaced_index(new: Path, previous: Path | None, competitors: list[Path]) -> Path | None:
    """The index a build replaces: the file it overwrites, else its previous build's, else the first other
    index a lookup could pick; None when there is none."""
    for candidate in (new, previous, *competitors):
        if candidate is not None and candidate.is_file() and not candidate.is_symlink():
            return candidate
    return None
