"""Index stage: choose the layout, train (GPU or CPU), assemble the CPU index, add, check k=8.

The file written is always a CPU index: ``IVF{n_list},Flat`` or ``IVF{n_list},PQ{m}x4fs,RFlat``.
On a GPU, faiss GPU flat indexes do the expensive parts (coarse k-means assignment while
training, list assignment while adding); the 4-bit FastScan and RFlat parts exist only on the CPU.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from faiss.contrib.ivf_tools import replace_ivf_quantizer
from rvc_index.compute.backend import Backend, faiss_threads
from rvc_index.config.schema import IndexConfig
from rvc_index.errors import RvcIndexError
from rvc_index.runtime.memory import F32, StageEstimate
from rvc_index.runtime.outputs import write_atomic, writing
from rvc_index.runtime.progress import Progress
from rvc_index.runtime.stream import sample_row_ids, take_rows

IVF_FLAT = "ivf-flat"
IVF_PQ_RFLAT = "ivf-pq-fastscan-rflat"
PQ_BITS = 4
PQ_CENTROIDS = 2**PQ_BITS
PQ_TRAIN_POINTS_PER_CENTROID = 64


class IndexBuildError(RvcIndexError, ValueError):
    """The index cannot be built as configured (too few rows, bad PQ layout, ...)."""


@dataclass(frozen=True)
class IndexPlan:
    """What will be built, decided from the row count, the width and the config."""

    recipe: str
    dim: int
    n_rows: int
    n_list: int
    pq_m: int  # 0 for IVF-Flat
    nprobe: int  # the configured search breadth (the k-reachability check may raise it)
    k_factor: int
    train_rows: int
    notes: tuple[str, ...] = ()

    @property
    def factory(self) -> str:
        if self.recipe == IVF_FLAT:
            return f"IVF{self.n_list},Flat"
        return f"IVF{self.n_list},PQ{self.pq_m}x{PQ_BITS}fs,RFlat"


def rule_n_list(n_rows: int, sqrt_factor: float, min_rows_per_list: int) -> int:
    """``max(1, min(int(sqrt_factor * sqrt(N)), N // min_rows_per_list))`` (RVC: 16 and 39)."""
    return max(1, min(int(sqrt_factor * math.sqrt(n_rows)), n_rows // min_rows_per_list))


def check_rows(n_rows: int, config: IndexConfig, where: str = "") -> None:
    """Raise IndexBuildError when fewer rows than the ``search_k`` RVC asks for (``where``: their folder)."""
    if n_rows < config.search_k:
        raise IndexBuildError(
            f"only {n_rows} rows{f' in {where}' if where else ''}: RVC searches k={config.search_k} neighbours, "
            f"so at least {config.search_k} rows are needed"
        )


def plan_index(n_rows: int, dim: int, config: IndexConfig) -> IndexPlan:
    """Choose recipe, n_list, PQ size and training rows; lower what the data cannot support."""
    check_rows(n_rows, config)
    notes = []
    recipe = config.recipe
    if recipe == IVF_PQ_RFLAT and n_rows < max(config.min_pq_rows, PQ_CENTROIDS):  # faiss needs 16 rows per codebook
        notes.append(f"{n_rows} rows < index.min_pq_rows={max(config.min_pq_rows, PQ_CENTROIDS)}: "
                     "IVF-Flat instead of PQ")
        recipe = IVF_FLAT
    if n_rows < config.min_rows_per_list:
        notes.append(f"{n_rows} rows < index.min_rows_per_list={config.min_rows_per_list}: a single inverted "
                     "list (every search scans all rows)")
    max_lists = max(1, n_rows // config.min_rows_per_list)
    if config.n_list:
        n_list = config.n_list
        if n_list > max_lists:
            notes.append(f"index.n_list={n_list} needs {n_list * config.min_rows_per_list} rows: "
                         f"lowered to {max_lists}")
            n_list = max_lists
    else:
        n_list = rule_n_list(n_rows, config.sqrt_factor, config.min_rows_per_list)
    pq_m = 0
    if recipe == IVF_PQ_RFLAT:
        if not config.pq_m and dim % config.pq_dims:
            raise IndexBuildError(f"index.pq_dims={config.pq_dims} must divide the feature width {dim}")
        pq_m = config.pq_m or dim // config.pq_dims
        if pq_m <= 0 or dim % pq_m:
            raise IndexBuildError(f"index.pq_m={pq_m} must divide the feature width {dim}")
    nprobe = min(config.nprobe, n_list)
    train_rows = min(n_rows, n_list * config.max_train_rows_per_list)
    if recipe == IVF_PQ_RFLAT:
        train_rows = max(train_rows, min(n_rows, PQ_CENTROIDS * config.max_train_rows_per_list))
    return IndexPlan(recipe, dim, n_rows, n_list, pq_m, nprobe, config.k_factor, train_rows, tuple(notes))


FAISS_BLOCK = 4096 * 1024  # faiss's exhaustive search block (queries x database) of float32 distances
LIST_GROWTH = 1.5  # inverted lists and the refine store grow as std::vectors (capacity up to 2x)


def train_estimate(plan: IndexPlan, stream: int) -> StageEstimate:
    """Training: the sample (filled from chunks in flight, shuffled into a copy, + PQ residuals); keeps the lists."""
    row = plan.dim * F32
    sample = plan.train_rows * row
    train = max(sample + stream, 2 * sample) + (sample if plan.recipe != IVF_FLAT else 0) + 2 * plan.n_list * row
    return StageEstimate("train", train, plan.n_list * row, f"{plan.train_rows:,} training rows, {plan.n_list:,} lists")


def add_estimate(plan: IndexPlan, add_batch_rows: int, stream: int) -> StageEstimate:
    """Adding: a batch and its assignment block while streaming; keeps the filled index."""
    row = plan.dim * F32
    per_vector = row + 8 + (plan.pq_m // 2 if plan.recipe != IVF_FLAT else 0)
    index = int(plan.n_rows * per_vector * LIST_GROWTH)
    batch = add_batch_rows * row * 2 + min(add_batch_rows * plan.n_list, FAISS_BLOCK) * F32
    return StageEstimate("add", batch + stream, index,
                         f"index of {plan.n_rows:,} x {plan.dim} vectors ({index / 2**20:,.0f} MB with list growth)")


def train_coarse(sample: np.ndarray, n_list: int, backend: Backend, iterations: int, seed: int) -> np.ndarray:
    """IVF coarse centroids [n_list, D] by faiss k-means; the assignment runs on the backend."""
    dim = sample.shape[1]
    clustering = faiss.Clustering(dim, n_list)
    clustering.niter = iterations
    clustering.seed = seed
    clustering.max_points_per_centroid = max(1, -(-sample.shape[0] // n_list))  # we sampled already
    clustering.verbose = False
    clustering.train(np.ascontiguousarray(sample, dtype=np.float32), backend.flat_index(dim))
    return faiss.vector_to_array(clustering.centroids).reshape(n_list, dim)


def assemble_index(plan: IndexPlan, centroids: np.ndarray, pq_sample: np.ndarray | None = None) -> faiss.Index:
    """Empty, trained CPU index with ``centroids`` as its coarse quantizer.

    For the PQ recipe the 4-bit codebooks are trained on residuals of ``pq_sample`` (cheap:
    16 centres per sub-space) and the IVF-PQ FastScan index is wrapped in ``IndexRefineFlat``.
    """
    quantizer = faiss.IndexFlatL2(plan.dim)
    quantizer.add(np.ascontiguousarray(centroids, dtype=np.float32))
    if plan.recipe == IVF_FLAT:
        ivf = faiss.IndexIVFFlat(quantizer, plan.dim, plan.n_list, faiss.METRIC_L2)
    else:
        ivf = faiss.IndexIVFPQFastScan(quantizer, plan.dim, plan.n_list, plan.pq_m, PQ_BITS, faiss.METRIC_L2)
    ivf.own_fields = True
    quantizer.this.disown()
    if plan.recipe == IVF_FLAT:
        return ivf
    if pq_sample is None:
        raise IndexBuildError("the PQ recipe needs a training sample")
    # quantizer is trained: PQ only. Its D/pq_dims k-means of 16 centres are tiny: 64 points per
    # centre reach the recall of faiss's default 256 at a quarter of the time, and OpenMP threads
    # only wait on each other there (minutes instead of seconds on a busy machine).
    ivf.pq.cp.max_points_per_centroid = PQ_TRAIN_POINTS_PER_CENTROID
    with faiss_threads(1):
        ivf.train(np.ascontiguousarray(pq_sample, dtype=np.float32))
    index = faiss.IndexRefineFlat(ivf)
    index.own_fields = True
    ivf.this.disown()
    return index



def train_index(vectors: Any, plan: IndexPlan, backend: Backend, iterations: int, seed: int, raw_rows: bool,
                client: Any | None = None) -> faiss.Index:
    """An empty CPU index of ``plan``, trained on a seeded sample of ``vectors`` [N, D] (numpy, memmap
    or dask). ``raw_rows``: the vectors are the collection's frames, which reach k-means in a seeded
    shuffled order, as RVC's recipe does (exact parity of its centroids)."""
    n_vectors = int(vectors.shape[0])
    sample = take_rows(vectors, sample_row_ids(n_vectors, plan.train_rows, np.random.default_rng(seed)), client)
    if raw_rows:
        sample = sample[np.random.default_rng(seed).permutation(sample.shape[0])]
    centroids = train_coarse(sample, plan.n_list, backend, iterations, seed)
    return assemble_index(plan, centroids, sample)

def add_batches(index: faiss.Index, batches: Iterable[np.ndarray], backend: Backend, progress: Progress) -> None:
    """Add every batch with plain ``add`` (ids 0..N-1 in order); list assignment on the backend."""
    ivf = faiss.extract_index_ivf(index)
    cpu_quantizer = None
    if backend.faiss_gpus:
        cpu_quantizer = replace_ivf_quantizer(ivf, backend.flat_index(ivf.d))
    try:
        for batch in batches:
            index.add(np.ascontiguousarray(batch, dtype=np.float32))
            progress.advance(batch.shape[0])
    finally:
        if cpu_quantizer is not None:
            replace_ivf_quantizer(ivf, cpu_quantizer)


def list_sizes(index: faiss.Index) -> np.ndarray:
    """[n_list] number of vectors in each inverted list."""
    invlists = faiss.extract_index_ivf(index).invlists
    return np.array([invlists.list_size(i) for i in range(invlists.nlist)], dtype=np.int64)


def nprobe_for_k(sizes: np.ndarray, k: int, nprobe: int) -> int:
    """Smallest nprobe >= ``nprobe`` whose ``nprobe`` smallest lists together hold ``k`` vectors.

    Any query probes ``nprobe`` lists, at worst the smallest ones, so this guarantees k results.
    """
    if int(sizes.sum()) < k:
        raise IndexBuildError(f"the index holds {int(sizes.sum())} vectors: k={k} cannot be served")
    cumulative = np.cumsum(np.sort(sizes))
    needed = int(np.searchsorted(cumulative, k)) + 1
    return max(nprobe, needed)


def set_search_params(index: faiss.Index, nprobe: int, k_factor: int) -> None:
    """Bake search settings into the file: nprobe on the inner IVF, k_factor on the refine wrapper."""
    faiss.extract_index_ivf(index).nprobe = nprobe
    if isinstance(index, faiss.IndexRefine):
        index.k_factor = float(k_factor)


def write_index(index: faiss.Index, path: Path) -> Path:
    """``save_index`` to a temporary name, then rename into place."""
    return write_atomic(Path(path), lambda tmp: save_index(index, tmp))


def save_index(index: faiss.Index, path: Path) -> None:
    """``index`` serialised to ``path`` through a Python file object: faiss's own file API takes only
    UTF-8 strings, so a folder named in another encoding (or, on Windows, outside the ANSI code page)
    could not be written."""
    with writing(path), open(path, "wb") as handle:
        faiss.write_index(index, faiss.PyCallbackIOWriter(handle.write))


def describe_index(index: faiss.Index) -> dict[str, Any]:
    """Type, width, size, search settings and list-size spread of a (loaded) index."""
    typed = faiss.downcast_index(index)  # a view: ``index`` keeps owning the C++ object
    info: dict[str, Any] = {
        "type": type(typed).__name__,
        "d": int(index.d),
        "ntotal": int(index.ntotal),
        "metric": "L2" if index.metric_type == faiss.METRIC_L2 else f"metric {index.metric_type}",
    }
    if isinstance(typed, faiss.IndexRefine):
        info["k_factor"] = float(typed.k_factor)
        info["base_type"] = type(faiss.downcast_index(typed.base_index)).__name__
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return info
    sizes = list_sizes(index)
    info.update({
        "n_list": int(ivf.nlist),
        "nprobe": int(ivf.nprobe),
        "list_size_min": int(sizes.min()),
        "list_size_median": float(np.median(sizes)),
        "list_size_max": int(sizes.max()),
        "empty_lists": int((sizes == 0).sum()),
    })
    return info
