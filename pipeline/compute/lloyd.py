"""The k-means core: one Lloyd loop over one "assign and accumulate" step, for every route and device.

The model is faiss's ``contrib/clustering.py`` (one ``kmeans`` loop over a ``DatasetAssign`` whose GPU
subclass overrides only the search) and scikit-learn's ``_k_means_common`` (one E-step, kernels shared):

- an **assigner** finds each row's centre: ``Exact`` (every centre, ``knn.nearest``), or the CPU's two-level
  and fixed-cell trees (``two_level.TwoLevel``, ``two_level.FixedCells``);
- a **row source** runs the step over its rows and merges the parts in order (``PassSums``): rows in
  memory or on the device (``ResidentRows``: tiles, or one slice per core on numpy), a collection's chunks
  on local threads, on Dask workers or staged through the device (``stages.passes``);
- **the step** (``accumulate``): assign, per-centre sums (``segments.segment_sums``, no atomics), squared
  distances, the farthest rows (spares for centres left empty);
- **the update** (``update``): each centre moves to its rows' mean in place; empty centres take spares,
  farthest first, each in its own cell when the centres live in fixed cells (``reseed``).

``lloyd`` runs passes until ``passes`` or until the mean squared distance (MSD) changes by less than ``tol``
(relative) from one pass to the next; an assigner with a fast product (TF32 on a GPU) runs its passes fast
and one exact pass to finish. No pass reads anything back to the host except its MSD when ``tol`` asks
for it; without ``tol`` every pass's MSD and the re-seeded count come back once, at the end.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from rvc_index.compute.kernels import squared_norms
from rvc_index.compute.knn import Product, distance_tile_rows, nearest, plain_product
from rvc_index.compute.segments import segment_sums
from rvc_index.runtime.memory import zeros_in_huge_pages
from rvc_index.runtime.threads import in_threads

N_FAR = 256  # farthest rows kept per pass: spares for centres that win no row
SPARSE_RATIO = 2  # a part sums sparsely (numpy) when the centres outnumber its rows this many times


class Assigner(Protocol):
    """Finds each row's centre; ``prepare`` once per pass with the centres' current positions."""

    centres: Any  # [k, d]: as ``prepare`` saw them
    centre_cells: Any  # [k] int64 each centre's fixed cell (None: a spare may go to any empty centre)
    n_cells: int

    def prepare(self, xp: Any, centres: Any) -> None: ...

    def refresh(self, xp: Any, centres: Any) -> None: ...  # the centres moved a little (a mini-batch step)

    def cells(self, xp: Any, rows: Any) -> Any: ...  # coarse cells [n, probes] a source may keep; None: none used

    def assign(self, xp: Any, rows: Any, norms: Any, cells: Any) -> tuple[Any, Any]: ...  # labels [n], dists [n]


class Exact:
    """Every row against every centre (``knn.nearest``); ``fast`` (a TF32 product on a GPU) for the passes that
    allow it, ``exact`` for the rest (``Lloyd`` switches with ``precise``)."""

    centre_cells = None
    n_cells = 1

    def __init__(self, tile_rows: int = 0, fast: Product = plain_product, exact: Product = plain_product) -> None:
        self.tile_rows, self.fast, self.exact = tile_rows, fast, exact
        self.product: Product = fast
        self.centres: Any = None
        self.half: Any = None

    @property
    def has_fast(self) -> bool:
        return self.fast is not self.exact

    def precise(self, exact: bool) -> None:
        self.product = self.exact if exact else self.fast

    def prepare(self, xp: Any, centres: Any) -> None:
        self.centres, self.half = centres, 0.5 * squared_norms(xp, centres)

    refresh = prepare  # a mini-batch step moved the centres

    def cells(self, xp: Any, rows: Any) -> Any:
        return None

    def assign(self, xp: Any, rows: Any, norms: Any, cells: Any) -> tuple[Any, Any]:
        tile = self.tile_rows or distance_tile_rows(self.centres.shape[0])
        return nearest(xp, rows, self.centres, self.half, norms, tile, self.product)


@dataclass
class PassSums:
    """Per-centre sums and counts of (part of) a pass, its SSE and its farthest rows.

    ``sums`` is float32 [k, d], or, for a part with far fewer rows than centres, [u, d] for the centres
    ``ids`` [u] only (a chunk of 40,000 rows against 175,000 centres need not carry a [175,000, d] array)."""

    sums: Any
    counts: Any  # int64 [k]
    sse: Any  # 0-d float64 on the device: read once per pass at most
    rows: int
    far_rows: Any  # [<= n_far, d], farthest first: spares for centres that got no row
    far_dists: Any
    far_cells: Any = None  # [<= n_far] int64: each far row's fixed cell (a spare stays in its cell)
    ids: Any = None

    def dense_sums(self, xp: Any) -> Any:
        """[k, d] sums of every centre (the sparse rows scattered into zeros)."""
        if self.ids is None:
            return self.sums
        shape = (self.counts.shape[0], self.sums.shape[1])
        dense = zeros_in_huge_pages(shape, self.sums.dtype) if xp is np else xp.zeros(shape, dtype=self.sums.dtype)
        dense[self.ids] = self.sums
        return dense


def farthest(xp: Any, dists: Any, count: int) -> Any:
    """Indices of the ``count`` largest of ``dists`` [n], largest first (a partition, then a sort of ``count``)."""
    n = dists.shape[0]
    count = min(count, n)
    if count <= 0:
        return xp.zeros(0, dtype=xp.int64)
    chosen = xp.argpartition(dists, n - count)[n - count:] if count < n else xp.arange(n)
    return chosen[xp.argsort(-dists[chosen], kind="stable")]


def accumulate(xp: Any, assigner: Assigner, rows: Any, norms: Any = None, cells: Any = None, n_far: int = N_FAR,
               compact: bool = False) -> PassSums:
    """The step: assign ``rows`` [n, d] (``norms`` [n], ``cells`` as ``assigner.cells`` gives them, when known)
    and sum them per centre (``compact``: only the centres they won, when far fewer than all)."""
    k = int(assigner.centres.shape[0])
    labels, dists = assigner.assign(xp, rows, squared_norms(xp, rows) if norms is None else norms, cells)
    ids = None
    if compact and k > SPARSE_RATIO * rows.shape[0]:  # numpy only: ``unique`` reads a count back on a device
        ids = xp.unique(labels)
        sums, _ = segment_sums(xp, xp.searchsorted(ids, labels), rows, int(ids.shape[0]))
        counts = xp.bincount(labels, minlength=k).astype(xp.int64)
    else:
        sums, counts = segment_sums(xp, labels, rows, k)
    far = farthest(xp, dists, n_far)
    far_cells = cells[far, 0].astype(xp.int64) if assigner.centre_cells is not None else None
    return PassSums(sums, counts, dists.astype(xp.float64).sum(), int(rows.shape[0]), rows[far], dists[far],
                    far_cells, ids)


def merge(xp: Any, total: PassSums | None, part: PassSums, n_far: int = N_FAR) -> PassSums:
    """``total`` and a disjoint ``part`` together: ``total``'s sums are added to in place (the running total of
    a pass is one dense [k, d] array; None: ``part`` becomes it)."""
    if total is None:
        return dataclasses.replace(part, sums=part.dense_sums(xp), ids=None)
    if part.ids is None:
        total.sums += part.sums
    else:
        total.sums[part.ids] += part.sums  # ids are unique: no repeated index to lose
    total.counts += part.counts
    rows = xp.concatenate([total.far_rows, part.far_rows])
    dists = xp.concatenate([total.far_dists, part.far_dists])
    keep = farthest(xp, dists, n_far)
    cells = None if total.far_cells is None else xp.concatenate([total.far_cells, part.far_cells])[keep]
    return PassSums(total.sums, total.counts, total.sse + part.sse, total.rows + part.rows, rows[keep], dists[keep],
                    cells)


def reseed(xp: Any, centres: Any, empty: Any, spares: Any, spare_cells: Any = None, centre_cells: Any = None,
           n_cells: int = 1) -> Any:
    """Empty centres (bool [k]) take the rows of ``spares`` [m, d] (in their order of priority), in place: the
    r-th spare of a cell goes to the r-th empty centre of that cell (one cell when ``centre_cells`` is None);
    the rest stay put. Returns which centres were re-seeded (bool [k], on the device). Fixed-size arrays only:
    no count comes back to the host."""
    k, m = centres.shape[0], spares.shape[0]
    if m == 0 or (xp is np and not empty.any()):  # numpy: a free look saves the sorts when nothing went empty
        return xp.zeros(k, dtype=bool)
    if centre_cells is None:
        centre_cells, spare_cells = xp.zeros(k, dtype=xp.int64), xp.zeros(m, dtype=xp.int64)
    key = xp.where(empty, centre_cells, n_cells)  # the empty centres by cell, the others last
    order = xp.argsort(key * k + xp.arange(k))
    ranked = key[order]
    cell_ids = xp.arange(n_cells)
    first = xp.searchsorted(ranked, cell_ids)
    available = xp.searchsorted(ranked, cell_ids, side="right") - first
    by_cell = xp.argsort(spare_cells * m + xp.arange(m))  # spares by cell, each cell's in their given order
    cell = spare_cells[by_cell]
    rank = xp.arange(m) - xp.searchsorted(cell, cell)
    matched = rank < available[cell]
    # an unmatched spare writes the last centre in ``order`` (one that won rows) onto itself
    target = xp.where(matched, order[xp.minimum(first[cell] + rank, k - 1)], order[k - 1])
    centres[target] = xp.where(matched[:, None], spares[by_cell], centres[order[k - 1]][None, :])
    fresh = xp.zeros(k, dtype=bool)
    fresh[target] = matched
    return fresh


def update(xp: Any, centres: Any, total: PassSums, assigner: Assigner) -> Any:
    """Lloyd's update of ``centres`` [k, d] in place (``total``'s sums become the means: no second [k, d]
    array); empty centres re-seeded on the pass's farthest rows. Returns the number re-seeded (0-d)."""
    sums = total.dense_sums(xp)
    counts = total.counts
    sums /= xp.maximum(counts, 1).astype(sums.dtype)[:, None]
    xp.copyto(centres, sums, where=(counts > 0)[:, None])
    return reseed(xp, centres, counts == 0, total.far_rows, total.far_cells, assigner.centre_cells,
                  assigner.n_cells).sum()


