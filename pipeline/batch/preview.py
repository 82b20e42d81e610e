"""``batch --dry-run``: read every header and say, per experiment, what a run would do.

build (rows x dim, size, mode, then the plan's decisions: compression, k-means, expansion and its alpha, index
layout, evaluation), skip (up to date: a finished build with the same fingerprint), or fail (the file and its
problem), without loading a feature value or starting a cluster.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rvc_index.batch.jobs import Job, plan_jobs
from rvc_index.batch.summary import TABLE_WIDTH, printable, short_error
from rvc_index.compute.backend import Backend, BackendError, select_backend
from rvc_index.config.schema import Config
from rvc_index.data.layouts import resolve_experiment
from rvc_index.data.sources import scan_manifest
from rvc_index.errors import RvcIndexError
from rvc_index.inspection.describe import check_rows
from rvc_index.job.naming import build_files, check_files_are_ours
from rvc_index.job.plan import make_plan
from rvc_index.job.resume import build_fingerprint, code_fingerprint, config_fingerprint, finished_build, read_report

ACTIONS = ("build", "skip", "fail")


@dataclass(frozen=True)
class Preview:
    """What a run would do with one experiment."""

    experiment: str
    action: str  # build | skip | fail
    detail: str  # rows and size, the up-to-date index, or the file and its problem
    plan: tuple[str, ...] = ()  # build: the plan's decisions (``BuildPlan.describe``), the size line left out


def preview_job(job: Job, config: Config, config_fp: str, code_fp: str, backend: Backend) -> Preview:
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
            return Preview(name, "skip", f"up to date: {done.index_file}")
        check_rows(manifest.rows, experiment.feature_dir.name)
        plan = make_plan(manifest, config, backend, local=not job.streamed)
    except (RvcIndexError, OSError) as exc:
        return Preview(name, "fail", str(exc))
    skipped = f", {len(manifest.skipped)} bad files left out" if manifest.skipped else ""
    return Preview(name, "build", f"{manifest.rows:,} x {manifest.dim}, {manifest.bytes / 2**20:.1f} MB, "
                                  f"{job.mode}{skipped}", tuple(plan.describe()[1:]))


def preview_jobs(jobs: Sequence[Job], config: Config, backend: str = "auto") -> list[Preview]:
    """``preview_job`` for every job, in name order, planned for ``backend`` as this machine has it (the CPU
    where it has no GPU: the workers' plans then differ in the k-means and expansion routes)."""
    config_fp, code_fp = config_fingerprint(config), code_fingerprint()
    try:
        chosen = select_backend(backend)  # type: ignore[arg-type]
    except BackendError:
        chosen = select_backend("cpu")
    return [preview_job(job, config, config_fp, code_fp, chosen) for job in sorted(jobs, key=lambda j: j.name)]


def format_previews(previews: Sequence[Preview], width: int = TABLE_WIDTH) -> str:
    """One line per experiment (``build  spk0  2,000 x 256, 1.9 MB, whole``), its plan's decisions indented
    under it, and a count line."""
    name_width = min(24, max((len(p.experiment) for p in previews), default=10))
    lines = []
    for p in previews:
        name = p.experiment if len(p.experiment) <= name_width else p.experiment[: name_width - 1] + "…"
        room = width - name_width - 8
        detail = short_error(p.detail, room) if p.action == "fail" else p.detail[:room]
        lines.append(f"{p.action:<5}  {name:<{name_width}}  {detail}".rstrip())
        indent = " " * (name_width + 9)
        lines += [textwrap.fill(decision, width, initial_indent=indent, subsequent_indent=indent + "  ")
                  for decision in p.plan]
    counts = {action: sum(p.action == action for p in previews) for action in ACTIONS}
    lines.append(f"{len(previews)} experiments: {counts['build']} to build, {counts['skip']} up to date, "
                 f"{counts['fail']} would fail")
    return "\n".join(lines)


def preview_root(root: str | Path, config: Config, out: str | Path | None = None, only: Sequence[str] = (),
                 shard: tuple[int, int] | None = None, backend: str = "auto") -> list[Preview]:
    """What ``batch`` would do with every experiment under ``root`` (``plan_jobs`` then ``preview_jobs``)."""
    return preview_jobs(plan_jobs(root, config, out, only, shard), config, backend)
