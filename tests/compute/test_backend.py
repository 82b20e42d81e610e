import logging
import sys
import types

import numpy as np
import pytest
from rvc_index.compute.backend import (
    CPU_PROFILE,
    GPU_PROFILE,
    BackendError,
    _cupy_with_device,
    cuda_mismatch,
    kernel_problem,
    loaded_cuda_majors,
    select_backend,
)


def test_cpu_backend():
    backend = select_backend("cpu")
    assert backend.xp is np and not backend.is_gpu and backend.faiss_gpus == 0
    assert backend.profile == CPU_PROFILE and GPU_PROFILE.tile_bytes > CPU_PROFILE.tile_bytes
    assert GPU_PROFILE.exact_max_rows > CPU_PROFILE.exact_max_rows and GPU_PROFILE.gemm_flops > CPU_PROFILE.gemm_flops
    assert backend.flat_index(16).d == 16
    assert isinstance(backend.to_host(backend.asarray([[1, 2]])), np.ndarray)


def test_unknown_backend():
    with pytest.raises(BackendError, match="unknown backend"):
        select_backend("tpu")


@pytest.mark.skipif(_cupy_with_device() is not None, reason="a GPU is present")
def test_gpu_without_gpu_is_a_clear_error():
    with pytest.raises(BackendError, match="no CUDA GPU is usable"):
        select_backend("gpu")
    assert select_backend("auto").name == "cpu"


@pytest.mark.gpu
def test_gpu_backend_round_trip():
    backend = select_backend("gpu")
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    device = backend.asarray(data)
    assert type(device).__module__.startswith("cupy")
    np.testing.assert_array_equal(backend.to_host(device), data)


def test_cuda_version_mismatch_is_one_clear_line():
    maps = ("7f0 r-xp 0 08:01 1 /venv/lib/python3.11/site-packages/nvidia/cuda_runtime/lib/libcudart.so.12\n"
            "7f1 r-xp 0 08:01 2 /usr/lib/libc.so.6\n")
    assert loaded_cuda_majors(maps) == {12}
    assert cuda_mismatch(12080, {12}) == "" and cuda_mismatch(13000, set()) == ""
    line = cuda_mismatch(13000, loaded_cuda_majors(maps))
    assert "faiss-gpu uses CUDA 12 but CuPy uses CUDA 13" in line and "\n" not in line


def test_stage_fills_consecutive_rows_and_describes_the_cpu():
    backend = select_backend("cpu")
    blocks = [np.full((n, 3), i, dtype=np.float64) for i, n in enumerate((4, 1, 5))]
    out = np.empty((10, 3), dtype=np.float32)
    staged = list(backend.upload(blocks, out=out))
    assert [s.shape[0] for s in staged] == [4, 1, 5] and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, 0], [0, 0, 0, 0, 1, 2, 2, 2, 2, 2])
    assert backend.free_bytes() > 0 and backend.describe() == "cpu (numpy, faiss-cpu)"
    np.testing.assert_array_equal(backend.to_device(out), out)


@pytest.mark.gpu
def test_pinned_staging_round_trip_and_faiss_status():
    backend = select_backend("gpu")
    rows = np.random.default_rng(0).standard_normal((300_000, 64)).astype(np.float32)
    np.testing.assert_array_equal(backend.to_host(backend.to_device(rows, block_rows=70_000)), rows)
    blocks = [rows[i:i + 50_000] for i in range(0, len(rows), 50_000)]
    sums = [float(block.sum()) for block in backend.upload(blocks)]  # double-buffered: each valid until the next
    np.testing.assert_allclose(sums, [float(b.astype(np.float64).sum()) for b in blocks], rtol=1e-4, atol=1e-2)
    assert backend.faiss_gpus or backend.faiss_note  # faiss on the GPU, or a stated reason why not


class DynamicLibNotFoundError(RuntimeError):
    """What CuPy 14.2 raises at its first kernel without NVRTC: ``cupy_backends/cuda/libs/_cnvrtc.pxi`` asks
    ``cuda.pathfinder.load_nvidia_dynamic_lib('nvrtc')``, whose error is this RuntimeError subclass."""


def _cupy_without_nvrtc() -> types.ModuleType:
    """A CuPy that imports and sees one GPU, as ``cupy-cuda12x`` without ``[ctk]`` on a driver-only host does,
    and fails at its first kernel compile with CuPy's own error."""

    def no_nvrtc(*args, **kwargs):
        raise DynamicLibNotFoundError('Failure finding "libnvrtc.so.13 or libnvrtc.so.12": No such file: '
                                      "libnvrtc.so.13 or libnvrtc.so.12")

    runtime = types.SimpleNamespace(getDeviceCount=lambda: 1, runtimeGetVersion=lambda: 12080)
    device = types.SimpleNamespace(use=lambda: None)
    cupy = types.ModuleType("cupy")
    cupy.cuda = types.SimpleNamespace(runtime=runtime, Device=lambda index=0: device)
    cupy.float32, cupy.arange = np.float32, np.arange
    cupy.ElementwiseKernel = lambda *args, **kwargs: no_nvrtc
    return cupy


def test_a_cupy_that_cannot_compile_falls_back_to_the_cpu_naming_the_fix(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "cupy", _cupy_without_nvrtc())
    with caplog.at_level(logging.WARNING, logger="rvc_index"):
        assert select_backend("auto").name == "cpu"
    line = caplog.messages[-1]
    assert "\n" not in line and "CuPy cannot compile and run kernels (DynamicLibNotFoundError: Failure finding" in line
    assert 'pip install "rvc-index[gpu]" (cupy-cuda12x[ctk]: NVRTC, cuBLAS)' in line and "running on the CPU" in line
    with pytest.raises(BackendError, match=r"backend 'gpu' was requested but GPU 0: CuPy cannot compile.*ctk"):
        select_backend("gpu")


@pytest.mark.gpu
def test_cupy_compiles_a_kernel_here():
    import cupy

    assert kernel_problem(cupy) == ""
