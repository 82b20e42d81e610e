"""The compute device, chosen once at the edge: array module plus faiss GPU resources.

This is the only module that imports cupy. Compute code receives a ``Backend`` and uses ``backend.xp``
(``cupy`` or ``numpy``), ``backend.product`` (a matrix product at a chosen precision: TF32 where the GPU has
it) and ``backend.flat_index`` (a GPU or CPU flat L2 index). Host rows reach the device through
``Backend.upload``: on a GPU, large copies from two pinned host buffers on their own stream, the next block
read meanwhile (``compute.staging``), so reading, copying and computing overlap.
faiss-gpu is used only when a smoke test shows it runs kernels on this GPU with CuPy's CUDA major
version; otherwise the build says why in one line and faiss runs on the CPU.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Literal

import faiss
import numpy as np
import psutil
from rvc_index.compute.knn import plain_product
from rvc_index.compute.staging import stage_pinned
from rvc_index.errors import RvcIndexError
from rvc_index.runtime.progress import get_logger

BackendName = Literal["auto", "cpu", "gpu"]


class BackendError(RvcIndexError, RuntimeError):
    """The requested backend cannot run on this machine."""


@dataclass(frozen=True)
class DeviceProfile:
    """What sizes work on one kind of device (rates rounded down from a quiet machine's: docs/benchmarks.md)."""

    tile_bytes: int  # one k-means pass tile's working memory (at most a quarter of the route's budget)
    exact_max_rows: int  # the expansion's neighbours by exact k-NN up to this many rows (expand.exact_max_rows=0)
    gemm_flops: float  # exact k-NN tiles' matrix-product rate (numpy BLAS on 2 cores, or CuPy)
    topk_s_per_pair: float  # argpartition and merge of a tile, per (query, row)


CPU_PROFILE = DeviceProfile(tile_bytes=128 << 20, exact_max_rows=12_288, gemm_flops=2e10, topk_s_per_pair=1e-8)
GPU_PROFILE = DeviceProfile(tile_bytes=2 << 30, exact_max_rows=131_072, gemm_flops=2e12, topk_s_per_pair=0.0)


@dataclass
class Backend:
    """A device: ``xp`` for array math, and faiss GPU resources when faiss-gpu sees a GPU."""

    name: Literal["cpu", "gpu"]
    xp: ModuleType
    faiss_gpus: int = 0
    device: int = 0
    faiss_note: str = ""  # why faiss runs on the CPU beside a GPU ("" when it does not, or need not)
    warm_note: str = ""  # what warming the kernel cache cost on this GPU (compute.warm.ensure_warm)
    _gpu_resources: Any = field(default=None, repr=False)

    @property
    def is_gpu(self) -> bool:
        return self.name == "gpu"

    @property
    def profile(self) -> DeviceProfile:
        return GPU_PROFILE if self.is_gpu else CPU_PROFILE

    def describe(self) -> str:
        if not self.is_gpu:
            return "cpu (numpy, faiss-cpu)"
        faiss_part = "faiss-gpu" if self.faiss_gpus else f"faiss on the CPU: {self.faiss_note or 'no GPU support'}"
        return f"gpu:{self.device} (cupy, {faiss_part}{'; ' + self.warm_note if self.warm_note else ''})"

    def asarray(self, array: Any, dtype: Any = np.float32) -> Any:
        """Host or device array -> contiguous array on this backend's device."""
        return self.xp.ascontiguousarray(self.xp.asarray(array, dtype=dtype))

    def to_host(self, array: Any) -> np.ndarray:
        """Device array -> numpy array (a no-op for numpy input)."""
        return to_host(array)

    @property
    def tf32(self) -> bool:
        """TF32 tensor-core products exist here: a GPU of compute capability 8.0 or more."""
        if not (self.is_gpu and isinstance(self.xp, ModuleType)):  # (the tests' CuPy stand-in is not a module)
            return False
        try:
            return int(self.xp.cuda.Device(self.device).compute_capability) >= 80
        except Exception:  # noqa: BLE001 - no answer means no TF32
            return False

    def product(self, precision: Literal["fp32", "tf32"] = "fp32") -> Callable[[Any, Any], Any]:
        """``(a [m, d], b [n, d]) -> a @ b.T [m, n]`` at ``precision``. ``tf32`` (where ``tf32``): cuBLAS with
        ``CUBLAS_COMPUTE_32F_FAST_TF32`` for this product only. CuPy 14 reads its float32 compute type once
        (``CUPY_TF32=1`` in the environment) or takes ``cupy._core.set_compute_type(float32,
        COMPUTE_TYPE_TF32)`` (``cupy/_core/_routines_linalg.pyx``; CuPy's own ``test_matmul.py`` switches it
        so), which is switched on around the product and back after it. Otherwise a plain float32 product."""
        if precision != "tf32" or not self.tf32:
            return plain_product
        core = importlib.import_module(f"{self.xp.__name__}._core")
        fast = importlib.import_module(f"{self.xp.__name__}._core._routines_linalg").COMPUTE_TYPE_TF32

        def tf32_product(a: Any, b: Any) -> Any:
            before = core.get_compute_type(np.float32)
            core.set_compute_type(np.float32, fast)
            try:
                return a @ b.T
            finally:
                core.set_compute_type(np.float32, before)

        return tf32_product

    def sync(self) -> None:
        """Wait for the device's queued work (timings measure work done, not work queued); no-op on a CPU."""
        if self.is_gpu:
            self.xp.cuda.get_current_stream().synchronize()

    def free_bytes(self) -> int:
        """Memory this backend's arrays can still take: free device memory (plus CuPy's pooled free
        blocks) on a GPU, available host memory on the CPU."""
        if not self.is_gpu:
            return int(psutil.virtual_memory().available)
        free, _ = self.xp.cuda.runtime.memGetInfo()
        return int(free) + int(self.xp.get_default_memory_pool().free_bytes())

    def upload(self, blocks: Iterable[np.ndarray], out: Any | None = None) -> Iterator[Any]:
        """Each host block [b, d] as a float32 device array, in order; with ``out`` [n, d] (device), the
        blocks are copied into consecutive rows of it and the yielded arrays are those rows.

        On a GPU the copies run from two pinned host buffers on a non-blocking stream (double-buffered):
        the host fills one while the other's copy is in flight, and the compute stream waits on the copy's
        event, not the host; the next block is read on a thread meanwhile (``read_ahead``). A yielded array
        is valid until the next one is asked for (unless in ``out``).
        """
        if not self.is_gpu:
            offset = 0
            for block in blocks:
                rows = self.asarray(block)
                if out is not None:
                    out[offset:offset + rows.shape[0]] = rows
                    rows = out[offset:offset + rows.shape[0]]
                    offset += rows.shape[0]
                yield rows
            return
        yield from stage_pinned(self.xp, blocks, out)

    def to_device(self, rows: np.ndarray, block_rows: int = 65_536) -> Any:
        """A host [n, d] array as a float32 device array, staged in pinned blocks on a GPU (the array itself,
        or a float32 copy, on the CPU)."""
        if not self.is_gpu:
            return self.asarray(rows)
        out = self.xp.empty(rows.shape, dtype=self.xp.float32)
        for _ in self.upload((rows[start:start + block_rows] for start in range(0, rows.shape[0], block_rows)), out):
            pass
        return out

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
    """A numpy or cupy array as a numpy array (a no-op for numpy input): anything with ``get()`` is on a device."""
    get = getattr(array, "get", None)
    return array if get is None else get()


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


def loaded_cuda_majors(maps: str) -> set[int]:
    """CUDA runtime major versions of the ``libcudart.so.N`` libraries in a ``/proc/<pid>/maps`` text."""
    return {int(major) for major in re.findall(r"libcudart\.so\.(\d+)", maps)}


def cuda_mismatch(cupy_runtime: int, faiss_majors: set[int]) -> str:
    """Why faiss-gpu and CuPy cannot share a process ("" when they can): ``cupy_runtime`` is CuPy's
    ``runtimeGetVersion()`` (12080 = 12.8), ``faiss_majors`` the CUDA runtimes loaded beside faiss."""
    cupy_major = cupy_runtime // 1000
    others = sorted(major for major in faiss_majors if major != cupy_major)
    if not others:
        return ""
    return (f"faiss-gpu uses CUDA {others[0]} but CuPy uses CUDA {cupy_major} (install the matching extra: "
            "`gpu` for CUDA 12, `gpu-cu13` for CUDA 13)")


def _process_maps() -> str:
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:  # not Linux: the smoke test alone decides
        return ""


def faiss_gpu_status(cupy: ModuleType, device: int) -> tuple[int, str]:
    """(faiss GPUs to use, why 0 beside a GPU): faiss-gpu must match CuPy's CUDA major version and
    find a stored point exactly on ``device`` (a wheel without this GPU's architecture cannot)."""
    gpus = faiss_gpu_count()
    if not gpus:
        return 0, "this faiss has no GPU support"
    mismatch = cuda_mismatch(int(cupy.cuda.runtime.runtimeGetVersion()), loaded_cuda_majors(_process_maps()))
    if mismatch:
        return 0, mismatch
    points = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
    try:
        config = faiss.GpuIndexFlatConfig()
        config.device = device
        index = faiss.GpuIndexFlatL2(faiss.StandardGpuResources(), 8, config)
        index.add(points)
        found = index.search(points[:4], 1)[1][:, 0]
    except Exception as exc:  # noqa: BLE001 - any failure here means "faiss-gpu cannot run on this GPU"
        lines = str(exc).strip().splitlines()
        problem = f"{type(exc).__name__}: {lines[-1] if lines else ''}"
    else:
        problem = "" if (found == np.arange(4)).all() else f"its smoke-test search returned {found.tolist()}"
    if problem:
        arch = cupy.cuda.Device(device).compute_capability  # "90" on an H100/H200
        return 0, f"faiss-gpu cannot run kernels on GPU {device} (sm_{arch}): {problem}"
    return gpus, ""


def kernel_problem(cupy: ModuleType) -> str:
    """Why CuPy cannot compile a kernel or run a matrix product on the current device ("" when it can).

    CuPy compiles its kernels with NVRTC on first use and multiplies with cuBLAS: a ``cupy-cuda12x``
    installed without its CUDA toolkit wheels on a driver-only host imports and sees the GPU, then fails
    at the first kernel, in the middle of a build. One tiny kernel and one product here fail first.
    """
    try:
        x = cupy.arange(4, dtype=cupy.float32).reshape(2, 2)
        doubled = cupy.ElementwiseKernel("float32 x", "float32 y", "y = 2.0f * x", "rvc_index_probe")(x)
        product = (doubled @ x).get()  # [[4, 6], [12, 22]]
    except Exception as exc:  # noqa: BLE001 - whatever fails here (no NVRTC, no cuBLAS, no kernel image) says why
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        return f"{type(exc).__name__}: {lines[0] if lines else ''}"
    return "" if np.array_equal(product, [[4, 6], [12, 22]]) else f"a 2 x 2 product returned {product.tolist()}"


def cupy_fix(cupy: ModuleType) -> str:
    """The install that brings NVRTC and cuBLAS for this CuPy's CUDA major version."""
    try:
        major = int(cupy.cuda.runtime.runtimeGetVersion()) // 1000
    except Exception:  # noqa: BLE001 - the version is only for the message
        major = 12
    extra = "gpu-cu13" if major >= 13 else "gpu"
    return f'pip install "rvc-index[{extra}]" (cupy-cuda{major}x[ctk]: NVRTC, cuBLAS) or install the CUDA toolkit'


def select_backend(name: BackendName = "auto", device: int = 0) -> Backend:
    """Pick the device: ``gpu`` needs CuPy with a CUDA device that compiles and runs a kernel; ``auto`` uses
    one if present and falls back to the CPU (one logged line naming the fix) when it cannot compile."""
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
                "(install the 'gpu' extra, cupy-cuda12x and faiss-gpu, on a machine with a GPU)"
            )
        return Backend("cpu", np)
    cupy.cuda.Device(device).use()
    problem = kernel_problem(cupy)
    if problem:
        line = f"GPU {device}: CuPy cannot compile and run kernels ({problem}): {cupy_fix(cupy)}"
        if name == "gpu":
            raise BackendError(f"backend 'gpu' was requested but {line}")
        log.warning("%s; running on the CPU", line)
        return Backend("cpu", np)
    gpus, note = faiss_gpu_status(cupy, device)
    if not gpus:
        log.warning("GPU %d: CuPy runs the array work; faiss runs on the CPU because %s", device, note)
    return Backend("gpu", cupy, faiss_gpus=gpus, device=device, faiss_note=note)
