"""A counting stand-in for CuPy 14.2 on a CPU: numpy behind CuPy's names, signatures and rules.

``XP`` stands for ``cupy``, ``DeviceArray`` for ``cupy.ndarray``. It counts, per ``measure``:
``calls`` (array-module calls, ufunc launches, operators, gathers and scatters), ``transfers`` (device to
host: ``float``/``int``/``bool``/``index`` of an array, ``item``, ``tolist``, ``get``, and the hidden
synchronisations where CuPy reads a count back: ``nonzero`` and the calls in ``synchronising``, boolean-mask
indexing, ``where`` with one argument), ``uploads`` (host to device: host data given to ``asarray`` & co.,
a host index array, ``ndarray.set``) and ``waits`` (the host waiting on a stream or event).

It refuses what CuPy 14.2 refuses (``cupy_names.json``, read from the real package by ``make_cupy_names.py``):
a name CuPy lacks, a keyword its function, ufunc, ufunc method or array method does not take, a sort kind
other than stable, a ufunc method the ufunc lacks (``reduce``/``accumulate`` exist for add and multiply
only, ``at`` for add, subtract, maximum, minimum and the bitwise ones), a numpy array among a device
operation's operands, assigned to a slice or concatenated, and a numpy function applied to a device array
(a route over ``xp`` never leans on NumPy's dispatch). Not caught: ``np.asarray(device_array)`` (CuPy
raises; numpy takes an ndarray subclass without asking it).
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np

FACTS = json.loads((Path(__file__).parent / "cupy_names.json").read_text())
UPLOADING = {"asarray", "array", "ascontiguousarray", "asanyarray", "asfortranarray"}
VIEWS = {"reshape", "view", "transpose", "swapaxes", "squeeze", "ravel", "diagonal"}  # no kernel launched


class Counts:
    def __init__(self):
        self.calls = self.transfers = self.uploads = self.waits = self.pinned = 0
        self.kernels = set()  # (call, dtypes of its array operands): what CuPy compiles a kernel for


def _launched(name, values):
    """Note one launch of ``name`` with the dtypes of its array operands (a kernel CuPy compiles per dtype)."""
    DeviceArray.counts.calls += 1
    dtypes = {str(v.dtype) for v in _flat(values) if isinstance(v, np.ndarray)}  # the loop CuPy picks and compiles
    DeviceArray.counts.kernels.add((name, tuple(sorted(dtypes))))


def _flat(values):
    for value in values:
        if isinstance(value, (list, tuple)):
            yield from _flat(value)
        else:
            yield value


def _plain(value):
    if isinstance(value, DeviceArray):
        return np.ndarray.view(value, np.ndarray)
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


def _host_arrays(values):
    """The numpy (host) arrays among ``values``, looking into lists and tuples."""
    found = []
    for value in values:
        if isinstance(value, (list, tuple)):
            found += _host_arrays(value)
        elif isinstance(value, np.ndarray) and not isinstance(value, DeviceArray):
            found.append(value)
    return found


def _refuse_host_operands(what, values):
    if _host_arrays(values):
        raise TypeError(f"{what}: a numpy array among device operands (CuPy raises TypeError: it never "
                        "converts host arrays implicitly)")


def _key_parts(key):
    return key if isinstance(key, tuple) else (key,)


def _check_keywords(what, kwargs, allowed):
    if allowed is not None and set(kwargs) - set(allowed):
        raise TypeError(f"{what} takes no {sorted(set(kwargs) - set(allowed))} in CuPy 14.2 (it takes {allowed})")


def _check_kind(name, kwargs):
    allowed = FACTS["keyword_values"].get(f"{name}.kind")
    if allowed is not None and kwargs.get("kind") not in allowed:
        raise ValueError(f"cupy {name}: kind can only be None or 'stable', not {kwargs['kind']!r}")


class DeviceArray(np.ndarray):
    """A numpy array standing for a ``cupy.ndarray``: launches and transfers on it are counted."""

    counts = Counts()

    def __getattribute__(self, name):
        if name.startswith("_") or name in ("set", "get", "item", "tolist"):
            return super().__getattribute__(name)
        if name in FACTS["ndarray_attributes"]:
            return super().__getattribute__(name)
        allowed = FACTS["ndarray_methods"].get(name, "missing")
        if allowed == "missing":
            raise AttributeError(f"cupy.ndarray has no {name!r}: a numpy-only method in a GPU route")
        method = super().__getattribute__(name)

        def checked(*args, **kwargs):
            _check_keywords(f"cupy.ndarray.{name}", kwargs, allowed)
            _check_kind(name, kwargs)
            if name in ("nonzero", "compress"):
                DeviceArray.counts.transfers += 1  # CuPy reads the count of non-zeros back
            before = DeviceArray.counts.calls
            result = _device(method(*_plain(args), **{key: _plain(value) for key, value in kwargs.items()}))
            if DeviceArray.counts.calls == before and name not in VIEWS:  # not already counted as a ufunc
                _launched(f"ndarray.{name}", [self, *args, *kwargs.values()])
            return result

        return checked

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        _refuse_host_operands(f"numpy.{ufunc.__name__}.{method}", list(inputs) + list(kwargs.get("out", ())))
        _launched(f"{ufunc.__name__}.{method}", inputs)
        if "out" in kwargs:
            kwargs["out"] = _plain(kwargs["out"])
        return _device(getattr(ufunc, method)(*_plain(inputs), **kwargs))

    def __array_function__(self, func, types, args, kwargs):
        raise TypeError(f"numpy.{func.__name__} on a device array: call xp.{func.__name__}")

    def _index(self, key):
        parts = _key_parts(key)
        if any(isinstance(p, np.ndarray) and p.dtype == bool for p in parts):
            DeviceArray.counts.transfers += 1  # a mask: CuPy reads the count of True back first
        if any(isinstance(p, (list, np.ndarray)) and not isinstance(p, DeviceArray) for p in parts):
            DeviceArray.counts.uploads += 1  # a host index array is copied to the device
        return _plain(key), any(isinstance(p, (list, np.ndarray)) for p in parts)

    def __getitem__(self, key):
        key, fancy = self._index(key)
        if fancy:  # a gather kernel; basic slices are views
            _launched("getitem", [self, *_key_parts(key)])
        return super().__getitem__(key)

    def __setitem__(self, key, value):
        key, fancy = self._index(key)
        if not fancy and isinstance(value, np.ndarray) and not isinstance(value, DeviceArray) and value.shape:
            raise ValueError("non-scalar numpy.ndarray cannot be used for fill (CuPy refuses a host array "
                             "assigned to a slice)")
        if fancy and _host_arrays([value]):
            DeviceArray.counts.uploads += 1
        _launched("setitem", [self, value, *_key_parts(key)])  # a copy or scatter kernel
        super().__setitem__(key, _plain(value))

    def _transfer(self):
        DeviceArray.counts.transfers += 1
        return np.ndarray.view(self, np.ndarray)

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

    def get(self, stream=None, order="C", out=None, blocking=True):
        return self._transfer().copy()

    def set(self, arr, stream=None):
        """``cupy.ndarray.set``: a host array of the same dtype and shape into a contiguous device array."""
        if not isinstance(arr, np.ndarray) or isinstance(arr, DeviceArray):
            raise TypeError("Only numpy.ndarray can be set to cupy.ndarray")
        if arr.dtype != self.dtype or arr.shape != self.shape:
            raise TypeError(f"{arr.dtype}{arr.shape} array cannot be set to {self.dtype}{self.shape} array")
        if not self.flags.c_contiguous:
            raise RuntimeError("Cannot set to non-contiguous array")
        DeviceArray.counts.uploads += 1
        np.copyto(np.ndarray.view(self, np.ndarray), arr)


class CountingXp:
    """numpy restricted to CuPy's names (``module`` "" = cupy, else a submodule), counting calls."""

    def __init__(self, module=""):
        self._module = module
        self._names = set(FACTS["modules"][module])
        self._numpy = np if not module else getattr(np, module)

    def __getattr__(self, name):
        if name not in self._names:
            raise AttributeError(f"cupy{'.' + self._module if self._module else ''} has no {name!r}: "
                                 "a numpy-only call in a GPU route")
        if not self._module and name == "cuda":
            return CUDA
        if not self._module and name == "ReductionKernel":
            return ReductionKernel
        if not self._module and name in FACTS["modules"]:
            return CountingXp(name)
        value = getattr(self._numpy, name)
        if isinstance(value, type) or not callable(value):
            return value  # dtypes and constants
        return Counted(name if not self._module else f"{self._module}.{name}", value)


