"""The Python API for tools that embed rvc-index (an RVC fork, an Applio-style UI, a lab's scripts).

    import rvc_index
    result = rvc_index.build_index("logs/my-voice")                 # RVC's layout, default preset
    result = rvc_index.build_index(frames, out="idx", name="voice")  # an in-memory [N, D] float32 array
    report = rvc_index.build_batch("logs/", out="indexes")           # every experiment under a root
    config = rvc_index.load_preset("tips", ["index.nprobe=4"])
    quality = rvc_index.evaluate_index(result.index_path, "logs/my-voice")

Every function raises ``rvc_index.RvcIndexError`` for what a user can fix (bad input, config, disk).
``progress`` callbacks receive ``rvc_index.ProgressEvent``s (stage start/done, counted progress).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from rvc_index.batch.summary import BatchReport
from rvc_index.config.loading import load_config
from rvc_index.config.schema import Config
from rvc_index.errors import RvcIndexError
from rvc_index.evaluation.result import Evaluation
from rvc_index.job.record import BuildResult
from rvc_index.runtime.progress import ProgressEvent, progress_listener

DEFAULT_PRESET = "tips-plain"
PATH = (str, os.PathLike)
MAYBE_PATH = (str, os.PathLike, type(None))


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


def _common(function: str, preset: object, overrides: object, backend: object, force: object,
            progress: object) -> None:
    _check(function, preset=(preset, (str, os.PathLike, Config), "a preset name, a YAML path or a Config"),
           overrides=(overrides, _strings, "a list of 'section.key=value' strings (a str is one: wrap it in [])"),
           backend=(backend, (str,), "'auto', 'cpu' or 'gpu'"), force=(force, (bool,), "True or False"),
           progress=(progress, lambda v: v is None or callable(v), "a callable taking a ProgressEvent, or None"))


def load_preset(preset: str | Path = DEFAULT_PRESET, overrides: Sequence[str] = ()) -> Config:
    """A shipped preset by name (``tips-plain``, ``tips``, ``rvc-classic``) or a YAML file, with
    ``section.key=value`` overrides applied."""
    _check("load_preset", preset=(preset, PATH, "a preset name or a YAML path"),
           overrides=(overrides, _strings, "a list of 'section.key=value' strings (a str is one: wrap it in [])"))
    return load_config(preset, overrides)


def _config(preset: str | Path | Config, overrides: Sequence[str]) -> Config:
    if isinstance(preset, Config):
        if overrides:
            raise RvcIndexError("overrides apply to a preset name or file; pass a Config already changed instead")
        return preset
    return load_preset(preset, overrides)


def _listening(stack: ExitStack, progress: Callable[[ProgressEvent], None] | None) -> None:
    if progress is not None:
        stack.enter_context(progress_listener(progress))


def build_index(source: str | Path | Any, out: str | Path | None = None, *,
                preset: str | Path | Config = DEFAULT_PRESET, overrides: Sequence[str] = (),
                name: str | None = None, index_path: str | Path | None = None, backend: str = "auto",
                force: bool = False, progress: Callable[[ProgressEvent], None] | None = None) -> BuildResult:
    """Build one index.

    ``source``: ``logs/<exp>``, its ``3_feature256|768`` (or Applio ``extracted``) folder, any folder of
    ``.npy`` files, or float [N, D] rows in memory: a numpy array, a list of rows, a memoryview, anything
    with ``__array__`` (then ``out`` and ``name`` are required; rebuilt every call, and its rows are staged
    in a hidden folder inside ``out``, removed afterwards: errors name rows of "the array").
    ``out``: the output folder (default: the experiment folder, where RVC looks). Returns the result with
    the index path and the typed record.
    """
    from rvc_index.compute.backend import select_backend
    from rvc_index.job.arrays import as_frames, staged_array
    from rvc_index.job.runner import build_experiment, check_output_dir

    _check("build_index", out=(out, MAYBE_PATH, "a folder path or None"),
           name=(name, (str, type(None)), "a str or None"),
           index_path=(index_path, MAYBE_PATH, "an .index file path or None"))
    _common("build_index", preset, overrides, backend, force, progress)
    config = _config(preset, overrides)
    with ExitStack() as stack:
        _listening(stack, progress)
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
                                index_path=index_path)


def build_batch(root: str | Path, out: str | Path | None = None, *, preset: str | Path | Config = DEFAULT_PRESET,
                overrides: Sequence[str] = (), cluster: str = "local", workers: int | None = None,
                only: Sequence[str] = (), backend: str = "auto", force: bool = False,
                report: str | Path | None = None,
                progress: Callable[[ProgressEvent], None] | None = None) -> BatchReport:
    """Build every experiment under ``root`` (RVC's ``logs/``) on a Dask cluster (``local``, ``cuda``,
    ``slurm``, a scheduler address or file); one failing experiment never stops the others. Returns the
    batch report (``.records``, ``.exit_code``)."""
    from rvc_index.batch.root import run_root

    _check("build_batch", root=(root, PATH, "a folder path"), out=(out, MAYBE_PATH, "a folder path or None"),
           cluster=(cluster, (str,), "'local', 'cuda', 'slurm', a scheduler address or file"),
           workers=(workers, (int, type(None)), "a whole number or None"),
           only=(only, _strings, "a list of glob patterns (a str is one: wrap it in [])"),
           report=(report, MAYBE_PATH, "a file path or None"))
    _common("build_batch", preset, overrides, backend, force, progress)
    config = _config(preset, overrides)
    with ExitStack() as stack:
        _listening(stack, progress)
        return run_root(root, config, out, cluster=cluster, workers=workers, only=list(only), backend=backend,
                        force=force, report=report)


def evaluate_index(index_path: str | Path, features: str | Path, *, holdout: float = 0.05,
                   queries: str | Path | None = None, max_queries: int = 1000, seed: int = 0,
                   backend: str = "auto", sweep: bool = True) -> Evaluation:
    """Recall@8, RVC's blend error, ``-1`` share and latency of an index file on held-out utterances of its
    speaker (``features``: ``logs/<exp>`` or its feature folder), or on never-indexed ``queries``."""
    from rvc_index.compute.backend import select_backend
    from rvc_index.evaluation.evaluate import evaluate_files

    _check("evaluate_index", index_path=(index_path, PATH, "an .index file path"),
           features=(features, PATH, "a folder path"), holdout=(holdout, (float, int), "a number"),
           queries=(queries, MAYBE_PATH, "a folder path or None"), max_queries=(max_queries, (int,), "a whole number"),
           seed=(seed, (int,), "a whole number"), backend=(backend, (str,), "'auto', 'cpu' or 'gpu'"),
           sweep=(sweep, (bool,), "True or False"))
    return evaluate_files(index_path, features, select_backend(backend), fraction=holdout, queries_dir=queries,
                          max_queries=max_queries, seed=seed, sweep=sweep)
