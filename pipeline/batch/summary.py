"""What a batch reports: one typed record per experiment, the summary table, progress lines, the JSON file.

``batch_report.json`` keeps its history: each write carries the previous runs' summaries (``history``,
newest last), so a rerun never loses the record of what was built before.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rvc_index.runtime.outputs import TEMP_MARKER, read_json, write_json_atomic

EXIT_FAILED = 1
EXIT_STOPPED = 75  # EX_TEMPFAIL: stopped before the end (signal); a rerun resumes
REPORT_NAME = "batch_report.json"
HISTORY_KEEP = 50  # previous runs kept in a report's history
TABLE_WIDTH = 120


def printable(name: str) -> str:
    """A name as text that any terminal and JSON reader takes: bytes that are not UTF-8 (a folder
    named ``Zo\\xeb`` on a Latin-1 disk, which Python reads with surrogates) become ``\\xeb``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@dataclass
class BatchRecord:
    """One experiment's outcome; ``to_json`` writes the field names (None fields left out)."""

    experiment: str
    status: str  # built | skipped | failed | stopped | pending
    mode: str | None = None  # whole | streamed
    worker: str | None = None
    started_at: float | None = None  # epoch seconds
    finished_at: float | None = None
    seconds: float | None = None  # wall time of the task
    rows: int | None = None
    index: str | None = None
    report: str | None = None
    recall_at_k: float | None = None
    build_seconds: float | None = None
    error: str | None = None  # "Type: message"
    traceback: str | None = None
    retryable: bool | None = None  # False for bad input: a retry would fail the same way
    attempts: int | None = None
    log: str | None = None  # the experiment's own log file

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BatchRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def json_problem(cls, data: dict[str, Any]) -> str | None:
        """The first field of ``data`` (a record read back) whose value is not of its type, with the reason."""
        for name, kind in typing.get_type_hints(cls).items():
            problem = json_type_problem(data.get(name), kind)
            if problem is not None:
                return f"{name}: {problem}"
        return None


JSON_KINDS = {type(None): "null", str: "a string", int: "a whole number", float: "a number", bool: "true or false",
              list: "a list", dict: "an object"}


def json_type_problem(value: object, kind: Any) -> str | None:
    """Why ``value``, read from JSON, is not of the annotated type ``kind`` (``float | None``, ...); None if it is."""
    allowed = typing.get_args(kind) or (kind,)
    for option in allowed:
        if (value is None and option is type(None)) or (option is float and isinstance(value, (int, float))
                                                         and not isinstance(value, bool)) \
                or (option is int and isinstance(value, int) and not isinstance(value, bool)) \
                or (option in (str, bool, list, dict) and isinstance(value, option)):
            return None
    return f"expected {' or '.join(JSON_KINDS[k] for k in allowed)}, got {json.dumps(value, default=str)[:40]}"


def lost_record(name: str, mode: str, exc: BaseException) -> BatchRecord:
    """The record of a task that did not return (its workers died, or it was cancelled)."""
    error = f"{type(exc).__name__}: {exc}"
    if type(exc).__name__ == "KilledWorker":
        error += " (out of memory? see the workers' logs)"
    return BatchRecord(printable(name), "failed", mode, error=error, retryable=True)


def short_error(error: str | None, width: int) -> str:
    """An error in ``width`` characters, keeping the file it names: paths are cut to their last two
    parts, a "N bad feature file(s) in FOLDER:" list is shown by its first file."""
    lines = [line.strip() for line in (error or "").splitlines() if line.strip()]
    if not lines:
        return ""
    text = lines[0]
    if len(lines) > 1 and text.endswith(":"):  # "2 bad feature file(s) in DIR:" then one line per file
        text = lines[1] + (f" (+{len(lines) - 2} more)" if len(lines) > 2 else "")
    text = re.sub(r"(?:/[^/\s:'\"]+)+/([^/\s:'\"]+/[^/\s:'\"]+)", r"…/\1", text)
    return text if len(text) <= width else text[: width - 1] + "…"


