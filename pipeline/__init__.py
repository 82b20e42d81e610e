"""rvc-index: build RVC-ready faiss retrieval indices from HuBERT feature collections.

The public API (``rvc_index.api``): ``build_index``, ``build_batch``, ``preview_batch``, ``load_preset``,
``evaluate_index``, ``tune_index``, their result types and ``RvcIndexError``. Names load on first use, so
importing a lower layer (``rvc_index.compute``, ``rvc_index.config``) pulls in no Dask cluster code, faiss or CLI.
"""

from __future__ import annotations

import importlib
from typing import Any

from rvc_index.runtime.faiss_guard import guard_faiss_import

__version__ = "0.5.0"

_EXPORTS = {
    "build_index": "rvc_index.api",
    "build_batch": "rvc_index.api",
    "preview_batch": "rvc_index.api",
    "load_preset": "rvc_index.api",
    "evaluate_index": "rvc_index.api",
    "tune_index": "rvc_index.api",
    "BuildResult": "rvc_index.job.record",
    "BuildRecord": "rvc_index.job.record",
    "BatchReport": "rvc_index.batch.summary",
    "Evaluation": "rvc_index.evaluation.result",
    "ProgressEvent": "rvc_index.runtime.progress",
    "RvcIndexError": "rvc_index.errors",
}
__all__ = ["__version__", *_EXPORTS]
guard_faiss_import()  # before any of our modules imports faiss: a half-installed faiss-gpu falls back


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rvc_index' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
