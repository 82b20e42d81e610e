"""Many experiments at once: discover, plan, run one build per experiment as a Dask task, summarise.

Every experiment is one task that runs ``runner.build_experiment`` on a worker, so a failing
experiment (bad file, too few rows, out of memory) fails alone. Small experiments (feature files
up to ``cluster.stream_above_mb``) build whole inside their task, loading their files locally on
that worker. Larger ones stream: their task opens a ``worker_client()`` and sends its chunk
loads to every worker while it trains and adds (on its worker's GPU when there is one).
``worker_client`` secedes the task from the worker's thread pool; without that, builds waiting on
chunk tasks could hold every worker thread, leaving none to run the chunks (a deadlock). A
seceded task no longer counts against its worker's threads, so at most ``cluster.max_streaming``
streamed builds are in flight at once. On GPU workers every build holds the resource ``GPU=1``
(kept while seceded): one GPU runs one build at a time; chunk loads need no GPU.

faiss's results can depend on its OpenMP thread count (an IVF-Flat index differed between 1 and 2),
so each build pins it to ``cluster.job_threads``: a build writes the same bytes on any worker.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import signal
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distributed import Client, as_completed, get_worker, worker_client
from rvc_index.batch.clusters import build_resources
from rvc_index.batch.joblog import experiment_log, log_path
from rvc_index.batch.summary import BatchRecord, BatchReport, lost_record, printable, progress_line, write_report
from rvc_index.compute.backend import faiss_threads, select_backend
from rvc_index.config.schema import Config
from rvc_index.data.files import SourceError, is_feature_name
from rvc_index.data.layouts import find_experiments, resolve_experiment
from rvc_index.errors import RvcIndexError
from rvc_index.job.naming import file_stem
from rvc_index.job.runner import build_experiment
from rvc_index.runtime.outputs import check_output_folder
from rvc_index.runtime.progress import get_logger

REPORT_EVERY_S = 5.0


class BatchError(RvcIndexError, ValueError):
    """A batch that cannot be planned (no experiments, a bad --only or --shard)."""


class BatchStopped(KeyboardInterrupt):
    """Raised in the main thread by SIGTERM/SIGUSR1: stop cleanly, report, exit."""


@dataclass(frozen=True)
class Job:
    """One experiment to build: where it is, where it goes, and how it runs."""

    name: str
    path: str  # the experiment folder (logs/<exp>)
    out_dir: str | None  # None = the experiment folder, as RVC
    files: int
    bytes: int
    streamed: bool  # chunks spread over the workers, else built whole on one worker
    problem: str | None = None  # found while planning (an unreadable feature folder): fails without a build

    @property
    def mode(self) -> str:
        return "streamed" if self.streamed else "whole"

    @property
    def out(self) -> str:
        """The output folder: ``out_dir``, or the experiment folder."""
        return self.out_dir or self.path


def feature_size(folder: Path) -> tuple[int, int]:
    """(number, total bytes) of the feature files an experiment's build would read (``data.layouts`` finds
    them, ``data.files`` says which entries are feature files)."""
    files = size = 0
    with os.scandir(resolve_experiment(folder).feature_dir) as entries:
        for entry in entries:
            if is_feature_name(entry.name) and entry.is_file():
                files += 1
                size += entry.stat().st_size
    return files, size


def select(names: Sequence[str], patterns: Sequence[str]) -> list[str]:
    """Names matching any glob of ``patterns`` (comma-separated allowed); all when none given."""
    globs = [g.strip() for p in patterns for g in p.split(",") if g.strip()]
    if not globs:
        return list(names)
    chosen = [n for n in names if any(fnmatch.fnmatchcase(n, g) for g in globs)]
    if not chosen:
        raise BatchError(f"--only {','.join(globs)} matches none of the {len(names)} experiments")
    return chosen


def parse_shard(text: str | None, environ: Mapping[str, str] = os.environ) -> tuple[int, int] | None:
    """``'K/N'`` -> (K, N); ``'slurm'`` -> this array task's place in a contiguous ``--array`` range."""
    if not text:
        return None
    if text == "slurm":
        if "SLURM_ARRAY_TASK_ID" not in environ:
            raise BatchError("--shard slurm: SLURM_ARRAY_TASK_ID is not set (run it as an sbatch --array task)")
        task = int(environ["SLURM_ARRAY_TASK_ID"])
        low = int(environ.get("SLURM_ARRAY_TASK_MIN", task))
        high = int(environ.get("SLURM_ARRAY_TASK_MAX", task))
        step = int(environ.get("SLURM_ARRAY_TASK_STEP", 1)) or 1
        count = (high - low) // step + 1
        if int(environ.get("SLURM_ARRAY_TASK_COUNT", count)) != count or (task - low) % step:
            raise BatchError("--shard slurm needs a contiguous --array range like 0-15%4")
        return (task - low) // step, count
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise BatchError(f"--shard {text!r}: expected K/N with 0 <= K < N, or 'slurm'")
    return int(match[1]), int(match[2])


