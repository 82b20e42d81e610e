"""Typed, frozen configuration: one dataclass per section and the rules across fields.

``rvc_index.config.loading`` reads it from YAML presets plus ``--set key=value`` overrides.
"""

from __future__ import annotations

import math
import reprlib
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Literal

from rvc_index.errors import RvcIndexError


class ConfigError(RvcIndexError, ValueError):
    """A preset or override that does not fit the schema; the message names the key."""


_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = 60
_SHOWN.maxlevel, _SHOWN.maxlist, _SHOWN.maxdict, _SHOWN.maxtuple = 2, 4, 4, 4


def shown(value: Any) -> str:
    """``repr(value)`` cut to about 60 characters, nested values elided (never expanded in full)."""
    return _SHOWN.repr(value)


INT_LIMIT = 2**31 - 1  # faiss and numpy take most settings as 32-bit ints
WIDE_INT_KEYS = {"compress.row_threshold": 2**62}  # row counts: "never compress" may be written as a huge number
MAX_NAME_CHARS = 64  # the config's name is in output file names (rvc-index-<exp>-<name>.config.yaml)
SEARCH_K = 8  # RVC, Applio and the deiteris fork search 8 neighbours, w-okada 1: not a setting (docs/consumers.md)
# Keys a config may still carry from an older release, and why they are gone (an error names the replacement).
RETIRED_KEYS = {
    "index.recipe": "replaced by index.lists (flat | fp16 | sq8 | pq8 | auto): the IVF-PQ FastScan + RFlat recipe "
                    "broke Applio realtime (no nprobe on IndexRefineFlat) and GPU voice changers (not clonable)",
    "index.k_factor": "gone with the RFlat re-ranking wrapper (index.lists replaces index.recipe)",
    "index.pq_dims": "gone with 4-bit PQ: index.lists=pq8 takes index.pq_m sub-quantizers of 8 bits",
    "index.min_pq_rows": "replaced by index.min_coded_rows",
    "index.search_k": f"every consumer searches k={SEARCH_K} (w-okada k=1): the row minimum, nprobe and the "
                      "verdict hold for both, whatever a key says",
}


@dataclass(frozen=True)
class SourceConfig:
    chunk_mb: float = 128.0  # target size of one Dask chunk (a group of whole files)
    on_bad_file: Literal["error", "skip"] = "error"  # skip = leave the file out and report it


@dataclass(frozen=True)
class CompressConfig:
    enabled: bool = True
    row_threshold: int = 0  # compress when the collection has more rows than this; 0 = more than the budget holds
    n_centroids: int = 0  # 0 = as many as the budget holds (RVC's recipe: 10,000 above 200,000 rows)
    method: Literal["minibatch", "sklearn"] = "minibatch"  # sklearn = RVC's exact call
    init: Literal["kmeans++", "random"] = "kmeans++"  # per coarse cell when coarse_centres > 1 (random: by rows)
    batch_rows: int = 32768  # rows per mini-batch step (100 MB at D=768)
    epochs: float = 0.0  # mini-batch passes over the collection; 0 = none (init and Lloyd passes only)
    on_too_few_rows: Literal["error", "clamp"] = "clamp"  # n_centroids > rows
    # minibatch method (stages/compress.py): init on a sample, mini-batch epochs, Lloyd passes over every row
    assign: Literal["auto", "two-level", "exact"] = "auto"  # auto: two-level on the CPU, exact on a GPU
    coarse_centres: int = 0  # k1 of the two-level init/assignment; 0 = round(2 sqrt(K)) (1 below K=256); 1 = flat
    nprobe: int = 1  # coarse cells each row searches in two-level assignment
    spread: int = 4  # coarse cells each centre is listed in: rows near a border meet the centres across it
    sample_rows: int = 0  # init sample; 0 = max(16 K, 65536) rows, at most max(N/2, 65536) (memory grows with K, not N)
    init_iters: int = 2  # Lloyd iterations per coarse cell on the init sample, then over the whole sample
    decay: float = 1.0  # centre weights *= decay per step: 1 = Sculley's running means, < 1 = EMA
    dead_threshold: float = 1.0  # re-seed centres hit fewer times (EMA) than this in 20 expected rows; 0 = never
    final_passes: int = 2  # end with Lloyd steps over every row (partial sums on every core or Dask worker); 0 = none
    route: Literal["auto", "minibatch", "device"] = "auto"  # auto: device (full-batch Lloyd) on a GPU, else minibatch
    device_budget_mb: float = 0.0  # device route: memory its rows and tiles may take; 0 = half the free memory
    lloyd_passes: int = 10  # device route: at most this many full-batch passes over the device rows (all, or a sample)
    stream_passes: int = 2  # device route over budget: exact passes streaming every chunk after the sample's
    stop_tol: float = 0.002  # device route: stop once the mean squared distance changes by less than this share
    precision: Literal["auto", "fp32", "tf32"] = "auto"  # device route's assignment products; auto: TF32 where the
    # GPU has it (compute capability >= 8.0), with one exact FP32 pass to finish


