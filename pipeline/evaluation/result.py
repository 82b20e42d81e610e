"""Typed results of an evaluation and of the verdict on it: report.json's ``evaluation`` and ``verdict``
entries and ``rvc-index eval --json`` are these records written with ``dataclasses.asdict``, one spelling per
number (``recall_at_k``, never ``recall@8``); ``runtime.records.from_json`` reads them back. A measure that
was not taken is ``null``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rvc_index.evaluation.sizing import EvaluationPlan
from rvc_index.inspection.describe import IndexDescription


@dataclass(frozen=True)
class Histogram:
    """``edges`` [bins+1] and ``counts`` [bins]."""

    edges: tuple[float, ...]
    counts: tuple[int, ...]

    @classmethod
    def of(cls, values: np.ndarray, bins: int = 30) -> Histogram:
        counts, edges = np.histogram(np.asarray(values, np.float64), bins=bins)
        return cls(tuple(round(float(e), 6) for e in edges), tuple(int(c) for c in counts))


@dataclass(frozen=True)
class Spread:
    """mean / median / p95 / max of per-query values (relative blend errors), with their histogram."""

    mean: float
    median: float
    p95: float
    max: float
    histogram: Histogram

    @classmethod
    def of(cls, values: np.ndarray) -> Spread:
        values = np.asarray(values, np.float64)
        return cls(round(float(values.mean()), 5), round(float(np.median(values)), 5),
                   round(float(np.quantile(values, 0.95)), 5), round(float(values.max()), 5), Histogram.of(values))


@dataclass(frozen=True)
class Latency:
    """Single-thread search time in batches of ``batch_frames`` frames (one second of audio: 50)."""

    us_per_frame: float  # the searching thread's CPU time per frame
    us_per_frame_wall: float
    ms_per_second_audio: float
    batch_frames: int
    batches: int
    repeats: int
    threads: int = 1


@dataclass(frozen=True)
class Size:
    ram_bytes: int  # the index's arrays in RAM
    ram_with_big_npy_bytes: int  # plus RVC's total_fea.npy (ntotal x d float32), which RVC also loads
    disk_bytes: int | None = None  # the index file, once written


@dataclass(frozen=True)
class ListSizes:
    """Vectors per inverted list: a histogram (``edges``, ``counts``), the extremes and the number of lists."""

    edges: tuple[float, ...]
    counts: tuple[int, ...]
    min: int
    max: int
    n_list: int

    @classmethod
    def of(cls, sizes: np.ndarray) -> ListSizes:
        sizes = np.asarray(sizes)
        histogram = Histogram.of(sizes, bins=min(40, max(5, len(sizes) // 4)))
        return cls(histogram.edges, histogram.counts, int(sizes.min()), int(sizes.max()), int(len(sizes)))


@dataclass(frozen=True)
class SweepPoint:
    """recall@k, -1 share and single-thread us per frame at one nprobe."""

    nprobe: int
    recall_at_k: float
    missing_label_share: float
    us_per_frame: float


@dataclass(frozen=True)
class HeldOut:
    """How the queries were held out (``evaluation.holdout.Holdout.account``): from the collection (whole
    files; ``rows``, ``fraction`` and the stored ids left out of the index's searches) or a separate folder."""

    source: str  # collection | separate folder
    files: int
    queries: int
    note: str
    rows: int | None = None
    fraction: float | None = None
    left_out_of_index: int | None = None


@dataclass(frozen=True)
class Evaluation:
    """Every measure of one index on held-out query frames (``rvc_index.evaluation.evaluate``).

    ``blend_error`` and ``coverage_exact`` are None when the exact reference over the original
    frames was not affordable within the build's evaluation budget (``plan`` says why).
    """

    k: int
    queries: int
    holdout: HeldOut
    recall_at_k: float  # against exact search over the stored vectors
    missing_label_share: float  # queries with a -1 label at the stored settings
    blend_error: Spread | None  # RVC's blend vs the same blend over exact neighbours among the original frames
    coverage: float  # mean L2 distance from a query frame to its blended retrieval
    coverage_exact: float | None  # the same for the exact blend
    latency: Latency
    size: Size
    list_sizes: ListSizes | None = None  # None: not an IVF index
    nprobe_sweep: tuple[SweepPoint, ...] = ()
    index: IndexDescription | None = None  # the index file's, for ``rvc-index eval``
    plan: EvaluationPlan | None = None  # what was measured and why
    seconds: float | None = None

    def summary_line(self) -> str:
        """One log line with the key numbers."""
        blend = "blend error not measured" if self.blend_error is None else f"blend error {self.blend_error.mean:.4f}"
        return (f"recall@{self.k} {self.recall_at_k:.3f}, {blend}, {self.latency.us_per_frame:.1f} us/frame "
                f"(1 thread), -1 labels {self.missing_label_share:.1%} ({self.queries} held-out frames"
                + (f", {self.seconds:.2f} s" if self.seconds is not None else "") + ")")


@dataclass(frozen=True)
class EvaluationSkipped:
    """No evaluation: ``skipped`` says why (one feature file: no whole utterance can be held out)."""

    skipped: str

    def summary_line(self) -> str:
        return f"evaluation skipped: {self.skipped}"


@dataclass(frozen=True)
class ReplacedIndex:
    """The index a build replaces, measured on the build's held-out frames; ``skipped`` says why not."""

    file: str
    ntotal: int | None = None
    recall_at_k: float | None = None  # against exact search over its own stored vectors
    missing_label_share: float | None = None
    skipped: str | None = None


@dataclass(frozen=True)
class Verdict:
    """The verdict's sentences (the last lines of a build's log, report.png's text) and the replaced index's
    measures they quote."""

    lines: tuple[str, ...]
    replaced: ReplacedIndex | None = None
