"""What one build did: the typed record written as ``rvc-index-<exp>-<preset>.report.json`` beside the index
(``dataclasses.asdict``: field names are the JSON keys users read; ``null`` where a measure does not apply),
and the result a caller gets back."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rvc_index.config.schema import Config
from rvc_index.evaluation.result import Evaluation, EvaluationSkipped, Verdict
from rvc_index.inspection.describe import IndexDescription
from rvc_index.runtime.memory import MB
from rvc_index.runtime.records import RecordError, from_json

if TYPE_CHECKING:  # only for the records' constructors: reading a report imports no stage
    from rvc_index.job.plan import BuildPlan
    from rvc_index.stages.expand import Expansion


@dataclass(frozen=True)
class CompressionRecord:
    """Whether the stored vectors are k-means centroids of the frames, how many, and why."""

    applied: bool
    reason: str
    n_centroids: int
    method: str
    summary: str  # "N centroids" or "none", for the summary table


@dataclass(frozen=True)
class ExpansionRecord:
    """Alpha query expansion of the stored vectors (``stages.expand``); every other field null when not applied,
    the neighbour search's IVF settings null when it was exact."""

    applied: bool
    neighbours: int | None = None
    alpha: float | None = None
    scale: str | None = None  # feature: each vector keeps its norm; unit: L2-normalised
    method: str | None = None  # exact | ivf | ivf-faiss-gpu
    mean_cosine: float | None = None
    storage: str | None = None  # memory | memmap
    seconds: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    n_list: int | None = None
    nprobe: int | None = None
    recall_queries: int | None = None
    neighbour_recall: float | None = None
    note: str | None = None

    @classmethod
    def of(cls, expansion: Expansion | None) -> ExpansionRecord:
        if expansion is None:
            return cls(False)
        ivf = expansion.method != "exact"
        return cls(True, expansion.neighbours, expansion.alpha, expansion.scale, expansion.method,
                   round(expansion.mean_cosine, 5), expansion.storage, round(expansion.seconds, 3),
                   dict(expansion.timings), expansion.n_list if ivf else None, expansion.nprobe if ivf else None,
                   expansion.recall_queries if ivf else None,
                   None if not ivf or expansion.neighbour_recall is None else round(expansion.neighbour_recall, 4),
                   "stored vectors are L2-normalised (unit norm), not in HuBERT feature scale: normalise query "
                   "frames the same way before searching" if expansion.scale == "unit" else
                   "each expanded vector is rescaled to the norm of the vector it replaces (feature scale)")


@dataclass(frozen=True)
class IndexRecord(IndexDescription):
    """The index written (``describe_index``) and what the plan decided for it."""

    factory: str = ""
    lists: str = ""  # flat | fp16 | sq8 | pq8
    holdings: dict[str, int] = field(default_factory=dict)  # bytes each tool holds (inspection.consumers)
    us_per_frame_planned: float = 0.0
    pq_m: int = 0
    nprobe_configured: int = 0
    train_rows: int = 0
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class PlanRecord:
    """The plan the build executed: its size, backend, chunks, decisions (one line each) and each stage's
    estimated need (MB)."""

    rows: int
    vectors: int
    backend: str
    chunk_mb: float
    decisions: tuple[str, ...]
    stages_mb: dict[str, float]

    @classmethod
    def of(cls, plan: BuildPlan) -> PlanRecord:
        return cls(plan.n_rows, plan.n_vectors, plan.backend, plan.chunk_mb, tuple(plan.describe()),
                   {s.stage: round(s.need / MB, 1) for s in plan.stages})


@dataclass(frozen=True)
class MemoryRecord:
    """The memory guard's account: its mode, the chunk size it let run (and the one it shrank from), the
    plan's estimated peak and each stage's need (MB)."""

    guard: str
    chunk_mb: float
    shrunk_from_chunk_mb: float | None
    estimated_peak_mb: float
    stages_mb: dict[str, float]


@dataclass(frozen=True)
class NamesRecord:
    experiment: str
    in_file_names: str  # the name index files carry (ASCII unless output.ascii_names is off)
    ascii_path: bool


@dataclass(frozen=True)
class BuildRecord:
    """One build's report. Field names are the JSON keys users read."""

    experiment: str
    feature_dir: str
    version: str
    dim: int
    files: int
    rows_declared: int
    rows: int
    index_file: str
    index_bytes: int
    fingerprint: str
    config_fingerprint: str
    code_version: str
    faiss_version: str
    compression: CompressionRecord
    expansion: ExpansionRecord
    index: IndexRecord
    evaluation: Evaluation | EvaluationSkipped | None  # None: evaluation off
    verdict: Verdict
    plan: PlanRecord
    memory: MemoryRecord
    names: NamesRecord
    config: Config  # the resolved config (as written beside the index)
    backend: str = ""
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    skipped_files: tuple[tuple[str, str], ...] = ()  # (file, problem) left out by source.on_bad_file=skip
    empty_files: tuple[str, ...] = ()
    ignored_entries: tuple[str, ...] = ()
    dropped_rows: int = 0
    retired: tuple[str, ...] = ()  # older indexes renamed to *.index.retired (--retire-old)

    @classmethod
    def read(cls, data: dict[str, Any]) -> BuildRecord | None:
        """The record in a report file read back, or None when it is not one (an older or foreign file);
        unknown keys are ignored."""
        try:
            return from_json(cls, data)
        except RecordError:
            return None

    @property
    def recall_at_k(self) -> float | None:
        return self.evaluation.recall_at_k if isinstance(self.evaluation, Evaluation) else None


@dataclass
class BuildResult:
    """What ``build_experiment`` did: ``built`` or ``skipped`` (up to date), the files and the record."""

    experiment: str
    status: str  # built | skipped
    index_path: Path
    report_path: Path
    record: BuildRecord

    def summary(self) -> dict[str, Any]:
        """The fields of the CLI's table."""
        r = self.record
        return {
            "speaker": self.experiment,
            "status": self.status,
            "rows": r.rows,
            "compression": r.compression.summary,
            "n_list": r.index.n_list,
            "nprobe": r.index.nprobe,
            "index": self.index_path.name,
            "seconds": r.seconds,
            "recall_at_k": r.recall_at_k,
        }
