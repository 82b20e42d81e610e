"""End to end against RVC's own recipe: one collection per size, RVC's ``train_index`` and our presets.

Every system builds in a subprocess of its own, timed from launch to exit and with its peak RSS
measured by the OS (``wait4``): ours run the ``rvc-index build`` command line as a user runs it (its
own evaluation included, sized to the build; ``--no-build-eval`` turns it off), RVC's recipe runs
``benchmarks/rvc_recipe.py``. Then every index is evaluated the same way
(``rvc_index.evaluation.evaluate``) on held-out utterances of the same speaker that no system
indexed, against one exact reference over the original frames.

    python -m benchmarks.bench_rvc --rows 6000,60000,300000,1000000   # RVC vs the default preset, per size
    python -m benchmarks.bench_rvc --rows 100000 --presets all         # every preset at one size
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_report import (
    RVC,
    add_ratios,
    checks,
    readme_table,
    sweep_rows,
    table_rows,
    update_docs,
)
from benchmarks.harness import (
    REPO,
    SPEAKER,
    Collection,
    generate,
    machine,
    run_measured,
    split_collection,
    warm_cache,
)

CONFIGS = REPO / "configs"
DEFAULT_WORK = Path(tempfile.gettempdir()) / "rvc-index-bench"
DEFAULT_PRESETS = ("tips-plain",)  # the CLI's default preset
HARNESS_VERSION = 3  # 2: our builds run their own evaluation (sized to the build), as users run them; 3: the budget
# (issue 21): the default stores as many vectors as the budget holds, checked against issue 21's targets

__all__ = ["generate", "run_bench", "run_measured", "run_sweep"]


def ours_command(system: str, collection: Collection, out: Path, build_eval: bool = True) -> list[str]:
    """``rvc-index build`` as a user runs it; ``build_eval=False`` turns its evaluation off.

    ``system`` is a preset name, optionally with overrides: ``tips+expand.enabled=false``.
    """
    preset, *overrides = system.split("+")
    cmd = [sys.executable, "-m", "rvc_index", "build", str(collection.feature_dir), "--config", preset,
           "--out", str(out), "--backend", "cpu", "--force"]
    for override in overrides + ([] if build_eval else ["evaluate.recall_queries=0"]):
        cmd += ["--set", override]
    return cmd


def rvc_command(collection: Collection, out: Path, seed: int) -> list[str]:
    return [sys.executable, "-m", "benchmarks.bench_rvc", "_rvc_child", str(collection.feature_dir), str(out),
            "--dim", str(collection.dim), "--seed", str(seed)]


def rvc_child(feature_dir: str, out: str, dim: int, seed: int) -> int:
    """RVC's ``train_index`` in this process: build, save total_fea.npy and the added index."""
    import faiss

    from benchmarks.rvc_recipe import rvc_train_index

    timings: dict[str, float] = {}
    build = rvc_train_index(Path(feature_dir), dim, seed=seed, timings=timings)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / "total_fea.npy", build.big_npy)
    path = out_dir / f"added_IVF{build.n_ivf}_Flat_nprobe_1_{SPEAKER}_v2.index"
    faiss.write_index(build.index, str(path))
    print(json.dumps({"index": str(path), "timings": timings, "compressed": build.compressed}))
    return 0


def built_index(system: str, out: Path) -> Path:
    found = sorted(out.glob("*.index"))
    if len(found) != 1:
        raise RuntimeError(f"{system}: expected one index in {out}, found {[p.name for p in found]}")
    return found[0]


def own_evaluation(out: Path, command_s: float) -> dict[str, Any]:
    """What our build's report says of its own evaluation: seconds (evaluation + picture), their share of
    the command's wall time ``command_s`` (what its user waits: interpreter start and imports included; the
    build sizes its evaluation against the same clock), and the plan's query count."""
    reports = sorted(out.glob("*.report.json"))
    if not reports:
        return {}
    report = json.loads(reports[0].read_text())
    timings, evaluation = report.get("timings", {}), report.get("evaluation") or {}
    spent = timings.get("evaluate", 0.0) + timings.get("report", 0.0)
    return {"build_eval_s": round(spent, 3), "build_eval_share": round(spent / max(command_s, 1e-9), 4),
            "build_eval_queries": evaluation.get("queries", 0), "build_timings": timings}


