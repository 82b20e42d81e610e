"""One job: build the index of one experiment by executing its ``BuildPlan``, and write it atomically."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from rvc_index.compute.backend import Backend, select_backend
from rvc_index.compute.values import device_row_codes
from rvc_index.config.loading import dump_config
from rvc_index.config.schema import SEARCH_K, Config
from rvc_index.data.feature_set import FeatureSet, open_feature_set
from rvc_index.data.layouts import Experiment, resolve_experiment
from rvc_index.data.sources import Manifest, scan_manifest, value_bound
from rvc_index.evaluation.evaluate import evaluate_build
from rvc_index.evaluation.holdout import Holdout
from rvc_index.evaluation.plots import write_report_png
from rvc_index.evaluation.result import Evaluation, EvaluationSkipped, Verdict
from rvc_index.evaluation.verdict import judge, replaced_index
from rvc_index.inspection.consumers import holdings, static_problems
from rvc_index.inspection.describe import check_rows, describe_index, list_sizes
from rvc_index.inspection.rvc_files import INDEX_SUFFIX, TOTAL_FEA, OutputError, check_output_dir
from rvc_index.job.guard import MemoryGuard, guard_plan
from rvc_index.job.locks import output_lock
from rvc_index.job.naming import (
    BuildFiles,
    build_files,
    check_files_are_ours,
    check_names,
    check_not_claimed,
    file_stem,
    fixed_index_name,
    index_file_name,
    is_plain_name,
    output_place,
)
from rvc_index.job.plan import BuildPlan, make_plan
from rvc_index.job.record import (
    BuildRecord,
    BuildResult,
    CompressionRecord,
    ExpansionRecord,
    IndexRecord,
    NamesRecord,
    PlanRecord,
)
from rvc_index.job.resume import (
    build_fingerprint,
    code_fingerprint,
    config_fingerprint,
    finished_build,
    read_report,
    written_with,
)
from rvc_index.job.retire import competing_indexes, settle_competitors
from rvc_index.job.vectors import IndexVectors, prepare_vectors
from rvc_index.runtime.memory import peak_rss_mb
from rvc_index.runtime.outputs import atomic_paths, remove_stale_temps, write_json_atomic, writing
from rvc_index.runtime.progress import DETAIL, Progress, get_logger, stage
from rvc_index.runtime.run import Run
from rvc_index.stages.indexing import (
    add_batches,
    check_consumers,
    nprobe_for_k,
    save_index,
    set_search_params,
    train_index,
)


def log_evaluation(name: str, evaluation: Evaluation | EvaluationSkipped) -> None:
    """One log line with the evaluation's key numbers."""
    level = logging.WARNING if isinstance(evaluation, EvaluationSkipped) else logging.INFO
    get_logger().log(level, "%s: %s", name, evaluation.summary_line())


def build_experiment(path: str | Path, config: Config, out_dir: str | Path | None = None,
                     backend: Backend | None = None, client: Any | None = None,
                     force: bool = False, name: str | None = None,
                     index_path: str | Path | None = None, head_start_s: float = 0.0) -> BuildResult:
    """Build, check and write the index of one experiment; return what was done. ``name`` replaces the
    experiment's name in file names; ``index_path`` fixes the index file (and so the output folder).
    ``head_start_s``: seconds the command spent before this call (interpreter start, imports), counted
    in the build time the evaluation's share is measured against (``rvc-index build``: what its user waits).

    One build at a time per output folder (``safety.lock``): the lock is taken before stale
    temporary files are removed and the finished-build check is made.
    """
    place = output_place(resolve_experiment(path), out_dir, index_path, name)
    experiment, out = place.experiment, place.out
    check_output_dir(out)
    check_names(experiment.name, out, config)
    run = Run(backend or select_backend("auto"), client, config.seed, experiment.name)
    with output_lock(out, config.safety.lock, config.safety.lock_timeout_s, experiment.name):
        return Build(experiment, out, config, run, force, fixed_index_name(place, config),
                     head_start_s=head_start_s).execute()


