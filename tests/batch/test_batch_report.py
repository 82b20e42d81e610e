"""batch's reporting and planning: typed records, history, narrow table, status merge, dry-run, odd inputs."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from rvc_index.batch.jobs import Job, plan_jobs, run_batch
from rvc_index.batch.quiet import quiet_dask_noise
from rvc_index.batch.status import merge_shards
from rvc_index.batch.summary import BatchRecord, BatchReport, prepare_report, short_error, write_report
from rvc_index.cli import main
from rvc_index.config.loading import load_config
from rvc_index.job.runner import build_experiment
from rvc_index.tools.synth import SpeakerSpec, write_speaker

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
FAST = ["--set", "evaluate.recall_queries=100", "--set", "cluster.dashboard_address="]
LONG = "/very/long/path/to/the/lab/share/logs/a-speaker-with-a-long-name/3_feature256"


def fast_config():
    return load_config(CONFIGS / "rvc-classic.yaml", ["evaluate.recall_queries=100"])


@pytest.fixture(scope="module")
def bank(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bank")
    for name in ("spk0", "spk1", "spk2"):
        write_speaker(root, SpeakerSpec(name, 2000, 256))
    return root


def copy(bank: Path, root: Path, *names: str) -> Path:
    for name in names:
        shutil.copytree(bank / name, root / name)
    return root


def test_record_json_keeps_the_field_names_and_the_table_is_narrow():
    record = BatchRecord("spk0", "built", "whole", "tcp://w:1", rows=3000, recall_at_k=0.97, seconds=2.5,
                         index=f"{LONG}/added_IVF219_Flat_rvc-classic_nprobe_2_spk0_v1.index")
    data = record.to_json()
    assert set(data) == {"experiment", "status", "mode", "worker", "rows", "recall_at_k", "seconds", "index"}
    assert BatchRecord.from_json({**data, "unknown": 1}) == record
    error = (f"SourceError: 2 bad feature file(s) in {LONG}:\n  {LONG}/00017.npy: truncated: 100 bytes on disk, "
             f"header promises 262,272\n  {LONG}/00018.npy: not a valid .npy file")
    failed = BatchRecord("a-speaker-with-a-long-name-that-goes-on", "failed", "whole", error=error)
    table = BatchReport([record, failed], 3.0).table(width=120)
    assert all(len(line) <= 120 for line in table.splitlines()), table
    assert "…/3_feature256/00017.npy: truncated: 100 bytes" in table
    assert short_error(error, 200).endswith("header promises 262,272 (+1 more)")
    assert "added_IVF219_Flat_rvc-classic_nprobe_2_spk0_v1.index" in table
    assert short_error("KeyError: x", 80) == "KeyError: x" and len(short_error("E: " + "x" * 300, 50)) == 50


def test_report_keeps_the_history_of_previous_runs(tmp_path):
    path = tmp_path / "batch_report.json"
    for run in range(3):
        report = BatchReport([BatchRecord("spk0", "built" if run else "failed", error=None if run else "E: bad")],
                             1.0, meta={"started": f"run{run}"}, history=prepare_report(path))
        write_report(path, report)
    data = json.loads(path.read_text())
    assert data["started"] == "run2" and [h["started"] for h in data["history"]] == ["run0", "run1"]
    assert data["history"][0]["experiments"] == [{"experiment": "spk0", "status": "failed", "error": "E: bad"}]
    assert data["history"][0]["counts"]["failed"] == 1 and "history" not in data["history"][1]


def shard_report(folder: Path, index: int, count: int, job: str, records: list[BatchRecord], finished: bool,
                 root: Path) -> None:
    meta = {"root": str(root), "out": str(folder), "config": "rvc-classic", "only": [], "slurm_job": job,
            "config_file": str(CONFIGS / "rvc-classic.yaml"), "overrides": ["evaluate.recall_queries=100"],
            "shard": "slurm", "started": f"2026-01-01T00:00:0{index}"}
    write_report(folder / f"batch_report.shard-{index}-of-{count}.json",
                 BatchReport(records, 2.0, meta=meta), finished=finished)


def test_status_merges_the_shards_of_one_array_job(tmp_path, bank, capsys):
    root = copy(bank, tmp_path / "logs", "spk0", "spk1", "spk2")
    out = tmp_path / "out"
    out.mkdir()
    shards = {k: [j.name for j in plan_jobs(root, fast_config(), out, shard=(k, 3))] for k in range(3)}
    shard_report(out, 0, 2, "77", [BatchRecord("old", "built")], True, root)  # an older array: other N, job
    shard_report(out, 0, 3, "88", [BatchRecord(shards[0][0], "built", rows=2000)], True, root)
    shard_report(out, 1, 3, "88", [BatchRecord(shards[1][0], "pending")], False, root)
    report, notes = merge_shards(out)
    assert {r.experiment: r.status for r in report.records} == {
        shards[0][0]: "built", shards[1][0]: "pending", shards[2][0]: "pending"}  # shard 2 planned again
    assert notes == ["shards without a report: 2 of 3", "shards still running: 1 of 3"]
    assert report.exit_code == 0 and report.meta["slurm_job"] == "88"
    assert main(["status", str(out), "--job", "77"]) == 0 and "old" in capsys.readouterr().out

    assert main(["status", str(out), "--final"]) == 1  # the array ended: what never finished failed
    printed = capsys.readouterr().out
    assert "lost: array task 1 ended before building it" in printed
    data = json.loads((out / "batch_report.json").read_text())
    assert data["counts"] == {"built": 1, "skipped": 0, "failed": 2, "stopped": 0} and data["shards"] == 3
    with pytest.raises(SystemExit):
        main(["status"])
    assert main(["status", str(tmp_path / "logs")]) == 1
    assert "no shard reports" in capsys.readouterr().err


BAD_SHARDS = {  # how a shard report can be broken: (change its JSON text, the note's field and problem)
    "truncated": (lambda text: text[: len(text) // 2], "not a JSON report (truncated?)"),
    "rows": (lambda text: text.replace('"rows": 2000', '"rows": "many"'),
             'experiments[0].rows: expected a whole number or null, got "many"'),
    "experiments": (lambda text: json.dumps({**json.loads(text), "experiments": "spk1"}),
                    'experiments: expected a list or null, got "spk1"'),
    "record": (lambda text: json.dumps({**json.loads(text), "experiments": [7]}),
               "experiments[0]: expected an object, got 7"),
    "seconds": (lambda text: json.dumps({**json.loads(text), "seconds": [1]}),
                "seconds: expected a number or null, got [1]"),
}


@pytest.mark.parametrize("broken", sorted(BAD_SHARDS))
def test_status_names_a_broken_shard_report_and_merges_the_others(broken, tmp_path, bank, capsys):
    """Issue 24 H: a wrong-typed field was a traceback, a truncated report silently counted as missing."""
    root = copy(bank, tmp_path / "logs", "spk0", "spk1", "spk2")
    out = tmp_path / "out"
    out.mkdir()
    shards = {k: [j.name for j in plan_jobs(root, fast_config(), out, shard=(k, 3))] for k in range(3)}
    for k in range(3):
        shard_report(out, k, 3, "88", [BatchRecord(shards[k][0], "built", rows=2000)], True, root)
    path = out / "batch_report.shard-1-of-3.json"
    change, problem = BAD_SHARDS[broken]
    path.write_text(change(path.read_text()))
    report, notes = merge_shards(out)
    assert notes[0] == f"{path}: {problem}: counted as not reported"
    assert {r.experiment: r.status for r in report.records} == {
        shards[0][0]: "built", shards[1][0]: "pending", shards[2][0]: "built"}  # planned again, as if lost
    assert main(["status", str(out)]) == 0
    printed = capsys.readouterr()
    assert f"{path.name}: {problem}" in printed.out and "Traceback" not in printed.err
    assert main(["status", str(out), "--final"]) == 1  # the array ended: that shard's experiment failed


def test_a_lost_shard_that_cannot_be_planned_again_still_fails_the_final_report(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    shard_report(out, 0, 2, "99", [BatchRecord("spk0", "built", rows=2000)], True, tmp_path / "gone")  # root deleted
    report, notes = merge_shards(out, final=True)
    assert [(r.experiment, r.status) for r in report.records] == [("<shard 1>", "failed"), ("spk0", "built")]
    assert report.exit_code == 1 and "never reported" in report.records[0].error


def test_dry_run_reads_every_header_and_says_build_skip_or_fail(tmp_path, bank, capsys):
    root = copy(bank, tmp_path / "logs", "spk0", "spk1", "spk2")
    build_experiment(root / "spk1", fast_config())
    (root / "spk2" / "3_feature256" / "00003.npy").write_bytes(b"\x93NUMPY\x01\x00" + b"x" * 10)
    code = main(["-q", "batch", str(root), "--config", "rvc-classic", "--dry-run",
                 "--set", "evaluate.recall_queries=100"])
    out = capsys.readouterr().out.splitlines()
    lines = [line for line in out if not line.startswith(" ")]  # each experiment's line; its plan indented under it
    assert code == 1  # something would fail
    plan = out[1:out.index(lines[1])]  # what spk0's build would do, one decision a line
    assert [line.split(":")[0].strip() for line in plan] == ["source", "compression", "index", "evaluation"]
    assert lines[0].split()[:2] == ["build", "spk0"] and "2,000 x 256" in lines[0] and "whole" in lines[0]
    assert lines[1].split()[:2] == ["skip", "spk1"] and "up to date: added_IVF" in lines[1]
    assert lines[2].split()[:2] == ["fail", "spk2"] and "3_feature256/00003.npy: not a valid .npy" in lines[2]
    assert lines[3] == "3 experiments: 1 to build, 1 up to date, 1 would fail"
    assert not list((root / "spk0").glob("*.index"))  # nothing built
    assert main(["-q", "batch", str(root), "--only", "spk0", "--config", "tips", "--dry-run"]) == 0
    assert "expansion: alpha 3 over 8 neighbours, exact" in capsys.readouterr().out  # what expansion will do


def test_bad_worker_count_and_scheduler_file_are_clear_errors(tmp_path, bank, capsys):
    root = copy(bank, tmp_path / "logs", "spk0")
    assert main(["-q", "batch", str(root), "--config", "rvc-classic", "--workers", "-3"]) == 1
    assert "--workers -3: must be at least 1" in capsys.readouterr().err
    scheduler = tmp_path / "scheduler.json"
    scheduler.write_text(json.dumps({"type": "Scheduler", "id": "x"}))
    assert main(["-q", "batch", str(root), "--config", "rvc-classic", "--cluster", str(scheduler)]) == 1
    assert f"--cluster {scheduler}: the scheduler file has no 'address'" in capsys.readouterr().err
    assert main(["-q", "batch", str(root), "--config", "rvc-classic", "--retries", "-1"]) == 1
    assert "--retries -1: must be 0 or more" in capsys.readouterr().err


def test_terse_output_an_own_log_per_experiment_and_an_undecodable_name(tmp_path, bank, client, capsys):
    root = copy(bank, tmp_path / "logs", "spk0", "spk1")
    odd = os.fsdecode(b"Zo\xeb")  # a Latin-1 folder name on a UTF-8 system
    shutil.copytree(bank / "spk2", root / odd)
    code = main(["batch", str(root), "--config", "rvc-classic", "--cluster", client.scheduler.address, *FAST])
    captured = capsys.readouterr()
    report = json.loads((root / "batch_report.json").read_text())
    assert code == report["exit_code"] == 0 and report["counts"]["built"] == 3  # the odd one builds too
    assert {r["experiment"] for r in report["experiments"]} == {"spk0", "spk1", "Zo\\xeb"}
    assert "Zo\\xeb" in captured.out and len(captured.out.splitlines()) == 1 + 3 + 2  # table, headline, report
    assert "[add] start" not in captured.err and "[1/3]" in captured.err  # per-stage lines only in the files
    log = (root / "spk0" / "rvc-index-spk0-rvc-classic.log").read_text()
    assert "spk0: [add] start" in log and "spk0: [write] done" in log and "spk1:" not in log
    records = {r["experiment"]: r for r in report["experiments"]}
    assert records["spk0"]["log"].endswith("spk0/rvc-index-spk0-rvc-classic.log")
    assert records["Zo\\xeb"]["log"].endswith("Zo\\xeb/rvc-index-Zo-db0525f9-rvc-classic.log")


def test_an_unreadable_feature_folder_fails_only_its_experiment(tmp_path, bank, client):
    """Root reads a mode-000 folder anyway: as root the check runs without CAP_DAC_OVERRIDE (setpriv)."""
    drop = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("root without setpriv (util-linux): a mode-000 folder stays readable")
        drop = ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
                "--inh-caps=-dac_override,-dac_read_search", "--"]
    root = copy(bank, tmp_path / "denied", "spk0", "spk1")
    (root / "spk1" / "3_feature256").chmod(0)
    try:
        proc = subprocess.run([*drop, sys.executable, "-m", "rvc_index", "-q", "batch", str(root), "--config",
                               "rvc-classic", "--dry-run", "--set", "evaluate.recall_queries=100"],
                              capture_output=True, text=True, timeout=120)
    finally:
        (root / "spk1" / "3_feature256").chmod(0o755)
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if not line.startswith(" ")]
    assert lines[0].startswith("build  spk0")
    assert lines[1].startswith("fail   spk1") and "3_feature256: cannot read: Permission denied" in lines[1]

    # planned with that problem, the job fails without a task while the others build
    root = copy(bank, tmp_path / "logs", "spk0", "spk1")
    config = fast_config()
    jobs = plan_jobs(root, config)
    jobs[1] = Job(jobs[1].name, jobs[1].path, None, 0, 0, False, f"{jobs[1].path}/3_feature256: cannot read: denied")
    report = run_batch(jobs, config, client)
    assert [(r.experiment, r.status) for r in report.records] == [("spk0", "built"), ("spk1", "failed")]
    assert report.records[1].error.endswith("3_feature256: cannot read: denied") and not report.records[1].retryable


def test_dask_routine_noise_is_debug_only():
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    nanny = logging.getLogger("distributed.nanny")
    keep = Keep()
    nanny.addHandler(keep)
    try:
        quiet_dask_noise(verbose=False)
        nanny.warning("Worker process still alive after 3.2 seconds, killing")
        nanny.warning("Worker process 123 was killed by signal 9")  # real trouble stays
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            quiet_dask_noise(verbose=False)
            warnings.warn("Port 8787 is already in use.\nPerhaps you already have a cluster running?", UserWarning,
                          stacklevel=1)
        assert [r.getMessage() for r in seen] == ["Worker process 123 was killed by signal 9"] and not caught
        quiet_dask_noise(verbose=True)
        nanny.warning("Worker process still alive after 3.2 seconds, killing")
        assert seen[-1].levelname == "DEBUG"
    finally:
        nanny.removeHandler(keep)
        quiet_dask_noise(verbose=False)
