"""cluster: choosing and reaching a cluster, SLURM job settings, GPU=1 resources, forwarded logs."""

from __future__ import annotations

import importlib.util
import logging
import shutil
import time
from pathlib import Path

import pytest
from distributed import Client, LocalCluster
from rvc_index.batch.clusters import (
    ClusterError,
    build_resources,
    cluster_kind,
    count_gpu_workers,
    forward_worker_logs,
    open_cluster,
    performance_report_to,
    slurm_cluster_kwargs,
    slurm_walltime,
)
from rvc_index.batch.jobs import plan_jobs, run_batch
from rvc_index.config.loading import config_from_dict, load_config
from rvc_index.config.schema import ClusterConfig
from rvc_index.runtime.progress import get_logger
from rvc_index.tools.synth import SpeakerSpec, write_speaker

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
HAS_JOBQUEUE = importlib.util.find_spec("dask_jobqueue") is not None
HAS_DASK_CUDA = importlib.util.find_spec("dask_cuda") is not None
HAS_BOKEH = importlib.util.find_spec("bokeh") is not None


@pytest.fixture(scope="module")
def speakers(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("logs")
    for name in ("gpu0", "gpu1", "gpu2"):
        write_speaker(root, SpeakerSpec(name, 2000, 256))
    return root


@pytest.fixture(scope="module")
def gpu_client():
    """A real LocalCluster whose single worker (two threads) advertises one GPU, as dask-cuda's do."""
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None,
                      resources={"GPU": 1}) as cluster, Client(cluster) as client:
        yield client


def test_cluster_kind(tmp_path):
    assert [cluster_kind(k) for k in ("local", "cuda", "slurm")] == ["local", "cuda", "slurm"]
    assert cluster_kind("tcp://10.0.0.5:8786") == cluster_kind("node12:8786") == "address"
    assert cluster_kind(str(tmp_path / "scheduler.json")) == "scheduler-file"
    existing = tmp_path / "sched"
    existing.write_text("{}")
    assert cluster_kind(str(existing)) == "scheduler-file"
    with pytest.raises(ClusterError, match="expected local, cuda, slurm"):
        cluster_kind("kubernetes")


def test_slurm_settings_come_from_the_config():
    config = config_from_dict({"cluster": {"cores": 8, "memory": "32GiB", "walltime_minutes": 1530, "gpus": 1,
                                           "queue": "gpu", "account": "lab"}})
    kwargs = slurm_cluster_kwargs(config.cluster)
    assert slurm_walltime(90) == "01:30:00" and kwargs["walltime"] == "25:30:00"
    assert (kwargs["cores"], kwargs["memory"], kwargs["processes"]) == (8, "32GiB", 1)
    assert (kwargs["queue"], kwargs["account"]) == ("gpu", "lab")
    assert kwargs["job_extra_directives"] == ["--gres=gpu:1"]
    assert kwargs["worker_extra_args"] == ["--resources", "GPU=1"]
    cpu = slurm_cluster_kwargs(ClusterConfig())
    assert cpu["job_extra_directives"] == [] and "queue" not in cpu and "account" not in cpu


@pytest.mark.skipif(not HAS_JOBQUEUE, reason="dask-jobqueue (extra hpc) not installed")
def test_slurm_job_script_has_the_configured_resources():
    import dask_jobqueue

    config = config_from_dict({"cluster": {"cores": 8, "memory": "32GiB", "walltime_minutes": 90, "gpus": 1}})
    with dask_jobqueue.SLURMCluster(**slurm_cluster_kwargs(config.cluster)) as cluster:
        script = cluster.job_script()
    for line in ("#SBATCH --cpus-per-task=8", "#SBATCH --mem=32G", "#SBATCH -t 01:30:00", "#SBATCH --gres=gpu:1",
                 "#SBATCH -J rvc-index-worker", "--resources GPU=1"):
        assert line in script, script


@pytest.mark.skipif(HAS_JOBQUEUE, reason="dask-jobqueue is installed")
def test_slurm_without_the_hpc_extra_is_a_clear_error():
    with pytest.raises(ClusterError, match=r"--cluster slurm needs dask-jobqueue: pip install -e '\.\[hpc\]'"):
        with open_cluster("slurm"):
            pass


