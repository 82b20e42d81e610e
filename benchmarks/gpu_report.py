"""The "## GPU" section of docs/benchmarks.md from one ``benchmarks/gpu_check.sh`` run's results folder.

Every figure is read from that run's files (``NAME.json``: wall seconds, peak RSS, exit code of one
command; ``NAME.result.json``: a benchmark's own output); GPU figures stand beside ``--backend cpu`` ones
of the same host and run, as ratios. Missing results show as "-", never as a number.

    python -m benchmarks.gpu_report /tmp/gpu-check --docs docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

SECTION = "## GPU"


def _load(folder: Path, name: str) -> dict[str, Any]:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _ours(folder: Path, name: str) -> dict[str, Any]:
    return _load(folder, f"{name}.result").get("methods", {}).get("ours", {})


def _expand(folder: Path, name: str) -> dict[str, Any]:
    return _load(folder, f"{name}.result").get("throughput", {}).get("ours", {})


def _num(value: Any, fmt: str = ",.1f") -> str:
    return "-" if value is None else format(value, fmt)


def _ratio(a: Any, b: Any) -> Any:
    return None if a in (None, 0) or b is None else b / a


def _tests(folder: Path, name: str) -> str:
    log = folder / f"{name}.log"
    if not log.is_file():
        return "not run"
    summary = [line for line in log.read_text(errors="replace").splitlines() if re.search(r"\d+ (passed|failed)", line)]
    return summary[-1].strip("= ") if summary else f"exit {_load(folder, name).get('rc')}"


def render(folder: Path) -> str:
    """The section's markdown for the results in ``folder``."""
    cold, warm, cpu = (_load(folder, n) for n in ("build_gpu_cold", "build_gpu_warm", "build_cpu"))
    km_gpu, km_cpu, km_base = (_ours(folder, n) for n in ("kmeans_gpu", "kmeans_cpu", "kmeans_gpu_lloyd_random"))
    ex_gpu, ex_cpu = _expand(folder, "expand_gpu"), _expand(folder, "expand_cpu")
    s3_gpu, s3_cpu = _ours(folder, "kmeans3m_gpu"), _ours(folder, "kmeans3m_cpu")
    device = (folder / "device.txt").read_text().strip() if (folder / "device.txt").is_file() else "see gpu-check.log"
    speedup = _ratio(warm.get("seconds"), cpu.get("seconds"))
    cold_extra = None if not (cold and warm) else cold["seconds"] - warm["seconds"]
    rows_per_s = km_gpu.get("rows_per_s")
    share = ex_gpu.get("knn_share_of_matmul_rate")
    msd_ok = None if not (km_gpu.get("inertia") and km_base.get("inertia")) else km_gpu["inertia"] <= km_base["inertia"]
    lines = [
        SECTION, "",
        "`bash benchmarks/gpu_check.sh` on one machine, one run: each GPU figure beside `--backend cpu` on the same "
        f"host. Device: {device}.", "",
        "| 1,000,000 x 768 `build --config tips-plain` | wall s | peak RSS MiB | vs cpu |",
        "| --- | ---: | ---: | ---: |",
        f"| gpu, cold CuPy kernel cache | {_num(cold.get('seconds'))} | {_num(cold.get('max_rss_mib'), ',.0f')} | "
        f"{_num(_ratio(cold.get('seconds'), cpu.get('seconds')), '.2f')}x |",
        f"| gpu, warm cache | {_num(warm.get('seconds'))} | {_num(warm.get('max_rss_mib'), ',.0f')} | "
        f"{_num(speedup, '.2f')}x |",
        f"| cpu | {_num(cpu.get('seconds'))} | {_num(cpu.get('max_rss_mib'), ',.0f')} | 1x |", "",
        "| k-means 1,000,000 x 768 -> 10,000 | s | rows/s (rows x passes) | MSD | peak RSS MiB |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, m in (("gpu, device route (D^2 init)", km_gpu), ("gpu, 10 Lloyd passes from random rows", km_base),
                     ("cpu, minibatch route", km_cpu)):
        lines.append(f"| {label} | {_num(m.get('seconds'))} | {_num(m.get('rows_per_s'), ',.0f')} | "
                     f"{_num(m.get('inertia'), '.4f')} | {_num(m.get('peak_rss_mb'), ',.0f')} |")
    lines += [
        "", "| exact 8-NN expansion, 100,000 x 768 | neighbours s | k-NN GFLOP/s | matmul GFLOP/s | share |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, m in (("gpu", ex_gpu), ("cpu", ex_cpu)):
        lines.append(f"| {label} | {_num(m.get('timings', {}).get('neighbours'), '.2f')} | "
                     f"{_num(m.get('knn_gflops'), ',.0f')} | {_num(m.get('matmul_gflops'), ',.0f')} | "
                     f"{_num(m.get('knn_share_of_matmul_rate'), '.1%')} |")
    lines += [
        "", "| streamed route, 3,000,000 x 768 -> 10,000 | s | peak RSS MiB | route |", "| --- | ---: | ---: | --- |",
        f"| gpu, compress.device_budget_mb=2048 | {_num(s3_gpu.get('seconds'))} | "
        f"{_num(s3_gpu.get('peak_rss_mb'), ',.0f')} | {s3_gpu.get('plan', '-')} |",
        f"| cpu | {_num(s3_cpu.get('seconds'))} | {_num(s3_cpu.get('peak_rss_mb'), ',.0f')} | "
        f"{s3_cpu.get('plan', '-')} |",
        "", f"Tests: `-m gpu`: {_tests(folder, 'tests_gpu')}; whole suite: {_tests(folder, 'tests_all')}.", "",
        "Targets (issue 12): "
        f"build gpu >= 6x cpu: {_num(speedup, '.2f')}x; cold cache <= 10 s slower: {_num(cold_extra)} s; "
        f"k-means MSD no worse than 10 Lloyd passes from random init: {'-' if msd_ok is None else msd_ok}; "
        f">= 1,000,000 rows/s: {_num(rows_per_s, ',.0f')}; exact 8-NN >= 30 % of matmul: {_num(share, '.1%')}.",
    ]
    return "\n".join(lines) + "\n"


def update_docs(path: Path, section: str) -> None:
    """Replace the ``## GPU`` section of ``path`` (up to the next ``## ``), or append it."""
    text = path.read_text() if path.is_file() else ""
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="gpu_check.sh's OUT folder")
    parser.add_argument("--docs", type=Path, help="write the section into this file (docs/benchmarks.md)")
    args = parser.parse_args(argv)
    section = render(args.results)
    print(section)
    if args.docs:
        update_docs(args.docs, section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
