"""What a batch reports: one record per experiment, the summary table, progress lines, the JSON file."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rvc_index.runtime.outputs import TEMP_MARKER

EXIT_FAILED = 1
EXIT_STOPPED = 75  # EX_TEMPFAIL: stopped before the end (signal); a rerun resumes
REPORT_NAME = "batch_report.json"


def lost_record(name: str, mode: str, exc: BaseException) -> dict[str, Any]:
    """The record of a task that did not return (its workers died, or it was cancelled)."""
    error = f"{type(exc).__name__}: {exc}"
    if type(exc).__name__ == "KilledWorker":
        error += " (out of memory? see the workers' logs)"
    return {"experiment": name, "mode": mode, "status": "failed", "error": error}


@dataclass
class BatchReport:
    """Records of every planned experiment, in name order, and how the batch ended."""

    records: list[dict[str, Any]]
    seconds: float
    stopped: str | None = None  # why the batch stopped early
    meta: dict[str, Any] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        counts = {"built": 0, "skipped": 0, "failed": 0, "stopped": 0}
        for record in self.records:
            counts[record["status"]] = counts.get(record["status"], 0) + 1
        return counts

    @property
    def exit_code(self) -> int:
        if self.counts()["failed"]:
            return EXIT_FAILED
        return EXIT_STOPPED if self.stopped else 0

    def summary_rows(self) -> list[dict[str, Any]]:
        """The CLI table: one row per experiment."""
        rows = []
        for r in self.records:
            error = (r.get("error") or "").splitlines()
            rows.append({"experiment": r["experiment"], "status": r["status"], "mode": r.get("mode"),
                         "rows": r.get("rows"), "seconds": r.get("seconds"), "recall@8": r.get("recall_at_8"),
                         "index": r.get("index"), "error": (error[0][:100] if error else None)})
        return rows

    def headline(self) -> str:
        counts = self.counts()
        text = ", ".join(f"{n} {status}" for status, n in counts.items() if n or status != "stopped")
        return f"{len(self.records)} experiments: {text} in {self.seconds:.1f} s" + (
            f" (stopped: {self.stopped})" if self.stopped else "")

    def to_json(self, finished: bool = True) -> dict[str, Any]:
        return {**self.meta, "finished": finished, "stopped": self.stopped, "seconds": round(self.seconds, 3),
                "counts": self.counts(), "exit_code": self.exit_code, "experiments": self.records}


def progress_line(records: Sequence[dict[str, Any]], total: int, elapsed: float) -> str:
    """``[3/8] alice: built in 2.1 s (5,000 rows, recall@8 0.973); 2 built, 1 skipped, 0 failed; ETA 9 s``."""
    record, done = records[-1], len(records)
    line = f"[{done}/{total}] {record['experiment']}: {record['status']}"
    if record["status"] == "failed":
        line += f": {((record.get('error') or '').splitlines() or [''])[0]}"
    else:
        line += f" in {record.get('seconds', 0.0):.1f} s ({record.get('rows') or 0:,} rows"
        recall = record.get("recall_at_8")
        line += f", recall@8 {recall:.3f})" if recall is not None else ")"
    counts = {status: sum(r["status"] == status for r in records) for status in ("built", "skipped", "failed")}
    eta = elapsed / done * (total - done)
    return line + "; " + ", ".join(f"{n} {s}" for s, n in counts.items()) + f"; ETA {eta:.0f} s"


def report_file(root: str | Path, out: str | Path | None, shard: tuple[int, int] | None) -> Path:
    """``batch_report.json`` in the output root (``--out``) or ROOT; one per shard of an array."""
    folder = Path(out if out is not None else root).expanduser().absolute()
    return folder / (f"batch_report.shard-{shard[0]}-of-{shard[1]}.json" if shard else REPORT_NAME)


def prepare_report(path: Path) -> None:
    """Create the report's folder and drop temporary copies a killed batch left there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}{TEMP_MARKER}*"):
        stale.unlink(missing_ok=True)
