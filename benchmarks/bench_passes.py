"""A big collection end to end: wall time, peak RSS and full reads of the data of one build.

Writes ``--rows`` x ``--dim`` frames of one ``tools.synth`` speaker (utterances of 50-750 frames:
about 25,000 files at 10M rows) under ``--data-dir`` (a temporary folder unless given; reused when
given), then times ``rvc-index build --config PRESET`` in a child process (no Dask cluster: local
threads) and reports the kernel's peak RSS for it (``wait4``), the rows its loaders read
(``runtime.stream.ROWS_READ``: reads = rows read / rows) and the bytes it read from files
(``/proc/self/io`` ``rchar``). The target of issue 14: 10,000,000 x 768 on 2 cores in at most
2 full reads and 6 minutes with evaluation on, peak RSS under 1 GiB.

    python -m benchmarks.bench_passes --rows 10000000 --dim 768 --data-dir /data/tmp/passes-10m
    python -m benchmarks.bench_passes --rows 300000 --dim 256          # a quick look

Writing 30 GB of a synthetic speaker takes about an hour on 2 cores; ``--replicate FEATURE_DIR`` makes
``--rows`` from perturbed copies of a smaller collection's files instead (copy v: rows scaled by
1 + 0.02 v and shifted by a fixed random vector of 0.05 sd), in minutes. The figures in
``docs/benchmarks.md`` came from 10 copies of the 1M-row collection of ``bench_rvc``:

    python -m benchmarks.bench_passes --rows 10000000 --data-dir /tmp/p10m \
        --replicate /tmp/rvc-index-bench/n1000000-d768-s0/logs/bench/3_feature768 \
        --json docs/bench/passes-10000000x768.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rvc_index.tools.synth import SpeakerSpec, write_speaker

from benchmarks.harness import run_measured


def write_collection(data_dir: Path, rows: int, dim: int, seed: int) -> Path:
    """The experiment folder of one synthetic speaker, written once per ``data_dir``."""
    exp = data_dir / f"big-n{rows}-d{dim}-s{seed}"
    done = exp / ".complete"
    if not done.is_file():
        started = time.perf_counter()
        write_speaker(exp.parent, SpeakerSpec(exp.name, rows, dim), seed)
        done.write_text(json.dumps({"rows": rows, "dim": dim, "seed": seed}))
        print(f"wrote {rows:,} x {dim} to {exp} in {time.perf_counter() - started:.0f} s", flush=True)
    return exp


def replicate_collection(data_dir: Path, source: Path, rows: int, dim: int, seed: int) -> Path:
    """An experiment folder of ``rows`` frames: perturbed copies of the ``.npy`` files of ``source``
    (as many copies as it takes), written once per ``data_dir``."""
    exp = data_dir / f"big-n{rows}-d{dim}-s{seed}"
    done = exp / ".complete"
    if done.is_file():
        return exp
    started = time.perf_counter()
    files = sorted(source.glob("*.npy"))
    folder = exp / f"3_feature{dim}"
    folder.mkdir(parents=True, exist_ok=True)
    written, copy = 0, 0
    while written < rows:
        rng = np.random.default_rng(seed + copy)  # copy 0 of seed 0: default_rng(0)
        shift = (0.05 * rng.standard_normal(dim)).astype(np.float32)
        for path in files:
            frames = np.load(path)[: rows - written]
            if frames.shape[1] != dim:
                raise SystemExit(f"{path}: width {frames.shape[1]}, not {dim}")
            np.save(folder / f"c{copy}_{path.name}", frames * np.float32(1 + 0.02 * copy) + shift)
            written += frames.shape[0]
            if written >= rows:
                break
        copy += 1
    done.write_text(json.dumps({"rows": rows, "dim": dim, "seed": seed, "replicated_from": str(source)}))
    print(f"wrote {rows:,} x {dim} ({copy} copies of {source}) to {exp} in {time.perf_counter() - started:.0f} s",
          flush=True)
    return exp


def child(exp: Path, preset: str, out: Path, result: Path, overrides: Sequence[str]) -> int:
    """Run the CLI's build in this process, then record what its loaders read."""
    from rvc_index.cli import main as cli_main
    from rvc_index.runtime.stream import ROWS_READ

    argv = ["build", str(next(exp.glob("3_feature*"))), "--config", preset, "--out", str(out), "--force"]
    for override in overrides:
        argv += ["--set", override]
    code = cli_main(argv)
    rchar = 0
    io = Path("/proc/self/io")
    if io.is_file():
        rchar = int(dict(line.split(": ") for line in io.read_text().splitlines())["rchar"])
    result.write_text(json.dumps({"returncode": code, "rows_read": ROWS_READ.rows, "rchar": rchar}))
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_passes", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", default="tips-plain")
    parser.add_argument("--data-dir", type=Path, help="where the collection is written (default: a temporary folder)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--timeout", type=float, default=3 * 3600.0)
    parser.add_argument("--json", type=Path, help="write the result here")
    parser.add_argument("--replicate", type=Path, metavar="FEATURE_DIR",
                        help="make the collection from perturbed copies of this folder's files (minutes, not an hour)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, args.config, args.out, args.result, args.set)

    with tempfile.TemporaryDirectory(prefix="rvc-index-passes-") as tmp:
        data_dir = args.data_dir or Path(tmp)
        exp = (replicate_collection(data_dir, args.replicate, args.rows, args.dim, args.seed) if args.replicate
               else write_collection(data_dir, args.rows, args.dim, args.seed))
        out, result = Path(tmp) / "out", Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "benchmarks.bench_passes", "--child", str(exp), "--config", args.config,
               "--out", str(out), "--result", str(result)]
        for override in args.set:
            cmd += ["--set", override]
        measured = run_measured(cmd, Path(tmp) / "build.log", args.timeout)
        log_tail = Path(measured["log"]).read_text(errors="replace")[-3000:]
        if measured["returncode"] != 0 or not result.is_file():
            print(log_tail)
            raise SystemExit(f"build failed (exit {measured['returncode']})")
        child_result = json.loads(result.read_text())
        report = json.loads(next(out.glob("rvc-index-*.report.json")).read_text())
    data_bytes = args.rows * args.dim * 4
    summary: dict[str, Any] = {
        "rows": args.rows, "dim": args.dim, "config": args.config, "overrides": args.set,
        "data": f"copies of {args.replicate}" if args.replicate else "tools.synth speaker",
        "seconds": measured["seconds"], "peak_rss_mb": measured["peak_rss_mb"],
        "full_reads": round(child_result["rows_read"] / args.rows, 2),
        "bytes_read_over_data": round(child_result["rchar"] / data_bytes, 2),
        "timings": report.get("timings"), "evaluation_on": bool(report.get("evaluation")),
    }
    print(log_tail)
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
