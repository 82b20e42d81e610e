"""The device's kernels compiled before a build times anything: rvc-index warms CuPy's kernel cache itself.

CuPy compiles each elementwise, reduction and sort kernel (per dtype) with NVRTC on its first use and keeps it
in its kernel cache on disk (``CUPY_CACHE_DIR``, default ``~/.cupy/kernel_cache``). A build's device routes use
a few dozen: on a machine that never ran them, 10-30 s of compiling inside the first build's k-means or
neighbours. ``warm_kernels`` runs every device route of ``compute`` (the k-means core with both products,
mini-batch steps, the inits, the exact k-NN with a mask and both metrics, the IVF search, the row kernels,
staging) once on tiny arrays of the dtypes the routes use, and says how long it took and how many kernels it
added to the cache: the cold cost, paid once per machine (then warm: ``compiled`` 0). ``ensure_warm`` does it
on the first device use of a process (each device stage calls it first), logs it and notes it in the
backend's description (the build report's ``backend``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rvc_index.compute.backend import Backend
from rvc_index.compute.init import d2_init, random_init
from rvc_index.compute.kernels import row_check, squared_norms
from rvc_index.compute.knn import knn
from rvc_index.compute.lloyd import Exact, ResidentRows, lloyd
from rvc_index.compute.minibatch import minibatch_step, new_state
from rvc_index.compute.neighbours import exact_neighbours, ivf_neighbours, probe_lists, probe_recall
from rvc_index.runtime.progress import get_logger

_WARMED: dict[tuple[int, int], str] = {}  # (array module, device) -> what warming it cost, once per process


@dataclass(frozen=True)
class WarmUp:
    """What warming the kernels cost: seconds, kernels added to the cache (0: it was warm), and where it is."""

    seconds: float
    compiled: int
    cache_dir: str

    def describe(self) -> str:
        state = f"{self.compiled} compiled into {self.cache_dir}: a cold cache" if self.compiled else \
            "the cache was warm"
        return f"kernels warmed in {self.seconds:.1f} s ({state})"


def kernel_cache_dir() -> Path:
    """CuPy's kernel cache (``CUPY_CACHE_DIR``, else ``~/.cupy/kernel_cache``)."""
    return Path(os.environ.get("CUPY_CACHE_DIR") or Path.home() / ".cupy" / "kernel_cache")


def _cached_kernels(folder: Path) -> int:
    try:
        return sum(1 for _ in folder.rglob("*.cubin"))
    except OSError:
        return 0


def run_every_route(backend: Backend, rows: int = 2048, dim: int = 32) -> None:
    """Each device route once on tiny arrays (what ``warm_kernels`` times; the tests check it covers the routes)."""
    xp = backend.xp
    rng = np.random.default_rng(0)
    host = rng.standard_normal((rows, dim)).astype(np.float32)
    x = backend.to_device(host)
    unit = x / xp.sqrt(squared_norms(xp, x))[:, None]
    for exact in (False, True):  # the k-means core: TF32 passes and the exact one, stop rule, an empty centre
        centres = d2_init(xp, x, 24, rng) if exact else random_init(xp, x, 24, rng)
        centres[3] = 1e3
        assigner = Exact(rows // 4, backend.product("tf32"), backend.product("fp32"))
        lloyd(xp, ResidentRows(x, rows // 4), centres, 3, assigner, tol=1e-12, finish=exact)
    state = new_state(xp, x[:24].copy())
    for _ in range(2):
        minibatch_step(xp, state, x, dead_window=1)
    keep = rng.random(rows) > 0.2
    knn(xp, backend.asarray(host[:300]), [x[:rows // 2], x[rows // 2:]], 8, 1 << 20,
        keep=lambda a, b: backend.asarray(keep[a:b], dtype=bool))
    knn(xp, x[:300], [x], 20, 1 << 20, l2=False)
    exact_neighbours(xp, unit, unit, 8, 1 << 20)
    lists = unit[:16].copy()
    probes = probe_lists(xp, unit, lists, 4, 1 << 20)
    ivf_neighbours(xp, unit, probes, 16, 8)
    probe_recall(xp, unit, lists, xp.arange(32), exact_neighbours(xp, unit[:32], unit, 8, 1 << 20), 4)
    row_check(xp, x, 1e30)
    for _ in backend.upload([host[:100], host[100:250]]):
        pass


def warm_kernels(backend: Backend) -> WarmUp:
    """Compile (or load from the cache) every kernel the device routes launch; nothing on a CPU."""
    if not backend.is_gpu:
        return WarmUp(0.0, 0, "")
    folder = kernel_cache_dir()
    before = _cached_kernels(folder)
    started = time.perf_counter()
    run_every_route(backend)
    backend.sync()
    return WarmUp(time.perf_counter() - started, max(0, _cached_kernels(folder) - before), str(folder))



def ensure_warm(backend: Backend) -> None:
    """``warm_kernels`` on the first device use of this process (each GPU once), logged and kept in
    ``backend.warm_note``; nothing on a CPU."""
    if not backend.is_gpu:
        return
    key = (id(backend.xp), backend.device)
    if key not in _WARMED:
        _WARMED[key] = f"{warm_kernels(backend).describe()} on first use"
        get_logger().info("GPU %d: %s", backend.device, _WARMED[key])
    backend.warm_note = _WARMED[key]
