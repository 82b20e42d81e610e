"""The GPU slot script (``benchmarks/gpu_slot.sh``) runs where CI runs: a CPU smoke run of the very script a lent
GPU machine runs (``--backend cpu``, the current environment instead of the carried wheels, a few thousand
rows), so it cannot rot between the rare slots; and its report marks each target met, missed or unmeasured."""

import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from benchmarks import gpu_report

REPO = Path(__file__).resolve().parent.parent
STEPS = ["tests_gpu", "knn", "kmeans_compile", "kmeans_warm", "kmeans_cpu", "read_once", "build_cold", "build_warm",
         "build_cpu"]


def test_the_slot_script_runs_every_step_on_the_cpu(tmp_path):
    out = tmp_path / "out"
    started = time.perf_counter()
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_slot.sh"), "--backend", "cpu", "--no-install",
                           "--python", sys.executable, "--rows", "3000", "--knn-rows", "2000", "--k", "32",
                           "--dim", "64", "--budget", "150", "--out", str(out)],
                          capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert time.perf_counter() - started < 120
    assert [p.name for p in out.iterdir()] == ["results.tgz"]  # one file back from the device
    with tarfile.open(out / "results.tgz") as archive:
        archive.extractall(tmp_path, filter="data")
    results = tmp_path / "results"
    records = {step: json.loads((results / f"{step}.json").read_text()) for step in STEPS}
    assert {step: (r.get("rc"), r.get("timed_out")) for step, r in records.items()} == {s: (0, False) for s in STEPS}
    tests_log = (results / "tests_gpu.log").read_text()
    assert "tests/batch" not in " ".join(records["tests_gpu"]["cmd"]) and " skipped" in tests_log  # no GPU here
    assert "tests/compute/test_backend.py" in records["tests_gpu"]["cmd"]  # the gpu-marked files, by name
    report = (results / "report.md").read_text()
    assert report.strip() == gpu_report.render(results).strip() and "CPU smoke run" in report
    for row in ("| cpu (numpy, faiss-cpu) | ", "| warm run | ", "| cpu backend | "):
        line = next(line for line in report.splitlines() if line.startswith(row))
        assert " - |" not in line.split("|", 2)[2][:12], line  # a measured number, not "-"
    assert report.strip() in proc.stdout


def _write(folder: Path, name: str, value: dict) -> None:
    (folder / f"{name}.json").write_text(json.dumps(value))


def test_the_report_marks_each_target_from_the_files(tmp_path):
    _write(tmp_path, "plan", {"backend": "gpu", "rows": 1_000_000, "dim": 768, "k": 10_000})
    _write(tmp_path, "env", {"gpu": "NVIDIA H100 80GB HBM3", "cpus": 16})
    ok = {"rc": 0, "timed_out": False}
    for name, seconds in (("build_cold", 19.0), ("build_warm", 6.0), ("build_cpu", 21.0), ("knn", 3.0),
                          ("kmeans_warm", 9.0), ("kmeans_cpu", 15.0), ("read_once", 2.0)):
        _write(tmp_path, name, {**ok, "seconds": seconds, "max_rss_mib": 900})
    _write(tmp_path, "knn.result", {"rows": 100_000, "dim": 768, "k": 8, "knn_share_of_matmul_rate": 0.61})
    _write(tmp_path, "kmeans_warm.result", {"methods": {"ours": {"rows_per_s": 3.5e6, "inertia": 17.1, "seconds": 9}}})
    _write(tmp_path, "kmeans_cpu.result", {"methods": {"ours": {"inertia": 17.3, "seconds": 15}}})
    (tmp_path / "read_once.log").write_text('{"rows": 1000000, "seconds": 2.0}\n')
    lines = gpu_report.render(tmp_path).splitlines()
    target = {line.split(":")[0][2:]: line for line in lines if line.startswith("- ")}
    assert target["warm GPU build >= 3x the CPU backend"].endswith("3.50x (met)")
    assert target["warm GPU build <= 1.5x one read of the collection"].endswith("3.00x (missed)")
    assert target["k-means >= 3,000,000 rows x passes / s warm"].endswith("3,500,000 (met)")
    assert target["k-means MSD at or below the CPU route's"].endswith("17.1000 vs 17.3000 (met)")
    assert target["cold-cache GPU build <= 10 s slower than warm"].endswith("13.0 s (missed)")
    assert target["exact 8-NN >= 50 % of the measured fp32 matmul rate"].endswith("61.0% (met)")
    assert target["the `gpu` tests pass"].endswith("(unmeasured)")
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n## GPU\n\nNot measured yet.\n\n## Tuning\n\nkept\n")
    gpu_report.update_docs(docs, gpu_report.render(tmp_path))
    text = docs.read_text()
    assert "Not measured yet" not in text and text.count("## GPU") == 1 and text.endswith("## Tuning\n\nkept\n")


def test_a_step_out_of_time_is_stopped_with_its_children(tmp_path):
    """Its own children, and a grandchild in a session of its own (as ``harness.run_measured`` starts one)."""
    marker = tmp_path / "alive"
    script = f"setsid bash -c 'sleep 5; touch {marker}' & sleep 5; touch {marker}"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "benchmarks.slot_step", str(tmp_path / "slow"), "1", "bash", "-c", script],
                   cwd=REPO, check=True, timeout=60)
    record = json.loads((tmp_path / "slow.json").read_text())
    assert record["timed_out"] and time.perf_counter() - started < 15
    time.sleep(5)
    assert not marker.exists()  # nothing it started lived on to its end
