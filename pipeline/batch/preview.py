"""``batch --dry-run``: read every header and say, per experiment, what a run would do.

build (rows x dim, size, mode), skip (up to date: a finished build with the same fingerprint), or
fail (the file and its problem), without loading a feature value or starting a cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rvc_index.batch.jobs import Job
from rvc_index.batch.summary import TABLE_WIDTH, printable, short_error
from rvc_index.config.schema import Config
from rvc_index.data.sources import resolve_experiment, scan_manifest
from rvc_index.errors import RvcIndexError
from rvc_index.job.naming import build_files, check_files_are_ours
from rvc_index.job.resume import build_fingerprint, code_fingerprint, config_fingerprint, finished_build, read_report
from rvc_index.stages.indexing import check_rows

ACTIONS = ("build", "skip", "fail")


@dataclass(frozen=True)
class Preview:
    """What a run would do with one experiment."""

    experiment: str
    action: str  # build | skip | fail
    detail: str  # rows and size, the up-to-date index, or the file and its problem


def preview_job(job: Job, config: Config, config_fp: str, code_fp: str) -> Preview:
    """Plan one experiment from its headers and its previous report."""
    name = printable(job.name)
    if job.problem:
        return Preview(name, "fail", job.problem)
    try:
        experiment = resolve_experiment(job.path)
        manifest = scan_manifest(experiment, config.source.on_bad_file)
        files = build_files(Path(job.out).absolute(), experiment.name, config)
        check_files_are_ours(files, experiment.name)  # another experiment's report under these names: would fail
        done = finished_build(read_report(files.report), files, build_fingerprint(manifest, config_fp, code_fp))
        if done is not None:
            return Preview(name, "skip", f"up to date: {done['index_file']}")
        check_rows(manifest.rows, experiment.feature_dir.name)
    except (RvcIndexError, OSError) as exc:
        return Preview(name, "fail", str(exc))
    skipped = f", {len(manifest.skipped)} bad files left out" if manifest.skipped else ""
    return Preview(name, "build", f"{manifest.rows:,} x {manifest.dim}, {manifest.bytes / 2**20:.1f} MB, "
                                  f"{job.mode}{skipped}")


def preview_jobs(jobs: Sequence[Job], config: Config) -> list[Preview]:
    """``preview_job`` for every job, in name order."""
    config_fp, code_fp = config_fingerprint(config), code_fingerprint()
    return [preview_job(job, config, config_fp, code_fp) for job in sorted(jobs, key=lambda j: j.name)]


def format_previews(previews: Sequence[Preview], width: int = TABLE_WIDTH) -> str:
    """One line per experiment (``build  spk0  2,000 x 256, 1.9 MB, whole``) and a count line."""
    name_width = min(24, max((len(p.experiment) for p in previews), default=10))
    lines = []
    for p in previews:
        name = p.experiment if len(p.experiment) <= name_width else p.experiment[: name_width - 1] + "…"
        room = width - name_width - 8
        detail = short_error(p.detail, room) if p.action == "fail" else p.detail[:room]
        lines.append(f"{p.action:<5}  {name:<{name_width}}  {detail}".rstrip())
    counts = {action: sum(p.action == action for p in previews) for action in ACTIONS}
    lines.append(f"{len(previews)} experiments: {counts['build']} to build, {counts['skip']} up to date, "
                 f"{counts['fail']} would fail")
    return "\n".join(lines)