class Counted:
    """One array-module function or ufunc (with its ``reduce``/``at``/... methods), checked and counted."""

    def __init__(self, name, fn, method="__call__"):
        self._name, self._fn, self._method = name, fn, method
        self._ufunc = name.split(".")[0] if name.split(".")[0] in FACTS["ufuncs"] else None

    def __call__(self, *args, **kwargs):
        if self._ufunc:
            if self._method not in FACTS["ufuncs"][self._ufunc]:
                raise NotImplementedError(f"`cupy_{self._ufunc}.{self._method}` is not supported yet")
            _check_keywords(f"cupy.{self._name}", kwargs, FACTS["ufunc_keywords"][self._method])
        else:
            _check_keywords(f"cupy.{self._name}", kwargs, FACTS["parameters"].get(self._name))
            _check_kind(self._name, kwargs)
        if self._name in UPLOADING:
            DeviceArray.counts.uploads += bool(_host_arrays(args[:1]) or isinstance(args[0], (list, tuple)))
        else:
            _refuse_host_operands(f"cupy.{self._name}", list(args) + list(kwargs.values()))
        if self._name in FACTS["synchronising"] or (self._name == "where" and len(args) == 1):
            DeviceArray.counts.transfers += 1  # CuPy reads a count back before it can size the result
        _launched(self._name, [*args, *kwargs.values()])
        return _device(self._fn(*_plain(args), **{key: _plain(value) for key, value in kwargs.items()}))

    def __getattr__(self, method):
        if not self._ufunc or self._method != "__call__":
            raise AttributeError(f"cupy.{self._name} has no {method!r}")
        return Counted(f"{self._name}.{method}", getattr(self._fn, method), method)


