"""Index stage: choose the layout, train (GPU or CPU), assemble the CPU index, add, check k=8.

The file written is always a CPU ``IndexIVF`` over an ``IndexFlatL2`` coarse quantizer, whose inverted
lists hold the vectors as they are (``flat``), as float16 (``fp16``) or 8-bit scalar codes (``sq8``) of
their residuals, or as 8-bit product codes (``pq8``): every layout every consumer loads and faiss-gpu
clones (docs/consumers.md; ``inspection.consumers`` checks each index before it is written). On a GPU,
faiss GPU flat indexes do the expensive parts (coarse k-means assignment while training, list assignment
while adding).
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
from rvc_index.compute.backend import Backend
from rvc_index.config.schema import LIST_FORMATS, BudgetConfig, IndexConfig, ListFormat
from rvc_index.errors import RvcIndexError
from rvc_index.inspection.consumers import static_problems
from rvc_index.inspection.describe import check_rows
from rvc_index.runtime.memory import F32, StageEstimate
from rvc_index.runtime.outputs import writing
from rvc_index.runtime.progress import Progress
from rvc_index.runtime.run import Run
from rvc_index.runtime.stream import sample_row_ids

FLAT = "flat"
PQ_DIMS = 16  # pq8's default sub-quantizer width: 48 x 8 bits at 768-D, 16 at 256-D (faiss-gpu clones both)
PQ_CENTROIDS = 256  # 8-bit codes
CODE_BYTES = {"flat": F32, "fp16": 2, "sq8": 1}  # per dimension; pq8: pq_m bytes per vector
FACTORY = {"flat": "Flat", "fp16": "SQfp16", "sq8": "SQ8"}  # index_factory's names (pq8: PQ{m})
SQ_TYPES = {"fp16": "QT_fp16", "sq8": "QT_8bit"}

# The plan's estimate of one frame's search at one thread (k=8, batches of 50 frames, as RVC searches a second of
# audio): the probed lists' bytes (33 us per MB: the scan is bound by memory bandwidth), decoding coded vectors, the
# coarse quantizer's GEMM and a fixed part. Fitted on the project's 2-core VM (docs/benchmarks.md, "Search cost per
# frame"): indexes of k-means centroids have lists of about N / n_list vectors; indexes of the frames themselves
# crowd some lists (speech's pauses), so a search scans about FRAMES_CROWDING times more. The build's evaluation
# measures the real figure.
SEARCH_FIXED_US = 10.0
SEARCH_US_PER_SCANNED_MB = 33.0
SEARCH_US_PER_COARSE_MDIM = 110.0  # per million centroid dimensions (n_list x D)
SEARCH_DECODE_US_PER_MDIM = {"flat": 0.0, "fp16": 26.0, "sq8": 91.0, "pq8": 85.0}  # per million dimensions decoded
PQ_DECODE_DIMS = 16  # a pq8 code is decoded like this many dimensions (one table lookup per sub-quantizer)
FRAMES_CROWDING = 3.0  # speech-derived collections of 175k-1M frames (docs/benchmarks.md, "Lab notes")


class IndexBuildError(RvcIndexError, ValueError):
    """The index cannot be built as configured (too few rows, bad PQ layout, ...)."""


@dataclass(frozen=True)
class IndexPlan:
    """What will be built, decided from the row count, the width, the config and the budget."""

    lists: ListFormat
    dim: int
    n_rows: int  # vectors stored
    n_list: int
    pq_m: int  # 0 unless pq8
    nprobe: int  # the configured search breadth (the k-reachability check may raise it)
    train_rows: int
    us_per_frame: float  # the plan's estimate of one frame's search at one thread
    notes: tuple[str, ...] = ()
    train_iterations: int = 10  # faiss k-means iterations of the coarse quantizer
    add_batch_rows: int = 8192  # vectors per add call

    @property
    def layout(self) -> str:
        """The list format as index_factory and RVC's file names spell it: Flat, SQfp16, SQ8, PQ48."""
        return f"PQ{self.pq_m}" if self.lists == "pq8" else FACTORY[self.lists]

    @property
    def factory(self) -> str:
        return f"IVF{self.n_list},{self.layout}"

    @property
    def code_bytes(self) -> int:
        """Bytes one stored vector's code takes in an inverted list."""
        return self.pq_m if self.lists == "pq8" else CODE_BYTES[self.lists] * self.dim