@dataclass(frozen=True)
class ExpandConfig:
    """Alpha query expansion of the stored vectors (after compression), see stages/expand.py."""

    enabled: bool = False
    num_expand: int = 8  # neighbours mixed into each vector, itself included
    alpha: float = 3.0  # neighbour weight = max(0, cos) ** alpha
    scale: Literal["feature", "unit"] = "feature"  # unit: keep L2-normalised rows (queries must be too)
    method: Literal["auto", "exact", "ivf"] = "auto"  # auto: exact up to exact_max_rows, IVF above
    exact_max_rows: int = 0  # 0 = 12,288 on CPU, 131,072 on a GPU
    n_list: int = 0  # IVF lists; 0 = round(sqrt(N))
    nprobe: int = 0  # 0 = smallest reaching target_recall on recall_queries sampled rows
    target_recall: float = 0.96  # the issue asks >= 0.95; the sample estimate is within ~0.01
    max_nprobe: int = 64
    recall_queries: int = 128  # rows whose exact neighbours measure the IVF route's recall; 0 = skip
    train_iterations: int = 3  # k-means iterations for the IVF lists (more barely changes recall)
    tile_mb: float = 256.0  # working memory of one score tile / mixing batch
    spill_mb: float = 1024.0  # [N, D] buffers above this go to temporary memory-mapped .npy files; 0 = always


ListFormat = Literal["flat", "fp16", "sq8", "pq8"]
LIST_FORMATS: tuple[ListFormat, ...] = ("flat", "fp16", "sq8", "pq8")  # every one an IndexIVF every consumer loads
# (docs/consumers.md)


@dataclass(frozen=True)
class IndexConfig:
    lists: Literal["auto", "flat", "fp16", "sq8", "pq8"] = "flat"  # how the inverted lists store vectors; auto: the
    # lowest blend error within budget.us_per_frame (stages/indexing.py)
    n_list: int = 0  # 0 = max(1, min(int(sqrt_factor * sqrt(N)), N // min_rows_per_list))
    sqrt_factor: float = 16.0
    min_rows_per_list: int = 39
    pq_m: int = 0  # pq8: sub-quantizers of 8 bits; 0 = dim // 16 (48 at 768, 16 at 256: both cloned by faiss-gpu)
    nprobe: int = 1
    train_iterations: int = 10
    max_train_rows_per_list: int = 256
    add_batch_rows: int = 8192
    min_coded_rows: int = 10_000  # fewer stored vectors: flat lists (codes would save little and cost blend error)


@dataclass(frozen=True)
class BudgetConfig:
    """What a tool that loads the index must hold, per frame and in all (docs/consumers.md): the plan stores as many
    vectors as fit (all the frames, or as many k-means centroids), and searches within ``us_per_frame``."""

    big_mb: float = 512.0  # reconstruct_n's float32 copy of the stored vectors (ntotal x D x 4), in the tool's RAM
    gpu_mb: float = 1024.0  # Applio realtime's GPU: that copy and its transpose (2 x big) and a norm per vector
    us_per_frame: float = 500.0  # one-thread faiss search of a frame (k=8, the stored nprobe), as the plan estimates


@dataclass(frozen=True)
class OutputConfig:
    naming: Literal["rvc", "applio"] = "rvc"
    write_total_fea: bool = False
    ascii_names: bool = True  # a non-ASCII experiment name becomes ASCII (+ 8 hex of its hash) in file names
    retire_old: bool = False  # rename other .index files RVC/Applio could pick to *.index.retired (not fingerprinted)


