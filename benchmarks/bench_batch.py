"""``batch`` on a local Dask cluster against building the same speakers one after another.

Three runs over the same synthetic speakers, each in a fresh subprocess timed from launch to exit,
with its CPU time (its own and its reaped children's: the Dask workers) from ``wait4``:

* ``sequential``: one process builds every speaker in turn (``build_experiment`` without Dask,
  as ``rvc-index build`` does), faiss with its default OpenMP threads (one per core);
* ``sequential-1t``: the same on one core: faiss pinned to one thread and ``OMP/OPENBLAS/MKL_NUM_THREADS=1``,
  the environment of every Dask worker process;
* ``batch``: ``rvc-index batch --workers N`` (a LocalCluster of N single-threaded processes).

"cores busy" is CPU seconds / wall seconds. The batch's indexes are compared byte for byte with
``sequential-1t``'s (same thread count, so they must be identical). On a shared machine the cores
are not all ours: ``capacity`` measures, in the same run, how much faster two one-core builds of
one speaker finish side by side than one after another (2.0 on an idle 2-core machine): the
best speed-up any 2-worker schedule could reach at that time.

    python -m benchmarks.bench_batch --speakers 8 --rows 20000 --dim 768
    python -m benchmarks.bench_batch --threads-check --preset rvc-classic --speakers 8 --rows 20000 --dim 256
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_WORK = Path(tempfile.gettempdir()) / "rvc-index-bench-batch"
MODES = ("sequential", "sequential-1t", "batch")


def generate(work: Path, speakers: int, rows: int, dim: int) -> Path:
    """``speakers`` synthetic speakers under ``work``; reused when the marker matches."""
    from rvc_index.tools.synth import SpeakerSpec, write_speaker

    root = work / f"s{speakers}-n{rows}-d{dim}" / "logs"
    marker = root.parent / "collection.json"
    params = {"speakers": speakers, "rows": rows, "dim": dim}
    if marker.is_file() and json.loads(marker.read_text()) == params:
        return root
    shutil.rmtree(root, ignore_errors=True)
    for i in range(speakers):
        write_speaker(root, SpeakerSpec(f"speaker{i:02d}", rows, dim))
    marker.write_text(json.dumps(params))
    return root


def run_sequential(root: Path, out: Path, preset: str, overrides: list[str], threads: int | None,
                   only: str | None = None) -> None:
    """Build every experiment under ``root`` (or only ``only``) in this process, one after another, without Dask."""
    import faiss
    from rvc_index.batch.jobs import discover
    from rvc_index.compute.backend import select_backend
    from rvc_index.config.loading import load_config
    from rvc_index.job.runner import build_experiment

    if threads:
        faiss.omp_set_num_threads(threads)
    config = load_config(REPO / "configs" / f"{preset}.yaml", overrides)
    backend = select_backend("cpu")
    for folder in discover(root):
        if only is None or folder.name == only:
            build_experiment(folder, config, out / folder.name, backend, None, force=True)


ONE_CORE = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def timed(*commands: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Wall and CPU seconds (user + system, children included) of ``commands`` run side by side."""
    started = time.perf_counter()
    procs = [subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env={**os.environ, **(env or {})}) for command in commands]
    cpu = 0.0
    for command, proc in zip(commands, procs):
        _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            stderr = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"{' '.join(command)} failed:\n{stderr[-3000:]}")
        cpu += usage.ru_utime + usage.ru_stime
    wall = time.perf_counter() - started
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "cores_busy": round(cpu / wall, 2)}


def capacity(root: Path, work: Path, preset: str, recall_queries: int) -> dict[str, float]:
    """One one-core build alone, then two side by side: how much parallel speed the machine gives now."""
    def build(i: int) -> list[str]:
        return [sys.executable, "-m", "benchmarks.bench_batch", "--run", "sequential-1t", "--root", str(root),
                "--only", "speaker00", "--out", str(work / "out" / f"capacity{i}"), "--preset", preset,
                "--recall-queries", str(recall_queries)]
    alone = timed(build(0), env=ONE_CORE)
    pair = timed(build(1), build(2), env=ONE_CORE)
    return {"alone_wall_s": alone["wall_s"], "alone_cpu_s": alone["cpu_s"], "pair_wall_s": pair["wall_s"],
            "pair_cpu_s": pair["cpu_s"], "speedup_limit": round(2 * alone["wall_s"] / pair["wall_s"], 2)}


