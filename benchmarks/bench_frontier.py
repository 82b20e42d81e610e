"""The frontier of what an index stores against what its consumers hold (issue 21): per stored count and list
format, RVC's blend error against exact retrieval over the original frames, recall@8, what a tool holds
(``big`` MB, index MB, Applio realtime's GPU MB) and the search time per frame at one thread.

Stored vectors are our k-means centroids (the compress stage, as a build runs it) or every frame (``all``);
each list format that every consumer loads (docs/consumers.md) is built over them with the default preset's
index settings, and every index is evaluated on the same held-out utterances against one exact reference.

    python -m benchmarks.bench_frontier --feature-dir /data/speech/3_feature768 --stored 10000,30000,100000,all
    python -m benchmarks.bench_frontier --speech 300000 --stored 10000,30000,100000,174648,all   # espeak-ng speech
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import REPO, machine, split_collection

DEFAULT_WORK = Path("/tmp/rvc-index-frontier")
SECTION = "## Frontier: stored vectors, list format, blend error and what a consumer holds"
MIB = 2**20


def speech_collection(rows: int, dim: int, work: Path, seed: int) -> Path:
    """A collection computed from real synthesized speech (``tools.speechlike``), written once per size."""
    from rvc_index.tools.speechlike import write_collection

    root = work / f"speech-{rows}x{dim}-s{seed}"
    marker = root / "done.json"
    folder = root / "voice" / f"3_feature{dim}"
    if not marker.is_file():
        folder = write_collection(root, "speech", "voice", rows, dim, seed)
        marker.write_text(json.dumps({"rows": rows, "dim": dim, "seed": seed}))
    return folder


def stored_vectors(features: Any, count: int | None, seed: int) -> tuple[np.ndarray, float, str]:
    """(vectors [S, D], seconds, how): our k-means centroids of ``count`` (the compress stage as a build runs it:
    the budget's route for that many centres), or every frame when ``count`` is None or not below the rows."""
    from rvc_index.compute.backend import select_backend
    from rvc_index.config.loading import load_config
    from rvc_index.runtime.run import Run
    from rvc_index.runtime.stream import iter_blocks
    from rvc_index.stages.compress import fit_centroids, plan_kmeans

    started = time.perf_counter()
    if count is None or count >= features.n_rows:
        return np.concatenate(list(iter_blocks(features))), time.perf_counter() - started, "every frame"
    backend = select_backend("cpu")
    config = load_config("tips-plain", [f"compress.n_centroids={count}"]).compress
    kplan = plan_kmeans(features.n_rows, count, config, backend)
    state = fit_centroids(features, kplan, Run(backend, seed=seed))
    centres = backend.to_host(state.centres).astype(np.float32)
    route = "fixed cells" if kplan.fixed_cells else "two-level"
    return centres, time.perf_counter() - started, f"k-means ({route})"


def measure(vectors: np.ndarray, lists: str, holdout: Any, features: Any, reference: dict[str, np.ndarray],
            seed: int) -> dict[str, Any]:
    """Build one index of ``lists`` over ``vectors`` with the default preset's settings and evaluate it."""
    from rvc_index.compute.backend import select_backend
    from rvc_index.config.loading import load_config
    from rvc_index.config.schema import SEARCH_K
    from rvc_index.evaluation.evaluate import evaluate_index
    from rvc_index.evaluation.sizing import full_plan
    from rvc_index.inspection.consumers import holdings, static_problems
    from rvc_index.inspection.describe import list_sizes
    from rvc_index.runtime.progress import Progress
    from rvc_index.runtime.run import Run
    from rvc_index.stages.indexing import (
        add_batches,
        nprobe_for_k,
        plan_index,
        set_search_params,
        train_index,
    )

    run = Run(select_backend("cpu"), seed=seed)
    config = load_config("tips-plain")
    index_config = dataclasses.replace(config.index, lists=lists, min_coded_rows=0)
    plan = plan_index(vectors.shape[0], vectors.shape[1], index_config, config.budget)
    started = time.perf_counter()
    index = train_index(vectors, plan, run, raw_rows=False)
    add_batches(index, run.batches(vectors, plan.add_batch_rows), run.backend,
                Progress(f"frontier: add {lists}", vectors.shape[0], "vectors", step_percent=50))
    nprobe = nprobe_for_k(list_sizes(index), SEARCH_K, plan.nprobe)
    set_search_params(index, nprobe)
    index_seconds = time.perf_counter() - started
    result = evaluate_index(index, holdout, features, run, reference=reference,
                            plan=full_plan(len(holdout.queries), sweep=False, plot=False))
    held = holdings(index)
    return {"lists": lists, "factory": plan.factory, "nprobe": nprobe, "vectors": int(index.ntotal),
            "recall_at_k": result.recall_at_k, "blend_error": result.blend_error.mean,
            "blend_error_p95": result.blend_error.p95, "missing_label_share": result.missing_label_share,
            "us_per_frame": result.latency.us_per_frame, "us_per_frame_planned": plan.us_per_frame,
            "big_mb": round(held["big"] / MIB, 1), "index_mb": round(held["index"] / MIB, 1),
            "gpu_applio_mb": round(held["gpu_applio"] / MIB, 1), "index_seconds": round(index_seconds, 2),
            "consumer_problems": static_problems(index, vectors.shape[1])}


def run_frontier(feature_dir: Path, stored: Sequence[int | None], formats: Sequence[str], work: Path,
                 max_queries: int, seed: int) -> dict[str, Any]:
    from rvc_index.compute.backend import select_backend
    from rvc_index.config.loading import load_config
    from rvc_index.data.feature_set import open_feature_set
    from rvc_index.data.layouts import resolve_experiment
    from rvc_index.data.sources import scan_manifest
    from rvc_index.evaluation.evaluate import exact_reference
    from rvc_index.evaluation.holdout import holdout_from_folder
    from rvc_index.runtime.run import Run
    from rvc_index.stages.compress import budget_vectors

    collection = split_collection(feature_dir, work, seed=seed)
    experiment = resolve_experiment(collection.feature_dir)
    features = open_feature_set(experiment, scan_manifest(experiment))
    holdout = holdout_from_folder(collection.heldout_dir, max_queries, seed, collection.dim)
    reference = exact_reference(Run(select_backend("cpu"), seed=seed), holdout, features)
    budget = budget_vectors(collection.dim, load_config("tips-plain").budget)
    rows = []
    for count in stored:
        vectors, seconds, how = stored_vectors(features, count, seed)
        print(f"{len(vectors):,} stored vectors ({how}) in {seconds:.1f} s", flush=True)
        for lists in formats:
            row = {"stored": int(len(vectors)), "how": how, "kmeans_seconds": round(seconds, 1),
                   "within_budget": len(vectors) <= budget, **measure(vectors, lists, holdout, features, reference,
                                                                       seed)}
            print(json.dumps({k: v for k, v in row.items() if k != "consumer_problems"}), flush=True)
            rows.append(row)
        del vectors
    return {"rows": collection.rows, "dim": collection.dim, "queries": int(len(holdout.queries)),
            "budget_vectors": budget, "collection": str(feature_dir), "machine": machine(),
            "date": time.strftime("%Y-%m-%d"), "points": rows}


def table(result: dict[str, Any]) -> str:
    """The frontier as a markdown table, best blend error within the budget marked."""
    points = result["points"]
    within = [p for p in points if p["within_budget"] and not p["consumer_problems"]]
    best = min(within, key=lambda p: p["blend_error"]) if within else None
    lines = ["| stored | how | lists | blend error | recall@8 | `big` MB | index MB | Applio GPU MB | "
             "us/frame (1 thread) | within the default budget |",
             "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for p in points:
        mark = " **(best within budget)**" if p is best else ""
        lines.append(f"| {p['stored']:,} | {p['how']} | {p['lists']} | {p['blend_error']:.4f}{mark} | "
                     f"{p['recall_at_k']:.3f} | {p['big_mb']:,.0f} | {p['index_mb']:,.0f} | "
                     f"{p['gpu_applio_mb']:,.0f} | {p['us_per_frame']:,.0f} | "
                     f"{'yes' if p['within_budget'] else 'no'} |")
    return "\n".join(lines)


def update_docs(docs: Path, figures: Path) -> None:
    """Rewrite the frontier section of ``docs`` from every ``frontier-*.json`` in ``figures``."""
    runs = [json.loads(p.read_text()) for p in sorted(figures.glob("frontier-*.json"))]
    parts = [SECTION, "",
             "Written by `benchmarks/bench_frontier.py` (the command is under each table). Blend error: RVC's k=8 "
             "blend of `reconstruct_n` rows against the blend of the exact 8 neighbours among the original frames, "
             "on held-out utterances; recall@8 against exact search over the stored vectors; `big`: what "
             "`reconstruct_n` returns (ntotal x D x 4 bytes, in every consumer's RAM); Applio GPU: big, its "
             "transpose and a norm per vector; us/frame: one thread, batches of 50 frames, this machine. Every "
             "layout listed is an IndexIVF every consumer loads (docs/consumers.md). What the tables decided: the "
             "next section.", ""]
    for run in sorted(runs, key=lambda r: (r["dim"], r["rows"])):
        parts += [f"### {run['rows']:,} frames x {run['dim']} ({run['date']}, {run['machine']['cpus']} cores)", "",
                  f"`{run.get('command', '')}`: {run['queries']} held-out query frames; the default budget holds "
                  f"{run['budget_vectors']:,} vectors.", "", table(run), ""]
    text = docs.read_text() if docs.is_file() else ""
    start = text.find(SECTION)
    if start < 0:
        text = text.rstrip() + "\n\n" + "\n".join(parts)
    else:
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start] + "\n".join(parts) + (text[end:] if end >= 0 else "\n")
    docs.write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    from rvc_index.config.schema import LIST_FORMATS
    from rvc_index.runtime.outputs import write_json_atomic
    from rvc_index.runtime.progress import configure_logging

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_frontier", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--feature-dir", type=Path, help="a collection (2%% of its files are held out as queries)")
    source.add_argument("--speech", type=int, metavar="ROWS", help="generate this many frames of espeak-ng speech")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--stored", default="10000,30000,100000,all",
                        help="comma-separated stored counts; 'all' = every frame (default 10000,30000,100000,all)")
    parser.add_argument("--lists", default=",".join(LIST_FORMATS), help="list formats (default: all of them)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--figures", type=Path, default=REPO / "docs" / "bench")
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    configure_logging(0)
    feature_dir = args.feature_dir or speech_collection(args.speech, args.dim, args.work, args.seed)
    stored = [None if value == "all" else int(value) for value in args.stored.split(",") if value]
    result = run_frontier(feature_dir, stored, [v for v in args.lists.split(",") if v], args.work, args.queries,
                          args.seed)
    result["command"] = shlex.join(["python", "-m", "benchmarks.bench_frontier", *argv])
    print(table(result))
    if not args.no_write:
        args.figures.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.figures / f"frontier-{result['rows']}x{result['dim']}.json", result)
        update_docs(args.docs, args.figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
