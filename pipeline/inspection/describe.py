"""What an index holds, read from the index itself: its type, width, size, search breadth and inverted lists;
and the rows RVC's search needs (k=8 neighbours). Below the stages that build an index and the evaluation,
batch and command line that look at one, as faiss's ``contrib/inspect_tools`` sits below its users."""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
from rvc_index.config.schema import SEARCH_K
from rvc_index.errors import RvcIndexError


class TooFewRowsError(RvcIndexError, ValueError):
    """Fewer rows than the k=8 neighbours RVC and Applio search for."""


def check_rows(n_rows: int, where: str = "") -> None:
    """Raise TooFewRowsError when fewer rows than the k=8 RVC asks for (``where``: their folder)."""
    if n_rows < SEARCH_K:
        raise TooFewRowsError(
            f"only {n_rows} rows{f' in {where}' if where else ''}: RVC and Applio search k={SEARCH_K} neighbours, "
            f"so at least {SEARCH_K} rows are needed"
        )


def list_sizes(index: faiss.Index) -> np.ndarray:
    """[n_list] number of vectors in each inverted list."""
    invlists = faiss.extract_index_ivf(index).invlists
    return np.array([invlists.list_size(i) for i in range(invlists.nlist)], dtype=np.int64)


@dataclass(frozen=True)
class IndexDescription:
    """Type, width, size and search settings of an index; the inverted lists' spread when it is an IVF
    (None otherwise), the refine settings when it is an ``IndexRefine`` (an earlier release's ``…,RFlat``)."""

    type: str
    d: int
    ntotal: int
    metric: str
    n_list: int | None = None
    nprobe: int | None = None
    list_size_min: int | None = None
    list_size_median: float | None = None
    list_size_max: int | None = None
    empty_lists: int | None = None
    k_factor: float | None = None
    base_type: str | None = None


def describe_index(index: faiss.Index) -> IndexDescription:
    """Type, width, size, search settings and list-size spread of a (loaded) index."""
    typed = faiss.downcast_index(index)  # a view: ``index`` keeps owning the C++ object
    metric = "L2" if index.metric_type == faiss.METRIC_L2 else f"metric {index.metric_type}"
    refine = {}
    if isinstance(typed, faiss.IndexRefine):
        refine = {"k_factor": float(typed.k_factor), "base_type": type(faiss.downcast_index(typed.base_index)).__name__}
    common = {"type": type(typed).__name__, "d": int(index.d), "ntotal": int(index.ntotal), "metric": metric, **refine}
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return IndexDescription(**common)
    sizes = list_sizes(index)
    return IndexDescription(**common, n_list=int(ivf.nlist), nprobe=int(ivf.nprobe), list_size_min=int(sizes.min()),
                            list_size_median=float(np.median(sizes)), list_size_max=int(sizes.max()),
                            empty_lists=int((sizes == 0).sum()))
