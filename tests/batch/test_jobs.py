"""jobs/: the SLURM scripts, checked as far as a machine without SLURM allows.

Syntax (``bash -n``), the ``#SBATCH`` header SLURM reads, and each script run here as SLURM would
run it (its environment variables set), calling the real ``rvc-index batch``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from rvc_index.tools.synth import SpeakerSpec, write_speaker

JOBS = Path(__file__).resolve().parents[2] / "jobs"
SCRIPTS = sorted(p for p in JOBS.rglob("*") if p.is_file())
FAST = ["--set", "evaluate.recall_queries=100", "--set", "cluster.dashboard_address="]
NAMES = [f"spk{i}" for i in range(6)]


def sbatch_directives(path: Path) -> list[str]:
    """The #SBATCH options SLURM reads: those before the first command line."""
    directives = []
    for line in path.read_text().splitlines()[1:]:
        if line.startswith("#SBATCH"):
            directives.append(line.removeprefix("#SBATCH").strip())
        elif line.strip() and not line.startswith("#"):
            break
    return directives


def slurm_env(tmp_path: Path, **variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(RVC_INDEX_BIN=str(Path(sys.executable).with_name("rvc-index")),
               RVC_INDEX_DASK_DIR=str(tmp_path / "dask"),
               SLURM_JOB_NAME="rvc-index", SLURM_SUBMIT_DIR=str(tmp_path), SLURM_CPUS_PER_TASK="1")
    env.update(variables)
    return env


def array_task_env(tmp_path: Path, task: int, count: int, cpus: int = 1) -> dict[str, str]:
    return slurm_env(tmp_path, SLURM_ARRAY_JOB_ID="4242", SLURM_ARRAY_TASK_ID=str(task), SLURM_JOB_ID=str(5000 + task),
                     SLURM_ARRAY_TASK_MIN="0", SLURM_ARRAY_TASK_MAX=str(count - 1), SLURM_ARRAY_TASK_COUNT=str(count),
                     SLURM_ARRAY_TASK_STEP="1", SLURM_CPUS_PER_TASK=str(cpus))


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cluster") / "logs"
    for name in NAMES:
        write_speaker(root, SpeakerSpec(name, 2000, 256))
    return root


def statuses(path: Path) -> dict[str, str]:
    return {r["experiment"]: r["status"] for r in json.loads(path.read_text())["experiments"]}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse_and_are_executable(script):
    assert script.read_text().startswith("#!/usr/bin/env bash\n")
    assert os.access(script, os.X_OK)
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_sbatch_headers():
    array = sbatch_directives(JOBS / "index_array.sbatch")
    assert any(re.fullmatch(r"--array=0-\d+%\d+", d) for d in array), array  # a throttle: %N running at once
    assert any(re.fullmatch(r"--output=\S*%A_%a\S*", d) for d in array), array
    dask_job = sbatch_directives(JOBS / "dask_batch.sbatch")
    assert any(re.fullmatch(r"--output=\S*%j\S*", d) for d in dask_job), dask_job
    assert any(d.startswith("--nodes=") for d in dask_job)
    for directives in (array, dask_job):
        assert any(re.fullmatch(r"--signal=B:USR1@\d+", d) for d in directives), directives  # stop before walltime
        assert "--requeue" in directives
        assert any(re.fullmatch(r"--time=\d+:\d\d:\d\d", d) for d in directives)
        assert any(d.startswith("--cpus-per-task=") for d in directives)


def test_gpu_array_differs_from_the_cpu_array_only_in_its_header():
    def body(path: Path) -> str:
        return path.read_text().split("set -euo pipefail\n", 1)[1]

    assert body(JOBS / "index_array_gpu.sbatch") == body(JOBS / "index_array.sbatch")
    assert "--gres=gpu:1" in sbatch_directives(JOBS / "index_array_gpu.sbatch")
    summary = sbatch_directives(JOBS / "summary.sbatch")
    assert any(d.startswith("--time=") for d in summary) and "--cpus-per-task=1" in summary


def test_submit_passes_sbatch_options_and_chains_the_summary_afterany(logs, tmp_path):
    proc = subprocess.run([str(JOBS / "submit.sh"), str(logs), "rvc-classic", "--per-task", "4", "--throttle", "3",
                           "--partition", "gpu", "--account=lab", "--gres", "gpu:1", "--time", "2:00:00", "-q", "high",
                           "--sbatch-nice=5", "--gpu", "--dry-run", "--", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, env=slurm_env(tmp_path), timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "6 experiments: 6 to build, 0 up to date, 0 would fail"
    assert lines[1] == "6 experiments, 2 array tasks"
    assert lines[2].startswith("sbatch --parsable --array=0-1%3 --partition=gpu --account=lab --qos=high --gres=gpu:1 "
                               "--time=2:00:00 --nice=5 ") and "index_array_gpu.sbatch" in lines[2]
    assert lines[2].endswith(f"--config rvc-classic --out {tmp_path / 'out'} ")
    # the summary: afterany, placement options only (partition, account, qos), the report folder and the array
    assert lines[3] == (f"sbatch --parsable --dependency=afterany:ARRAY_JOB_ID --partition=gpu --account=lab "
                        f"--qos=high {JOBS / 'summary.sbatch'} {tmp_path / 'out'} ARRAY_JOB_ID ")
    wrong = subprocess.run([str(JOBS / "submit.sh"), str(logs), "--frobnicate", "--dry-run"], capture_output=True,
                           text=True, env=slurm_env(tmp_path), timeout=60)
    assert wrong.returncode == 2 and "unknown option --frobnicate" in wrong.stderr
    missing = subprocess.run([str(JOBS / "submit.sh"), str(logs), "--dry-run"], capture_output=True, text=True,
                             env={**slurm_env(tmp_path), "RVC_INDEX_BIN": "no-such-rvc-index"}, timeout=60)
    assert missing.returncode == 2 and "'no-such-rvc-index' not found: set RVC_INDEX_BIN" in missing.stderr


def test_array_tasks_build_their_shards_stop_cleanly_and_the_dask_job_sweeps(logs, tmp_path):
    array = [str(JOBS / "index_array.sbatch"), str(logs), "rvc-classic", *FAST]
    first = subprocess.run(array, capture_output=True, text=True, env=array_task_env(tmp_path, 0, 2, cpus=2),
                           cwd=tmp_path, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "[job 4242_0] INFO" in first.stderr  # log lines carry the array task
    shard0 = statuses(logs / "batch_report.shard-0-of-2.json")
    assert len(shard0) == 3 and set(shard0.values()) == {"built"}

    # task 1 gets USR1 (sbatch --signal) after its first experiment: it stops cleanly and asks for a requeue
    log = open(tmp_path / "task1.log", "w")  # noqa: SIM115 - closed below
    task = subprocess.Popen(array, stdout=log, stderr=subprocess.STDOUT, env=array_task_env(tmp_path, 1, 2),
                            cwd=tmp_path, start_new_session=True)
    others = [n for n in NAMES if n not in shard0]
    deadline = time.monotonic() + 120
    while not any((logs / n / f"rvc-index-{n}-rvc-classic.report.json").exists() for n in others):
        assert task.poll() is None and time.monotonic() < deadline, (tmp_path / "task1.log").read_text()[-3000:]
        time.sleep(0.01)
    os.kill(task.pid, signal.SIGUSR1)
    assert task.wait(timeout=120) == 75  # EX_TEMPFAIL: stopped, rerun to resume
    log.close()
    output = (tmp_path / "task1.log").read_text()
    assert "USR1: stopping the batch cleanly" in output and "not requeued" in output
    stopped = statuses(logs / "batch_report.shard-1-of-2.json")
    assert sorted(stopped) == sorted(others) and "stopped" in stopped.values()
    finished = {n for n in others if (logs / n / f"rvc-index-{n}-rvc-classic.report.json").exists()}
    assert {n for n, status in stopped.items() if status == "built"} <= finished  # built means done
    assert 1 <= len(finished) < len(others)  # stopped partway

    again = subprocess.run(array, capture_output=True, text=True, env=array_task_env(tmp_path, 1, 2),
                           cwd=tmp_path, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert statuses(logs / "batch_report.shard-1-of-2.json") == {
        n: "skipped" if n in finished else "built" for n in others}

    # the Dask job: scheduler + workers from a scheduler file (no srun here: workers start locally)
    sweep = subprocess.run([str(JOBS / "dask_batch.sbatch"), str(logs), "rvc-classic", *FAST], capture_output=True,
                           text=True, env=slurm_env(tmp_path, SLURM_JOB_ID="6000"), cwd=tmp_path, timeout=300)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    report = json.loads((logs / "batch_report.json").read_text())
    assert report["cluster"].startswith("scheduler-file: tcp://")
    assert statuses(logs / "batch_report.json") == dict.fromkeys(NAMES, "skipped")
    scheduler_file = str(tmp_path / "dask" / "scheduler.json")
    time.sleep(0.5)
    leftovers = [p for p in psutil.process_iter(["cmdline", "status"])
                 if scheduler_file in " ".join(p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE]
    assert not leftovers, "the Dask job left its scheduler or workers running"
