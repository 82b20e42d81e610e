"""One job: build the index of one experiment, stage by stage, and write it atomically."""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from rvc_index.errors import RvcIndexError
from rvc_index.compute.backend import Backend, select_backend
from rvc_index.stages.compress import compress, plan_compression
from rvc_index.config.schema import Config
from rvc_index.config.loading import config_to_dict, dump_config
from rvc_index.evaluation.evaluate import evaluate_build
from rvc_index.stages.expand import expand
from rvc_index.data.feature_set import open_feature_set
from rvc_index.stages.indexing import (
    IndexPlan,
    add_batches,
    assemble_index,
    check_rows,
    describe_index,
    index_file_name,
    list_sizes,
    nprobe_for_k,
    plan_index,
    set_search_params,
    train_coarse,
)
from rvc_index.build.locks import output_lock
from rvc_index.build.guard import guard_build
from rvc_index.runtime.outputs import ascii_name, atomic_paths, remove_stale_temps, write_json_atomic
from rvc_index.runtime.progress import Progress, get_logger, stage
from rvc_index.evaluation.plots import write_report_png
from rvc_index.build.resume import (
    build_fingerprint,
    code_fingerprint,
    config_fingerprint,
    finished_build,
    read_report,
    report_path,
    written_with,
)
from rvc_index.data.sources import Experiment, resolve_experiment, scan_manifest
from rvc_index.runtime.stream import iter_batches, iter_blocks, sample_row_ids, take_rows


class OutputError(RvcIndexError, RuntimeError):
    """The output place cannot take this build (not writable, 'trained' in the path, taken)."""


@dataclass
class BuildResult:
    """What one build did; ``report`` is the JSON written beside the index."""

    experiment: str
    status: str  # built | skipped
    index_path: Path
    report_path: Path
    report: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The fields of the CLI's table."""
        r = self.report
        return {
            "speaker": self.experiment,
            "status": self.status,
            "rows": r.get("rows"),
            "compression": r.get("compression", {}).get("summary"),
            "n_list": r.get("index", {}).get("n_list"),
            "nprobe": r.get("index", {}).get("nprobe"),
            "index": self.index_path.name,
            "seconds": r.get("seconds"),
            "recall@8": r.get("evaluation", {}).get("recall_at_k"),
        }


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def check_output_dir(out_dir: Path) -> None:
    """Refuse paths RVC rewrites or cannot use before any work is spent."""
    if "trained" in str(out_dir):
        raise OutputError(f"{out_dir}: 'trained' in the output path; RVC and Applio rewrite it to "
                          "'added' when loading, so the index would never be found")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{out_dir}: cannot create output folder: {exc.strerror or exc}") from exc
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise OutputError(f"{out_dir}: output folder is not writable")


def _write_total_fea(path: Path, vectors: Any, n_rows: int, dim: int, client: Any) -> None:
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False, "shape": (n_rows, dim)})
        for block in iter_blocks(vectors, client):
            handle.write(np.ascontiguousarray(block, dtype="<f4").tobytes())


def log_evaluation(name: str, evaluation: dict[str, Any]) -> None:
    """One log line with the evaluation's key numbers."""
    if "skipped" in evaluation:
        get_logger().warning("%s: evaluation skipped: %s", name, evaluation["skipped"])
        return
    get_logger().info("%s: recall@%d %.3f, blend error %.4f, %.1f us/frame (1 thread), -1 labels %.1f%% "
                      "(%d held-out frames)", name, evaluation["k"], evaluation["recall_at_k"],
                      evaluation["blend_error"]["mean"], evaluation["latency"]["us_per_frame"],
                      100 * evaluation["missing_label_share"], evaluation["queries"])


def file_stem(name: str, config: Config) -> str:
    """The experiment's name as index file names carry it (ASCII unless ``output.ascii_names`` is off)."""
    return ascii_name(name) if config.output.ascii_names else name


def check_names(name: str, out: Path, config: Config) -> None:
    """Refuse a name RVC would rewrite; warn about paths RVC's GUI and faiss on Windows cannot open."""
    stem = file_stem(name, config)
    if "trained" in stem:
        raise OutputError(f"{name}: 'trained' in the experiment name, so in the index file name; RVC and "
                          "Applio rewrite it to 'added' when loading, so the index would never be found: "
                          "rename the experiment")
    if stem != name:
        get_logger().warning("%s: not ASCII: RVC's GUI and faiss on Windows refuse such paths; the index file is "
                             "named with '%s' (output.ascii_names)", name, stem)
    if not str(out).isascii():
        get_logger().warning("%s: output folder is not ASCII: RVC's GUI and faiss on Windows cannot open an index "
                             "there; pass --out with an ASCII path", out)