def evaluate_systems(collection: Collection, systems: list[dict[str, Any]], max_queries: int,
                     seed: int) -> None:
    """Evaluate every built index on the same held-out queries against one exact reference."""
    import faiss
    from rvc_index.compute.backend import select_backend
    from rvc_index.data.feature_set import open_feature_set
    from rvc_index.data.layouts import resolve_experiment
    from rvc_index.data.sources import scan_manifest
    from rvc_index.evaluation.evaluate import evaluate_index, exact_reference
    from rvc_index.evaluation.holdout import holdout_from_folder
    from rvc_index.evaluation.sizing import full_plan
    from rvc_index.runtime.run import Run

    run = Run(select_backend("cpu"), seed=seed)
    experiment = resolve_experiment(collection.feature_dir)
    features = open_feature_set(experiment, scan_manifest(experiment))
    holdout = holdout_from_folder(collection.heldout_dir, max_queries, seed, collection.dim)
    reference = exact_reference(run, holdout, features.array)
    for system in systems:
        if system["returncode"] != 0:
            continue
        index = faiss.read_index(system["index"])
        result = evaluate_index(index, holdout, features.array, run, reference=reference,
                                plan=full_plan(len(holdout.queries), sweep=False))
        ivf = faiss.extract_index_ivf(index)
        blend = result.blend_error
        system.update(recall_at_k=result.recall_at_k, blend_error=blend.mean, blend_error_p95=blend.p95,
                      coverage=result.coverage, coverage_exact=result.coverage_exact,
                      us_per_frame=result.latency.us_per_frame, missing_label_share=result.missing_label_share,
                      vectors=int(index.ntotal), n_list=int(ivf.nlist), nprobe=int(ivf.nprobe),
                      index_mb=round(Path(system["index"]).stat().st_size / 2**20, 1),
                      ram_mb=round(result.size.ram_bytes / 2**20, 1), queries=result.queries)


def presets_available() -> list[str]:
    return sorted(p.stem for p in CONFIGS.glob("*.yaml"))


def run_bench(rows: int, dim: int = 768, presets: Sequence[str] | None = None, *, work: Path = DEFAULT_WORK,
              feature_dir: Path | None = None, max_queries: int = 1000, heldout_rows: int = 2000, seed: int = 0,
              timeout: float = 3600.0, figures: Path | None = REPO / "docs" / "bench",
              docs: Path | None = REPO / "docs" / "benchmarks.md", command: str = "",
              build_eval: bool = True, kind: str = "synth") -> dict[str, Any]:
    """Build with RVC's recipe and ``presets`` (default: the default preset) on one collection; evaluate;
    print and write results."""
    from rvc_index.runtime.progress import get_logger
    from rvc_index.runtime.tables import format_table

    log = get_logger()
    work = Path(work)
    collection = (split_collection(feature_dir, work, seed=seed) if feature_dir is not None
                  else generate(work, rows, dim, heldout_rows, seed, kind))
    log.info("collection: %s rows x %d in %s; held-out utterances in %s", f"{collection.rows:,}", collection.dim,
             collection.feature_dir, collection.heldout_dir)
    warm_cache(collection.feature_dir)
    started_machine = machine()
    out_root = work / f"out-{collection.rows}x{collection.dim}"
    systems = []
    for name in [RVC, *(presets or DEFAULT_PRESETS)]:
        out = out_root / re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        out.mkdir(parents=True, exist_ok=True)
        for stale in [*out.glob("*.index"), *out.glob("*.report.json")]:
            stale.unlink()
        cmd = (rvc_command(collection, out, seed) if name == RVC
               else ours_command(name, collection, out, build_eval))
        log.info("%s: building (%s)", name, " ".join(cmd[1:]))
        entry = {"system": name, **run_measured(cmd, out_root / f"{name}.log", timeout)}
        if entry["returncode"] == 0:
            entry["index"] = str(built_index(name, out))
            entry.update(own_evaluation(out, entry["seconds"]))
        else:
            log.error("%s: failed with exit code %s, see %s", name, entry["returncode"], entry["log"])
        log.info("%s: %.1f s, peak RSS %.0f MB", name, entry["seconds"], entry["peak_rss_mb"])
        systems.append(entry)
    evaluate_systems(collection, systems, max_queries, seed)
    add_ratios(systems)
    evaluated = next((s["queries"] for s in systems if "queries" in s), 0)  # whole utterances: <= max_queries
    result = {"rows": collection.rows, "dim": collection.dim, "queries": evaluated, "command": command,
              "collection": kind if feature_dir is None else str(feature_dir),
              "machine": started_machine, "date": time.strftime("%Y-%m-%d"), "systems": systems,
              "harness": HARNESS_VERSION, "build_eval": build_eval}
    print(format_table(table_rows(result)))
    for line in checks(result):
        print("-", line.replace("**", ""))
    if figures is not None:
        from rvc_index.runtime.outputs import write_json_atomic

        figures.mkdir(parents=True, exist_ok=True)
        named = "" if feature_dir is not None or kind == "synth" else f"{kind}-"
        write_json_atomic(figures / f"end-to-end-{named}{collection.rows}x{collection.dim}.json", result)
        if docs is not None:
            render(figures, docs)
    return result


