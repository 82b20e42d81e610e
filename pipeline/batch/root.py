"""One batch from end to end: plan a root's experiments, start the cluster, run, write the report.

The API's ``build_batch`` (and so the CLI's ``batch``) calls ``run_root``.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
from collections.abc import Sequence
from pathlib import Path

from rvc_index.batch.clusters import forward_worker_logs, open_cluster, performance_report_to
from rvc_index.batch.jobs import BatchError, Job, run_batch, stop_on_signals
from rvc_index.batch.quiet import quiet_dask_noise
from rvc_index.batch.summary import BatchReport, prepare_report, report_file
from rvc_index.config.schema import Config
from rvc_index.runtime.outputs import check_output_file
from rvc_index.runtime.progress import get_logger


def run_root(root: str | Path, config: Config, out: str | Path | None = None, *, jobs: Sequence[Job] | None = None,
             cluster: str = "local", workers: int | None = None, only: Sequence[str] = (), backend: str = "auto",
             force: bool = False, report: str | Path | None = None, shard: tuple[int, int] | None = None,
             retries: int = 0, performance_report: str | Path | None = None, config_file: str | Path | None = None,
             overrides: Sequence[str] = (), verbose: bool = False) -> BatchReport:
    """Build every experiment under ``root`` (or the planned ``jobs``) and return the batch report.

    The report is written to ``report`` (default ``batch_report.json``, or the shard's file, in
    ``out`` or ``root``) as results arrive, keeping the previous runs in its history; its path is
    ``meta["report_file"]``. Per-stage lines go to each experiment's log file, and to this log
    only when ``verbose``; Dask's routine noise is debug output.
    """
    from rvc_index.batch.jobs import plan_jobs

    if retries < 0:
        raise BatchError(f"--retries {retries}: must be 0 or more")
    planned = list(jobs) if jobs is not None else plan_jobs(root, config, out, only, shard)
    if not planned:  # a shard of an array with more tasks than experiments: nothing to run, no report
        return BatchReport([], 0.0, meta={"shard": f"{shard[0]}/{shard[1]}" if shard else None, "report_file": None})
    report_path = check_output_file("--report", report, make_folder=True) if report is not None else \
        report_file(root, out, shard)
    if performance_report is not None:
        check_output_file("--performance-report", performance_report, make_folder=True)  # before the cluster
    history = prepare_report(report_path)
    meta = {"root": str(Path(root).absolute()), "out": str(Path(out).absolute()) if out else None,
            "config": config.name, "config_file": str(config_file) if config_file else None,
            "overrides": list(overrides), "backend": backend, "force": force, "only": list(only),
            "shard": f"{shard[0]}/{shard[1]}" if shard else None, "report_file": str(report_path),
            "slurm_job": os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID"),
            "host": socket.gethostname(), "started": datetime.datetime.now().isoformat(timespec="seconds")}
    log = get_logger()
    quiet_dask_noise(verbose)
    with stop_on_signals(), open_cluster(cluster, config.cluster, workers) as info:
        log.info("cluster %s; dashboard: %s", info.description, info.dashboard or "off")
        forward_worker_logs(info.client, logging.INFO, logging.INFO if verbose else logging.CRITICAL + 1)
        meta.update(cluster=info.description, dashboard=info.dashboard)
        with performance_report_to(performance_report):
            return run_batch(planned, config, info.client, backend=backend, force=force, report_path=report_path,
                             meta=meta, retries=retries, history=history)
