"""Launch budget of the GPU routes, checked on a CPU: numpy behind a counting array module.

``CountingXp`` stands in for CuPy: it counts array-module calls and ufunc launches (operators, ``@``,
reductions) and device-to-host transfers (``float``/``int``/``bool`` of an array, ``item``, ``tolist``,
``get``), and refuses any name or keyword CuPy does not provide (``tests/compute/cupy_names.json``: ``dir(cupy)``
and the signatures CuPy exposes, from cupy-cuda12x). A numpy function applied to one of its arrays is
refused too, as CuPy refuses implicit conversion. The budget: calls and transfers per k-means pass and
per expansion tile stay constant as K and the row count grow.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from rvc_index.compute.backend import Backend
from rvc_index.compute.knn import tile_top_k
from rvc_index.compute.lloyd import lloyd_passes, resident_tiles
from rvc_index.config.schema import ExpandConfig
from rvc_index.stages.expand import expand, expand_rows

CUPY = json.loads((Path(__file__).parent / "cupy_names.json").read_text())


class Counts:
    def __init__(self):
        self.calls, self.transfers = 0, 0


def _plain(value):
    if isinstance(value, DeviceArray):
        return value.view(np.ndarray)
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def _device(value):
    if isinstance(value, np.generic):  # numpy reductions give scalars, CuPy's give 0-d device arrays
        return np.asarray(value).view(DeviceArray)
    if isinstance(value, np.ndarray) and not isinstance(value, DeviceArray):
        return value.view(DeviceArray)
    if isinstance(value, tuple):
        return tuple(_device(v) for v in value)
    return value


def _fancy(key):
    return any(isinstance(part, np.ndarray) for part in (key if isinstance(key, tuple) else (key,)))


class DeviceArray(np.ndarray):
    """A numpy array standing for a device array: launches and transfers on it are counted."""

    counts = Counts()

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        DeviceArray.counts.calls += 1
        if "out" in kwargs:
            kwargs["out"] = _plain(kwargs["out"])
        return _device(getattr(ufunc, method)(*_plain(inputs), **kwargs))

    def __getitem__(self, key):
        if _fancy(key):  # a gather kernel on a GPU; basic slices are views
            DeviceArray.counts.calls += 1
        return super().__getitem__(_plain(key))

    def __setitem__(self, key, value):
        DeviceArray.counts.calls += 1  # a copy or scatter kernel
        super().__setitem__(_plain(key), _plain(value))

    def __array_function__(self, func, types, args, kwargs):
        raise TypeError(f"numpy.{func.__name__} on a device array (CuPy refuses implicit conversion)")

    def _transfer(self):
        DeviceArray.counts.transfers += 1
        return self.view(np.ndarray)

    def __float__(self):
        return float(self._transfer())

    def __int__(self):
        return int(self._transfer())

    def __index__(self):
        return self._transfer().__index__()

    def __bool__(self):
        return bool(self._transfer())

    def item(self, *args):
        return self._transfer().item(*args)

    def tolist(self):
        return self._transfer().tolist()

    def get(self):
        return self._transfer().copy()


class CountingXp:
    """numpy restricted to CuPy's names (``module`` "" = cupy, else a submodule), counting calls."""

    def __init__(self, module=""):
        self._module = module
        self._names = set(CUPY["modules"][module])
        self._numpy = np if not module else getattr(np, module)

    def __getattr__(self, name):
        if name not in self._names:
            raise AttributeError(f"cupy{'.' + self._module if self._module else ''} has no {name!r}: "
                                 "a numpy-only call in a GPU route")
        value = getattr(self._numpy, name)
        if name in CUPY["modules"] and name:
            return CountingXp(name)
        if isinstance(value, type) or not callable(value):
            return value  # dtypes and constants
        return Counted(name, value, CUPY["parameters"].get(name) if not self._module else None)


class Counted:
    """One array-module function (or ufunc, with its ``reduce``/``at``/... methods), counted per call."""

    def __init__(self, name, fn, allowed):
        self._name, self._fn, self._allowed = name, fn, allowed

    def __call__(self, *args, **kwargs):
        if self._allowed is not None and set(kwargs) - set(self._allowed):
            raise TypeError(f"cupy.{self._name} takes no {sorted(set(kwargs) - set(self._allowed))}")
        DeviceArray.counts.calls += 1
        return _device(self._fn(*_plain(args), **_plain(kwargs)))

    def __getattr__(self, method):
        if not isinstance(self._fn, np.ufunc):
            raise AttributeError(f"cupy.{self._name} has no {method!r}")
        return Counted(f"{self._name}.{method}", getattr(self._fn, method), None)


