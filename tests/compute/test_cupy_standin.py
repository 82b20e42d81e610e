"""The counting CuPy stand-in refuses what CuPy 14.2 refuses and counts what it costs.

Each refusal below is CuPy's own behaviour, read from its v14.2.0 source (``cupy/_core/_kernel.pyx``
``ufunc.reduce/at/__call__``, ``cupy/_core/core.pyx`` ``_check_kind_sort``, ``fill``, ``set``,
``cupy/_core/_routines_manipulation.pyx`` ``concatenate``) and from the package (``make_cupy_names.py``).
When CuPy is installed, the facts file is compared with it.
"""

import json

import numpy as np
import pytest
from cupy_standin import FACTS, XP, DeviceArray, measure


def test_names_keywords_and_transfers():
    with pytest.raises(AttributeError, match="cupy has no 'nanargmax_unknown'"):
        XP.nanargmax_unknown  # noqa: B018
    with pytest.raises(AttributeError, match="has no 'asmatrix'"):  # numpy has it, CuPy does not
        XP.asmatrix  # noqa: B018
    with pytest.raises(TypeError, match="takes no"):
        XP.argsort(XP.zeros(3), order="x")
    with pytest.raises(TypeError, match="on a device array"):
        np.sort(XP.zeros(3))
    calls, transfers = measure(lambda: float(XP.arange(4).sum()) + int(XP.argmax(XP.ones(3))))
    assert (calls, transfers) == (4, 2)


def test_ufunc_methods_exist_only_where_cupy_implements_them():
    x = XP.arange(6, dtype=XP.float32)
    assert float(XP.add.reduce(x)) == 15 and float(XP.multiply.reduce(x[1:])) == 120
    with pytest.raises(NotImplementedError, match="cupy_maximum.reduce"):
        XP.maximum.reduce(x)
    with pytest.raises(NotImplementedError, match="cupy_minimum.accumulate"):
        XP.minimum.accumulate(x)
    with pytest.raises(NotImplementedError, match="cupy_exp.at"):
        XP.exp.at(x, XP.asarray([1]))
    XP.add.at(x, XP.asarray([0, 0]), 1.0)  # scatter-add exists (atomics)
    XP.maximum.at(x, XP.asarray([1]), 9.0)
    assert x.tolist()[:2] == [2.0, 9.0]
    with pytest.raises(TypeError, match="initial"):  # numpy's reduce keywords CuPy lacks
        XP.add.reduce(x, initial=0.0)
    with pytest.raises(TypeError, match="where"):  # CuPy's ufunc call takes out, dtype, casting only
        XP.add(x, 1.0, where=x > 2)
    XP.add(x, 1.0, out=x, casting="same_kind")


def test_array_methods_and_their_keywords():
    x = XP.arange(6, dtype=XP.float32).reshape(2, 3)
    assert x.max(axis=1).tolist() == [2.0, 5.0]
    with pytest.raises(TypeError, match="takes no \\['initial'\\]"):
        x.max(initial=0.0)
    with pytest.raises(TypeError, match="takes no \\['where'\\]"):
        x.sum(where=x > 1)
    with pytest.raises(AttributeError, match="cupy.ndarray has no 'resize'"):
        x.resize  # noqa: B018
    with pytest.raises(TypeError, match="takes no \\['kind'\\]"):
        x.argpartition(1, kind="introselect")


def test_sort_kinds_other_than_stable_are_refused():
    x = XP.asarray(np.array([3.0, 1.0, 2.0], np.float32))
    assert XP.argsort(x, kind="stable").tolist() == [1, 2, 0] and x.argsort().tolist() == [1, 2, 0]
    for call in (lambda: XP.argsort(x, kind="quicksort"), lambda: x.argsort(kind="mergesort"),
                 lambda: XP.sort(x, kind="heapsort")):
        with pytest.raises(ValueError, match="kind can only be None or 'stable'"):
            call()


def test_numpy_and_device_operands_never_mix():
    device, host = XP.ones(3, dtype=XP.float32), np.ones(3, np.float32)
    for mixed in (lambda: device + host, lambda: host * device, lambda: XP.maximum(device, host),
                  lambda: XP.concatenate([device, host]), lambda: XP.where(device > 0, device, host)):
        with pytest.raises(TypeError, match="numpy array among device operands"):
            mixed()
    with pytest.raises(ValueError, match="cannot be used for fill"):
        device[:] = host
    device[:] = 2.0  # a scalar fills
    device + np.float32(1.0)  # a numpy scalar is a scalar


def test_hidden_synchronisations_count_as_transfers():
    x = XP.asarray(np.array([0.0, 3.0, 0.0, 5.0], np.float32))
    mask = x > 1
    for sync in (lambda: XP.nonzero(mask), lambda: mask.nonzero(), lambda: x[mask], lambda: XP.where(mask),
                 lambda: XP.flatnonzero(x), lambda: XP.bincount(XP.asarray(np.array([1, 2, 2])))):
        assert measure(sync)[1] == 1
    assert measure(lambda: x.__setitem__(mask, 0.0))[1] == 1
    assert measure(lambda: XP.where(mask, x, 0.0))[1] == 0  # three arguments: elementwise, no count read back
    assert x.tolist() == [0.0, 0.0, 0.0, 0.0]


def test_host_data_reaching_the_device_is_counted_as_uploads():
    host = np.arange(5, dtype=np.float32)
    measure(lambda: (XP.asarray(host), XP.asarray(host)[[0, 2]], XP.zeros(5)[np.array([1, 3])]))
    assert DeviceArray.counts.uploads == 4  # two asarray, a host list and a host array as indices
    target = XP.zeros(5, dtype=XP.float32)
    with pytest.raises(TypeError, match="cannot be set"):
        target.set(host.astype(np.float64))
    target.set(host)
    assert target.tolist() == host.tolist()


@pytest.mark.cupy
def test_the_facts_match_the_installed_cupy():
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed here (the facts were read from 14.2.0)")
    import make_cupy_names

    if cupy.__version__ != FACTS["cupy_version"]:
        pytest.skip(f"CuPy {cupy.__version__} here, facts from {FACTS['cupy_version']}")
    assert set(make_cupy_names.SYNCHRONISING) <= set(FACTS["modules"][""])
    assert json.loads(json.dumps(make_cupy_names.ufunc_call_keywords())) == FACTS["ufunc_keywords"]["__call__"]
    assert {n: make_cupy_names.ufunc_methods(getattr(cupy, n)) for n in FACTS["ufuncs"]} == FACTS["ufuncs"]
    assert make_cupy_names.sort_kinds() == FACTS["keyword_values"]["argsort.kind"]
