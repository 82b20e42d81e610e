"""``rvc-index status``: merge the shard reports of an array job, while it runs or once it has ended.

Every array task writes ``batch_report.shard-K-of-N.json`` (every few seconds while it runs).
The merge takes one array job's set (``--job``, else the newest report's), keeps each shard's
records and names the shards that have not reported. ``final`` (the summary job, after every
task ended): what no task finished counts as failed, and the merged ``batch_report.json`` is written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rvc_index.batch.jobs import BatchError, plan_jobs
from rvc_index.batch.summary import (
    REPORT_NAME,
    BatchRecord,
    BatchReport,
    json_type_problem,
    prepare_report,
    printable,
    write_report,
)
from rvc_index.config.loading import load_config
from rvc_index.errors import RvcIndexError
from rvc_index.runtime.outputs import read_json

SHARD_FILE = re.compile(r"^batch_report\.shard-(\d+)-of-(\d+)\.json$")
SHARD_META = ("shard", "host", "cluster", "dashboard", "started")


@dataclass(frozen=True)
class ShardReport:
    """One array task's report file."""

    index: int
    count: int
    path: Path
    data: dict[str, Any]

    @property
    def job(self) -> str | None:
        return self.data.get("slurm_job")


SHARD_FIELDS: dict[str, Any] = {"finished": bool | None, "stopped": str | None, "seconds": float | None,
                                "started": str | None, "slurm_job": str | int | None, "experiments": list | None}


def shard_problem(data: dict[str, Any]) -> str | None:
    """The first field of a shard report whose value is of the wrong type (``experiments[2].rows: ...``)."""
    for key, kind in SHARD_FIELDS.items():
        if (problem := json_type_problem(data.get(key), kind)) is not None:
            return f"{key}: {problem}"
    for number, record in enumerate(data.get("experiments") or []):
        problem = json_type_problem(record, dict) or BatchRecord.json_problem(record)
        if problem is not None:
            return f"experiments[{number}]" + ("." if ":" in problem.split(" ")[0] else ": ") + problem
    return None


def find_shard_reports(folder: Path, job: str | None = None) -> tuple[list[ShardReport], list[str]]:
    """The shard reports of array job ``job`` in ``folder`` (default: the newest report's job and N), and a
    note naming each shard file that cannot be read (not JSON: truncated; a field of the wrong type): such
    a shard counts as not reported, the others are merged."""
    found, unusable = [], []
    for path in sorted(folder.glob("batch_report.shard-*-of-*.json")):
        if not (match := SHARD_FILE.match(path.name)):
            continue
        data = read_json(path)
        problem = "not a JSON report (truncated?)" if data is None else shard_problem(data)
        if problem is None:
            found.append(ShardReport(int(match[1]), int(match[2]), path, data))
        else:
            unusable.append((int(match[2]), f"{path}: {problem}: counted as not reported"))
    if job is not None:
        found = [s for s in found if str(s.job) == str(job)]
    elif found:
        newest = max(found, key=lambda s: (str(s.data.get("started") or ""), s.path.stat().st_mtime))
        found = [s for s in found if s.count == newest.count and s.job == newest.job]
    return found, [note for count, note in unusable if not found or count == found[0].count]


def missing_records(shards: list[ShardReport], missing: list[int], status: str, error: str | None) -> list[BatchRecord]:
    """Records for the experiments of shards that never reported, planned again from a reporting
    shard's settings (root, out, config, overrides, --only); one record per shard when that cannot be
    done, so a final report never counts a lost shard as success."""
    meta = shards[0].data
    try:
        config = load_config(Path(meta["config_file"]), meta.get("overrides") or [])
        records = []
        for index in missing:
            for job in plan_jobs(meta["root"], config, meta.get("out"), meta.get("only") or [],
                                 (index, shards[0].count)):
                records.append(BatchRecord(printable(job.name), status, job.mode, error=error and error.format(index)))
        return records
    except (KeyError, TypeError, RvcIndexError, OSError):
        return [BatchRecord(f"<shard {index}>", status, "", error=error and error.format(index)) for index in missing]


def merge_shards(folder: str | Path, job: str | None = None, final: bool = False) -> tuple[BatchReport, list[str]]:
    """The merged report of one array job's shards in ``folder`` and notes on shards not done."""
    folder = Path(folder).expanduser().absolute()
    if (folder / REPORT_NAME).is_file() and not list(folder.glob("batch_report.shard-*.json")):
        raise BatchError(f"{folder}: no shard reports; the batch's own report is {folder / REPORT_NAME}")
    shards, notes = find_shard_reports(folder, job)
    if not shards:
        raise BatchError(f"{folder}: no shard reports (batch_report.shard-K-of-N.json)"
                         + (f" of array job {job}" if job else "") + "; if the batch had --out, pass that folder"
                         + "".join(f"\n  {note}" for note in notes))
    count = shards[0].count
    reported = {s.index for s in shards}
    missing = [k for k in range(count) if k not in reported]
    records: list[BatchRecord] = []
    running = [s.index for s in shards if not s.data.get("finished")]
    for shard in sorted(shards, key=lambda s: s.index):
        for data in shard.data.get("experiments") or []:
            record = BatchRecord.from_json(data)
            if final and record.status == "pending":
                record.status, record.error = "failed", f"lost: array task {shard.index} ended before building it"
            records.append(record)
    lost = "lost: array task {} never reported (see its slurm-logs file)"
    records += missing_records(shards, missing, "failed" if final else "pending", lost if final else None)
    if missing:
        notes.append(f"shards without a report: {', '.join(map(str, missing))} of {count}")
    if running and not final:
        notes.append(f"shards still running: {', '.join(map(str, running))} of {count}")
    meta = {k: v for k, v in shards[0].data.items() if k not in (*SHARD_META, "finished", "stopped", "seconds",
                                                                   "counts", "exit_code", "experiments", "history")}
    meta.update(shards=count, merged_from=[str(s.path) for s in shards])
    stopped = sorted({s.data["stopped"] for s in shards if s.data.get("stopped")})
    report = BatchReport(sorted(records, key=lambda r: r.experiment),
                         max(float(s.data.get("seconds") or 0) for s in shards), "; ".join(stopped) or None, meta)
    return report, notes


def write_final(folder: str | Path, report: BatchReport) -> Path:
    """Write the merged report as the batch's ``batch_report.json`` (its history carried on)."""
    path = Path(folder).expanduser().absolute() / REPORT_NAME
    report.history = prepare_report(path)
    return write_report(path, report)
