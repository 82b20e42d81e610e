"""The compute device, chosen once at the edge: array module plus faiss GPU resources.

This is the only module that imports cupy. Compute code receives a ``Backend`` and uses
``backend.xp`` (``cupy`` or ``numpy``) and ``backend.flat_index`` (a GPU or CPU flat L2 index).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Literal

import faiss
import numpy as np
from rvc_index.errors import RvcIndexError
from rvc_index.runtime.progress import get_logger

BackendName = Literal["auto", "cpu", "gpu"]


class BackendError(RvcIndexError, RuntimeError):
    """The requested backend cannot run on this machine."""


@dataclass
class Backend:
    """A device: ``xp`` for array math, and faiss GPU resources when faiss-gpu sees a GPU."""

    name: Literal["cpu", "gpu"]
    xp: ModuleType
    faiss_gpus: int = 0
    device: int = 0
    _gpu_resources: Any = field(default=None, repr=False)

    @property
    def is_gpu(self) -> bool:
        return self.name == "gpu"

    def describe(self) -> str:
        if not self.is_gpu:
            return "cpu (numpy, faiss-cpu)"
        faiss_part = "faiss-gpu" if self.faiss_gpus else "faiss-cpu (no faiss GPU support)"
        return f"gpu:{self.device} (cupy, {faiss_part})"

    def asarray(self, array: Any, dtype: Any = np.float32) -> Any:
        """Host or device array -> contiguous array on this backend's device."""
        return self.xp.ascontiguousarray(self.xp.asarray(array, dtype=dtype))

    def to_host(self, array: Any) -> np.ndarray:
        """Device array -> numpy array (a no-op for numpy input)."""
        return to_host(array)

    def gpu_resources(self) -> Any:
        """This backend's one ``StandardGpuResources`` (its scratch memory is reserved once)."""
        if self._gpu_resources is None:
            self._gpu_resources = faiss.StandardGpuResources()
        return self._gpu_resources

    def flat_index(self, dim: int) -> faiss.Index:
        """An exact L2 index: ``GpuIndexFlatL2`` when faiss has GPUs, else ``IndexFlatL2``."""
        if self.faiss_gpus:
            config = faiss.GpuIndexFlatConfig()
            config.device = self.device
            return faiss.GpuIndexFlatL2(self.gpu_resources(), dim, config)
        return faiss.IndexFlatL2(dim)


def to_host(array: Any) -> np.ndarray:
    """A numpy or cupy array as a numpy array (a no-op for numpy input)."""
    return array if isinstance(array, np.ndarray) else array.get()


@contextmanager
def faiss_threads(count: int) -> Iterator[None]:
    """Pin faiss's OpenMP threads for the calling thread (OpenMP keeps the setting per thread)."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(count)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _cupy_with_device() -> ModuleType | None:
    try:
        cupy = importlib.import_module("cupy")
    except ImportError:
        return None
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
    except Exception:  # noqa: BLE001 - any CUDA runtime failure means "no usable GPU"
        return None
    return cupy


def faiss_gpu_count() -> int:
    """GPUs visible to faiss (0 for faiss-cpu builds)."""
    get_num_gpus = getattr(faiss, "get_num_gpus", None)
    return int(get_num_gpus()) if get_num_gpus is not None else 0


def select_backend(name: BackendName = "auto", device: int = 0) -> Backend:
    """Pick the device: ``gpu`` needs CuPy with a CUDA device; ``auto`` uses one if present."""
    if name not in ("auto", "cpu", "gpu"):
        raise BackendError(f"unknown backend {name!r}: use auto, cpu or gpu")
    log = get_logger()
    if name == "cpu":
        return Backend("cpu", np)
    cupy = _cupy_with_device()
    if cupy is None:
        if name == "gpu":
            raise BackendError(
                "backend 'gpu' was requested but no CUDA GPU is usable "
                "(install the 'gpu' extra: cupy-cuda12x and faiss-gpu-cu12, on a machine with a GPU)"
            )
        return Backend("cpu", np)
    cupy.cuda.Device(device).use()
    gpus = faiss_gpu_count()
    if not gpus:
        log.warning("CuPy sees a GPU but faiss has no GPU support: faiss steps run on the CPU")
    return Backend("gpu", cupy, faiss_gpus=gpus, device=device)