def run_sweep(rows: Sequence[int], dim: int = 768, **options: Any) -> list[dict[str, Any]]:
    """``run_bench`` at every size in ``rows``, then RVC and our first preset side by side, one line per size."""
    from rvc_index.runtime.tables import format_table

    results = [run_bench(n, dim, **options) for n in rows]
    if len(results) > 1:
        print()
        print(format_table(sweep_rows(results)))
        print()
        print(readme_table(results))
    return results


def make_parser(prog: str = "python -m benchmarks.bench_rvc") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="End to end against RVC's own index recipe.")
    parser.add_argument("--rows", default="100000",
                        help="frames to index; a comma-separated list sweeps sizes (default 100000)")
    parser.add_argument("--dim", type=int, default=768, help="feature width (default 768)")
    parser.add_argument("--presets", help="comma-separated presets, each optionally with overrides "
                        f"(tips+expand.enabled=false), or 'all' (default: {','.join(DEFAULT_PRESETS)})")
    parser.add_argument("--feature-dir", type=Path, help="take this collection instead of generating one "
                        "(2%% of its files are held out as queries)")
    parser.add_argument("--collection", choices=["synth", "speech", "manifold", "zipf"], default="synth",
                        help="what to generate: tools.synth, or tools.speechlike's (speech: espeak-ng through a "
                        "log-mel front end; needs espeak-ng) (default synth)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"data and outputs (default {DEFAULT_WORK})")
    parser.add_argument("--queries", type=int, default=1000, help="held-out query frames (default 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per build (default 3600)")
    parser.add_argument("--no-build-eval", action="store_true",
                        help="build ours without their own evaluation (RVC's recipe evaluates nothing)")
    parser.add_argument("--figures", type=Path, default=REPO / "docs" / "bench",
                        help="where the JSON results and PNG go (default docs/bench)")
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks.md",
                        help="markdown file whose '## End to end vs RVC' section is rewritten")
    parser.add_argument("--no-write", action="store_true", help="print only: write no JSON, PNG or docs")
    parser.add_argument("--render", action="store_true",
                        help="run nothing: redraw the PNG and the docs section from the JSON results in --figures")
    return parser


def render(figures: Path, docs: Path) -> list[dict[str, Any]]:
    """Redraw ``end-to-end.png`` and the docs section from every ``end-to-end-*.json`` in ``figures``."""
    from benchmarks.bench_report import write_bench_png

    runs = [json.loads(p.read_text()) for p in sorted(figures.glob("end-to-end-*.json"))]
    if not runs:
        raise FileNotFoundError(f"{figures}: no end-to-end-*.json results to render")
    png = write_bench_png(figures / "end-to-end.png", runs)
    update_docs(docs, runs, os.path.relpath(png, docs.parent))
    return runs


def run_from_args(args: argparse.Namespace, command: str) -> list[dict[str, Any]]:
    presets = [p for p in (args.presets or "").split(",") if p] or None
    if presets == ["all"]:
        presets = presets_available()
    try:
        rows = [int(value) for value in args.rows.split(",") if value]
    except ValueError:
        raise SystemExit(f"--rows: {args.rows!r} is not a comma-separated list of row counts") from None
    return run_sweep(rows, args.dim, presets=presets, work=args.work, feature_dir=args.feature_dir,
                     max_queries=args.queries, seed=args.seed, timeout=args.timeout,
                     figures=None if args.no_write else args.figures, docs=None if args.no_write else args.docs,
                     command=command, build_eval=not args.no_build_eval, kind=args.collection)


def main(argv: Sequence[str] | None = None) -> int:
    import shlex

    from rvc_index.runtime.progress import configure_logging

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_rvc_child"]:
        child = argparse.ArgumentParser()
        child.add_argument("feature_dir")
        child.add_argument("out")
        child.add_argument("--dim", type=int, required=True)
        child.add_argument("--seed", type=int, default=0)
        a = child.parse_args(argv[1:])
        return rvc_child(a.feature_dir, a.out, a.dim, a.seed)
    args = make_parser().parse_args(argv)
    configure_logging(0)
    if args.render:
        render(args.figures, args.docs)
        return 0
    results = run_from_args(args, shlex.join(["python", "-m", "benchmarks.bench_rvc", *argv]))
    return 0 if all(s["returncode"] == 0 for r in results for s in r["systems"]) else 1


if __name__ == "__main__":
    sys.exit(main())