def rule_n_list(n_rows: int, sqrt_factor: float, min_rows_per_list: int) -> int:
    """``max(1, min(int(sqrt_factor * sqrt(N)), N // min_rows_per_list))`` (RVC: 16 and 39)."""
    return max(1, min(int(sqrt_factor * math.sqrt(n_rows)), n_rows // min_rows_per_list))


def search_us(lists: str, dim: int, n_rows: int, n_list: int, nprobe: int, pq_m: int = 0,
              frames: bool = False) -> float:
    """The plan's estimate of one frame's search at one thread, in microseconds (see SEARCH_* above); ``frames``:
    the stored vectors are the collection's frames, not centroids."""
    per_vector = pq_m if lists == "pq8" else CODE_BYTES[lists] * dim
    decoded = pq_m * PQ_DECODE_DIMS if lists == "pq8" else dim
    scanned = min(nprobe, n_list) * (n_rows / max(n_list, 1)) * (FRAMES_CROWDING if frames else 1.0)
    return (SEARCH_FIXED_US + SEARCH_US_PER_SCANNED_MB * scanned * per_vector / 1e6
            + SEARCH_DECODE_US_PER_MDIM[lists] * scanned * decoded / 1e6
            + SEARCH_US_PER_COARSE_MDIM * n_list * dim / 1e6)


def plan_index(n_rows: int, dim: int, config: IndexConfig, budget: BudgetConfig | None = None,
               frames: bool = False) -> IndexPlan:
    """Choose the list format, n_list, PQ size and training rows; lower what the data cannot support.

    ``index.lists=auto`` takes the first of flat, fp16, sq8, pq8 (lowest blend error first: docs/benchmarks.md)
    whose estimated search fits ``budget.us_per_frame``, and the fastest when none does (``frames``: the stored
    vectors are the collection's frames, whose lists are uneven)."""
    check_rows(n_rows)
    budget = budget or BudgetConfig()
    notes = []
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
    nprobe = min(config.nprobe, n_list)
    pq_m = config.pq_m or max(1, dim // PQ_DIMS)
    if dim % pq_m:
        raise IndexBuildError(f"index.pq_m={pq_m} must divide the feature width {dim}")
    candidates = list(LIST_FORMATS) if config.lists == "auto" else [config.lists]
    if n_rows < config.min_coded_rows and candidates != [FLAT]:
        notes.append(f"{n_rows:,} vectors < index.min_coded_rows={config.min_coded_rows:,}: flat lists")
        candidates = [FLAT]
    if "pq8" in candidates and n_rows < PQ_CENTROIDS:  # each 8-bit codebook is a k-means of 256 centres
        notes.append(f"{n_rows:,} vectors cannot train 8-bit PQ codebooks ({PQ_CENTROIDS} centres): not pq8")
        candidates = [c for c in candidates if c != "pq8"] or [FLAT]
    costs = {lists: search_us(lists, dim, n_rows, n_list, nprobe, pq_m, frames) for lists in candidates}
    fitting = [lists for lists in candidates if costs[lists] <= budget.us_per_frame]
    lists = fitting[0] if fitting else min(candidates, key=costs.__getitem__)
    if config.lists == "auto" and lists != FLAT:
        notes.append(f"{lists} lists: flat would search in about "
                     f"{search_us(FLAT, dim, n_rows, n_list, nprobe, frames=frames):,.0f} "
                     f"us per frame, over budget.us_per_frame={budget.us_per_frame:g}")
    if costs[lists] > budget.us_per_frame:
        notes.append(f"about {costs[lists]:,.0f} us per frame: over budget.us_per_frame={budget.us_per_frame:g}")
    train_rows = min(n_rows, n_list * config.max_train_rows_per_list)
    if lists == "pq8":
        train_rows = max(train_rows, min(n_rows, PQ_CENTROIDS * config.min_rows_per_list))
    return IndexPlan(lists, dim, n_rows, n_list, pq_m if lists == "pq8" else 0, nprobe, train_rows,
                     round(costs[lists], 1), tuple(notes), config.train_iterations, config.add_batch_rows)


FAISS_BLOCK = 4096 * 1024  # faiss's exhaustive search block (queries x database) of float32 distances
LIST_GROWTH = 1.5  # inverted lists grow as std::vectors (capacity up to 2x)


def train_estimate(plan: IndexPlan, stream: int) -> StageEstimate:
    """Training: the sample (filled from chunks in flight, shuffled into a copy, + codec residuals); keeps the lists."""
    row = plan.dim * F32
    sample = plan.train_rows * row
    train = max(sample + stream, 2 * sample) + (sample if plan.lists != FLAT else 0) + 2 * plan.n_list * row
    return StageEstimate("train", train, plan.n_list * row, f"{plan.train_rows:,} training rows, {plan.n_list:,} lists")


def add_estimate(plan: IndexPlan, stream: int) -> StageEstimate:
    """Adding: a batch and its assignment block while streaming; keeps the filled index."""
    row = plan.dim * F32
    index = int(plan.n_rows * (plan.code_bytes + 8) * LIST_GROWTH)
    batch = plan.add_batch_rows * row * 2 + min(plan.add_batch_rows * plan.n_list, FAISS_BLOCK) * F32
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


def assemble_index(plan: IndexPlan, centroids: np.ndarray, codec_sample: np.ndarray | None = None) -> faiss.Index:
    """Empty, trained CPU index with ``centroids`` as its coarse quantizer.

    The codes of fp16, sq8 (per-dimension ranges of the residuals) and pq8 (8-bit codebooks of the residuals)
    are trained on ``codec_sample``; flat lists need no training."""
    quantizer = faiss.IndexFlatL2(plan.dim)
    quantizer.add(np.ascontiguousarray(centroids, dtype=np.float32))
    if plan.lists == FLAT:
        ivf = faiss.IndexIVFFlat(quantizer, plan.dim, plan.n_list, faiss.METRIC_L2)
    elif plan.lists == "pq8":
        ivf = faiss.IndexIVFPQ(quantizer, plan.dim, plan.n_list, plan.pq_m, 8, faiss.METRIC_L2)
    else:
        qtype = getattr(faiss.ScalarQuantizer, SQ_TYPES[plan.lists])
        ivf = faiss.IndexIVFScalarQuantizer(quantizer, plan.dim, plan.n_list, qtype, faiss.METRIC_L2)
    ivf.own_fields = True
    quantizer.this.disown()
    if plan.lists != FLAT:  # the quantizer is trained: this trains the codes only
        if codec_sample is None:
            raise IndexBuildError(f"{plan.lists} lists need a training sample")
        ivf.train(np.ascontiguousarray(codec_sample, dtype=np.float32))
    return ivf


def train_index(vectors: Any, plan: IndexPlan, run: Run[Backend], raw_rows: bool) -> faiss.Index:
    """An empty CPU index of ``plan``, trained on a seeded sample of ``vectors`` [N, D] (numpy, memmap
    or dask). ``raw_rows``: the vectors are the collection's frames, which reach k-means in a seeded
    shuffled order, as RVC's recipe does (exact parity of its centroids)."""
    n_vectors = int(vectors.shape[0])
    sample = run.take_rows(vectors, sample_row_ids(n_vectors, plan.train_rows, run.rng()))
    if raw_rows:
        sample = sample[run.rng().permutation(sample.shape[0])]
    centroids = train_coarse(sample, plan.n_list, run.backend, plan.train_iterations, run.seed)
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


def nprobe_for_k(sizes: np.ndarray, k: int, nprobe: int) -> int:
    """Smallest nprobe >= ``nprobe`` whose ``nprobe`` smallest lists together hold ``k`` vectors.

    Any query probes ``nprobe`` lists, at worst the smallest ones, so this guarantees k results.
    """
    if int(sizes.sum()) < k:
        raise IndexBuildError(f"the index holds {int(sizes.sum())} vectors: k={k} cannot be served")
    cumulative = np.cumsum(np.sort(sizes))
    needed = int(np.searchsorted(cumulative, k)) + 1
    return max(nprobe, needed)


def set_search_params(index: faiss.Index, nprobe: int) -> None:
    """Bake the search breadth into the file: nprobe on the top-level IVF."""
    faiss.extract_index_ivf(index).nprobe = nprobe


def check_consumers(index: faiss.Index, dim: int) -> None:
    """Refuse to write an index some consumer cannot use (docs/consumers.md): a safety net under the plan."""
    problems = static_problems(index, dim)
    if problems:
        said = "; ".join(f"{name}: {problem}" for name, problem in problems.items())
        raise IndexBuildError(f"the index built would break a tool that loads it, so it is not written ({said})")


def save_index(index: faiss.Index, path: Path) -> None:
    """``index`` serialised to ``path`` through a Python file object: faiss's own file API takes only
    UTF-8 strings, so a folder named in another encoding (or, on Windows, outside the ANSI code page)
    could not be written."""
    with writing(path), open(path, "wb") as handle:
        faiss.write_index(index, faiss.PyCallbackIOWriter(handle.write))