class Rows(Protocol):
    """Rows a pass visits: runs ``accumulate`` over them and merges the parts in a fixed order."""

    n_rows: int

    def pass_sums(self, xp: Any, assigner: Assigner, n_far: int) -> PassSums | None: ...


class ResidentRows:
    """Rows in memory or on the device [n, d]: tiles of ``tile_rows`` (0: one), or on numpy one slice per
    core (``threads``), each assigned and summed there; squared norms and coarse cells kept between passes."""

    def __init__(self, x: Any, tile_rows: int = 0, threads: int = 1, norms: Any = None, cells: Any = None) -> None:
        self.x, self.norms, self.kept_cells = x, norms, cells
        self.n_rows = int(x.shape[0])
        parts = max(1, threads)
        step = -(-self.n_rows // parts) if parts > 1 else (tile_rows or self.n_rows)
        self.spans = [(start, min(start + step, self.n_rows)) for start in range(0, self.n_rows, max(1, step))]
        self.threads = parts

    def pass_sums(self, xp: Any, assigner: Assigner, n_far: int) -> PassSums | None:
        if self.norms is None:
            self.norms = squared_norms(xp, self.x)
        if self.kept_cells is None:
            found = assigner.cells(xp, self.x)  # None for exact assignment
            self.kept_cells = found if found is not None else False

        def part(span: tuple[int, int]) -> PassSums:
            a, b = span
            cells = self.kept_cells[a:b] if self.kept_cells is not False else None
            return accumulate(xp, assigner, self.x[a:b], self.norms[a:b], cells, n_far)

        parts = in_threads(part, self.spans, self.threads)  # one slice per thread (numpy), in order
        total = None
        for found in parts:
            total = merge(xp, total, found, n_far)
        return total


@dataclass
class LloydResult:
    """Centres [k, d] float32 and counts [k] of the last pass (device), each pass's MSD (host; pass i measured
    against the centres it started from), the number re-seeded and whether the passes ended by ``tol``."""

    centres: Any
    counts: Any
    msd: list[float]
    reseeded: int
    converged: bool = False


def lloyd(xp: Any, rows: Rows | Any, centres: Any, passes: int, assigner: Assigner | None = None, tol: float = 0.0,
          n_far: int = N_FAR, on_pass: Callable[[int, float, int], None] | None = None,
          finish: bool = True) -> LloydResult:
    """Up to ``passes`` Lloyd passes of ``centres`` [k, d] float32 (updated in place) over ``rows`` (a ``Rows``
    source, or an array: ``ResidentRows``), with ``assigner`` (default: exact). ``tol`` > 0: stop once the MSD
    changes by less than ``tol`` of itself (a read of one number per pass). With a fast product the passes
    run fast and, with ``finish``, one exact pass ends them (without: more passes follow elsewhere).
    ``on_pass(number, msd, rows)`` (host) after each pass: reads the MSD too."""
    source = rows if hasattr(rows, "pass_sums") else ResidentRows(rows)
    assigner = assigner or Exact()
    fast = bool(getattr(assigner, "has_fast", False))
    finish = finish and fast  # fast passes, then one exact pass
    reading = tol > 0 or on_pass is not None
    counts = xp.zeros(centres.shape[0], dtype=xp.int64)
    sse: list[Any] = []
    reseeded = xp.zeros((), dtype=xp.int64)
    total_rows, previous, converged, number = 0, None, False, 0
    while number < passes:
        number += 1
        final = finish and number == passes
        if fast:
            assigner.precise(final)
        assigner.prepare(xp, centres)
        total = source.pass_sums(xp, assigner, n_far)
        if total is None:
            break
        total_rows, counts = total.rows, total.counts
        reseeded = reseeded + update(xp, centres, total, assigner)
        sse.append(total.sse)
        del total
        if reading:
            msd = float(sse[-1]) / max(total_rows, 1)  # the pass's one read
            if on_pass is not None:
                on_pass(number, msd, total_rows)
            if tol > 0 and not final and previous is not None and abs(previous - msd) <= tol * max(msd, 1e-30):
                converged = True
                if not finish:
                    break
                passes = number + 1  # the next pass is the exact one
            previous = msd
    if not sse:
        return LloydResult(centres, counts, [], 0)
    host = xp.stack([value.astype(xp.float64) for value in sse] + [reseeded.astype(xp.float64)]).tolist()
    return LloydResult(centres, counts, [value / max(total_rows, 1) for value in host[:-1]], int(host[-1]), converged)
