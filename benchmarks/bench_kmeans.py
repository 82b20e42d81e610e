"""Compress-stage k-means: ours against sklearn ``MiniBatchKMeans`` as RVC runs it, same data, same run.

A synthetic speaker of ``--rows`` x ``--dim`` frames (``rvc_index.tools.synth``) is written once under
``--data-dir`` and reused. Each method runs in its own subprocess, so the kernel reports its peak
RSS (``wait4``): RVC's way (load every file, concatenate, shuffle, ``MiniBatchKMeans(n_clusters=K,
batch_size=256 * cores, compute_labels=False, init="random")``; the ``fit`` is timed) and ours
(``rvc_index.stages.compress.compress`` streaming from the files; everything is timed, sampling and reading
included). Quality is the exact mean squared distance of every row to its nearest centre, over the
whole collection, for both centre sets; for ours also how close its two-level assignment comes to
the exact one on a sample of rows. ``--rss-rows`` repeats our run on a larger collection to show
that peak memory does not grow with N. ``--backend gpu`` adds rows/s and the share of the device's
measured fp32 matrix-multiply rate that the distance step reaches.

    python -m benchmarks.bench_kmeans --rows 1000000 --dim 768 --data-dir /tmp/km-bench --docs docs/benchmarks.md
    python -m benchmarks.bench_kmeans --rows 1000000 --dim 768 --rss-rows 3000000 --no-sklearn
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rvc_index.compute.backend import Backend, select_backend
from rvc_index.tools import speechlike
from rvc_index.tools.synth import SpeakerSpec, write_speaker

from benchmarks.bench_rvc import run_measured

REPO = Path(__file__).resolve().parent.parent
SECTION = "## K-means (compress stage)"
INTRO = ("`compress.method=minibatch` (ours, `pipeline/stages/compress.py`) against sklearn `MiniBatchKMeans` as RVC "
         "runs it, in one run of `benchmarks/bench_kmeans.py` on the same synthetic collection. Each runs in "
         "its own process (peak RSS from `wait4`). Time: sklearn's `fit` alone; ours all of `compress()`, "
         "reading the files included. Inertia: exact mean squared distance of every row to its nearest "
         "centre. CPU s: user + system seconds of that process. Load avg: the machine's 1-minute load before / "
         "after the process (wall times depend on the load: compare within one run).")


def dataset(data_dir: Path, rows: int, dim: int, seed: int = 0, collection: str = "synth") -> Path:
    """The feature folder of a ``rows`` x ``dim`` collection (``synth``, or a ``tools.speechlike`` kind),
    written once and reused."""
    tag = "" if collection == "synth" else f"{collection}-"
    folder = data_dir / f"{tag}n{rows}-d{dim}-s{seed}" / "bench" / f"3_feature{dim}"
    done = folder.parent / ".complete"
    if not done.is_file():
        started = time.perf_counter()
        if collection == "synth":
            write_speaker(folder.parent.parent, SpeakerSpec("bench", rows, dim), seed)
        else:
            reason = speechlike.unavailable(collection)
            if reason:
                raise SystemExit(f"--collection {collection}: {reason}")
            speechlike.write_collection(folder.parent.parent, collection, "bench", rows, dim, seed)
        done.write_text(json.dumps({"rows": rows, "dim": dim, "seed": seed, "collection": collection}))
        print(f"wrote {collection} {rows:,} x {dim} to {folder} in {time.perf_counter() - started:.0f} s", flush=True)
    return folder


def open_features(feature_dir: Path) -> Any:
    from rvc_index.data.feature_set import open_feature_set
    from rvc_index.data.layouts import resolve_experiment
    from rvc_index.data.sources import scan_manifest

    experiment = resolve_experiment(feature_dir)
    return open_feature_set(experiment, scan_manifest(experiment))


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def matmul_gflops(backend: Backend, rows: int, dim: int, cols: int, repeats: int = 5) -> float:
    """GFLOP/s of a float32 [rows, dim] x [dim, cols] product on the backend (best of ``repeats``)."""
    a = backend.asarray(np.random.default_rng(0).standard_normal((rows, dim)))
    b = backend.asarray(np.random.default_rng(1).standard_normal((dim, cols)))
    float((a @ b)[0, 0])  # warm up; reading one value back waits for the device
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        float((a @ b)[0, 0])
        best = min(best, time.perf_counter() - started)
    return 2.0 * rows * dim * cols / best / 1e9


def distance_step_gflops(backend: Backend, state: Any, batch: np.ndarray, nprobe: int) -> float:
    """GFLOP/s of one assignment of ``batch`` with the fit's assigner (the matrix products it needs / its time)."""
    from rvc_index.compute.kernels import squared_norms

    xp = backend.xp
    rows = backend.asarray(batch)
    norms = squared_norms(xp, rows)
    state.assigner.prepare(xp, state.centres)
    state.assigner.assign(xp, rows, norms, None)  # warm up
    backend.sync()
    started = time.perf_counter()
    labels, _ = state.assigner.assign(xp, rows, norms, None)
    int(labels[0])
    seconds = time.perf_counter() - started
    k, d = state.centres.shape
    if state.coarse is None:
        flops = 2.0 * rows.shape[0] * d * k
    else:
        k1 = state.coarse.shape[0]
        flops = 2.0 * rows.shape[0] * d * (k1 + nprobe * getattr(state.assigner, "spread", 1) * k / k1)
    return flops / seconds / 1e9