class ReductionKernel:
    """``cupy.ReductionKernel``: one launch, computed by the numpy reference of the kernel of that name in
    ``rvc_index.compute.kernels`` (the CUDA expressions themselves run only on a GPU: the ``gpu`` tests)."""

    def __init__(self, in_params, out_params, map_expr, reduce_expr, post_map_expr, identity, name="reduce_kernel",
                 reduce_type=None, reduce_dims=True, preamble="", options=()):
        from rvc_index.compute.kernels import KERNELS

        spec = KERNELS.get(name)
        if spec is None or (in_params, out_params, map_expr, reduce_expr, identity) != (
                spec.in_params, spec.out_params, spec.map_expr, spec.reduce_expr, spec.identity):
            raise ValueError(f"no numpy reference for the reduction kernel {name!r}")
        self.reference, self.inputs, self.name = spec.reference, len(in_params.split(",")), name

    def __call__(self, *args, axis=None, out=None, keepdims=False, stream=None):
        if len(args) != self.inputs or axis != 1 or not isinstance(args[0], DeviceArray):
            raise TypeError(f"reduction kernel called with {len(args)} arguments, axis {axis}")
        _refuse_host_operands("cupy.ReductionKernel", list(args))
        _launched(f"ReductionKernel.{self.name}", args)
        return _device(self.reference(*_plain(args)))


class Event:
    def record(self, stream=None):
        return self

    def synchronize(self):
        DeviceArray.counts.waits += 1


class Stream:
    """``cupy.cuda.Stream``: the copies it carries run at once here; a wait is counted."""

    def __init__(self, null=False, non_blocking=False, ptds=False, priority=None):
        self.non_blocking = non_blocking

    def record(self, event=None):
        return event or Event()

    def wait_event(self, event):
        pass  # the device waits, not the host

    def synchronize(self):
        DeviceArray.counts.waits += 1


class Device:
    def __init__(self, device=None):
        self.id, self.compute_capability = device or 0, "90"

    def use(self):
        pass


def _memory_pool():
    return types.SimpleNamespace(free_bytes=lambda: 0)


CURRENT = Stream(null=True)
CUDA = types.SimpleNamespace(
    Stream=Stream, Event=Event, Device=Device, get_current_stream=lambda device=None: CURRENT,
    runtime=types.SimpleNamespace(memGetInfo=lambda: (8 << 30, 16 << 30), runtimeGetVersion=lambda: 12080,
                                  getDeviceCount=lambda: 1))
assert {n for n in vars(CUDA) if n != "runtime"} <= set(FACTS["modules"]["cuda"]) | {"runtime"}


def empty_pinned(shape, dtype=float, order="C"):
    """``cupyx.empty_pinned``: a host array (page-locked on a GPU), counted."""
    DeviceArray.counts.pinned += 1
    return np.empty(shape, dtype=dtype, order=order)


CUPYX = types.ModuleType("cupyx")
CUPYX.empty_pinned = empty_pinned
XP = CountingXp()
XP.get_default_memory_pool = _memory_pool  # present in dir(cupy): checked below
assert "get_default_memory_pool" in FACTS["modules"][""] and "empty_pinned" in FACTS["modules"]["cupyx"]


def measure(fn):
    """(array calls, device-to-host transfers) of ``fn()``; ``DeviceArray.counts`` keeps the rest."""
    DeviceArray.counts = Counts()
    fn()
    return DeviceArray.counts.calls, DeviceArray.counts.transfers


def with_cupyx(monkeypatch):
    """``import cupyx`` (``Backend.upload`` on a GPU) finds the stand-in's ``empty_pinned``."""
    monkeypatch.setitem(sys.modules, "cupyx", CUPYX)