def shard_jobs(jobs: Sequence[Job], index: int, count: int) -> list[Job]:
    """Shard ``index`` of ``count`` with balanced bytes (largest first to the lightest shard).

    Deterministic: every array task computes the same split from the same files.
    """
    loads = [0] * count
    shards: list[list[Job]] = [[] for _ in range(count)]
    for job in sorted(jobs, key=lambda j: (-j.bytes, j.name)):
        lightest = min(range(count), key=lambda i: (loads[i], i))
        shards[lightest].append(job)
        loads[lightest] += max(job.bytes, 1)
    return sorted(shards[index], key=lambda j: j.name)


def one_name_per_folder(folders: Mapping[str, Path]) -> list[str]:
    """The names of ``folders``, one per folder: a folder reached by two names (a link beside it) is one experiment,
    built once under its own name (built under both, each build retired the other's index on every run)."""
    kept: dict[Path, str] = {}
    for name, path in sorted(folders.items(), key=lambda item: (item[1].is_symlink(), item[0])):
        real = path.resolve()
        if real in kept:
            get_logger().warning("%s: the same folder as %s: built once, as %s", path, folders[kept[real]], kept[real])
        kept.setdefault(real, name)
    return sorted(kept.values())


def plan_jobs(root: str | Path, config: Config, out: str | Path | None = None, only: Sequence[str] = (),
              shard: tuple[int, int] | None = None) -> list[Job]:
    """The experiments to build, each with its output folder and run mode.

    An experiment whose feature folder cannot be found or listed (v1 and v2 both, permissions) is planned
    with its ``problem``: it fails alone, the others build.
    """
    out = check_output_folder("--out", out) if out is not None else None  # "" is not the current folder
    folders = {p.name: p for p in find_experiments(root)}
    threshold = config.cluster.stream_above_mb * 2**20
    jobs = []
    for name in one_name_per_folder({name: folders[name] for name in select(list(folders), only)}):
        problem = None
        try:
            files, size = feature_size(folders[name])
        except SourceError as exc:
            files, size, problem = 0, 0, str(exc)
        except OSError as exc:
            files, size, problem = 0, 0, f"{exc.filename or folders[name]}: cannot read: {exc.strerror or exc}"
        folder = file_stem(name, config)  # RVC on Windows needs ASCII paths
        out_dir = str(Path(out).absolute() / folder) if out is not None else None
        jobs.append(Job(name, str(folders[name]), out_dir, files, size, size > threshold, problem))
    return shard_jobs(jobs, *shard) if shard else jobs


def _worker_address() -> str | None:
    try:
        return get_worker().address
    except ValueError:
        return None


def run_job(job: Job, config: Config, backend: str = "auto", force: bool = False) -> BatchRecord:
    """Build one experiment (the Dask task); never raises: a failure is returned as a record.

    Its log lines also go to ``rvc-index-<exp>-<preset>.log`` in its output folder.
    """
    log = get_logger()
    started = time.perf_counter()
    worker = _worker_address()
    record = BatchRecord(printable(job.name), "failed", job.mode, worker, started_at=time.time())
    title = f"{job.name} ({job.mode}) on {worker or 'this process'}"
    with experiment_log(log_path(job.out, file_stem(job.name, config), config.name), title) as log_file:
        record.log = printable(str(log_file)) if log_file else None
        log.info("%s: start (%s, %d files, %.1f MB)%s", job.name, job.mode, job.files, job.bytes / 2**20,
                 f" on {worker}" if worker else "")
        try:
            if job.problem:  # run_batch records it without a task; this is for a direct call
                raise SourceError(job.problem)
            with faiss_threads(config.cluster.job_threads):
                chosen = select_backend(backend)  # type: ignore[arg-type]
                if job.streamed and worker is not None:
                    with worker_client() as client:
                        result = build_experiment(job.path, config, job.out_dir, chosen, client, force)
                else:
                    result = build_experiment(job.path, config, job.out_dir, chosen, None, force)
        except Exception as exc:  # noqa: BLE001 - one experiment's failure must not stop the batch
            log.error("%s: failed: %s: %s", job.name, type(exc).__name__, exc)
            record.error = f"{type(exc).__name__}: {exc}"
            record.traceback = traceback.format_exc()
            record.retryable = not isinstance(exc, RvcIndexError)  # bad input fails the same way again
        else:
            built = result.record
            record.status, record.rows, record.recall_at_k = result.status, built.rows, built.recall_at_k
            record.index, record.report = printable(str(result.index_path)), printable(str(result.report_path))
            record.build_seconds = built.seconds
            log.info("%s: %s (%s)", job.name, result.status, result.index_path)
    record.seconds = round(time.perf_counter() - started, 3)
    record.finished_at = time.time()
    return record


