"""The Dask client ``batch`` runs on: local processes, local GPUs, an existing scheduler, or SLURM.

``--cluster`` takes ``local`` (an embedded ``distributed.LocalCluster``, the default), ``cuda``
(``dask_cuda.LocalCUDACluster``: one worker per GPU), ``slurm`` (``dask_jobqueue.SLURMCluster``
with cores/memory/walltime/GPUs from the config's ``cluster`` section), a scheduler address
(``tcp://host:8786``) or a scheduler file written by ``dask scheduler --scheduler-file``.
Workers that own a GPU advertise the Dask resource ``GPU=1``; builds then ask for it, so one
GPU runs one build at a time.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distributed import Client, LocalCluster, performance_report
from distributed.diagnostics.plugin import WorkerPlugin
from rvc_index.batch.quiet import quiet_dask_noise
from rvc_index.config.schema import ClusterConfig
from rvc_index.errors import RvcIndexError
from rvc_index.runtime.progress import LOGGER_NAME, get_logger

GPU = "GPU"
LOCAL_KINDS = ("local", "cuda", "slurm")
ADDRESS = re.compile(r"^([a-z0-9+]+://)?[\w.\-\[\]:]+:\d+$")


class ClusterError(RvcIndexError, RuntimeError):
    """The requested cluster cannot be started or reached; the message says why and what to do."""


@dataclass
class ClusterInfo:
    """A connected client and what it is connected to."""

    client: Client
    kind: str  # local | cuda | slurm | address | scheduler-file
    description: str
    dashboard: str | None


def cluster_kind(spec: str) -> str:
    """Classify a ``--cluster`` value: local | cuda | slurm | scheduler-file | address."""
    if spec in LOCAL_KINDS:
        return spec
    if spec.endswith(".json") or Path(spec).is_file():
        return "scheduler-file"
    if ADDRESS.match(spec):
        return "address"
    raise ClusterError(f"--cluster {spec!r}: expected local, cuda, slurm, a scheduler address "
                       "(tcp://host:8786) or a scheduler file (.json)")


def default_local_workers(job_threads: int = 1) -> int:
    """Worker processes for a local cluster: the usable cores divided by the threads one build uses."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, job_threads))


