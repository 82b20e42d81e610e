"""Write ``cupy_names.json``: what the counting stand-in (``cupy_standin.py``) lets a GPU route call, read
from the real CuPy package. ``import cupy`` loads CUDA lazily, so this runs on a machine without a GPU:

    python -m venv /tmp/cupy && /tmp/cupy/bin/pip install "cupy-cuda12x==14.2.0"
    /tmp/cupy/bin/python tests/compute/make_cupy_names.py > tests/compute/cupy_names.json

Everything is asked of the package, never typed in: names (``dir``), signatures (``inspect`` or, for Cython
methods, the signature line CuPy embeds in their docstrings), which ufunc methods exist (CuPy raises
NotImplementedError before touching its argument for the others), which ufunc-call keywords it accepts
(``Wrong arguments`` is raised before any device call) and which sort kinds (``ndarray._check_kind_sort``).
Only the list of synchronising calls is read from CuPy's source and named here, with where it syncs.
"""

from __future__ import annotations

import inspect
import json
import re
import sys

import cupy
import cupyx

# CuPy 14.2.0 calls that wait for the device to learn a size (a device-to-host read of a count), by source:
SYNCHRONISING = {
    "nonzero": "cupy/_core/_routines_indexing.pyx _ndarray_argwhere: int(scan_index[-1])",
    "argwhere": "cupy/_core/_routines_indexing.pyx _ndarray_argwhere",
    "flatnonzero": "cupy/_sorting/search.py: a.ravel().nonzero()",
    "compress": "cupy/_core/_routines_indexing.pyx _ndarray_compress: _ndarray_nonzero(condition)",
    "extract": "cupy/_indexing/indexing.py: condition.nonzero()",
    "bincount": "cupy/_statistics/histogram.py: size = int(cupy.max(x)) + 1",
    "unique": "cupy/_manipulation/add_remove.py: ar[mask], mask.sum().item()",
}
# ``where(condition)`` with one argument is ``condition.nonzero()`` (cupy/_sorting/search.py); boolean-mask
# indexing reads the mask's count (_prepare_mask_indexing_single: int(mask_scanned[-1])).
UFUNC_CALL_CANDIDATES = ["out", "dtype", "casting", "where", "order", "subok", "signature", "axes", "axis",
                         "keepdims", "initial"]
SORT_KINDS = [None, "stable", "quicksort", "mergesort", "heapsort"]


def parameters(obj: object) -> list[str] | None:
    """Keyword names ``obj`` takes (None: any, or unknown)."""
    try:
        params = list(inspect.signature(obj).parameters.values())
    except (TypeError, ValueError):
        return docstring_parameters(obj)
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"]


def docstring_parameters(obj: object) -> list[str] | None:
    """The names in the ``name(self, a, b=1) -> ...`` line Cython puts first in a method's docstring."""
    first = (getattr(obj, "__doc__", None) or "").strip().splitlines()
    match = re.match(r"[\w.]+\((.*?)\)", first[0]) if first else None
    if not match:
        return None
    names = []
    for part in (p.strip() for p in match.group(1).split(",")):
        if part.startswith("**"):
            return None
        words = part.split("=")[0].split(":")[0].split()  # "int axis=-1": Cython puts the type first
        if words and words[-1] not in ("self", "/") and not part.startswith("*"):
            names.append(words[-1])
    return names


def ufunc_methods(ufunc: cupy.ufunc) -> list[str]:
    methods = ["__call__"]
    for method, args in (("outer", (None, None)), ("reduce", (None,)), ("accumulate", (None,)),
                         ("reduceat", (None, None)), ("at", (None, None))):
        try:
            getattr(ufunc, method)(*args)
        except NotImplementedError:
            continue
        except Exception:  # noqa: BLE001 - it got past the check and failed on the None argument: supported
            pass
        methods.append(method)
    return methods


def ufunc_call_keywords() -> list[str]:
    accepted = []
    for keyword in UFUNC_CALL_CANDIDATES:
        try:
            cupy.add(1.0, 2.0, **{keyword: None})
        except TypeError as exc:
            if "Wrong arguments" in str(exc):
                continue
        except Exception:  # noqa: BLE001 - accepted, then failed on the device or the None value
            pass
        accepted.append(keyword)
    return accepted


def sort_kinds() -> list[str | None]:
    allowed = []
    for kind in SORT_KINDS:
        try:
            cupy.ndarray._check_kind_sort(kind)
        except ValueError:
            continue
        allowed.append(kind)
    return allowed


def main() -> None:
    modules = {"": sorted(n for n in dir(cupy) if not n.startswith("_"))}
    for sub in ("fft", "linalg", "random", "cuda"):
        modules[sub] = sorted(n for n in dir(getattr(cupy, sub)) if not n.startswith("_"))
    modules["cupyx"] = sorted(n for n in dir(cupyx) if not n.startswith("_"))
    functions = {n: parameters(getattr(cupy, n)) for n in modules[""]
                 if callable(getattr(cupy, n)) and not isinstance(getattr(cupy, n), (type, cupy.ufunc))}
    ufuncs = {n: ufunc_methods(getattr(cupy, n)) for n in modules[""] if isinstance(getattr(cupy, n), cupy.ufunc)}
    methods, attributes = {}, []
    for name in sorted(n for n in dir(cupy.ndarray) if not n.startswith("_")):
        value = getattr(cupy.ndarray, name)
        if callable(value) and not isinstance(value, property) and name not in ("T", "mT"):
            methods[name] = docstring_parameters(value) if parameters(value) is None else parameters(value)
        else:
            attributes.append(name)
    cuda = {"Stream": parameters(cupy.cuda.Stream), "Stream.record": parameters(cupy.cuda.Stream.record),
            "Stream.wait_event": parameters(cupy.cuda.Stream.wait_event),
            "Stream.synchronize": parameters(cupy.cuda.Stream.synchronize),
            "Event.synchronize": parameters(cupy.cuda.Event.synchronize),
            "cupyx.empty_pinned": parameters(cupyx.empty_pinned)}
    ufunc_keywords = {"__call__": ufunc_call_keywords(), "outer": ufunc_call_keywords(),
                      "reduce": docstring_parameters(cupy.add.reduce),
                      "accumulate": docstring_parameters(cupy.add.accumulate),
                      "reduceat": docstring_parameters(cupy.add.reduceat), "at": docstring_parameters(cupy.add.at)}
    facts = {"cupy_version": cupy.__version__, "modules": modules, "parameters": functions, "ufuncs": ufuncs,
             "ufunc_keywords": ufunc_keywords, "ndarray_methods": methods, "ndarray_attributes": attributes,
             "cuda": cuda, "keyword_values": {"sort.kind": sort_kinds(), "argsort.kind": sort_kinds()},
             "synchronising": SYNCHRONISING}
    json.dump(facts, sys.stdout, indent=0, sort_keys=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