def run_batch(jobs: Sequence[Job], config: Config, client: Client, *, backend: str = "auto", force: bool = False,
              report_path: str | Path | None = None, meta: dict[str, Any] | None = None, retries: int = 0,
              history: Sequence[dict[str, Any]] = ()) -> BatchReport:
    """Run every job on the cluster; isolate failures; write ``report_path`` as results arrive.

    Largest experiments start first. A failure that is not bad input (a lost worker, out of
    memory) is tried again up to ``retries`` times. A ``KeyboardInterrupt`` (or ``BatchStopped``
    from a signal) cancels what is left; those experiments are reported as ``stopped``.
    ``history``: the previous runs the report carries on (``summary.prepare_report``).
    """
    log = get_logger()
    started = time.perf_counter()
    resources = build_resources(client, backend)
    n_workers = max(1, len(client.scheduler_info(n_workers=-1)["workers"]))
    max_streaming = config.cluster.max_streaming or n_workers
    order = sorted(jobs, key=lambda j: (-j.bytes, j.name))
    streamed = deque(j for j in order if j.streamed and not j.problem)
    log.info("batch: %d experiments (%d whole, %d streamed, at most %d streamed at once) on %d workers%s",
             len(jobs), len(jobs) - len(streamed), len(streamed), max_streaming, n_workers,
             ", one build per GPU" if resources else "")
    priority = {job.name: len(order) - rank for rank, job in enumerate(order)}
    running: dict[str, tuple[Job, Any]] = {}
    attempts: dict[str, int] = {}

    def submit(job: Job) -> Any:
        attempts[job.name] = attempts.get(job.name, 0) + 1
        key = f"build-{printable(job.name)}-{uuid.uuid4().hex[:8]}"  # msgpack refuses undecodable names
        future = client.submit(run_job, job, config, backend, force, key=key, pure=False, resources=resources,
                               priority=priority[job.name])
        running[future.key] = (job, future)
        return future

    records: dict[str, BatchRecord] = {}
    report = BatchReport([], 0.0, None, dict(meta or {}), list(history))
    last_write = time.perf_counter()
    for job in order:  # planned with a problem: nothing to run
        if job.problem:
            records[job.name] = BatchRecord(printable(job.name), "failed", job.mode, seconds=0.0,
                                            error=f"SourceError: {job.problem}", retryable=False)
            log.error("%s", progress_line(list(records.values()), len(jobs), time.perf_counter() - started))
    try:
        initial = [submit(j) for j in order if not j.streamed and not j.problem]
        initial += [submit(streamed.popleft()) for _ in range(min(max_streaming, len(streamed)))]
        finished = as_completed(initial)
        for future in finished:
            job, _ = running.pop(future.key)
            try:
                record = future.result()
            except Exception as exc:  # noqa: BLE001 - KilledWorker, CancelledError, ...: this job failed
                record = lost_record(job.name, job.mode, exc)
            record.attempts = attempts[job.name]
            if record.status == "failed" and record.retryable and attempts[job.name] <= retries:
                log.warning("%s: %s; trying again (%d of %d)", job.name, record.error, attempts[job.name],
                            retries)
                finished.add(submit(job))
                continue
            records[job.name] = record
            log.log(logging.ERROR if record.status == "failed" else logging.INFO, "%s",
                    progress_line(list(records.values()), len(jobs), time.perf_counter() - started))
            if job.streamed and streamed:
                finished.add(submit(streamed.popleft()))
            if report_path is not None and time.perf_counter() - last_write > REPORT_EVERY_S:
                _fill(report, jobs, records, started, missing="pending")
                write_report(Path(report_path), report, finished=False)
                last_write = time.perf_counter()
    except KeyboardInterrupt as exc:
        report.stopped = f"{type(exc).__name__} {exc}".strip()
        for job, future in list(running.values()):  # finished, but not collected yet
            if future.status == "finished":
                records[job.name] = future.result()
                running.pop(future.key)
        log.warning("batch: stopping (%s): cancelling %d running builds", report.stopped, len(running))
        try:
            client.cancel([future for _, future in running.values()])
        except Exception as cancel_error:  # noqa: BLE001 - the cluster may be going away already
            log.warning("batch: could not cancel running builds: %s", cancel_error)
    _fill(report, jobs, records, started)
    if report_path is not None:
        write_report(Path(report_path), report)
    log.info("batch: %s", report.headline())
    return report


def _fill(report: BatchReport, jobs: Sequence[Job], records: dict[str, BatchRecord], started: float,
          missing: str = "stopped") -> None:
    report.records = [records.get(j.name) or BatchRecord(printable(j.name), missing, j.mode)
                      for j in sorted(jobs, key=lambda j: j.name)]
    report.seconds = time.perf_counter() - started


@contextmanager
def stop_on_signals(signals: Sequence[int] = (signal.SIGTERM, signal.SIGUSR1)) -> Iterator[None]:
    """Turn the first SIGTERM/SIGUSR1 (SLURM's ``--signal`` before walltime) into ``BatchStopped``."""
    def handler(signum: int, frame: Any) -> None:
        for sig in signals:  # SLURM may send TERM to every process as well: stop once, then report
            signal.signal(sig, signal.SIG_IGN)
        raise BatchStopped(signal.Signals(signum).name)

    if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