@dataclass
class Build:
    """The state of one build in progress; ``execute`` runs it stage by stage."""

    experiment: Experiment
    out: Path
    config: Config
    run: Run[Backend]  # the device, the Dask client (None: local threads), the seed, the label
    force: bool
    index_file: str | None = None  # fixed before the build (--index-path, Applio naming); None: from the plan
    timings: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    head_start_s: float = 0.0  # the command's seconds before the build began (the evaluation budget counts them)

    @property
    def name(self) -> str:
        return self.experiment.name

    @property
    def backend(self) -> Backend:
        return self.run.backend

    @property
    def voices(self) -> tuple[str, ...]:
        """The voice's names for RVC's and Applio's lookups: the experiment's, and the one its files carry."""
        return tuple(dict.fromkeys((self.name, file_stem(self.name, self.config))))

    @property
    def label(self) -> str:
        return f"{self.name} ({self.config.name})"

    @contextmanager
    def stage(self, name: str, plan: BuildPlan | None = None, guard: MemoryGuard | None = None) -> Iterator[None]:
        """A timed stage, refused first if the memory ``plan`` says it needs is no longer available."""
        if guard is not None and plan is not None:
            guard.check(plan, name)
        with stage(name, self.timings, self.name):
            yield

    def execute(self) -> BuildResult:
        log = get_logger()
        config, name = self.config, self.name
        remove_stale_temps(self.out)
        files = build_files(self.out, name, config)
        check_files_are_ours(files, name)  # another experiment's report under this build's names: refuse
        check_not_claimed(files, self.index_file, self.force)  # another preset's file: refuse before any work
        with self.stage("scan"):
            manifest = scan_manifest(self.experiment, config.source.on_bad_file)
            config_fp = config_fingerprint(config)
            fingerprint = build_fingerprint(manifest, config_fp, code_fingerprint())
            previous = read_report(files.report)  # the lock is held: it stays as read until this build replaces it
            done = None if self.force else finished_build(previous, files, fingerprint)
            if done is not None:
                log.info("%s: up to date (%s), skipped", name, done.index_file)
                settle_competitors(self.out, self.voices, files.index(done.index_file), [], config.output.retire_old,
                                   by=self.label)
                return BuildResult(name, "skipped", files.index(done.index_file), files.report, done)
            if not self.force and previous is not None and previous.get("config_fingerprint") != config_fp:
                raise OutputError(f"{files.report}: an index built with other settings is already there; "
                                  "use --force to replace it")
            check_rows(manifest.rows, str(self.experiment.feature_dir))  # before any value is read
            backend, local = self.backend, self.run.local
            headers_plan, guard = guard_plan(lambda chunk_mb: make_plan(manifest, config, backend, local, chunk_mb),
                                             config.source.chunk_mb, config.safety, name)
            kplan = headers_plan.kmeans  # the value check also draws the k-means init sample (no read of its own)
            row_codes = device_row_codes(self.backend, value_bound(manifest.dim)) if self.backend.is_gpu else None
            features = open_feature_set(self.experiment, manifest, headers_plan.chunk_mb, config.source.on_bad_file,
                                        self.run, kplan.check_sample_rows if kplan else 0, headers_plan.resident,
                                        row_codes)
            check_rows(features.n_rows, str(self.experiment.feature_dir))  # NaN/Inf rows dropped
        plan = make_plan(features.manifest, config, self.backend, local, headers_plan.chunk_mb, features.n_rows,
                         features.is_resident)  # for the rows that passed the value check
        log.info("%s: %s rows x %d, compression: %s, index %s, backend: %s", name, f"{plan.n_rows:,}", plan.dim,
                 plan.compression.reason, plan.index.factory, self.backend.describe())
        for line in plan.describe():
            log.info("%s: plan: %s", name, line, extra=DETAIL)
        prepared = prepare_vectors(features, plan, self.run, self.out,
                                   lambda stage_name: self.stage(stage_name, plan, guard))
        index, nprobe = self.index(prepared, plan, guard)
        evaluation, holdout = self.evaluate(index, features, prepared, plan, guard)
        index_name = self.index_file or index_file_name(file_stem(name, config), features.manifest.version,
                                                        plan.index, nprobe, config.output.naming, config.name)
        prior = (previous or {}).get("index_file")
        previous_index = prior if is_plain_name(prior) and prior.endswith(INDEX_SUFFIX) else None  # never elsewhere
        superseded = [files.index(previous_index)] if previous_index else []
        competitors = competing_indexes(self.out, self.voices, files.index(index_name))  # one walk of the folder
        replaced = replaced_index(files.index(index_name), superseded[0] if superseded else None, competitors)
        verdict = judge(evaluation, replaced, holdout, features.dim, self.backend, static_problems(index, features.dim),
                        holdings(index))
        self.write(index, index_name, previous_index, config_fp, files, prepared, features.dim, plan, guard)
        retired = settle_competitors(self.out, self.voices, files.index(index_name), superseded,
                                     config.output.retire_old, competitors, self.label)
        record = self.record(features, manifest, plan, prepared, index, index_name, evaluation, verdict, guard,
                             files, fingerprint, config_fp, retired)
        write_json_atomic(files.report, dataclasses.asdict(record))
        if previous_index and previous_index != index_name:
            files.index(previous_index).unlink(missing_ok=True)  # the replaced build's index, now superseded
        log.info("%s: wrote %s (%s vectors, %.1f MB)", name, files.index(index_name), f"{index.ntotal:,}",
                 record.index_bytes / 2**20)
        for line in verdict.lines:
            log.info("%s: %s", name, line)
        return BuildResult(name, "built", files.index(index_name), files.report, record)

    def index(self, prepared: IndexVectors, plan: BuildPlan, guard: MemoryGuard) -> tuple[faiss.Index, int]:
        """Train, fill and set the search breadth of the CPU index; (index, stored nprobe)."""
        log, name = get_logger(), self.name
        for note in plan.index.notes:
            log.warning("%s: %s", name, note)
        with self.stage("train", plan, guard):
            index = train_index(prepared.vectors, plan.index, self.run, prepared.raw_rows)
        with self.stage("add", plan, guard):
            add_batches(index, self.run.batches(prepared.vectors, plan.index.add_batch_rows), self.backend,
                        Progress(f"{name}: add", prepared.n_vectors, "vectors"))
        sizes = list_sizes(index)
        nprobe = nprobe_for_k(sizes, SEARCH_K, plan.index.nprobe)
        if nprobe != plan.index.nprobe:
            log.warning("%s: smallest lists hold %s vectors: nprobe raised from %d to %d so every k=%d search is "
                        "filled", name, np.sort(sizes)[:3].tolist(), plan.index.nprobe, nprobe, SEARCH_K)
        set_search_params(index, nprobe)
        check_consumers(index, plan.dim)
        return index, nprobe

    def evaluate(self, index: faiss.Index, features: FeatureSet, prepared: IndexVectors, plan: BuildPlan,
                 guard: MemoryGuard) -> tuple[Evaluation | EvaluationSkipped | None, Holdout | None]:
        """Recall, blend error, latency on held-out utterances (ids are rows unless compressed), and those
        utterances' queries; (None, None) when the evaluation is off."""
        if not plan.eval_queries:
            return None, None
        with self.stage("evaluate", plan, guard):
            evaluation, holdout = evaluate_build(index, features, self.config.evaluate, self.run,
                                                 aligned=prepared.raw_rows,
                                                 stored_is_original=prepared.are_originals, k=SEARCH_K,
                                                 build_seconds=time.perf_counter() - self.started + self.head_start_s)
        log_evaluation(self.name, evaluation)
        return evaluation, holdout

    def write(self, index: faiss.Index, index_name: str, previous_index: str | None, config_fp: str,
              files: BuildFiles, prepared: IndexVectors, dim: int, plan: BuildPlan, guard: MemoryGuard) -> None:
        """Config, optional ``total_fea.npy`` and the index, each written in full before any is renamed: a
        full disk replaces none. The config goes first: it marks the index ours."""
        index_path = files.index(index_name)
        ours = index_name == previous_index or written_with(files.config, config_fp)  # or a killed run's, pre-report
        if index_path.exists() and not ours and not self.force:
            raise OutputError(f"{index_path}: exists and was not written by this preset; use --force to replace it")
        fea = self.out / TOTAL_FEA  # RVC's own (old RVC pairs it with its index): never replaced unasked
        if self.config.output.write_total_fea and fea.exists() and not ours and not self.force:
            raise OutputError(f"{fea}: exists and was not written by this preset (RVC's own?); "
                              "use --force to replace it")
        with self.stage("write", plan, guard):
            total_fea = [fea] if self.config.output.write_total_fea else []
            with atomic_paths(files.config, *total_fea, index_path) as tmps:
                with writing(tmps[0]):
                    tmps[0].write_text(dump_config(self.config), encoding="utf-8")
                if total_fea:
                    write_total_fea(tmps[1], prepared.vectors, prepared.n_vectors, dim, self.run)
                save_index(index, tmps[-1])

    def record(self, features: FeatureSet, manifest: Manifest, plan: BuildPlan, prepared: IndexVectors,
               index: faiss.Index, index_name: str, evaluation: Evaluation | EvaluationSkipped | None,
               verdict: Verdict, guard: MemoryGuard, files: BuildFiles, fingerprint: str, config_fp: str,
               retired: list[str]) -> BuildRecord:
        """The report of this build; draws its picture first (the report is the last file written)."""
        config, name = self.config, self.name
        index_path = files.index(index_name)
        disk_bytes = index_path.stat().st_size
        description = describe_index(index)
        if isinstance(evaluation, Evaluation):
            evaluation = dataclasses.replace(evaluation, size=dataclasses.replace(evaluation.size,
                                                                                  disk_bytes=disk_bytes))
        if isinstance(evaluation, Evaluation) and evaluation.plan is not None and evaluation.plan.plot:
            with self.stage("report"):  # plot=auto: within the evaluation's budget
                write_report_png(files.picture, evaluation, f"{name}: {index_name}", description, verdict.lines)
        else:
            files.picture.unlink(missing_ok=True)  # a previous build's picture would not describe this index
        compression, index_plan = plan.compression, plan.index
        return BuildRecord(
            experiment=name, feature_dir=str(self.experiment.feature_dir), version=features.manifest.version,
            dim=features.dim, files=len(features.manifest.files), rows_declared=features.manifest.rows,
            rows=features.n_rows, index_file=index_name, index_bytes=disk_bytes,
            fingerprint=fingerprint, config_fingerprint=config_fp, code_version=code_fingerprint(),
            faiss_version=faiss.__version__,
            compression=CompressionRecord(compression.apply, compression.reason, compression.n_centroids,
                                          config.compress.method, f"{compression.n_centroids} centroids"
                                          if compression.apply else "none"),
            expansion=ExpansionRecord.of(prepared.expansion),
            index=IndexRecord(**vars(description), factory=index_plan.factory, lists=index_plan.lists,
                              holdings=holdings(index), us_per_frame_planned=index_plan.us_per_frame,
                              pq_m=index_plan.pq_m, nprobe_configured=index_plan.nprobe,
                              train_rows=index_plan.train_rows, notes=tuple(index_plan.notes)),
            evaluation=evaluation, verdict=verdict, plan=PlanRecord.of(plan), memory=guard.record(plan),
            names=NamesRecord(name, file_stem(name, config), str(index_path).isascii()), config=config,
            backend=self.backend.describe(), timings=dict(self.timings),
            seconds=round(time.perf_counter() - self.started, 3), peak_rss_mb=round(peak_rss_mb(), 1),
            skipped_files=tuple(features.manifest.skipped),
            empty_files=tuple(features.manifest.empty_files), ignored_entries=tuple(features.manifest.ignored),
            dropped_rows=features.dropped_rows, retired=tuple(retired))


def write_total_fea(path: Path, vectors: Any, n_rows: int, dim: int, run: Run[Backend]) -> None:
    """RVC's ``total_fea.npy`` [n_rows, dim] float32, streamed block by block."""
    with writing(path), open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False, "shape": (n_rows, dim)})
        for block in run.blocks(vectors):
            handle.write(np.ascontiguousarray(block, dtype="<f4").tobytes())