def child_sklearn(feature_dir: Path, k: int, seed: int, out: Path) -> dict[str, Any]:
    """RVC's ``train_index`` k-means: every file loaded, concatenated, shuffled, MiniBatchKMeans."""
    from sklearn.cluster import MiniBatchKMeans

    big_npy = np.concatenate([np.load(feature_dir / name) for name in sorted(os.listdir(feature_dir))], 0)
    big_npy = big_npy[np.random.default_rng(seed).permutation(big_npy.shape[0])]
    model = MiniBatchKMeans(n_clusters=k, verbose=False, batch_size=256 * (os.cpu_count() or 1),
                            compute_labels=False, init="random", random_state=seed)
    cpu, started = cpu_seconds(), time.perf_counter()
    centres = model.fit(big_npy).cluster_centers_.astype(np.float32)
    result = {"seconds": time.perf_counter() - started, "cpu_seconds": cpu_seconds() - cpu,
              "steps": int(model.n_steps_), "batch_rows": 256 * (os.cpu_count() or 1)}
    np.save(out / "centres.npy", centres)
    return result


def child_ours(feature_dir: Path, k: int, seed: int, out: Path, backend_name: str,
               overrides: Sequence[str]) -> dict[str, Any]:
    """Ours: the compress stage as the runner calls it (no Dask cluster: local threads)."""
    from rvc_index.compute.warm import ensure_warm
    from rvc_index.config.loading import load_config
    from rvc_index.runtime.progress import configure_logging
    from rvc_index.runtime.run import Run
    from rvc_index.stages.compress import fit_centroids, plan_kmeans

    configure_logging()
    backend = select_backend(backend_name)  # type: ignore[arg-type]
    warm_started = time.perf_counter()
    ensure_warm(backend)  # a GPU's kernels compiled (cold cache) or loaded before the clock starts: reported apart
    warm_seconds = time.perf_counter() - warm_started
    config = load_config(None, [f"compress.n_centroids={k}", *overrides]).compress
    features = open_features(feature_dir)
    kplan = plan_kmeans(features.n_rows, k, config, backend)
    cpu, started = cpu_seconds(), time.perf_counter()
    state = fit_centroids(features, kplan, Run(backend, seed=seed))
    centres = backend.to_host(state.centres).astype(np.float32)
    seconds = time.perf_counter() - started
    passes = kplan.steps * kplan.batch_rows / features.n_rows + len(state.msd)  # (device: over the device rows)
    result: dict[str, Any] = {"seconds": seconds, "cpu_seconds": cpu_seconds() - cpu, "steps": state.step,
                              "reseeded": int(state.reseeded), "msd_per_pass": [round(m, 5) for m in state.msd],
                              "plan": kplan.describe(), "backend": backend.describe(),
                              "warm_seconds": round(warm_seconds, 2),
                              "data_passes": round(passes, 2), "two_level": state.coarse is not None,
                              "nprobe": config.nprobe, "spread": config.spread}
    if backend.is_gpu:
        batch = np.load(feature_dir / sorted(os.listdir(feature_dir))[0])
        rows = np.concatenate([batch] * (kplan.batch_rows // max(len(batch), 1) + 1))[:kplan.batch_rows]
        peak = matmul_gflops(backend, kplan.batch_rows, features.dim, k)
        step = distance_step_gflops(backend, state, rows, config.nprobe)
        result.update(rows_per_s=round(features.n_rows * passes / seconds), matmul_gflops=round(peak, 1),
                      distance_gflops=round(step, 1), distance_share_of_matmul=round(step / peak, 3))
    np.save(out / "centres.npy", centres)
    if state.coarse is not None:
        np.save(out / "coarse.npy", backend.to_host(state.coarse))
    return result


def run_child(method: str, feature_dir: Path, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """One method in its own process; returns its timings and the kernel's peak RSS."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "benchmarks.bench_kmeans", "--child", method, "--feature-dir", str(feature_dir),
           "--k", str(args.k), "--seed", str(args.seed), "--out", str(out), "--backend", args.backend]
    for override in args.set:
        cmd += ["--set", override]
    load_before = os.getloadavg()[0]
    measured = run_measured(cmd, out / f"{method}.log", args.timeout)
    if measured["returncode"] != 0:
        raise SystemExit(f"{method} failed (exit {measured['returncode']}), see {measured['log']}")
    result = json.loads((out / "result.json").read_text())
    result.update(process_seconds=measured["seconds"], peak_rss_mb=measured["peak_rss_mb"],
                  load_before=load_before, load_after=os.getloadavg()[0])
    return result


def exact_inertias(feature_dir: Path, centre_sets: dict[str, np.ndarray], backend: Backend) -> dict[str, float]:
    """Exact mean squared distance of every row to its nearest centre, per centre set, in one read."""
    from rvc_index.compute.kernels import squared_norms
    from rvc_index.compute.knn import nearest
    from rvc_index.runtime.stream import iter_blocks

    xp = backend.xp
    sets = {name: (backend.asarray(c), 0.5 * squared_norms(xp, backend.asarray(c))) for name, c in centre_sets.items()}
    totals = dict.fromkeys(centre_sets, 0.0)
    rows = 0
    for block in iter_blocks(open_features(feature_dir).array):
        x = backend.asarray(block)
        for name, (centres, norms) in sets.items():
            totals[name] += float(nearest(xp, x, centres, norms)[1].astype(xp.float64).sum())
        rows += block.shape[0]
    return {name: total / rows for name, total in totals.items()}


def assignment_quality(feature_dir: Path, out: Path, nprobe: int, sample: int, seed: int,
                       spread: int = 1) -> dict[str, float]:
    """Our two-level assignment against the exact one, on ``sample`` rows and our final centres."""
    from rvc_index.compute.knn import nearest
    from rvc_index.compute.two_level import assign_two_level, build_tree
    from rvc_index.runtime.stream import sample_row_ids, take_rows

    if not (out / "coarse.npy").is_file():
        return {}
    features = open_features(feature_dir)
    rows = take_rows(features.array, sample_row_ids(features.n_rows, sample, np.random.default_rng(seed)))
    centres = np.load(out / "centres.npy")
    exact_labels, exact = nearest(np, rows, centres)
    labels, approx = assign_two_level(np, build_tree(np, centres, np.load(out / "coarse.npy"), spread), rows,
                                      nprobe)
    return {"rows": len(rows), "same_centre": float((labels == exact_labels).mean()),
            "approx_over_exact": float(approx.astype(np.float64).mean() / exact.astype(np.float64).mean())}


def render(result: dict[str, Any]) -> str:
    """A markdown subsection: command, table, and notes for one run."""
    n, d, k = result["rows"], result["dim"], result["k"]
    collection = result.get("collection", "synth")
    lines = [f"### {n:,} x {d}, K = {k:,}, {collection} ({result['backend']})", "", "```", result["command"], "```", "",
             "| method | k-means s | speed-up | CPU s | CPU speed-up | inertia | inertia / sklearn | peak RSS MB "
             "| load avg |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    base = result["methods"].get("sklearn")
    for name, m in result["methods"].items():
        speed = f"{base['seconds'] / m['seconds']:.1f}x" if base else "-"
        cpu_speed = f"{base['cpu_seconds'] / m['cpu_seconds']:.1f}x" if base else "-"
        ratio = f"{m['inertia'] / base['inertia']:.4f}" if base and "inertia" in m else "-"
        inertia = f"{m['inertia']:.4f}" if "inertia" in m else "-"
        lines.append(f"| {name} | {m['seconds']:.1f} | {speed} | {m['cpu_seconds']:.1f} | {cpu_speed} | {inertia} "
                     f"| {ratio} | {m['peak_rss_mb']:,.0f} | {m['load_before']:.1f} / {m['load_after']:.1f} |")
    ours = result["methods"].get("ours", {})
    notes = []
    if base:
        notes.append(f"sklearn: {base['steps']:,} steps of {base['batch_rows']} rows.")
    if ours:
        notes.append(f"ours: {ours['plan']}; {ours['data_passes']} passes over the data; "
                     f"{ours['reseeded']} dead centres re-seeded.")
    quality = result.get("assignment")
    if quality:
        notes.append(f"Two-level assignment (nprobe {ours['nprobe']}, spread {ours.get('spread', 1)})"
                     f" on {quality['rows']:,} sampled rows and "
                     f"our final centres: same centre as exact for {100 * quality['same_centre']:.1f} %, mean "
                     f"squared distance {quality['approx_over_exact']:.4f} x exact.")
    if "matmul_gflops" in ours:
        notes.append(f"GPU: {ours['rows_per_s']:,} rows/s; distance step {ours['distance_gflops']:,.0f} GFLOP/s = "
                     f"{100 * ours['distance_share_of_matmul']:.0f} % of the measured fp32 matmul rate "
                     f"({ours['matmul_gflops']:,.0f} GFLOP/s).")
    for rss in result.get("rss_runs", []):
        notes.append(f"Memory: ours on {rss['rows']:,} rows peaked at {rss['peak_rss_mb']:,.0f} MB "
                     f"({rss['seconds']:.1f} s), {rss['rss_ratio']:.3f} x its peak at {n:,} rows.")
    return "\n".join(lines + [""] + [f"- {note}" for note in notes]) + "\n"


def update_docs(path: Path, subsection: str) -> None:
    """Put ``subsection`` into the ``## K-means (compress stage)`` section of ``path``, replacing the
    subsection with the same title; the rest of the file is kept."""
    from rvc_index.runtime.outputs import write_text_atomic

    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if SECTION not in text:
        text = text.rstrip() + f"\n\n{SECTION}\n\n{INTRO}\n"
    head, rest = text.split(SECTION, 1)
    following = rest.find("\n## ")
    body, tail = (rest, "") if following < 0 else (rest[:following], rest[following:])
    title = subsection.splitlines()[0]
    if title in body:
        before, after = body.split(title, 1)
        nxt = after.find("\n### ")
        body = before + subsection.rstrip() + "\n" + ("" if nxt < 0 else after[nxt:])
    else:
        body = body.rstrip() + "\n\n" + subsection.rstrip() + "\n"
    write_text_atomic(path, head + SECTION + body.rstrip() + "\n" + tail)


def run_bench(args: argparse.Namespace, command: str) -> dict[str, Any]:
    backend = select_backend(args.backend)  # type: ignore[arg-type]
    feature_dir = dataset(args.data_dir, args.rows, args.dim, args.seed, args.collection)
    work = args.data_dir / f"run-{args.collection}-n{args.rows}-d{args.dim}-k{args.k}"
    result: dict[str, Any] = {"rows": args.rows, "dim": args.dim, "k": args.k, "command": command,
                              "collection": args.collection,
                              "backend": backend.describe(), "methods": {}}
    methods = ([] if args.no_sklearn else ["sklearn"]) + ["ours"]
    for method in methods:
        result["methods"][method] = run_child(method, feature_dir, args, work / method)
        print(f"{method}: {json.dumps(result['methods'][method])}", flush=True)
    if not args.no_inertia:
        centre_sets = {m: np.load(work / m / "centres.npy") for m in methods}
        for name, value in exact_inertias(feature_dir, centre_sets, backend).items():
            result["methods"][name]["inertia"] = value
        ours = result["methods"]["ours"]
        result["assignment"] = assignment_quality(feature_dir, work / "ours", ours["nprobe"], args.quality_rows,
                                                  args.seed, ours.get("spread", 1))
    for rows in args.rss_rows:
        big = run_child("ours", dataset(args.data_dir, rows, args.dim, args.seed, args.collection), args,
                        work / f"ours-{rows}")
        big.update(rows=rows, rss_ratio=big["peak_rss_mb"] / result["methods"]["ours"]["peak_rss_mb"])
        result.setdefault("rss_runs", []).append(big)
    text = render(result)
    print("\n" + text)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if args.docs:
        update_docs(args.docs, text)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_kmeans", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--k", type=int, default=10_000)
    parser.add_argument("--collection", choices=("synth", *speechlike.KINDS), default="synth",
                        help="tools.synth, or a tools.speechlike kind (speech needs espeak-ng)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", choices=["cpu", "gpu", "auto"], default="cpu")
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/rvc-index-kmeans"),
                        help="where collections are written once and reused")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="compress.* override for ours, e.g. compress.nprobe=2")
    parser.add_argument("--no-sklearn", action="store_true", help="run ours only")
    parser.add_argument("--no-inertia", action="store_true", help="skip the exact inertia pass")
    parser.add_argument("--rss-rows", type=int, action="append", default=[],
                        help="also run ours on a collection of this many rows and compare peak RSS")
    parser.add_argument("--quality-rows", type=int, default=20_000, help="rows to compare assignments on")
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--docs", type=Path, help="update this file's K-means section (docs/benchmarks.md)")
    parser.add_argument("--child", choices=["sklearn", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--feature-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        if args.child == "sklearn":
            result = child_sklearn(args.feature_dir, args.k, args.seed, args.out)
        else:
            result = child_ours(args.feature_dir, args.k, args.seed, args.out, args.backend, args.set)
        (args.out / "result.json").write_text(json.dumps(result))
        return 0
    command = "python -m benchmarks.bench_kmeans " + " ".join(argv if argv is not None else sys.argv[1:])
    run_bench(args, command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
