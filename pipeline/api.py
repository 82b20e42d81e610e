"""The Python API for tools that embed rvc-index (an RVC fork, an Applio-style UI, a lab's scripts); the
command line's ``build``, ``batch``, ``eval`` and ``tune`` are these functions plus printing.

    import rvc_index
    result = rvc_index.build_index("logs/my-voice")                 # RVC's layout, default preset
    result = rvc_index.build_index(frames, out="idx", name="voice")  # an in-memory [N, D] float32 array
    report = rvc_index.build_batch("logs/", out="indexes")           # every experiment under a root
    plans = rvc_index.preview_batch("logs/")                         # what build_batch would do, per experiment
    config = rvc_index.load_preset("tips", ["index.nprobe=4"])
    quality = rvc_index.evaluate_index(result.index_path, "logs/my-voice")
    tuned = rvc_index.tune_index("logs/my-voice", "my-voice.yaml")  # the cheapest config meeting a target

Every function raises ``rvc_index.RvcIndexError`` for what a user can fix (bad input, config, disk).
``progress`` callbacks receive ``rvc_index.ProgressEvent``s (stage start/done, counted progress).
Names load on first use: this module imports neither faiss nor Dask until a function runs.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rvc_index.config.loading import DEFAULT_PRESET, load_config, resolve_config_path
from rvc_index.config.schema import Config
from rvc_index.errors import RvcIndexError
from rvc_index.runtime.outputs import check_output_file
from rvc_index.runtime.progress import ProgressEvent, progress_listener

if TYPE_CHECKING:
    from rvc_index.batch.preview import Preview
    from rvc_index.batch.summary import BatchReport
    from rvc_index.evaluation.result import Evaluation
    from rvc_index.job.record import BuildResult
    from rvc_index.job.tune import TuneResult

Backend = Literal["auto", "cpu", "gpu"]  # compute.backend.BackendName: the choices the command line offers
BACKENDS: tuple[str, ...] = typing.get_args(Backend)
PATH = (str, os.PathLike)
MAYBE_PATH = (str, os.PathLike, type(None))
STRINGS = "a list of 'section.key=value' strings (a str is one: wrap it in [])"


class ArgumentError(RvcIndexError, TypeError):
    """An argument of the wrong type; the message names the function and the argument."""


def _check(function: str, **arguments: tuple[object, tuple[type, ...] | Callable[[object], bool], str]) -> None:
    """Raise ArgumentError for the first argument whose value is not of its kinds (a tuple of types, or a test)."""
    for name, (value, kinds, what) in arguments.items():
        fits = kinds(value) if callable(kinds) else isinstance(value, kinds) and not (
            isinstance(value, bool) and bool not in kinds)
        if not fits:
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise ArgumentError(f"{function}: {name} must be {what}, got {type(value).__name__} {shown}")


def _strings(value: object) -> bool:
    """A sequence of strings that is not itself a string (``["index.nprobe=4"]``, not ``"index.nprobe=4"``)."""
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes)) and all(isinstance(v, str)
                                                                                       for v in value)


def _config(function: str, preset: object, overrides: object, backend: object) -> Config:
    """The checked preset (a name, a YAML path or a Config) with ``overrides`` applied; ``backend`` checked."""
    _check(function, preset=(preset, (str, os.PathLike, Config), "a preset name, a YAML path or a Config"),
           overrides=(overrides, _strings, STRINGS), backend=(backend, lambda v: v in BACKENDS,
                                                              " or ".join(repr(b) for b in BACKENDS)))
    if isinstance(preset, Config):
        if overrides:
            raise RvcIndexError("overrides apply to a preset name or file; pass a Config already changed instead")
        return preset
    return load_config(preset, overrides)  # type: ignore[arg-type]


@contextmanager
def _running(function: str, preset: object, overrides: object, backend: object, force: object,
             progress: Callable[[ProgressEvent], None] | None) -> Iterator[Config]:
    """The checked config of a build or batch, with ``progress`` listening for the block."""
    config = _config(function, preset, overrides, backend)
    _check(function, force=(force, (bool,), "True or False"),
           progress=(progress, lambda v: v is None or callable(v), "a callable taking a ProgressEvent, or None"))
    with progress_listener(progress) if progress is not None else nullcontext():
        yield config


def load_preset(preset: str | Path = DEFAULT_PRESET, overrides: Sequence[str] = ()) -> Config:
    """A shipped preset by name (``tips-plain``, ``tips``, ``realtime``, ``offline``, ``rvc-classic``) or a YAML
    file, with ``section.key=value`` overrides applied."""
    _check("load_preset", preset=(preset, PATH, "a preset name or a YAML path"), overrides=(overrides, _strings,
                                                                                            STRINGS))
    return load_config(preset, overrides)


def build_index(source: str | Path | Any, out: str | Path | None = None, *,
                preset: str | Path | Config = DEFAULT_PRESET, overrides: Sequence[str] = (),
                name: str | None = None, index_path: str | Path | None = None, backend: Backend = "auto",
                force: bool = False, progress: Callable[[ProgressEvent], None] | None = None,
                head_start_s: float = 0.0) -> BuildResult:
    """Build one index.

    ``source``: ``logs/<exp>``, its ``3_feature256|768`` (or Applio ``extracted``) folder, any folder of
    ``.npy`` files, or float [N, D] rows in memory: a numpy array, a list of rows, a memoryview, anything
    with ``__array__`` (then ``out`` and ``name`` are required; rebuilt every call, and its rows are staged
    in a hidden folder inside ``out``, removed afterwards: errors name rows of "the array").
    ``out``: the output folder (default: the experiment folder, where RVC looks). ``head_start_s``: seconds
    spent before this call that the evaluation's share of the build time counts (``rvc-index build`` passes
    its interpreter start and imports). Returns the result with the index path and the typed record.
    """
    from rvc_index.compute.backend import select_backend
    from rvc_index.inspection.rvc_files import check_output_dir
    from rvc_index.job.arrays import as_frames, staged_array
    from rvc_index.job.runner import build_experiment

    _check("build_index", out=(out, MAYBE_PATH, "a folder path or None"),
           name=(name, (str, type(None)), "a str or None"),
           index_path=(index_path, MAYBE_PATH, "an .index file path or None"),
           head_start_s=(head_start_s, (float, int), "a number of seconds"))
    with _running("build_index", preset, overrides, backend, force, progress) as config, ExitStack() as stack:
        if not isinstance(source, PATH):
            frames = as_frames(source)
            if out is None or not name:
                raise RvcIndexError("build_index from an array needs out= (the output folder) and name= (the voice)")
            if not str(out).strip():
                raise RvcIndexError("build_index: out '' is an empty path; name the output folder")
            folder = Path(out).expanduser().absolute()
            check_output_dir(folder)  # the rows are staged inside it: nothing is written elsewhere
            source = stack.enter_context(staged_array(frames, folder)).folder
        return build_experiment(source, config, out, select_backend(backend), force=force, name=name,
                                index_path=index_path, head_start_s=float(head_start_s))


def _batch_arguments(function: str, root: object, out: object, only: object, shard: object) -> None:
    _check(function, root=(root, PATH, "a folder path"), out=(out, MAYBE_PATH, "a folder path or None"),
           only=(only, _strings, "a list of glob patterns (a str is one: wrap it in [])"),
           shard=(shard, (str, type(None)), "'K/N', 'slurm' or None"))


def build_batch(root: str | Path, out: str | Path | None = None, *, preset: str | Path | Config = DEFAULT_PRESET,
                overrides: Sequence[str] = (), cluster: str = "local", workers: int | None = None,
                only: Sequence[str] = (), shard: str | None = None, backend: Backend = "auto", force: bool = False,
                report: str | Path | None = None, retries: int = 0, performance_report: str | Path | None = None,
                verbose: bool = False, progress: Callable[[ProgressEvent], None] | None = None) -> BatchReport:
    """Build every experiment under ``root`` (RVC's or Applio's ``logs/``) on a Dask cluster (``local``, ``cuda``,
    ``slurm``, a scheduler address or file); one failing experiment never stops the others, and one that failed
    for a reason other than its input is tried ``retries`` more times. ``shard``: ``K/N`` builds shard K of N
    (balanced by size), ``slurm`` this array task's. Returns the batch report (``.records``, ``.exit_code``;
    no records when the shard holds no experiment)."""
    from rvc_index.batch.jobs import parse_shard
    from rvc_index.batch.root import run_root

    _batch_arguments("build_batch", root, out, only, shard)
    _check("build_batch", cluster=(cluster, (str,), "'local', 'cuda', 'slurm', a scheduler address or file"),
           workers=(workers, (int, type(None)), "a whole number or None"), retries=(retries, (int,), "a whole number"),
           report=(report, MAYBE_PATH, "a file path or None"),
           performance_report=(performance_report, MAYBE_PATH, "a file path or None"),
           verbose=(verbose, (bool,), "True or False"))
    with _running("build_batch", preset, overrides, backend, force, progress) as config:
        return run_root(root, config, out, cluster=cluster, workers=workers, only=list(only), backend=backend,
                        force=force, report=report, shard=parse_shard(shard), retries=retries,
                        performance_report=performance_report,
                        config_file=None if isinstance(preset, Config) else resolve_config_path(preset),
                        overrides=overrides, verbose=verbose)


def preview_batch(root: str | Path, out: str | Path | None = None, *, preset: str | Path | Config = DEFAULT_PRESET,
                  overrides: Sequence[str] = (), only: Sequence[str] = (), shard: str | None = None,
                  backend: Backend = "auto") -> list[Preview]:
    """What ``build_batch`` would do with each experiment under ``root``, from the headers alone: build (with the
    plan's decisions), skip (up to date) or fail (the file and its problem). No cluster starts, no value is read."""
    from rvc_index.batch.jobs import parse_shard
    from rvc_index.batch.preview import preview_root

    _batch_arguments("preview_batch", root, out, only, shard)
    config = _config("preview_batch", preset, overrides, backend)
    return preview_root(root, config, out, list(only), parse_shard(shard), backend)


def evaluate_index(index_path: str | Path, features: str | Path, *, holdout: float = 0.05,
                   queries: str | Path | None = None, max_queries: int = 1000, seed: int = 0,
                   backend: Backend = "auto", sweep: bool = True) -> Evaluation:
    """Recall@8, RVC's blend error, ``-1`` share and latency of an index file on held-out utterances of its
    speaker (``features``: ``logs/<exp>`` or its feature folder), or on never-indexed ``queries``."""
    from rvc_index.compute.backend import select_backend
    from rvc_index.evaluation.evaluate import evaluate_files

    _check("evaluate_index", index_path=(index_path, PATH, "an .index file path"),
           features=(features, PATH, "a folder path"), holdout=(holdout, (float, int), "a number"),
           queries=(queries, MAYBE_PATH, "a folder path or None"), max_queries=(max_queries, (int,), "a whole number"),
           seed=(seed, (int,), "a whole number"), sweep=(sweep, (bool,), "True or False"),
           backend=(backend, lambda v: v in BACKENDS, " or ".join(repr(b) for b in BACKENDS)))
    return evaluate_files(index_path, features, select_backend(backend), fraction=holdout, queries_dir=queries,
                          max_queries=max_queries, seed=seed, sweep=sweep)


def tune_index(source: str | Path, out: str | Path | None = None, *, preset: str | Path | Config = DEFAULT_PRESET,
               overrides: Sequence[str] = (), min_recall: float = 0.95, max_us_per_frame: float = 0.0,
               max_ram_mb: float = 0.0, objective: Literal["latency", "memory"] = "latency", holdout: float = 0.05,
               max_queries: int = 1000, quick: bool = False, name: str = "tuned",
               backend: Backend = "auto") -> TuneResult:
    """Build one index per layout of ``source``'s vectors (``logs/<exp>`` or a feature folder), measure each on
    held-out utterances over nprobe, and return the cheapest configuration meeting the target (recall@8 at
    least ``min_recall``, no ``-1`` labels, within ``max_us_per_frame`` and ``max_ram_mb``; 0 = no limit),
    the fastest or (``objective="memory"``) the smallest. With ``out`` it is written there as a preset for
    ``build_index(..., preset=out)``. Raises ``TuneError`` (an RvcIndexError) naming the closest when none meets
    it. ``quick``: flat and fp16 lists at two n_list sizes only."""
    from rvc_index.compute.backend import select_backend
    from rvc_index.job.tune import Target, tune_experiment

    _check("tune_index", source=(source, PATH, "a folder path"), out=(out, MAYBE_PATH, "a file path or None"),
           holdout=(holdout, (float, int), "a number"), max_queries=(max_queries, (int,), "a whole number"),
           quick=(quick, (bool,), "True or False"), name=(name, (str,), "a str"))
    config = _config("tune_index", preset, overrides, backend)
    path = check_output_file("--out", out) if out is not None else None  # before minutes of tuning, not after
    target = Target(min_recall, max_us_per_frame, max_ram_mb, objective)  # checks itself, before any measurement
    return tune_experiment(source, config, target, select_backend(backend), path, quick=quick,
                           holdout_fraction=holdout, max_queries=max_queries, name=name)