@pytest.mark.skipif(not HAS_JOBQUEUE or shutil.which("sbatch") is not None, reason="needs dask-jobqueue, no sbatch")
def test_slurm_without_sbatch_is_a_clear_error():
    with pytest.raises(ClusterError, match="--cluster slurm: sbatch not found"):
        with open_cluster("slurm"):
            pass


@pytest.mark.skipif(HAS_DASK_CUDA, reason="dask-cuda is installed")
def test_cuda_without_the_gpu_extra_is_a_clear_error():
    with pytest.raises(ClusterError, match=r"--cluster cuda needs dask-cuda: pip install -e '\.\[cuda-cluster\]'"):
        with open_cluster("cuda"):
            pass


def test_unreachable_scheduler_is_a_clear_error():
    started = time.monotonic()
    with pytest.raises(ClusterError, match="cannot reach the scheduler"):
        with open_cluster("tcp://127.0.0.1:9", wait_timeout=2):
            pass
    assert time.monotonic() - started < 30


def test_gpu_backend_needs_gpu_workers(client, gpu_client):
    assert count_gpu_workers(client) == 0 and build_resources(client, "auto") is None
    with pytest.raises(ClusterError, match="--backend gpu: no worker advertises a GPU"):
        build_resources(client, "gpu")
    assert count_gpu_workers(gpu_client) == 1
    assert build_resources(gpu_client, "auto") == {"GPU": 1}
    assert build_resources(gpu_client, "cpu") is None


def test_one_build_per_gpu_at_a_time_and_worker_logs_reach_the_client(speakers, gpu_client):
    """The worker has two threads but one GPU: builds holding GPU=1 never overlap."""
    config = load_config(CONFIGS / "rvc-classic.yaml", ["evaluate.recall_queries=100"])
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    logger = get_logger()
    keep, level = Keep(), logger.level
    logger.addHandler(keep)
    logger.setLevel(logging.INFO)
    try:
        forward_worker_logs(gpu_client, logging.INFO)
        report = run_batch(plan_jobs(speakers, config), config, gpu_client, force=True)
    finally:
        logger.removeHandler(keep)
        logger.setLevel(level)
    spans = sorted((r.started_at, r.finished_at) for r in report.records)
    assert [r.status for r in report.records] == ["built"] * 3
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:])), spans
    worker = next(iter(gpu_client.scheduler_info()["workers"]))
    forwarded = [r.getMessage() for r in seen if getattr(r, "worker", None) == worker]
    for name in ("gpu0", "gpu1", "gpu2"):
        assert f"{name}: [add] start" in forwarded and f"{name}: [write] done" in " ".join(forwarded)


@pytest.mark.skipif(not HAS_BOKEH, reason="bokeh not installed")
def test_performance_report_is_written(tmp_path, speakers, gpu_client):
    config = load_config(CONFIGS / "rvc-classic.yaml", ["evaluate.recall_queries=100"])
    path = tmp_path / "reports" / "batch.html"
    with performance_report_to(path):
        run_batch(plan_jobs(speakers, config, only=["gpu0"]), config, gpu_client, force=True)
    assert "Dask Performance Report" in path.read_text()


@pytest.mark.skipif(HAS_BOKEH, reason="bokeh is installed")
def test_performance_report_without_bokeh_is_a_clear_error(tmp_path):
    with pytest.raises(ClusterError, match="needs bokeh"):
        with performance_report_to(tmp_path / "r.html"):
            pass


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_DASK_CUDA, reason="dask-cuda (extra cuda-cluster) not installed")
def test_cuda_cluster_builds_one_index_per_gpu(speakers, tmp_path):
    config = load_config(CONFIGS / "tips.yaml", ["evaluate.recall_queries=100", "cluster.dashboard_address="])
    with open_cluster("cuda", config.cluster) as cluster:
        assert cluster.kind == "cuda" and count_gpu_workers(cluster.client) >= 1
        report = run_batch(plan_jobs(speakers, config, tmp_path / "out"), config, cluster.client, backend="gpu")
    assert [r.status for r in report.records] == ["built"] * 3
