"""What one build did: the typed record written as ``rvc-index-<exp>-<preset>.report.json`` beside the index,
and the result a caller gets back."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class BuildRecord:
    """One build's report. Field names are the JSON keys users read; ``to_dict`` is the file's content."""

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
    skipped_files: list[list[str]] = field(default_factory=list)
    empty_files: list[str] = field(default_factory=list)
    ignored_entries: list[str] = field(default_factory=list)
    dropped_rows: int = 0
    compression: dict[str, Any] = field(default_factory=dict)
    expansion: dict[str, Any] = field(default_factory=dict)
    index: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)
    backend: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    names: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    retired: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BuildRecord | None:
        """The record in a report file read back, or None when a field it needs is missing (an older or
        foreign file); unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except TypeError:
            return None

    @property
    def recall_at_k(self) -> float | None:
        return self.evaluation.get("recall_at_k")


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
            "compression": r.compression.get("summary"),
            "n_list": r.index.get("n_list"),
            "nprobe": r.index.get("nprobe"),
            "index": self.index_path.name,
            "seconds": r.seconds,
            "recall_at_k": r.recall_at_k,
        }
