"""faiss's first import, kept alive when faiss-gpu is installed without its CUDA wheels.

faiss 1.15's GPU wheels (``faiss-gpu``, ``faiss-gpu-cuvs``) preload NVIDIA's CUDA wheels in
``faiss/__init__.py`` and raise ``RuntimeError`` there when one is missing (``pip install --no-deps``, a
conda environment with its own CUDA, a CUDA wheel removed by another install): every ``import faiss``, CPU
builds included, would fail. Whichever of our modules imports faiss first (a build, a Dask worker, the
CLI), ``rvc_index`` has imported this guard before it: on that failure faiss is loaded once more without
the preload, so its extension finds CUDA where the system keeps it (a toolkit, conda), and the fallback
is logged in one line. If it cannot load even so, the ``ImportError`` names the fix in one line (the CLI
prints it and exits 1).
"""

from __future__ import annotations

import importlib.abc
import logging
import sys
from types import ModuleType
from typing import Any

# faiss/__init__.py preloads CUDA wheels only when this marker module imports (its GPU builds ship it)
GPU_MARKER = "faiss._gpu_build"
FIX = ("reinstall the extra that brings its CUDA wheels (pip install 'rvc-index[gpu]', or [gpu-cu13]), "
       "or use faiss on the CPU (pip uninstall faiss-gpu faiss-gpu-cuvs && pip install 'rvc-index[cpu]')")


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


class _FallbackLoader(importlib.abc.Loader):
    """faiss's own loader, run again without the CUDA-wheel preload when a GPU build's preload fails."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, get_source, ...: faiss's loader answers
        return getattr(self._loader, name)

    def create_module(self, spec: Any) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        try:
            self._loader.exec_module(module)
            return
        except (RuntimeError, ImportError, OSError) as exc:
            if sys.modules.get(GPU_MARKER) is None:  # not a GPU build failing to preload: nothing to fall back to
                raise
            problem = _one_line(exc)
        sys.modules[GPU_MARKER] = None  # the marker no longer imports: faiss skips the preload
        module.__dict__.pop(GPU_MARKER.rpartition(".")[2], None)  # ``from . import`` would find it here first
        try:
            self._loader.exec_module(module)
        except (RuntimeError, ImportError, OSError) as exc:
            raise ImportError(f"faiss-gpu is installed without its CUDA libraries ({problem}; without the "
                              f"preload: {_one_line(exc)}): {FIX}") from None
        logging.getLogger("rvc_index").warning(
            "faiss-gpu is installed without its CUDA wheels (%s): loaded against the system's CUDA libraries "
            "instead; to install them: pip install 'rvc-index[gpu]'", problem)


class _FaissFinder(importlib.abc.MetaPathFinder):
    """Finds ``faiss`` with the other finders and wraps its loader in ``_FallbackLoader``."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "faiss":
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = None if finder is self or find is None else find(name, path, target)
            if spec is not None:
                if hasattr(spec.loader, "exec_module"):
                    spec.loader = _FallbackLoader(spec.loader)
                return spec
        return None


def guard_faiss_import() -> None:
    """Install the finder once per process (before faiss's first import; a no-op once faiss is loaded)."""
    if "faiss" not in sys.modules and not any(isinstance(f, _FaissFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _FaissFinder())