@dataclass(frozen=True)
class EvaluateConfig:
    """The build's evaluation on held-out utterances (evaluation/evaluate.py, evaluation/holdout.py)."""

    recall_queries: int = 500  # most query frames from held-out utterances after a build; 0 = skip evaluation
    holdout_fraction: float = 0.05  # share of the rows held out, as whole files, to query with
    nprobe_sweep: bool = True  # recall@8 and latency against nprobe (report.png), when the budget allows
    plot: bool | Literal["auto"] = "auto"  # report.png beside the index; auto: when the budget allows
    max_share: float = 0.1  # the evaluation's budget: this share of the build's seconds (evaluation/sizing.py)
    full: bool = False  # measure everything (recall_queries frames, exact reference, sweep), whatever it costs


@dataclass(frozen=True)
class ClusterConfig:
    """Where and how ``batch`` runs; not part of an output's fingerprint (it does not change the index)."""

    job_threads: int = 1  # faiss OpenMP threads in one build: fixed, so any worker writes the same bytes
    stream_above_mb: float = 512.0  # bigger experiments stream their chunks across workers
    max_streaming: int = 0  # streamed builds at once; 0 = one per worker
    dashboard_address: str = ":8787"  # local/cuda clusters; "" = no dashboard
    # --cluster slurm (dask-jobqueue): one SLURM job per `jobs`, each one Dask worker process
    jobs: int = 2
    cores: int = 4  # CPU cores per worker job
    memory: str = "16GiB"  # memory per worker job
    walltime_minutes: int = 240  # per worker job (minutes: YAML reads 04:00:00 as a number)
    gpus: int = 0  # GPUs per worker job: 0 or 1 (one worker per GPU; scale jobs for more GPUs)
    queue: str = ""  # partition (-p); "" = the site default
    account: str = ""  # (-A); "" = none
    log_directory: str = "slurm-logs"


@dataclass(frozen=True)
class SafetyConfig:
    """Guards around one build (docs/reliability.md); they never change its bytes, so are not fingerprinted."""

    memory_guard: Literal["refuse", "shrink", "off"] = "refuse"  # shrink: try smaller source chunks first
    memory_limit_mb: float = 0.0  # cap on this process's memory; 0 = only the machine's, cgroup's, ulimit's, Dask's
    memory_headroom: float = 0.9  # a stage may plan to use this share of what is available
    lock: Literal["wait", "refuse", "none"] = "wait"  # another build holds the output folder; none: no lock at all
    lock_timeout_s: float = 0.0  # wait at most this long; 0 = no limit


POSITIVE_KEYS = (
    "source.chunk_mb", "compress.batch_rows", "compress.nprobe",
    "compress.spread", "compress.lloyd_passes",
    "expand.num_expand", "expand.max_nprobe", "expand.train_iterations", "expand.tile_mb",
    "index.sqrt_factor", "index.min_rows_per_list", "index.nprobe",
    "index.train_iterations", "index.max_train_rows_per_list", "index.add_batch_rows",
    "budget.big_mb", "budget.gpu_mb", "budget.us_per_frame",
    "cluster.job_threads", "cluster.jobs", "cluster.cores", "cluster.walltime_minutes",
)
NON_NEGATIVE_KEYS = (
    "compress.row_threshold", "compress.n_centroids", "compress.epochs", "compress.final_passes",
    "compress.coarse_centres", "compress.sample_rows", "compress.init_iters",
    "compress.dead_threshold", "compress.device_budget_mb", "compress.stream_passes",
    "expand.exact_max_rows", "expand.n_list", "expand.nprobe", "expand.recall_queries",
    "expand.spill_mb", "index.n_list", "index.pq_m", "index.min_coded_rows", "evaluate.recall_queries",
    "cluster.stream_above_mb", "cluster.max_streaming",
)