@dataclass
class BatchReport:
    """Records of every planned experiment, in name order, and how the batch ended."""

    records: list[BatchRecord]
    seconds: float
    stopped: str | None = None  # why the batch stopped early
    meta: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)  # previous runs, oldest first

    def counts(self) -> dict[str, int]:
        counts = {"built": 0, "skipped": 0, "failed": 0, "stopped": 0}
        for record in self.records:
            counts[record.status] = counts.get(record.status, 0) + 1
        return counts

    @property
    def exit_code(self) -> int:
        if self.counts()["failed"]:
            return EXIT_FAILED
        return EXIT_STOPPED if self.stopped else 0

    def table(self, width: int | None = None) -> str:
        """The CLI table, at most ``width`` columns (default: the terminal's, at most 120)."""
        width = width or min(TABLE_WIDTH, shutil.get_terminal_size((TABLE_WIDTH, 24)).columns)
        rows = []
        for r in self.records:
            recall = f"{r.recall_at_k:.3f}" if r.recall_at_k is not None else "-"
            seconds = f"{r.seconds:.1f}" if r.seconds is not None else "-"
            rows.append([_cut(r.experiment, 24), r.status, f"{r.rows:,}" if r.rows is not None else "-", seconds,
                         recall, r.error or (Path(r.index).name if r.index else "")])
        headers = ["experiment", "status", "rows", "s", "recall@8", "index / error"]
        widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(headers[:-1])]
        room = max(20, width - sum(widths) - 2 * len(widths))
        lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)) + "  " + headers[-1]]
        for row in rows:
            detail = short_error(row[-1], room) if row[1] in ("failed", "stopped") else _cut(row[-1], room)
            cells = [c.rjust(w) if i in (2, 3, 4) else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
            lines.append(("  ".join(cells) + "  " + detail).rstrip())
        return "\n".join(lines)

    def headline(self) -> str:
        counts = self.counts()
        text = ", ".join(f"{n} {status}" for status, n in counts.items() if n or status in ("built", "skipped",
                                                                                             "failed"))
        return f"{len(self.records)} experiments: {text} in {self.seconds:.1f} s" + (
            f" (stopped: {self.stopped})" if self.stopped else "")

    def to_json(self, finished: bool = True) -> dict[str, Any]:
        return {**self.meta, "finished": finished, "stopped": self.stopped, "seconds": round(self.seconds, 3),
                "counts": self.counts(), "exit_code": self.exit_code,
                "experiments": [r.to_json() for r in self.records], "history": self.history}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BatchReport:
        fixed = {"finished", "stopped", "seconds", "counts", "exit_code", "experiments", "history"}
        return cls([BatchRecord.from_json(r) for r in data.get("experiments") or []], float(data.get("seconds") or 0),
                   data.get("stopped"), {k: v for k, v in data.items() if k not in fixed},
                   list(data.get("history") or []))


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def progress_line(records: Sequence[BatchRecord], total: int, elapsed: float) -> str:
    """``[3/8] alice: built in 2.1 s (5,000 rows, recall@8 0.973); 2 built, 1 skipped, 0 failed; ETA 9 s``."""
    record, done = records[-1], len(records)
    line = f"[{done}/{total}] {record.experiment}: {record.status}"
    if record.status == "failed":
        line += f": {short_error(record.error, 100)}"
    else:
        line += f" in {record.seconds or 0.0:.1f} s ({record.rows or 0:,} rows"
        line += f", recall@8 {record.recall_at_k:.3f})" if record.recall_at_k is not None else ")"
    counts = {status: sum(r.status == status for r in records) for status in ("built", "skipped", "failed")}
    eta = elapsed / done * (total - done)
    return line + "; " + ", ".join(f"{n} {s}" for s, n in counts.items()) + f"; ETA {eta:.0f} s"


def report_file(root: str | Path, out: str | Path | None, shard: tuple[int, int] | None) -> Path:
    """``batch_report.json`` in the output root (``--out``) or ROOT; one per shard of an array."""
    folder = Path(out if out is not None else root).expanduser().absolute()
    return folder / (f"batch_report.shard-{shard[0]}-of-{shard[1]}.json" if shard else REPORT_NAME)


def prepare_report(path: Path) -> list[dict[str, Any]]:
    """Create the report's folder, drop temporary copies a killed batch left there, and return the
    history the new report carries on: the previous report's own, plus its summary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}{TEMP_MARKER}*"):
        stale.unlink(missing_ok=True)
    return history_of(read_json(path))


def history_of(previous: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A report's history followed by a compact summary of the report itself (last ``HISTORY_KEEP``)."""
    if previous is None:
        return []
    entry = {k: previous.get(k) for k in ("started", "host", "config", "overrides", "only", "shard", "cluster",
                                          "slurm_job", "finished", "stopped", "seconds", "counts", "exit_code")}
    entry["experiments"] = [{k: r[k] for k in ("experiment", "status", "index", "error") if r.get(k) is not None}
                            for r in previous.get("experiments") or [] if isinstance(r, dict)]
    return [*list(previous.get("history") or []), entry][-HISTORY_KEEP:]


def write_report(path: Path, report: BatchReport, finished: bool = True) -> Path:
    """Write ``report`` (with its history) to ``path`` atomically."""
    return write_json_atomic(path, report.to_json(finished))