def _import_extra(module: str, extra: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ClusterError(f"--cluster {what} needs {module.replace('_', '-')}: "
                           f"pip install -e '.[{extra}]' ({exc})") from None


def slurm_walltime(minutes: int) -> str:
    """SLURM's ``HH:MM:00`` for a number of minutes (hours may exceed 24)."""
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


def slurm_cluster_kwargs(config: ClusterConfig) -> dict[str, Any]:
    """``SLURMCluster`` arguments: one worker process per job, ``GPU=1`` on GPU jobs."""
    directives = []
    worker_args = []
    if config.gpus:
        directives.append(f"--gres=gpu:{config.gpus}")
        worker_args += ["--resources", f"{GPU}={config.gpus}"]
    kwargs: dict[str, Any] = {
        "cores": config.cores,
        "processes": 1,
        "memory": config.memory,
        "walltime": slurm_walltime(config.walltime_minutes),
        "job_name": "rvc-index-worker",
        "log_directory": config.log_directory,
        "job_extra_directives": directives,
        "worker_extra_args": worker_args,
    }
    if config.queue:
        kwargs["queue"] = config.queue
    if config.account:
        kwargs["account"] = config.account
    return kwargs


def dashboard_of(client: Client) -> str | None:
    """The dashboard address, with a note when bokeh (needed for its plots) is missing."""
    try:
        link = client.dashboard_link
    except (KeyError, AttributeError):
        return None
    if not link:
        return None
    if importlib.util.find_spec("bokeh") is None:
        return f"{link} (plots need bokeh: pip install bokeh)"
    return link


def check_scheduler_file(path: str | Path) -> None:
    """Refuse a scheduler file that ``Client`` would fail on with a bare AssertionError or KeyError.

    A file that does not exist yet is left to ``Client``, which waits for the scheduler to write it.
    """
    path = Path(path)
    if not path.exists():
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ClusterError(f"--cluster {path}: cannot read the scheduler file: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ClusterError(f"--cluster {path}: not a scheduler file (not JSON: {exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("address"), str) or not data["address"]:
        raise ClusterError(f"--cluster {path}: the scheduler file has no 'address' (it is written by "
                           "`dask scheduler --scheduler-file FILE` once the scheduler is up)")


def _dashboard_option(config: ClusterConfig) -> str | None:
    return config.dashboard_address or None


@contextmanager
def open_cluster(spec: str = "local", config: ClusterConfig | None = None, workers: int | None = None,
                 wait_timeout: float = 120.0) -> Iterator[ClusterInfo]:
    """Start or connect to the cluster ``spec`` and yield a client; what was started is closed after.

    ``workers``: worker processes (local), GPUs to use (cuda), SLURM jobs (slurm), or workers to
    wait for (address, scheduler file).
    """
    config = config or ClusterConfig()
    kind = cluster_kind(spec)
    log = get_logger()
    if workers is not None and workers < 1:
        raise ClusterError(f"--workers {workers}: must be at least 1 (or left out for the default)")
    if kind == "scheduler-file":
        check_scheduler_file(spec)
    with ExitStack() as stack:
        if kind == "local":
            n_workers = workers or default_local_workers(config.job_threads)
            cluster = stack.enter_context(LocalCluster(
                n_workers=n_workers, threads_per_worker=1, processes=True,
                dashboard_address=_dashboard_option(config)))
            client = stack.enter_context(Client(cluster))
            description = f"local: {n_workers} worker processes x 1 thread"
        elif kind == "cuda":
            dask_cuda = _import_extra("dask_cuda", "cuda-cluster", "cuda")
            # One worker per GPU (CUDA_VISIBLE_DEVICES set per worker), one thread: a build holds
            # GPU=1; a streamed build secedes while it waits, so its chunk loads can use the thread.
            cluster = stack.enter_context(dask_cuda.LocalCUDACluster(
                n_workers=workers, threads_per_worker=1, resources={GPU: 1},
                dashboard_address=_dashboard_option(config)))
            client = stack.enter_context(Client(cluster))
            description = f"cuda: {len(cluster.workers)} GPU workers"
        elif kind == "slurm":
            dask_jobqueue = _import_extra("dask_jobqueue", "hpc", "slurm")
            if shutil.which("sbatch") is None:
                raise ClusterError("--cluster slurm: sbatch not found; run batch where SLURM jobs can be "
                                   "submitted (a login node), or use jobs/dask_batch.sbatch")
            kwargs = slurm_cluster_kwargs(config)
            cluster = stack.enter_context(dask_jobqueue.SLURMCluster(**kwargs))
            jobs = workers or config.jobs
            cluster.scale(jobs=jobs)
            client = stack.enter_context(Client(cluster))
            description = (f"slurm: {jobs} jobs x ({config.cores} cores, {config.memory}, {config.gpus} GPU, "
                           f"{kwargs['walltime']})")
            log.info("submitted %d SLURM worker jobs (logs in %s/); waiting for the first to start", jobs,
                     config.log_directory)
            client.wait_for_workers(1)
        else:
            try:
                client = stack.enter_context(
                    Client(scheduler_file=spec, timeout=wait_timeout) if kind == "scheduler-file"
                    else Client(spec, timeout=wait_timeout))
            except (OSError, ValueError) as exc:
                raise ClusterError(f"--cluster {spec}: cannot reach the scheduler: {exc}") from exc
            wanted = workers or 1
            log.info("connected to %s; waiting for %d worker(s)", client.scheduler.address, wanted)
            try:
                client.wait_for_workers(wanted, timeout=wait_timeout)
            except TimeoutError as exc:
                raise ClusterError(f"--cluster {spec}: fewer than {wanted} worker(s) joined within "
                                   f"{wait_timeout:.0f} s") from exc
            description = f"{kind}: {client.scheduler.address}"
        dashboard = None if kind in ("local", "cuda") and not config.dashboard_address else dashboard_of(client)
        yield ClusterInfo(client, kind, description, dashboard)


def count_gpu_workers(client: Client) -> int:
    """Workers advertising at least one ``GPU`` resource."""
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    return sum(1 for info in workers if info.get("resources", {}).get(GPU, 0) >= 1)


def build_resources(client: Client, backend: str) -> dict[str, float] | None:
    """``{"GPU": 1}`` when builds must hold a GPU, None when they run on any worker.

    ``backend='gpu'`` on a cluster without GPU workers is an error (the tasks would never start).
    """
    if backend == "cpu":
        return None
    gpus = count_gpu_workers(client)
    if gpus:
        return {GPU: 1}
    if backend == "gpu":
        raise ClusterError("--backend gpu: no worker advertises a GPU resource; use --cluster cuda, "
                           "set cluster.gpus=1 for slurm, or start workers with --resources GPU=1")
    return None


class WorkerLogLevel(WorkerPlugin):
    """On every worker (new ones too): the package logger at ``level`` (its lines reach each
    experiment's log file and can be forwarded), and Dask's routine noise filtered."""

    def __init__(self, level: int, verbose: bool = False):
        self.level = level
        self.verbose = verbose

    def setup(self, worker: Any) -> None:
        logger = logging.getLogger(LOGGER_NAME)
        logger.setLevel(self.level)
        logger.propagate = False  # forwarded to the client, not printed twice on the worker
        quiet_dask_noise(self.verbose)


def forward_worker_logs(client: Client, level: int, forward: int | None = None) -> None:
    """Workers log at ``level``; records at ``forward`` (default ``level``) and up reach the client's
    log, each carrying its worker. ``batch`` forwards the per-stage lines with ``-v`` only."""
    forward = level if forward is None else forward
    client.register_plugin(WorkerLogLevel(level, forward <= logging.DEBUG), name="rvc-index-log-level")
    if forward <= logging.CRITICAL:
        client.forward_logging(LOGGER_NAME, level=forward)


@contextmanager
def performance_report_to(path: str | Path | None) -> Iterator[None]:
    """Dask's HTML performance report of the ``with`` block, written to ``path`` (needs bokeh)."""
    if path is None:
        yield
        return
    if importlib.util.find_spec("bokeh") is None:
        raise ClusterError(f"--performance-report {path}: needs bokeh (pip install bokeh)")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with performance_report(filename=str(path)):
        yield
