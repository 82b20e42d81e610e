"""Alpha query expansion: ours against the faiss notes' recipe, same data, same run; and its effect.

Throughput: one synthetic speaker (``rvc_index.tools.synth``) of ``--rows`` frames in memory; the notes'
recipe (L2-normalise, ``IVF512,PQ128x4fs,RFlat`` over the unit vectors, search ``num_expand``
neighbours, weight ``max(0, dot) ** alpha``, sum in batches, normalise) is timed against
``rvc_index.stages.expand.expand``; both neighbour lists are scored against exact cosine neighbours of
sampled rows. The exact route adds the share of the device's measured matrix-multiply rate
that the neighbour search reached.

Effect (``--effect``): for the demo speakers (``rvc-index demo``), whole utterances are held out,
the rest is built with the ``tips`` preset with expansion off, on, and on at unit norm, and RVC's
retrieval (k=8 search, ``(1/score)^2`` weights, blend of ``reconstruct_n`` rows) is run on the
held-out frames: how far each frame lies from its blended retrieval.

    python -m benchmarks.bench_expand --rows 100000 --dim 768
    python -m benchmarks.bench_expand --rows 100000 --dim 768 --backend gpu --method exact --tile-mb 2048 --no-reference
    python -m benchmarks.bench_expand --no-throughput --effect
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from rvc_index.compute.backend import Backend, select_backend
from rvc_index.compute.neighbours import exact_neighbours
from rvc_index.config.loading import load_config
from rvc_index.config.schema import ExpandConfig
from rvc_index.job.record import ExpansionRecord
from rvc_index.runtime.progress import configure_logging
from rvc_index.runtime.run import Run
from rvc_index.runtime.stream import sample_row_ids
from rvc_index.stages.expand import expand, plan_expansion

from benchmarks.bench_kmeans import matmul_gflops

REPO = Path(__file__).resolve().parent.parent
REFERENCE_FACTORY = "IVF512,PQ128x4fs,RFlat"
RVC_K = 8


def reference_recipe(x: np.ndarray, k: int, alpha: float, seed: int = 0,
                     batch_rows: int = 512) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """The notes' alpha-QE: (expanded unit vectors [N, D], neighbour ids [N, k], timings)."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    unit = x / np.maximum(1e-9, np.linalg.norm(x, ord=2, axis=-1, keepdims=True))
    index = faiss.index_factory(x.shape[1], REFERENCE_FACTORY)
    faiss.extract_index_ivf(index).cp.seed = seed
    index.train(unit)
    timings["train"] = time.perf_counter() - started
    started = time.perf_counter()
    index.add(unit)
    _, ids = index.search(unit, k)
    timings["add_search"] = time.perf_counter() - started
    started = time.perf_counter()
    out = np.empty_like(unit)
    for start in range(0, len(unit), batch_rows):
        rows, neighbours = unit[start:start + batch_rows], unit[ids[start:start + batch_rows]]
        weights = np.maximum(np.einsum("bd,bkd->bk", rows, neighbours), 0.0) ** alpha
        total = np.einsum("bk,bkd->bd", weights, neighbours)
        out[start:start + batch_rows] = total / np.maximum(1e-9, np.linalg.norm(total, axis=1, keepdims=True))
    timings["weight_sum"] = time.perf_counter() - started
    return out, ids, {key: round(value, 3) for key, value in timings.items()}


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row's exact neighbours that ``found`` holds."""
    return float(np.mean([len(set(f[f >= 0].tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth)]))


def _timed(fn: Any, *args: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - started


def throughput(args: argparse.Namespace, backend: Backend) -> dict[str, Any]:
    """Ours and (unless --no-reference) the notes' recipe, alternately ``--repeats`` times each."""
    from rvc_index.tools.synth import sample_frames

    x = sample_frames(args.rows, args.dim, args.seed)
    config = ExpandConfig(enabled=True, num_expand=args.num_expand, alpha=args.alpha, tile_mb=args.tile_mb,
                          method=args.method)
    ours_times, ref_times, ours, reference = [], [], None, None
    for _ in range(args.repeats):  # alternate, so both meet the same load on a shared machine
        ours, seconds = _timed(expand, x, plan_expansion(len(x), x.shape[1], config, backend),
                               Run(backend, seed=args.seed))
        ours_times.append(round(seconds, 3))
        if args.reference:
            reference, seconds = _timed(reference_recipe, x, args.num_expand, args.alpha, args.seed)
            ref_times.append(round(seconds, 3))
    queries = sample_row_ids(len(x), args.recall_queries, np.random.default_rng(args.seed + 1))
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-9)
    truth = backend.to_host(exact_neighbours(backend.xp, backend.asarray(unit[queries]), backend.asarray(unit),
                                             args.num_expand, 256 * 2**20))
    result: dict[str, Any] = {
        "rows": args.rows, "dim": args.dim, "num_expand": args.num_expand, "alpha": args.alpha,
        "backend": backend.describe(), "truth_queries": len(queries), "repeats": args.repeats,
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "ours": {"seconds": ours_times, "median_seconds": float(np.median(ours_times)),
                 "vectors_per_s": round(args.rows / float(np.median(ours_times))),
                 **{key: value for key, value in asdict(ExpansionRecord.of(ours)).items()
                    if key not in ("applied", "note", "seconds") and value is not None},
                 "estimated_neighbour_recall": ours.neighbour_recall,  # on the expansion's own sample
                 "neighbour_recall": round(recall(ours.neighbour_ids[queries], truth), 4),
                 "knn_gflop": ours.knn_gflop},
    }
    if ours.method == "exact":  # the share of this device's measured fp32 matrix-product rate
        rate = matmul_gflops(backend, 8192, args.dim, 8192)
        knn_rate = ours.knn_gflop / ours.timings["neighbours"]
        result["ours"].update(matmul_gflops=round(rate, 1), knn_gflops=round(knn_rate, 1),
                              knn_share_of_matmul_rate=round(knn_rate / rate, 3))
    if reference is not None:
        ref_vectors, ref_ids, ref_timings = reference
        ours_unit = np.asarray(ours.vectors) / np.maximum(np.linalg.norm(ours.vectors, axis=1, keepdims=True), 1e-9)
        result["reference"] = {"recipe": REFERENCE_FACTORY, "seconds": ref_times,
                               "median_seconds": float(np.median(ref_times)), "last_timings": ref_timings,
                               "vectors_per_s": round(args.rows / float(np.median(ref_times))),
                               "neighbour_recall": round(recall(ref_ids[queries], truth), 4)}
        result["speedup_median"] = round(float(np.median(ref_times)) / float(np.median(ours_times)), 2)
        result["speedup_best"] = round(min(ref_times) / min(ours_times), 2)
        result["speedup_per_repeat"] = [round(r / o, 2) for r, o in zip(ref_times, ours_times)]
        result["mean_cos_ours_vs_reference"] = round(float(np.einsum("nd,nd->n", ours_unit, ref_vectors).mean()), 5)
    return result


def rvc_blend_stats(index_path: Path, queries: np.ndarray) -> dict[str, float]:
    """RVC's retrieval on ``queries``: mean distance of a frame to its blend, relative, norm ratio, cosine."""
    index = faiss.read_index(str(index_path))
    big_npy = index.reconstruct_n(0, index.ntotal)
    score, ix = index.search(queries, k=RVC_K)
    weight = np.square(1 / np.maximum(score, 1e-12))
    weight /= weight.sum(axis=1, keepdims=True)
    blended = (big_npy[ix] * np.expand_dims(weight, axis=2)).sum(axis=1)
    frame_norms, blend_norms = np.linalg.norm(queries, axis=1), np.linalg.norm(blended, axis=1)
    distance = np.linalg.norm(queries - blended, axis=1)
    return {"distance": round(float(distance.mean()), 4),
            "relative_distance": round(float((distance / frame_norms).mean()), 4),
            "blend_norm_ratio": round(float((blend_norms / frame_norms).mean()), 4),
            "cosine": round(float((np.einsum("nd,nd->n", queries, blended) / frame_norms / blend_norms).mean()), 4),
            "frame_norm": round(float(frame_norms.mean()), 3)}


VARIANTS = {"off": ["expand.enabled=false"], "on": ["expand.enabled=true"],
            "on-unit": ["expand.enabled=true", "expand.scale=unit"]}


def effect(args: argparse.Namespace, backend: Backend) -> list[dict[str, Any]]:
    from rvc_index.data.layouts import feature_dir_name
    from rvc_index.job.runner import build_experiment
    from rvc_index.tools.synth import DEMO_SPEAKERS, save_npy, utterances

    wanted = set(args.effect_speakers.split(",")) if args.effect_speakers else None
    rows_out = []
    with tempfile.TemporaryDirectory(prefix="bench-expand-") as work:
        for name, n_rows, dim in DEMO_SPEAKERS:
            if wanted is not None and name not in wanted:
                continue
            takes = list(utterances(n_rows + args.heldout, dim, [0, dim, *name.encode()]))
            held, split = 0, len(takes)
            while held < args.heldout:  # whole utterances: a held-out frame never meets its own neighbours
                split -= 1
                held += len(takes[split])
            folder = Path(work) / "logs" / name / feature_dir_name(dim)
            folder.mkdir(parents=True)
            for i, take in enumerate(takes[:split]):
                save_npy(folder / f"{i:05d}.npy", take)
            queries = np.ascontiguousarray(np.concatenate(takes[split:]), dtype=np.float32)
            row = {"speaker": name, "rows": int(sum(len(t) for t in takes[:split])), "dim": dim,
                   "heldout_frames": len(queries)}
            for variant, overrides in VARIANTS.items():
                config = load_config(REPO / "configs" / "tips.yaml", [*overrides, "evaluate.recall_queries=0"])
                result = build_experiment(folder, config, Path(work) / variant / name, backend)
                row[variant] = rvc_blend_stats(result.index_path, queries)
                if variant == "on":
                    row["expansion"] = {key: getattr(result.record.expansion, key) for key in
                                        ("method", "nprobe", "neighbour_recall", "mean_cosine", "seconds")}
            rows_out.append(row)
            print(json.dumps(row), flush=True)
    return rows_out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--num-expand", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=3.0)
    parser.add_argument("--recall-queries", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each, alternating")
    parser.add_argument("--backend", choices=["auto", "cpu", "gpu"], default="cpu")
    parser.add_argument("--tile-mb", type=float, default=256.0, help="expand.tile_mb (score tile memory)")
    parser.add_argument("--method", choices=["auto", "exact", "ivf"], default="auto", help="expand.method")
    parser.add_argument("--no-reference", dest="reference", action="store_false", help="skip the notes' recipe")
    parser.add_argument("--no-throughput", dest="throughput", action="store_false")
    parser.add_argument("--effect", action="store_true", help="RVC blend statistics on the demo speakers")
    parser.add_argument("--effect-speakers", default="", help="comma-separated demo speakers (default all)")
    parser.add_argument("--heldout", type=int, default=1000, help="held-out frames per speaker (--effect)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("-q", "--quiet", dest="verbose", action="store_const", const=-1, default=0)
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    backend = select_backend(args.backend)
    results: dict[str, Any] = {"faiss": faiss.__version__}
    if args.throughput:
        results["throughput"] = throughput(args, backend)
        print(json.dumps(results["throughput"], indent=2), flush=True)
    if args.effect:
        results["effect"] = effect(args, backend)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