def threads_check(root: Path, work: Path, preset: str, recall_queries: int) -> list[dict[str, Any]]:
    """Build every speaker at 1 and 2 faiss threads: same bytes? how long?"""
    import hashlib

    from rvc_index.batch.jobs import discover
    from rvc_index.compute.backend import faiss_threads, select_backend
    from rvc_index.config.loading import load_config
    from rvc_index.job.runner import build_experiment

    rows = []
    config = load_config(REPO / "configs" / f"{preset}.yaml", [f"evaluate.recall_queries={recall_queries}"])
    for folder in discover(root):
        row: dict[str, Any] = {"preset": preset, "speaker": folder.name}
        digests = []
        for threads in (1, 2):
            with faiss_threads(threads):
                started = time.perf_counter()
                result = build_experiment(folder, config, work / "threads" / f"{preset}-{threads}" / folder.name,
                                          select_backend("cpu"), None, force=True)
                row[f"seconds_{threads}t"] = round(time.perf_counter() - started, 2)
            digests.append(hashlib.sha256(result.index_path.read_bytes()).hexdigest()[:16])
        row["same_bytes"] = digests[0] == digests[1]
        rows.append(row)
        print(row, flush=True)
    return rows


def index_bytes(out: Path) -> dict[str, bytes]:
    return {p.parent.name: p.read_bytes() for p in sorted(out.glob("*/*.index"))}


def code_versions(out: Path) -> set[str]:
    """Code fingerprints recorded by the builds (more than one: the code changed during the run)."""
    return {json.loads(p.read_text())["code_version"] for p in out.glob("*/rvc-index-*.report.json")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speakers", type=int, default=8)
    parser.add_argument("--rows", type=int, default=20000, help="rows per speaker")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--preset", default="tips")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--recall-queries", type=int, default=200)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--threads-check", action="store_true",
                        help="only build every speaker at 1 and 2 faiss threads and compare the bytes")
    parser.add_argument("--run", choices=MODES[:2], help=argparse.SUPPRESS)  # internal: one sequential run
    parser.add_argument("--root", type=Path, help="with --threads-check: check these experiments instead")
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--only", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    overrides = [f"evaluate.recall_queries={args.recall_queries}"]
    if args.run:
        run_sequential(args.root, args.out, args.preset, overrides, 1 if args.run == "sequential-1t" else None,
                       args.only)
        return 0

    root = args.root if args.threads_check and args.root else generate(args.work, args.speakers, args.rows, args.dim)
    if args.threads_check:
        rows = threads_check(root, args.work, args.preset, args.recall_queries)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2) + "\n")
        return 0
    results: dict[str, Any] = {"speakers": args.speakers, "rows": args.rows, "dim": args.dim, "preset": args.preset,
                               "workers": args.workers, "cores": len(os.sched_getaffinity(0)),
                               "load_average_before": os.getloadavg()[0]}
    modes = [m for m in MODES if m in args.modes.split(",")]
    for mode in modes:
        out = args.work / "out" / mode
        shutil.rmtree(out, ignore_errors=True)
        if mode == "batch":
            command = [sys.executable, "-m", "rvc_index", "-q", "batch", str(root), "--config", args.preset,
                       "--out", str(out), "--workers", str(args.workers), "--force",
                       "--set", "cluster.dashboard_address=", *(f"--set={o}" for o in overrides)]
        else:
            command = [sys.executable, "-m", "benchmarks.bench_batch", "--run", mode, "--root", str(root),
                       "--out", str(out), "--preset", args.preset, "--recall-queries", str(args.recall_queries)]
        results[mode] = timed(command, env=ONE_CORE if mode == "sequential-1t" else None)
        print(f"{mode:>14}: {results[mode]}", flush=True)
    results["capacity"] = capacity(root, args.work, args.preset, args.recall_queries)
    print(f"{'capacity':>14}: {results['capacity']}", flush=True)
    for baseline in MODES[:2]:
        if baseline in results and "batch" in results:
            results[f"speedup_vs_{baseline}"] = round(results[baseline]["wall_s"] / results["batch"]["wall_s"], 2)
    if {"batch", "sequential-1t"} <= set(modes):
        batch, pinned = index_bytes(args.work / "out" / "batch"), index_bytes(args.work / "out" / "sequential-1t")
        results["batch_bytes_equal_sequential_1t"] = len(batch) == args.speakers and batch == pinned
    results["load_average_after"] = os.getloadavg()[0]
    versions = set().union(*(code_versions(args.work / "out" / mode) for mode in modes))
    results["code_versions"] = sorted(versions)
    if len(versions) > 1:
        print("warning: the code changed during the benchmark; rerun it", file=sys.stderr)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
