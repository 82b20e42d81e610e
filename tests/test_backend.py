import numpy as np
import pytest
from rvc_index.compute.backend import BackendError, _cupy_with_device, select_backend


def test_cpu_backend():
    backend = select_backend("cpu")
    assert backend.xp is np and not backend.is_gpu and backend.faiss_gpus == 0
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
