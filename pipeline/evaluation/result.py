"""Typed results of an evaluation, serialised to the JSON of ``report.json``'s ``evaluation`` entry and
``rvc-index eval --json``: one spelling per number (``recall_at_k``, never ``recall@8``).

Only numpy here: what ``evaluate`` and ``measure`` compute becomes these objects, and ``to_dict()``
is the one place that decides the JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Histogram:
    """``edges`` [bins+1] and ``counts`` [bins]."""

    edges: tuple[float, ...]
    counts: tuple[int, ...]

    @classmethod
    def of(cls, values: np.ndarray, bins: int = 30) -> Histogram:
        counts, edges = np.histogram(np.asarray(values, np.float64), bins=bins)
        return cls(tuple(round(float(e), 6) for e in edges), tuple(int(c) for c in counts))

    def to_dict(self) -> dict[str, list[float] | list[int]]:
        return {"edges": list(self.edges), "counts": list(self.counts)}


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

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "median": self.median, "p95": self.p95, "max": self.max,
                "histogram": self.histogram.to_dict()}


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

    def to_dict(self) -> dict[str, Any]:
        return {"us_per_frame": self.us_per_frame, "us_per_frame_wall": self.us_per_frame_wall,
                "ms_per_second_audio": self.ms_per_second_audio, "batch_frames": self.batch_frames,
                "batches": self.batches, "threads": self.threads, "repeats": self.repeats}


@dataclass(frozen=True)
class Size:
    ram_bytes: int  # the index's arrays in RAM
    ram_with_big_npy_bytes: int  # plus RVC's total_fea.npy (ntotal x d float32), which RVC also loads
    disk_bytes: int | None = None  # the index file, once written

    def to_dict(self) -> dict[str, int]:
        out = {"ram_bytes": self.ram_bytes, "ram_with_big_npy_bytes": self.ram_with_big_npy_bytes}
        if self.disk_bytes is not None:
            out["disk_bytes"] = self.disk_bytes
        return out


@dataclass(frozen=True)
class ListSizes:
    """Vectors per inverted list: histogram, extremes and the number of lists."""

    histogram: Histogram
    min: int
    max: int
    n_list: int

    @classmethod
    def of(cls, sizes: np.ndarray) -> ListSizes:
        sizes = np.asarray(sizes)
        return cls(Histogram.of(sizes, bins=min(40, max(5, len(sizes) // 4))), int(sizes.min()), int(sizes.max()),
                   int(len(sizes)))

    def to_dict(self) -> dict[str, Any]:
        return {**self.histogram.to_dict(), "min": self.min, "max": self.max, "n_list": self.n_list}


@dataclass(frozen=True)
class SweepPoint:
    """recall@k, -1 share and single-thread us per frame at one nprobe."""

    nprobe: int
    recall_at_k: float
    missing_label_share: float
    us_per_frame: float

    def to_dict(self) -> dict[str, Any]:
        return {"nprobe": self.nprobe, "recall_at_k": self.recall_at_k,
                "missing_label_share": self.missing_label_share, "us_per_frame": self.us_per_frame}


@dataclass(frozen=True)
class Evaluation:
    """Every measure of one index on held-out query frames (``rvc_index.evaluation.evaluate``).

    ``blend_error`` and ``coverage_exact`` are None when the exact reference over the original
    frames was not affordable within the build's evaluation budget (``plan`` says why).
    """

    k: int
    queries: int
    holdout: dict[str, Any]  # Holdout.describe(): how the queries were held out
    recall_at_k: float  # against exact search over the stored vectors
    missing_label_share: float  # queries with a -1 label at the stored settings
    blend_error: Spread | None  # RVC's blend vs the same blend over exact neighbours among the original frames
    coverage: float  # mean L2 distance from a query frame to its blended retrieval
    coverage_exact: float | None  # the same for the exact blend
    latency: Latency
    size: Size
    list_sizes: ListSizes | None = None  # None: not an IVF index
    nprobe_sweep: tuple[SweepPoint, ...] = ()
    index: dict[str, Any] | None = None  # describe_index(), for ``rvc-index eval``
    plan: dict[str, Any] | None = None  # EvaluationPlan.to_dict(): what was measured and why
    seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON of report.json's ``evaluation`` and ``rvc-index eval --json``."""
        out: dict[str, Any] = {
            "k": self.k, "queries": self.queries, "holdout": dict(self.holdout),
            "recall_at_k": self.recall_at_k, "missing_label_share": self.missing_label_share,
            "blend_error": None if self.blend_error is None else self.blend_error.to_dict(),
            "coverage": self.coverage, "coverage_exact": self.coverage_exact,
            "latency": self.latency.to_dict(), "size": self.size.to_dict(),
        }
        if self.list_sizes is not None:
            out["list_sizes"] = self.list_sizes.to_dict()
        if self.nprobe_sweep:
            out["nprobe_sweep"] = [p.to_dict() for p in self.nprobe_sweep]
        for key in ("index", "plan", "seconds"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    def summary_line(self) -> str:
        """One log line with the key numbers."""
        blend = "blend error not measured" if self.blend_error is None else f"blend error {self.blend_error.mean:.4f}"
        return (f"recall@{self.k} {self.recall_at_k:.3f}, {blend}, {self.latency.us_per_frame:.1f} us/frame "
                f"(1 thread), -1 labels {self.missing_label_share:.1%} ({self.queries} held-out frames"
                + (f", {self.seconds:.2f} s" if self.seconds is not None else "") + ")")


@dataclass(frozen=True)
class EvaluationSkipped:
    """No evaluation: ``reason`` says why (one feature file: no whole utterance can be held out)."""

    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"skipped": self.reason}

    def summary_line(self) -> str:
        return f"evaluation skipped: {self.reason}"