def trained_index(vectors: Any, plan: IndexPlan, config: Config, backend: Backend, raw_rows: bool,
                  client: Any | None = None) -> faiss.Index:
    """An empty CPU index of ``plan``, trained on a seeded sample of ``vectors`` [N, D] (numpy, memmap
    or dask). ``raw_rows``: the vectors are the collection's frames, which reach k-means in a seeded
    shuffled order, as RVC's recipe does (exact parity of its centroids)."""
    n_vectors = int(vectors.shape[0])
    sample = take_rows(vectors, sample_row_ids(n_vectors, plan.train_rows, np.random.default_rng(config.seed)), client)
    if raw_rows:
        sample = sample[np.random.default_rng(config.seed).permutation(sample.shape[0])]
    centroids = train_coarse(sample, plan.n_list, backend, config.index.train_iterations, config.seed)
    return assemble_index(plan, centroids, sample)


def build_experiment(path: str | Path, config: Config, out_dir: str | Path | None = None,
                     backend: Backend | None = None, client: Any | None = None,
                     force: bool = False) -> BuildResult:
    """Build, check and write the index of one experiment; return what was done.

    One build at a time per output folder (``safety.lock``): the lock is taken before stale
    temporary files are removed and the finished-build check is made.
    """
    experiment = resolve_experiment(path)
    out = Path(out_dir).absolute() if out_dir is not None else experiment.exp_dir
    check_output_dir(out)
    check_names(experiment.name, out, config)
    with output_lock(out, config.safety.lock == "wait", config.safety.lock_timeout_s, experiment.name):
        return _build_locked(experiment, out, config, backend or select_backend("auto"), client, force)


