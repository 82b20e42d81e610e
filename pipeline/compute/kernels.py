"""Small fused kernels over ``xp``: one read of the rows, no [n, d] temporary, no batched 1 x 1 products.

Each is a row reduction written twice on purpose, side by side: a CuPy ``ReductionKernel`` (a CUDA map
expression reduced along the row; compiled once per machine and kept in CuPy's kernel cache) and its numpy
reference (one pass in C), which the CPU backend runs and the tests compare. ``einsum("ij,ij->i")`` was the
row norm before: on CuPy it becomes a batched product of 1 x 1 matrices. ``compute.warm`` compiles every
kernel of ``KERNELS`` before a build times anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class RowKernel:
    """A reduction along axis 1 of a float32 [n, d] array: CUDA terms and the numpy reference."""

    name: str
    in_params: str
    out_params: str
    map_expr: str
    reduce_expr: str
    identity: str
    reference: Callable[..., np.ndarray]


def _check_reference(x: np.ndarray, bound: Any) -> np.ndarray:
    high, low = np.maximum.reduce(x, axis=1), np.minimum.reduce(x, axis=1)  # NaN and Inf propagate
    finite = np.isfinite(high) & np.isfinite(low)
    return np.where(finite, ((high > bound) | (low < -bound)).astype(np.int32), 2).astype(np.int32)


KERNELS = {kernel.name: kernel for kernel in (
    RowKernel("rvc_index_sq_norms", "T x", "T y", "x * x", "a + b", "0",
              lambda x: np.einsum("ij,ij->i", x, x)),
    # 0: finite and within the bound, 1: a finite value beyond it (a bad file), 2: NaN or Inf (the row is dropped)
    RowKernel("rvc_index_row_check", "T x, T bound", "int32 y",
              "isfinite(x) ? (fabsf(x) > bound ? 1 : 0) : 2", "max(a, b)", "0", _check_reference),
)}
_compiled: dict[tuple[int, str], Any] = {}


def row_kernel(xp: Any, name: str) -> Callable[..., Any]:
    """Kernel ``name`` of ``KERNELS`` for ``xp``: the numpy reference, or a ``ReductionKernel`` made once per
    array module (called with ``axis=1``)."""
    spec = KERNELS[name]
    if xp is np:
        return spec.reference
    key = (id(xp), name)
    if key not in _compiled:
        made = xp.ReductionKernel(spec.in_params, spec.out_params, spec.map_expr, spec.reduce_expr, "y = a",
                                  spec.identity, name=name)
        _compiled[key] = lambda *args: made(*args, axis=1)
    return _compiled[key]


def squared_norms(xp: Any, x: Any) -> Any:
    """[n] squared L2 norms of the rows of ``x`` [n, d]."""
    return row_kernel(xp, "rvc_index_sq_norms")(x)


def row_check(xp: Any, x: Any, bound: float) -> Any:
    """int32 [n] per row of ``x`` [n, d]: 0 finite within ``bound``, 1 a finite value beyond it, 2 NaN/Inf."""
    return row_kernel(xp, "rvc_index_row_check")(x, np.float32(bound))
