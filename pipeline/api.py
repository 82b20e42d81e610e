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

import tempfile
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from rvc_index.batch.summary import BatchReport
from rvc_index.build.record import BuildResult
from rvc_index.config.loading import load_config
from rvc_index.config.schema import Config
from rvc_index.errors import RvcIndexError
from rvc_index.evaluation.result import Evaluation
from rvc_index.runtime.progress import ProgressEvent, progress_listener

DEFAULT_PRESET = "tips-plain"
ARRAY_FILE_ROWS = 500  # an in-memory array is stored as 10 s pseudo-utterances, so evaluation can hold some out


def load_preset(preset: str | Path = DEFAULT_PRESET, overrides: Sequence[str] = ()) -> Config:
    """A shipped preset by name (``tips-plain``, ``tips``, ``rvc-classic``) or a YAML file, with
    ``section.key=value`` overrides applied."""
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


def build_index(source: str | Path | np.ndarray, out: str | Path | None = None, *,
                preset: str | Path | Config = DEFAULT_PRESET, overrides: Sequence[str] = (),
                name: str | None = None, index_path: str | Path | None = None, backend: str = "auto",
                force: bool = False, progress: Callable[[ProgressEvent], None] | None = None) -> BuildResult:
    """Build one index.

    ``source``: ``logs/<exp>``, its ``3_feature256|768`` (or Applio ``extracted``) folder, any folder of
    ``.npy`` files, or an in-memory float [N, D] array (then ``out`` and ``name`` are required; it is
    rebuilt every call: its temporary files are new each time, so the input fingerprint never matches).
    ``out``: the output folder (default: the experiment folder, where RVC looks). Returns the result with
    the index path and the typed record.
    """
    from rvc_index.build.runner import build_experiment
    from rvc_index.compute.backend import select_backend

    config = _config(preset, overrides)
    with ExitStack() as stack:
        _listening(stack, progress)
        if isinstance(source, np.ndarray):
            if out is None or not name:
                raise RvcIndexError("build_index from an array needs out= (the output folder) and name= (the voice)")
            source = _array_folder(stack, source, name)  # new files each call: the fingerprint always differs
        return build_experiment(source, config, out, select_backend(backend), force=force, name=name,
                                index_path=index_path)


def _array_folder(stack: ExitStack, frames: np.ndarray, name: str) -> Path:
    """``frames`` [N, D] written as RVC's layout in a temporary folder removed when ``stack`` closes."""
    if frames.ndim != 2 or frames.shape[0] == 0 or not np.issubdtype(frames.dtype, np.floating):
        raise RvcIndexError(f"build_index: expected a non-empty float [N, D] array, got {frames.dtype} "
                            f"{tuple(frames.shape)}")
    root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rvc-index-array-")))
    folder = root / "array" / f"3_feature{frames.shape[1]}"
    folder.mkdir(parents=True)
    for number, start in enumerate(range(0, frames.shape[0], ARRAY_FILE_ROWS)):
        np.save(folder / f"{number:06d}.npy", np.asarray(frames[start:start + ARRAY_FILE_ROWS], dtype=np.float32))
    return folder


def build_batch(root: str | Path, out: str | Path | None = None, *, preset: str | Path | Config = DEFAULT_PRESET,
                overrides: Sequence[str] = (), cluster: str = "local", workers: int | None = None,
                only: Sequence[str] = (), backend: str = "auto", force: bool = False,
                report: str | Path | None = None,
                progress: Callable[[ProgressEvent], None] | None = None) -> BatchReport:
    """Build every experiment under ``root`` (RVC's ``logs/``) on a Dask cluster (``local``, ``cuda``,
    ``slurm``, a scheduler address or file); one failing experiment never stops the others. Returns the
    batch report (``.records``, ``.exit_code``)."""
    from rvc_index.batch.root import run_root

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

    return evaluate_files(index_path, features, select_backend(backend), fraction=holdout, queries_dir=queries,
                          max_queries=max_queries, seed=seed, sweep=sweep)
