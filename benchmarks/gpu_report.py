"""The "## GPU" section of docs/benchmarks.md from one ``benchmarks/gpu_slot.sh`` run (its ``results.tgz``, or
the ``results`` folder inside it).

Every figure is read from that run's files (``NAME.json``: exit code, wall seconds, peak RSS of one step;
``NAME.result.json``: a benchmark's own output; ``env.json``, ``plan.json``); GPU figures stand beside the
``--backend cpu`` ones of the same host and run, as ratios, and each target of issue 22 is marked met,
missed or unmeasured. Missing results show as "-", never as a number.

    python -m benchmarks.gpu_report results.tgz --docs docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import re
import tarfile
import tempfile
from pathlib import Path
from typing import Any

SECTION = "## GPU"


class Results:
    """One slot run's files."""

    def __init__(self, folder: Path):
        self.folder = folder

    def load(self, name: str) -> dict[str, Any]:
        path = self.folder / f"{name}.json"
        try:
            return json.loads(path.read_text()) if path.is_file() else {}
        except ValueError:
            return {}

    def step(self, name: str) -> dict[str, Any]:
        """A step's record, empty unless it ran to a clean exit."""
        record = self.load(name)
        return record if record.get("rc") == 0 and not record.get("timed_out") else {}

    def ours(self, name: str) -> dict[str, Any]:
        return self.load(f"{name}.result").get("methods", {}).get("ours", {}) if self.step(name) else {}

    def last_json_line(self, name: str) -> dict[str, Any]:
        log = self.folder / f"{name}.log"
        lines = log.read_text(errors="replace").strip().splitlines() if self.step(name) and log.is_file() else []
        try:
            return json.loads(lines[-1]) if lines else {}
        except ValueError:
            return {}

    def tests(self, name: str) -> str:
        record, log = self.load(name), self.folder / f"{name}.log"
        if not record or record.get("skipped"):
            return "not run"
        text = log.read_text(errors="replace") if log.is_file() else ""
        summary = [line.strip("= ") for line in text.splitlines()
                   if re.search(r"\d+ (passed|failed|skipped|error)", line)]
        state = "timed out" if record.get("timed_out") else f"exit {record.get('rc')}"
        return f"{summary[-1]} ({state})" if summary else state


def _num(value: Any, fmt: str = ",.1f") -> str:
    return "-" if value is None else format(value, fmt)


def _ratio(a: Any, b: Any) -> Any:
    return None if a in (None, 0) or b is None else b / a


def _target(label: str, value: Any, ok: Any, shown: str) -> str:
    state = "unmeasured" if value is None or ok is None else "met" if ok else "missed"
    return f"- {label}: {shown if value is not None else '-'} ({state})"