@dataclass(frozen=True)
class Config:
    name: str = "custom"
    seed: int = 0
    source: SourceConfig = field(default_factory=SourceConfig)
    compress: CompressConfig = field(default_factory=CompressConfig)
    expand: ExpandConfig = field(default_factory=ExpandConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)

    def validate(self) -> Config:
        """Cross-field rules; raises ConfigError naming the key."""
        self._validate_numbers()
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        for key in POSITIVE_KEYS:
            if self.value(key) <= 0:
                raise ConfigError(f"{key} must be > 0, got {self.value(key)}")
        for key in NON_NEGATIVE_KEYS:
            if self.value(key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {self.value(key)}")
        if not 0.0 < self.evaluate.max_share <= 1.0:
            raise ConfigError(f"evaluate.max_share must be in (0, 1], got {self.evaluate.max_share}")
        if not 0.0 < self.evaluate.holdout_fraction < 1.0:
            raise ConfigError(f"evaluate.holdout_fraction must be in (0, 1), got {self.evaluate.holdout_fraction}")
        if self.compress.enabled and 0 < self.compress.n_centroids < SEARCH_K:
            raise ConfigError(f"compress.n_centroids ({self.compress.n_centroids}) must be 0 (from the budget) or "
                              f">= {SEARCH_K}: RVC and Applio search {SEARCH_K} neighbours")
        self._validate_compress()
        expand = self.expand
        if not 0.0 <= expand.alpha < float("inf"):
            raise ConfigError(f"expand.alpha must be a finite number >= 0, got {expand.alpha}")
        if not 0.0 < expand.target_recall <= 1.0:
            raise ConfigError(f"expand.target_recall must be in (0, 1], got {expand.target_recall}")
        if expand.nprobe == 0 and expand.recall_queries == 0:
            raise ConfigError("expand.nprobe=0 (tuned) needs expand.recall_queries > 0 to measure recall")
        if expand.n_list and expand.nprobe > expand.n_list:
            raise ConfigError(f"expand.nprobe ({expand.nprobe}) must be <= expand.n_list ({expand.n_list})")
        if (not self.name or len(self.name) > MAX_NAME_CHARS or self.name in (".", "..")
                or any(c in self.name for c in "/\\ ") or not self.name.isprintable()):
            raise ConfigError(f"name must be a word of 1 to {MAX_NAME_CHARS} printable characters without spaces "
                              f"or slashes: {shown(self.name)}")
        self._validate_cluster()
        safety = self.safety
        if safety.memory_limit_mb < 0 or safety.lock_timeout_s < 0:
            raise ConfigError("safety.memory_limit_mb and safety.lock_timeout_s must be >= 0")
        if not 0.0 < safety.memory_headroom <= 1.0:
            raise ConfigError(f"safety.memory_headroom must be in (0, 1], got {safety.memory_headroom}")
        return self

    def value(self, dotted: str) -> Any:
        """The setting at ``section.key``."""
        section, key = dotted.split(".")
        return getattr(getattr(self, section), key)

    def _validate_numbers(self) -> None:
        """Every number finite (NaN passes every comparison) and every int in the range faiss and numpy take."""
        values = [(f.name, getattr(self, f.name)) for f in fields(self)]
        for name, section in [item for item in values if is_dataclass(item[1])]:
            values += [(f"{name}.{f.name}", getattr(section, f.name)) for f in fields(section)]
        for key, value in values:
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{key} must be a finite number, got {value}")
            limit = WIDE_INT_KEYS.get(key, INT_LIMIT)
            if isinstance(value, int) and not isinstance(value, bool) and not -limit <= value <= limit:
                raise ConfigError(f"{key} must be between {-limit} and {limit}, got {shown(value)}")

    def _validate_compress(self) -> None:
        compress = self.compress
        if not 0.0 < compress.decay <= 1.0:
            raise ConfigError(f"compress.decay must be in (0, 1] (1 = Sculley's running means), got {compress.decay}")
        if compress.sample_rows and compress.sample_rows < compress.n_centroids:
            raise ConfigError(f"compress.sample_rows ({compress.sample_rows}) must be 0 (auto) or >= "
                              f"compress.n_centroids ({compress.n_centroids})")
        if not 0.0 <= compress.stop_tol < 1.0:
            raise ConfigError(f"compress.stop_tol must be in [0, 1) (a relative change of the mean squared distance; "
                              f"0 = every pass), got {compress.stop_tol}")
        if compress.n_centroids and compress.coarse_centres > compress.n_centroids:
            raise ConfigError(f"compress.coarse_centres ({compress.coarse_centres}) must be <= "
                              f"compress.n_centroids ({compress.n_centroids})")

    def _validate_cluster(self) -> None:
        cluster = self.cluster
        if cluster.gpus not in (0, 1):
            raise ConfigError(f"cluster.gpus must be 0 or 1 (one Dask worker per GPU: ask for more jobs, "
                              f"not more GPUs per job), got {cluster.gpus}")
        if cluster.memory == ClusterConfig.memory:
            return None  # the default parses: importing dask to check it would cost every local build 0.25 s
        import dask.utils

        try:
            size = dask.utils.parse_bytes(cluster.memory)
        except (ValueError, OverflowError):  # "1e400GB" overflows
            size = 0
        if size <= 0:
            raise ConfigError(f"cluster.memory: {shown(cluster.memory)} is not a size like 16GiB")