XP = CountingXp()


def measure(fn):
    """(array calls, device-to-host transfers) of ``fn()``."""
    DeviceArray.counts = Counts()
    fn()
    return DeviceArray.counts.calls, DeviceArray.counts.transfers


def test_the_proxy_refuses_what_cupy_lacks_and_counts_transfers():
    with pytest.raises(AttributeError, match="cupy has no 'nanargmax_unknown'"):
        XP.nanargmax_unknown  # noqa: B018
    with pytest.raises(AttributeError, match="has no 'asmatrix'"):  # numpy has it, CuPy does not
        XP.asmatrix  # noqa: B018
    with pytest.raises(TypeError, match="takes no"):
        XP.argsort(XP.zeros(3), order="x")
    with pytest.raises(TypeError, match="implicit conversion"):
        np.sort(XP.zeros(3))
    calls, transfers = measure(lambda: float(XP.arange(4).sum()) + int(XP.argmax(XP.ones(3))))
    assert (calls, transfers) == (4, 2)


def kmeans_pass_cost(n, k, dim=16, rows_per_tile=1 << 20):
    x = XP.asarray(np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32))
    centres = x[XP.asarray(np.arange(k))].copy()
    one = measure(lambda: lloyd_passes(XP, resident_tiles(x, rows_per_tile), centres, 1))
    three = measure(lambda: lloyd_passes(XP, resident_tiles(x, rows_per_tile), centres, 3))
    return (three[0] - one[0]) / 2, (three[1] - one[1]) / 2, three[1]


def test_kmeans_pass_launches_do_not_grow_with_k_or_rows():
    costs = {(n, k): kmeans_pass_cost(n, k) for n, k in [(2000, 16), (8000, 256), (20000, 1000)]}
    per_pass = {cost[:2] for cost in costs.values()}
    assert len(per_pass) == 1, costs  # the same calls per pass at every size
    calls, transfers = per_pass.pop()
    assert transfers == 0 and calls < 80  # no host round trip inside a pass
    assert {cost[2] for cost in costs.values()} == {1}  # one transfer per fit: every pass's MSD at once
    # more rows than a tile: the cost per pass grows by a constant per tile
    one_tile = kmeans_pass_cost(4000, 64, rows_per_tile=4000)
    four_tiles = kmeans_pass_cost(4000, 64, rows_per_tile=1000)
    per_tile = (four_tiles[0] - one_tile[0]) / 3
    assert 0 < per_tile < calls and kmeans_pass_cost(16000, 64, rows_per_tile=4000)[0] == four_tiles[0]


def knn_tile_cost(n, k=8, query_rows=300, dim=16):
    rng = np.random.default_rng(1)
    db = XP.asarray(rng.standard_normal((n, dim)).astype(np.float32))
    queries = db[:query_rows]
    return measure(lambda: tile_top_k(XP, queries, db, k, tile_bytes=1 << 30))


def test_exact_knn_tile_launches_do_not_grow_with_rows():
    costs = {n: knn_tile_cost(n) for n in (1000, 4000, 16000)}
    assert len(set(costs.values())) == 1 and costs[1000][1] == 0, costs
    assert costs[1000][0] <= 6 + 5 * 8  # one product, then k rounds of argmax


def test_expansion_mix_tile_launches_do_not_grow_with_rows():
    def cost(n):
        rng = np.random.default_rng(2)
        unit = XP.asarray(rng.standard_normal((n, 16)).astype(np.float32))
        ids = XP.asarray(rng.integers(0, n, (256, 8)))
        norms = XP.asarray(np.ones(n, np.float32))
        return measure(lambda: expand_rows(XP, unit, unit[:256], ids, norms[:256], 3.0, "feature"))

    assert cost(1000) == cost(20000) and cost(1000)[1] == 0


def test_the_whole_expansion_reads_back_only_its_results():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3000, 16)).astype(np.float32)
    backend = Backend("cpu", XP)
    calls, transfers = measure(lambda: expand(x, ExpandConfig(enabled=True, method="exact", tile_mb=0.5), backend))
    # the expanded rows per mixing tile, the neighbour ids and the mean cosine: not one per query tile or row
    mixing_tiles = -(-3000 // max(1, (8 * 2**20) // (4 * 8 * 16)))
    assert transfers <= mixing_tiles + 2, transfers