def render(folder: Path) -> str:
    """The section's markdown for the results in ``folder``."""
    r = Results(folder)
    plan, env = r.load("plan"), r.load("env")
    rows, dim, k = plan.get("rows"), plan.get("dim"), plan.get("k")
    knn = r.load("knn.result") if r.step("knn") else {}
    km_compile, km_warm, km_cpu = (r.ours(n) for n in ("kmeans_compile", "kmeans_warm", "kmeans_cpu"))
    cold, warm, cpu = (r.step(n) for n in ("build_cold", "build_warm", "build_cpu"))
    read = r.last_json_line("read_once")
    smoke = plan.get("backend") == "cpu"
    lines = [SECTION, ""]
    if smoke:
        lines += ["CPU smoke run of `benchmarks/gpu_slot.sh --backend cpu` (no GPU figures: every row is the CPU).", ""]
    lines += [
        f"`bash benchmarks/gpu_slot.sh`, one device call: {env.get('gpu', 'no GPU')}, {env.get('cpus', '-')} "
        f"cores; CuPy {env.get('cupy', '-')}, faiss {env.get('faiss', '-')}, numpy {env.get('numpy', '-')}, "
        f"Python {env.get('python', '-')}; backend: {env.get('backend', '-')}. Each GPU figure stands beside "
        "`--backend cpu` on the same host in the same run.", "",
        f"Tests (`-m gpu`, the gpu-marked files one by one): {r.tests('tests_gpu')}.", "",
        f"| exact {knn.get('k', 8)}-NN, {_num(knn.get('rows'), ',')} x {_num(knn.get('dim'), ',')} "
        "(`bench_knn`) | first run s | median s | GFLOP/s | matmul GFLOP/s | share | recall vs float64 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {knn.get('backend', '-')} | {_num(knn.get('first_seconds'), '.2f')} | "
        f"{_num(knn.get('median_seconds'), '.3f')} | {_num(knn.get('knn_gflops'), ',.0f')} | "
        f"{_num(knn.get('matmul_gflops'), ',.0f')} | {_num(knn.get('knn_share_of_matmul_rate'), '.1%')} | "
        f"{_num(knn.get('check_recall'), '.4f')} |", "",
        f"| k-means {_num(rows, ',')} x {_num(dim, ',')} -> {_num(k, ',')} (`bench_kmeans`) | s | rows x passes / s "
        "| MSD | peak RSS MiB |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, m in (("compile run (1 pass, cold kernel cache)", km_compile), ("warm run", km_warm),
                     ("cpu backend", km_cpu)):
        if m.get("rows_per_s") is None and rows and m.get("data_passes") and m.get("seconds"):
            m["rows_per_s"] = rows * m["data_passes"] / m["seconds"]  # bench_kmeans gives it on a GPU only
        lines.append(f"| {label} | {_num(m.get('seconds'))} | {_num(m.get('rows_per_s'), ',.0f')} | "
                     f"{_num(m.get('inertia'), '.4f')} | {_num(m.get('peak_rss_mb'), ',.0f')} |")
    lines += ["", f"| {_num(rows, ',')} x {_num(dim, ',')} `build --config tips-plain` | wall s | peak RSS MiB | "
              "vs cpu |", "| --- | ---: | ---: | ---: |"]
    for label, m in (("gpu, cold kernel cache", cold), ("gpu, warm kernel cache", warm), ("cpu backend", cpu)):
        lines.append(f"| {label} | {_num(m.get('seconds'))} | {_num(m.get('max_rss_mib'), ',.0f')} | "
                     f"{_num(_ratio(m.get('seconds'), cpu.get('seconds')), '.2f')}x |")
    lines.append(f"| one read of the collection (np.load of every file) | {_num(read.get('seconds'))} | - | - |")
    speedup = _ratio(warm.get("seconds"), cpu.get("seconds"))
    of_read = _ratio(read.get("seconds"), warm.get("seconds"))
    cold_extra = None if not (cold and warm) else cold["seconds"] - warm["seconds"]
    rate, msd, msd_cpu = km_warm.get("rows_per_s"), km_warm.get("inertia"), km_cpu.get("inertia")
    share = knn.get("knn_share_of_matmul_rate")
    tests = r.tests("tests_gpu")
    lines += ["", "Targets (issue 22), this run:",
              _target("the `gpu` tests pass", None if tests == "not run" else tests,
                      None if tests == "not run" else " passed" in f" {tests}" and "failed" not in tests, tests),
              _target("warm GPU build >= 3x the CPU backend", speedup, None if speedup is None else speedup >= 3,
                      f"{_num(speedup, '.2f')}x"),
              _target("warm GPU build <= 1.5x one read of the collection", of_read,
                      None if of_read is None else of_read <= 1.5, f"{_num(of_read, '.2f')}x"),
              _target("k-means >= 3,000,000 rows x passes / s warm", rate, None if rate is None else rate >= 3e6,
                      _num(rate, ',.0f')),
              _target("k-means MSD at or below the CPU route's", msd if msd_cpu is not None else None,
                      None if msd is None or msd_cpu is None else msd <= msd_cpu,
                      f"{_num(msd, '.4f')} vs {_num(msd_cpu, '.4f')}"),
              _target("cold-cache GPU build <= 10 s slower than warm", cold_extra,
                      None if cold_extra is None else cold_extra <= 10, f"{_num(cold_extra)} s"),
              _target("exact 8-NN >= 50 % of the measured fp32 matmul rate", share,
                      None if share is None else share >= 0.5, _num(share, '.1%'))]
    return "\n".join(lines) + "\n"


def update_docs(path: Path, section: str) -> None:
    """Replace the ``## GPU`` section of ``path`` (up to the next ``## ``), or append it."""
    text = path.read_text() if path.is_file() else ""
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def results_folder(path: Path, scratch: Path) -> Path:
    """The ``results`` folder of a slot run: ``path`` itself, or unpacked from ``results.tgz``."""
    if path.is_dir():
        return path
    with tarfile.open(path) as archive:
        archive.extractall(scratch, filter="data")
    return scratch / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="gpu_slot.sh's results.tgz, or the results folder in it")
    parser.add_argument("--docs", type=Path, help="write the section into this file (docs/benchmarks.md)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        section = render(results_folder(args.results, Path(scratch)))
    print(section)
    if args.docs:
        update_docs(args.docs, section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