def _build_locked(experiment: Experiment, out: Path, config: Config, backend: Backend, client: Any | None,
                  force: bool) -> BuildResult:
    log = get_logger()
    started = time.perf_counter()
    timings: dict[str, float] = {}
    name = experiment.name
    remove_stale_temps(out)
    rpath = report_path(out, config)

    with stage("scan", timings, name):
        manifest = scan_manifest(experiment, config.source.on_bad_file)
        config_fp, code_fp = config_fingerprint(config), code_fingerprint()
        fingerprint = build_fingerprint(manifest, config_fp, code_fp)
        previous = read_report(rpath)  # the lock is held: it stays as read until this build replaces it
        done = None if force else finished_build(previous, out, fingerprint)
        if done is not None:
            log.info("%s: up to date (%s), skipped", name, done["index_file"])
            return BuildResult(name, "skipped", out / done["index_file"], rpath, done)
        if not force and previous is not None and previous.get("config_fingerprint") != config_fp:
            raise OutputError(f"{rpath}: an index built with other settings is already there; "
                              "use --force to replace it")
        check_rows(manifest.rows, config.index, str(experiment.feature_dir))  # before any value is read
        guard = guard_build(manifest, config, backend, client is None, name)  # refuse a plan that cannot fit
        features = open_feature_set(experiment, manifest, guard.chunk_mb, config.source.on_bad_file, client)
        check_rows(features.n_rows, config.index, str(experiment.feature_dir))  # NaN/Inf rows dropped

    compress_plan = plan_compression(features.n_rows, config.compress)
    log.info("%s: %s rows x %d, compression: %s, backend: %s", name, f"{features.n_rows:,}",
             features.dim, compress_plan.reason, backend.describe())
    vectors: Any = features.array
    if compress_plan.apply:
        guard.check("compress")
        with stage("compress", timings, name):
            vectors = compress(features, compress_plan, config.compress, backend, config.seed, client)
    expansion: dict[str, Any] = {"applied": False}
    if config.expand.enabled:  # the vectors to index become their alpha-QE expansions (memory or memmap)
        guard.check("expand")
        with stage("expand", timings, name):
            expanded = expand(vectors, config.expand, backend, client, out, config.seed, name)
        vectors, expansion = expanded.vectors, expanded.report()
    n_vectors = int(vectors.shape[0])

    plan = plan_index(n_vectors, features.dim, config.index)
    for note in plan.notes:
        log.warning("%s: %s", name, note)
    log.info("%s: index %s over %s vectors (train on %s rows)", name, plan.factory,
             f"{n_vectors:,}", f"{plan.train_rows:,}")
    guard.check("train")
    with stage("train", timings, name):
        index = trained_index(vectors, plan, config, backend, raw_rows=not compress_plan.apply, client=client)

    guard.check("add")
    with stage("add", timings, name):
        add_batches(index, iter_batches(vectors, config.index.add_batch_rows, client), backend,
                    Progress(f"{name}: add", n_vectors, "vectors"))
    sizes = list_sizes(index)
    nprobe = nprobe_for_k(sizes, config.index.search_k, plan.nprobe)
    if nprobe != plan.nprobe:
        log.warning("%s: smallest lists hold %s vectors: nprobe raised from %d to %d so every "
                    "k=%d search is filled", name, np.sort(sizes)[:3].tolist(), plan.nprobe, nprobe,
                    config.index.search_k)
    set_search_params(index, nprobe, plan.k_factor)

    evaluation: dict[str, Any] = {}
    if config.evaluate.recall_queries:  # held-out utterances; ids are rows unless compressed
        guard.check("evaluate")
        with stage("evaluate", timings, name):
            evaluation = evaluate_build(index, features, config.evaluate, backend, client,
                                        aligned=not compress_plan.apply, seed=config.seed,
                                        stored_is_original=vectors is features.array, k=config.index.search_k)
        log_evaluation(name, evaluation)

    index_name = index_file_name(file_stem(name, config), features.manifest.version, plan, nprobe, config.output.naming)
    index_path = out / index_name
    previous_index = (previous or {}).get("index_file")
    config_file = out / f"rvc-index-{config.name}.config.yaml"
    ours = index_name == previous_index or written_with(config_file, config_fp)  # or a killed run's, pre-report
    if index_path.exists() and not ours and not force:
        raise OutputError(f"{index_path}: exists and was not written by this preset; use --force to replace it")
    guard.check("write")
    with stage("write", timings, name):  # every file written in full before any is renamed: a full disk replaces none
        total_fea = [out / "total_fea.npy"] if config.output.write_total_fea else []
        with atomic_paths(config_file, *total_fea, index_path) as tmps:  # renamed in order: the config marks it ours
            tmps[0].write_text(dump_config(config), encoding="utf-8")
            if total_fea:
                _write_total_fea(tmps[1], vectors, n_vectors, features.dim, client)
            faiss.write_index(index, str(tmps[-1]))
    png = out / f"rvc-index-{config.name}.report.png"
    if "size" in evaluation:
        evaluation["size"]["disk_bytes"] = index_path.stat().st_size
    if config.evaluate.plot and "recall_at_k" in evaluation:
        with stage("report", timings, name):
            write_report_png(png, evaluation, f"{name}: {index_name}", describe_index(index))
    else:
        png.unlink(missing_ok=True)  # a previous build's picture would not describe this index
    report = {
        "experiment": name,
        "feature_dir": str(experiment.feature_dir),
        "version": features.manifest.version,
        "dim": features.dim,
        "files": len(features.manifest.files),
        "skipped_files": [list(item) for item in features.manifest.skipped],
        "empty_files": list(features.manifest.empty_files),
        "ignored_entries": list(features.manifest.ignored),
        "rows_declared": features.manifest.rows,
        "rows": features.n_rows,
        "dropped_rows": features.dropped_rows,
        "compression": {"applied": compress_plan.apply, "reason": compress_plan.reason,
                        "n_centroids": compress_plan.n_centroids, "method": config.compress.method,
                        "summary": f"{compress_plan.n_centroids} centroids" if compress_plan.apply else "none"},
        "expansion": expansion,
        "index": {**describe_index(index), "factory": plan.factory, "recipe": plan.recipe,
                  "pq_m": plan.pq_m, "nprobe_configured": plan.nprobe, "train_rows": plan.train_rows,
                  "notes": list(plan.notes)},
        "evaluation": evaluation,
        "backend": backend.describe(),
        "timings": timings,
        "seconds": round(time.perf_counter() - started, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "index_file": index_name,
        "names": {"experiment": name, "in_file_names": file_stem(name, config),
                  "ascii_path": str(index_path).isascii()},
        "memory": guard.report(),
        "index_bytes": index_path.stat().st_size,
        "fingerprint": fingerprint,
        "config_fingerprint": config_fp,
        "config": config_to_dict(config),
        "code_version": code_fp,
        "faiss_version": faiss.__version__,
    }
    write_json_atomic(rpath, report)
    if previous_index and previous_index != index_name:
        (out / previous_index).unlink(missing_ok=True)  # the replaced build's index, now superseded
    log.info("%s: wrote %s (%s vectors, %.1f MB)", name, index_path, f"{index.ntotal:,}",
             report["index_bytes"] / 2**20)
    return BuildResult(name, "built", index_path, rpath, report)

