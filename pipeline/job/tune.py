"""Autotune: pick the list format, n_list and nprobe for a target, by measuring.

The collection goes through the stages a build runs before indexing (compression and expansion, as
the base config says). Then, for each layout (list format, ``sqrt_factor`` -> n_list), one index
is trained and filled; nprobe is a search-time setting, so each layout is swept per
search call: nprobe doubles from the smallest that fills every k=8 search (then bisects to the
smallest that meets the recall target). Queries are held-out utterances
(``rvc_index.evaluation.holdout``); recall is against exact search over the stored vectors, latency is single
thread in one-second batches, RAM is the index's arrays. The cheapest trial meeting the target
(lowest latency, or lowest RAM) becomes a preset that ``load_config`` reads.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import faiss
import numpy as np
import yaml
from rvc_index.compute.backend import Backend
from rvc_index.config.loading import config_from_dict, config_to_dict
from rvc_index.config.schema import LIST_FORMATS, SEARCH_K, Config
from rvc_index.data.feature_set import FeatureSet, open_feature_set, resident_fits
from rvc_index.data.layouts import resolve_experiment
from rvc_index.data.sources import scan_manifest
from rvc_index.errors import RvcIndexError
from rvc_index.evaluation.evaluate import exact_reference
from rvc_index.evaluation.holdout import holdout_from_features
from rvc_index.evaluation.measure import index_ram_bytes, search_latency, search_params
from rvc_index.evaluation.metrics import (
    blend_errors,
    exact_knn,
    missing_label_share,
    recall_at_k,
    rvc_blend,
    rvc_weights,
)
from rvc_index.inspection.describe import list_sizes
from rvc_index.job.plan import make_plan
from rvc_index.job.vectors import prepare_vectors
from rvc_index.runtime.outputs import write_text_atomic
from rvc_index.runtime.progress import Progress, get_logger
from rvc_index.runtime.run import Run
from rvc_index.stages.indexing import (
    FLAT,
    add_batches,
    nprobe_for_k,
    plan_index,
    train_index,
)

SQRT_FACTORS = (1.0, 2.0, 4.0)  # n_list = sqrt_factor * sqrt(N) (capped at N / 39)
FLAT_SQRT_FACTORS = (1.0, 2.0, 4.0, 16.0)  # flat lists also at RVC's rule (16)
CODED_MIN_ROWS = {"fp16": 1000, "sq8": 1000, "pq8": 256 * 39}  # vectors a coded layout is measured from (pq8:
# 39 training rows per code of its 8-bit codebooks)


class TuneError(RvcIndexError, RuntimeError):
    """No measured configuration meets the target; the message gives the closest one."""


@dataclass(frozen=True)
class Target:
    min_recall: float = 0.95
    max_us_per_frame: float = 0.0  # 0 = no limit
    max_ram_mb: float = 0.0  # 0 = no limit
    objective: Literal["latency", "memory"] = "latency"

    def __post_init__(self) -> None:
        """Refuse, before any measurement, a target no layout can meet or that means nothing (NaN, negative,
        a recall above 1), naming the option."""
        for option, value, high in (("--min-recall", self.min_recall, 1.0), ("--max-us-per-frame",
                                    self.max_us_per_frame, math.inf), ("--max-ram-mb", self.max_ram_mb, math.inf)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= high \
                    or math.isinf(value):
                limits = "from 0 to 1" if high == 1.0 else "0 (no limit) or more, finite"
                raise TuneError(f"{option} {value!r}: must be a number {limits}")
        if self.objective not in ("latency", "memory"):
            raise TuneError(f"objective {self.objective!r}: must be latency or memory")


@dataclass(frozen=True)
class Layout:
    """What needs its own index: the list format and the n_list rule factor."""

    lists: str
    sqrt_factor: float


@dataclass(frozen=True)
class Trial:
    lists: str
    sqrt_factor: float
    n_list: int
    pq_m: int
    nprobe: int
    recall_at_k: float
    missing_label_share: float
    blend_error: float
    us_per_frame: float
    ram_mb: float

    def meets(self, target: Target) -> bool:
        return (self.recall_at_k >= target.min_recall and self.missing_label_share == 0.0
                and (not target.max_us_per_frame or self.us_per_frame <= target.max_us_per_frame)
                and (not target.max_ram_mb or self.ram_mb <= target.max_ram_mb))


def layouts(formats: Sequence[str] = LIST_FORMATS, sqrt_factors: Sequence[float] = SQRT_FACTORS,
            flat_sqrt_factors: Sequence[float] = FLAT_SQRT_FACTORS) -> list[Layout]:
    """The layouts to build: every coded list format per n_list factor, and flat lists."""
    coded = [Layout(lists, f) for lists in formats if lists != FLAT for f in sqrt_factors]
    return coded + ([Layout(FLAT, f) for f in flat_sqrt_factors] if FLAT in formats else [])


def choose(trials: Sequence[Trial], target: Target) -> Trial | None:
    """The trial meeting ``target`` at the lowest latency (or RAM, then latency); None if none does."""
    feasible = [t for t in trials if t.meets(target)]
    if not feasible:
        return None
    if target.objective == "memory":
        return min(feasible, key=lambda t: (t.ram_mb, t.us_per_frame))
    return min(feasible, key=lambda t: (t.us_per_frame, t.ram_mb))


def index_vectors(features: FeatureSet, config: Config, run: Run[Backend], workdir: Path) -> tuple[np.ndarray, bool]:
    """(the vectors a build would index, in memory; whether they are the collection's own rows)."""
    plan = make_plan(features.manifest, config, run.backend, run.local, n_rows=features.n_rows)
    prepared = prepare_vectors(features, plan, run, workdir)
    vectors = prepared.vectors
    rows = np.concatenate(list(run.blocks(vectors))) if not isinstance(vectors, np.ndarray) else vectors
    return np.ascontiguousarray(rows, dtype=np.float32), prepared.raw_rows


def build_layout(vectors: np.ndarray, layout: Layout, config: Config, run: Run[Backend],
                 compressed: bool = False) -> faiss.Index:
    """Train and fill one index of ``layout`` the way a build does."""
    index_config = dataclasses.replace(config.index, lists=layout.lists, sqrt_factor=layout.sqrt_factor, n_list=0,
                                       min_coded_rows=0)
    plan = plan_index(vectors.shape[0], vectors.shape[1], index_config, config.budget)
    index = train_index(vectors, plan, run, raw_rows=not compressed)
    add_batches(index, run.batches(vectors, plan.add_batch_rows), run.backend,
                Progress(f"tune: add {layout.lists} x{layout.sqrt_factor:g}", vectors.shape[0],
                         "vectors", step_percent=50))
    return index


def sweep_layout(index: faiss.Index, layout: Layout, vectors: np.ndarray, queries: np.ndarray,
                 keep: np.ndarray | None, truth: np.ndarray, reference: np.ndarray, target: Target,
                 k: int = SEARCH_K) -> list[Trial]:
    """Trials of one built index over nprobe (doubling, then bisecting)."""
    sizes = list_sizes(index)
    n_list = len(sizes)
    start = nprobe_for_k(sizes, k, 1)
    ram_mb = index_ram_bytes(index) / 2**20
    pq_m = int(faiss.downcast_index(index).pq.M) if layout.lists == "pq8" else 0
    stored = index.reconstruct_n(0, index.ntotal)  # what a consumer blends (codes decoded)
    trials: list[Trial] = []

    def trial(nprobe: int) -> Trial:
        scores, ids = index.search(queries, k, params=search_params(index, nprobe, keep))
        blended = rvc_blend(stored[np.maximum(ids, 0)], rvc_weights(scores, ids))
        timing = search_latency(index, queries, k, params=search_params(index, nprobe), repeats=2)
        result = Trial(layout.lists, layout.sqrt_factor, n_list, pq_m, nprobe,
                       round(recall_at_k(ids, truth, k), 4), missing_label_share(ids),
                       round(float(blend_errors(blended, reference).mean()), 5), timing.us_per_frame,
                       round(ram_mb, 2))
        trials.append(result)
        return result

    previous, nprobe = None, start
    while True:
        current = trial(nprobe)
        too_slow = bool(target.max_us_per_frame) and current.us_per_frame > 2 * target.max_us_per_frame
        if current.recall_at_k >= target.min_recall:
            low, high = (previous.nprobe if previous else start - 1), nprobe
            while high - low > 1:  # smallest nprobe meeting the recall target
                middle = (low + high) // 2
                low, high = (low, middle) if trial(middle).recall_at_k >= target.min_recall else (middle, high)
            break
        saturated = previous is not None and current.recall_at_k - previous.recall_at_k < 0.002
        if nprobe >= n_list or too_slow or saturated:
            break
        previous, nprobe = current, min(2 * nprobe, n_list)
    return trials


@dataclass
class TuneResult:
    chosen: Trial | None
    trials: list[Trial]
    target: Target
    rows: int
    vectors: int
    queries: int
    per_layout: list[Trial] = field(default_factory=list)  # each layout's chosen trial, else its best recall
    config: Config | None = None  # the base with the chosen trial's settings
    preset_file: Path | None = None  # where ``tune_experiment`` wrote it


def tune(features: FeatureSet, base: Config, target: Target, run: Run[Backend],
         layout_list: Sequence[Layout] | None = None, holdout_fraction: float = 0.05, max_queries: int = 1000,
         name: str = "tuned") -> TuneResult:
    """Measure every layout on held-out utterances of ``features``; choose the cheapest meeting ``target``."""
    log = get_logger()
    k = SEARCH_K
    holdout = holdout_from_features(features, holdout_fraction, max_queries, run.seed, run.client)
    queries = holdout.queries
    reference = exact_reference(run, holdout, features, k).blended
    with tempfile.TemporaryDirectory(prefix="rvc-index-tune-") as workdir:
        vectors, aligned = index_vectors(features, base, run, Path(workdir))
        keep = holdout.keep_mask(vectors.shape[0]) if aligned else None
        _, truth = exact_knn(run.backend, queries, [vectors], k, keep=keep)
        trials: list[Trial] = []
        per_layout: list[Trial] = []
        for layout in layout_list or layouts():
            if vectors.shape[0] < CODED_MIN_ROWS.get(layout.lists, 0):
                continue
            index = build_layout(vectors, layout, base, run, compressed=not aligned)
            found = sweep_layout(index, layout, vectors, queries, keep, truth, reference, target, k)
            best = choose(found, target)
            per_layout.append(best or max(found, key=lambda t: t.recall_at_k))
            log.info("tune: %s x%g: %s", layout.lists, layout.sqrt_factor,
                     f"best nprobe {best.nprobe}: recall {best.recall_at_k:.3f}, blend error {best.blend_error:.4f}, "
                     f"{best.us_per_frame:.1f} us/frame" if best else
                     f"target not met (best recall {max(t.recall_at_k for t in found):.3f})")
            trials += found
            del index
    chosen = choose(trials, target)
    return TuneResult(chosen, trials, target, features.n_rows, int(vectors.shape[0]), int(len(queries)), per_layout,
                      None if chosen is None else tuned_config(base, chosen, features.dim, name))


def tune_experiment(path: str | Path, base: Config, target: Target, backend: Backend, out: Path | None = None, *,
                    quick: bool = False, holdout_fraction: float = 0.05, max_queries: int = 1000,
                    name: str = "tuned") -> TuneResult:
    """``rvc-index tune``: measure the layouts (``quick``: flat and fp16 lists at two n_list sizes) on held-out
    utterances of the experiment at ``path`` and write the cheapest config meeting ``target`` to ``out`` as a
    preset. Raises TuneError, naming the closest configuration, when none meets it."""
    experiment = resolve_experiment(path)
    manifest = scan_manifest(experiment, base.source.on_bad_file)
    features = open_feature_set(experiment, manifest, base.source.chunk_mb, base.source.on_bad_file,
                                resident=resident_fits(manifest, base.source.chunk_mb, True))
    grid = layouts(("flat", "fp16"), (1.0, 2.0), (1.0, 2.0)) if quick else None
    result = tune(features, base, target, Run(backend, None, base.seed, "tune"), layout_list=grid,
                  holdout_fraction=holdout_fraction,
                  max_queries=max_queries, name=name)
    if not result.trials:
        raise TuneError(f"no layout could be measured on {result.vectors:,} vectors (coded lists need "
                        "index.min_coded_rows of them)")
    if result.chosen is None:
        closest = max(result.trials, key=lambda t: t.recall_at_k)
        raise TuneError(f"no configuration met the target; the best recall@8 was {closest.recall_at_k:.3f} "
                        f"({closest.lists} lists, n_list {closest.n_list}, nprobe {closest.nprobe}, "
                        f"{closest.us_per_frame:.1f} us/frame)")
    return dataclasses.replace(result, preset_file=write_preset(out, result)) if out is not None else result


def tuned_config(base: Config, trial: Trial, dim: int, name: str) -> Config:
    """``base`` with the trial's index settings (n_list by rule and the PQ size per dimension, so the
    preset scales with N and fits either feature width)."""
    data = config_to_dict(base)
    data["name"] = name
    data["index"].update(lists=trial.lists, sqrt_factor=trial.sqrt_factor, n_list=0, nprobe=trial.nprobe)
    if trial.lists != FLAT:  # measured and chosen at this size: keep it from the base's flat floor
        data["index"]["min_coded_rows"] = min(data["index"]["min_coded_rows"], CODED_MIN_ROWS[trial.lists])
    if trial.pq_m:  # the default (D / 16) stays a default, so the preset fits v1 and v2 alike
        data["index"]["pq_m"] = 0 if trial.pq_m == dim // 16 else trial.pq_m
    return config_from_dict(data)


def write_preset(path: Path, result: TuneResult) -> Path:
    """The chosen config as a YAML preset, with a header saying what was measured."""
    if result.config is None or result.chosen is None:
        raise TuneError("nothing to write: no configuration met the target")
    t, c = result.target, result.chosen
    header = [
        f"# Written by `rvc-index tune` on {result.rows:,} rows ({result.vectors:,} vectors indexed), "
        f"{result.queries} held-out query frames.",
        f"# Target: recall@8 >= {t.min_recall}" + (f", <= {t.max_us_per_frame:g} us/frame" if t.max_us_per_frame
                                                   else "") + (f", <= {t.max_ram_mb:g} MB" if t.max_ram_mb else "")
        + f", lowest {t.objective}.",
        f"# Measured: n_list {c.n_list}, recall@8 {c.recall_at_k:.3f}, {c.us_per_frame:.1f} us/frame (1 thread), "
        f"blend error {c.blend_error:.4f}, index RAM {c.ram_mb:.1f} MB.",
    ]
    text = "\n".join(header) + "\n" + yaml.safe_dump(config_to_dict(result.config), sort_keys=False)
    return write_text_atomic(Path(path), text)
