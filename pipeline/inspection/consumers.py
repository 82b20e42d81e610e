"""The tools that load an RVC index, replayed call by call: what each does with the file, what breaks it,
and what it holds (docs/consumers.md).

Standalone on purpose (numpy and faiss only, no ``rvc_index`` import): the consumer matrix runs this file
as a script under every faiss the consumers pin (RVC 20240604 and w-okada: 1.7.3, Applio: 1.14.3, the
current one) as ``python consumers.py INDEX --queries Q.npy [--vectors V.npy] [--dim D]``, which prints one
JSON object and exits 0 when every consumer keeps retrieval on. The build imports the static rules
(:func:`static_problems`, :func:`gpu_clone_problem`, :func:`holdings`) to refuse a layout before writing it.
"""

from __future__ import annotations

import argparse
import json
import sys

import faiss
import numpy as np

RVC_K = 8  # RVC, Applio and the deiteris fork blend 8 neighbours
W_OKADA_K = 1  # w-okada's voice changer takes the nearest stored vector only
APPLIO_REALTIME_NPROBE = 12  # Applio realtime sets this on the loaded index, outside its try
REALTIME_BLOCK_FRAMES = 12  # RVC's realtime GUI searches one block (~0.25 s) at a time
CONSUMERS = ("rvc-offline", "rvc-realtime", "applio-offline", "applio-realtime", "w-okada", "deiteris")

# faiss's GPU cloner (faiss/gpu/GpuCloner.cpp, ToGpuCloner::clone_Index, and the GPU index classes' checks):
# only these types have a GPU version; anything else raises "This index type is not implemented on GPU".
GPU_MAX_NPROBE = 1024  # GpuIndexIVF::copyFrom: nprobe <= the k-selection limit (1024 on older builds, 2048 newer)
GPU_SQ_TYPES = ("QT_8bit", "QT_8bit_uniform", "QT_fp16", "QT_8bit_direct", "QT_4bit", "QT_4bit_uniform")
GPU_SQ_PER_DIM = ("QT_8bit", "QT_4bit")  # per-dimension ranges in shared memory: d < 48 KiB / 8 bytes
GPU_SHARED_MEMORY = 48 * 1024  # bytes per block faiss plans for by default
GPU_PQ_CODE_BYTES = (1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48)  # IVFPQ::isSupportedPQCodeLength, float tables
GPU_PQ_SUB_DIMS = (1, 2, 3, 4, 6, 8, 10, 12, 16, 20, 24, 28, 32)  # without precomputed tables (the default)


def typed(index: faiss.Index) -> faiss.Index:
    return faiss.downcast_index(index)


def gpu_clone_problem(index: faiss.Index) -> str | None:
    """Why ``faiss.index_cpu_to_gpus_list(index)`` (the deiteris fork's call, default cloner options) would
    raise, or None when faiss-gpu clones it. A cuVS build (faiss-gpu-cuvs) clones IVF-Flat and IVF-PQ only."""
    index = typed(index)
    name = type(index).__name__
    if isinstance(index, faiss.IndexIVF):
        quantizer = typed(index.quantizer)
        if not isinstance(quantizer, faiss.IndexFlat):
            return f"{name}: its coarse quantizer {type(quantizer).__name__} has no GPU version"
        if not 0 < index.nprobe <= GPU_MAX_NPROBE:
            return f"{name}: nprobe {index.nprobe} is outside what faiss-gpu accepts (1..{GPU_MAX_NPROBE})"
    if isinstance(index, (faiss.IndexFlat, faiss.IndexIVFFlat)):
        return None
    if isinstance(index, faiss.IndexIVFScalarQuantizer):
        qtype = scalar_type(index.sq.qtype)
        if qtype not in GPU_SQ_TYPES:
            return f"{name}: scalar quantizer {qtype} is not supported on the GPU"
        if qtype in GPU_SQ_PER_DIM and index.d >= GPU_SHARED_MEMORY // 8:
            return f"{name}: {qtype} with {index.d} dimensions exceeds the GPU's shared memory"
        return None
    if isinstance(index, faiss.IndexIVFPQ):
        pq = index.pq
        if pq.nbits != 8:
            return f"{name}: {pq.nbits}-bit codes (faiss-gpu's IVF-PQ takes 8-bit codes)"
        if pq.M not in GPU_PQ_CODE_BYTES or index.d % pq.M or index.d // pq.M not in GPU_PQ_SUB_DIMS:
            return f"{name}: {pq.M} sub-quantizers of {index.d // max(pq.M, 1)} dimensions are not supported on the GPU"
        return None
    if isinstance(index, faiss.IndexScalarQuantizer) and scalar_type(index.sq.qtype) == "QT_fp16":
        return None
    return f"{name}: faiss's GPU cloner has no GPU version of it ('This index type is not implemented on GPU')"


def scalar_type(qtype: int) -> str:
    """The name of a ``ScalarQuantizer.QT_*`` value."""
    names = {getattr(faiss.ScalarQuantizer, n): n for n in dir(faiss.ScalarQuantizer) if n.startswith("QT_")}
    return names.get(int(qtype), f"QT_{int(qtype)}")


def static_problems(index: faiss.Index, dim: int | None = None) -> dict[str, str]:
    """Per consumer, why it cannot use ``index`` at all, read from its type and header (no search)."""
    top = typed(index)
    everyone: list[str] = []
    if isinstance(top, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        everyone.append("an IndexIDMap: reconstruct_n aborts the process")
    if isinstance(top, faiss.IndexIVFFastScan):
        everyone.append(f"{type(top).__name__}: reconstruct_n crashes the process (SIGSEGV under faiss 1.14.3 and "
                        "1.15.1)")
    if index.ntotal <= 0:
        everyone.append("the index is empty")
    if index.metric_type != faiss.METRIC_L2:
        everyone.append(f"metric {index.metric_type}, not L2: RVC's 1/distance^2 weights assume L2")
    if dim is not None and index.d != dim:
        everyone.append(f"{index.d}-dimensional, the voice's features are {dim}")
    problems = {name: "; ".join(everyone) for name in CONSUMERS if everyone}
    if not hasattr(top, "nprobe"):
        problems.setdefault("applio-realtime", f"{type(top).__name__} has no nprobe: Applio realtime's "
                            f"index.nprobe = {APPLIO_REALTIME_NPROBE} raises AttributeError (faiss >= 1.13)")
    if not index.is_trained:
        problems.setdefault("deiteris", "not trained: the deiteris fork refuses it")
    clone = gpu_clone_problem(index)
    if clone:
        problems.setdefault("deiteris", f"{clone}: on Linux + CUDA the deiteris fork turns retrieval off")
    return problems


def file_problems(path: str) -> dict[str, str]:
    """:func:`static_problems` of the index file at ``path``, read without loading its lists (memory-mapped where
    faiss can); ``{"every tool": why}`` when faiss cannot read it."""
    try:
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError:
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            return {"every tool": f"faiss cannot read it ({str(exc).strip().splitlines()[-1][:120]})"}
    return static_problems(index)


def index_bytes(index: faiss.Index) -> int:
    """Bytes the loaded index's own arrays take (codes, ids, coarse centroids, codebooks)."""
    top = typed(index)
    if isinstance(top, faiss.IndexIVF):
        codes = int(top.ntotal) * (int(top.code_size) + 8)  # an int64 id per vector
        return codes + int(top.nlist) * int(top.d) * 4 + (int(top.pq.M * top.pq.ksub * top.pq.dsub) * 4
                                                          if hasattr(top, "pq") else 0)
    if hasattr(top, "code_size"):
        return int(top.ntotal) * int(top.code_size)
    return int(faiss.serialize_index(index).size)


def holdings(index: faiss.Index) -> dict[str, int]:
    """What a consumer holds for ``index`` (bytes): ``big`` (``reconstruct_n``: ntotal x d float32, in RAM),
    ``ram`` (big + the index), ``gpu_applio`` (Applio realtime copies big and its transpose to the GPU, plus
    a norm per vector) and ``gpu_deiteris`` (the fork's big tensor on the GPU plus the index cloned there),
    and ``exact_flops_per_frame`` (Applio realtime's exact search over big: 2 x ntotal x d per frame)."""
    big = int(index.ntotal) * int(index.d) * 4
    own = index_bytes(index)
    return {"big": big, "index": own, "ram": big + own, "gpu_applio": 2 * big + 4 * int(index.ntotal),
            "gpu_deiteris": big + own, "exact_flops_per_frame": 2 * int(index.ntotal) * int(index.d)}


def blend(big: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """RVC's retrieval blend [q, d]: ``(1/score)^2`` weights over the k labels, exactly as RVC writes it."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        weight = np.square(1 / scores)
        weight /= weight.sum(axis=1, keepdims=True)
        return (big[labels] * np.expand_dims(weight, axis=2)).sum(axis=1)


def replay(path: str, queries: np.ndarray, vectors: np.ndarray | None = None, dim: int | None = None) -> dict:
    """Load ``path`` (``read_index``, ``reconstruct_n``: what every consumer does first) and play each consumer's
    calls on it with ``queries`` [q, d]; report each consumer (a load that raises fails every one of them)."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    index = faiss.read_index(path)
    big = index.reconstruct_n(0, index.ntotal)
    static = static_problems(index, dim)
    results: dict[str, dict] = {}
    for name in CONSUMERS:
        stored_nprobe = getattr(typed(index), "nprobe", None)
        try:
            problem = static.get(name) or PLAYS[name](index, big, queries)
        except Exception as exc:  # noqa: BLE001 - any exception is what the consumer would hit
            problem = f"{type(exc).__name__}: {exc}"
        finally:
            if stored_nprobe is not None:  # Applio realtime's nprobe = 12 stays with Applio
                typed(index).nprobe = stored_nprobe
        results[name] = {"ok": problem is None, "problem": problem}
    checks = {
        "top_level_ivf": isinstance(typed(index), faiss.IndexIVF),
        "metric_l2": index.metric_type == faiss.METRIC_L2,
        "reconstruct_finite": bool(np.isfinite(big).all()),
        "reconstruct_exact": vectors is None or bool(np.array_equal(big, vectors)),
    }
    return {"faiss": faiss.__version__, "numpy": np.__version__, "type": type(typed(index)).__name__,
            "d": int(index.d), "ntotal": int(index.ntotal), "nprobe": getattr(typed(index), "nprobe", None),
            "holdings": holdings(index), "consumers": results, "checks": checks,
            "ok": all(r["ok"] for r in results.values()) and all(checks.values())}


def _missing(labels: np.ndarray, k: int) -> str | None:
    short = float((labels < 0).any(axis=1).mean()) if labels.size else 0.0
    return None if short == 0 else f"{100 * short:.1f} % of k={k} searches return -1 labels"


def _finite(blended: np.ndarray) -> str | None:
    return None if np.isfinite(blended).all() else "the blend has non-finite values"


def play_rvc_offline(index: faiss.Index, big: np.ndarray, queries: np.ndarray) -> str | None:
    """RVC's (and Applio's) offline inference: search k=8 and blend ``big`` (read and reconstructed already)."""
    scores, labels = index.search(queries, k=RVC_K)
    return _missing(labels, RVC_K) or _finite(blend(big, scores, labels))


def play_rvc_realtime(index: faiss.Index, big: np.ndarray, queries: np.ndarray) -> str | None:
    """RVC's realtime GUI: the same per block; a block with any -1 label skips retrieval."""
    skipped = 0
    blocks = range(0, len(queries), REALTIME_BLOCK_FRAMES)
    for start in blocks:
        scores, labels = index.search(queries[start:start + REALTIME_BLOCK_FRAMES], k=RVC_K)
        if not (labels >= 0).all():
            skipped += 1
        elif _finite(blend(big, scores, labels)):
            return "the blend has non-finite values"
    return None if not skipped else f"{skipped} of {len(blocks)} blocks have -1 labels: retrieval skipped there"


def play_applio_realtime(index: faiss.Index, big: np.ndarray, queries: np.ndarray) -> str | None:
    """Applio realtime: ``index.nprobe = 12`` (outside its try: an AttributeError ends the load), then exact top-8
    over ``big`` (torch on its device; float32 here), faiss search as the out-of-memory fallback."""
    index.nprobe = APPLIO_REALTIME_NPROBE
    if big.shape[0] < RVC_K:
        return f"{big.shape[0]} stored vectors: torch.topk(k={RVC_K}) raises"
    norms = (big**2).sum(axis=1)
    for start in range(0, len(queries), REALTIME_BLOCK_FRAMES):
        block = queries[start:start + REALTIME_BLOCK_FRAMES]
        distances = norms[None, :] - 2.0 * block @ big.T + (block**2).sum(axis=1, keepdims=True)
        top = np.argpartition(distances, RVC_K - 1, axis=1)[:, :RVC_K]
        scores = np.maximum(np.take_along_axis(distances, top, axis=1), 1e-8)  # Applio's clamp
        if _finite(blend(big, scores, top)):
            return "the blend has non-finite values"
    _, labels = index.search(queries, k=RVC_K)  # the out-of-memory fallback, at nprobe 12
    return _missing(labels, RVC_K)


def play_w_okada(index: faiss.Index, big: np.ndarray, queries: np.ndarray) -> str | None:
    """w-okada's voice changer: search k=1, ``big[ix.squeeze()]`` (-1 silently takes the last row)."""
    _, labels = index.search(queries, W_OKADA_K)
    taken = big[labels.squeeze(axis=1)]
    return _missing(labels, W_OKADA_K) or _finite(taken)


def play_deiteris(index: faiss.Index, big: np.ndarray, queries: np.ndarray) -> str | None:
    """The deiteris/tg fork: refuses untrained or empty indexes, clones to the GPU on Linux + CUDA (the cloner's
    rules, checked by type: :func:`gpu_clone_problem`), searches k=8 and blends."""
    if not index.is_trained or index.ntotal == 0:
        return "untrained or empty: refused"
    scores, labels = index.search(queries, k=RVC_K)
    return gpu_clone_problem(index) or _missing(labels, RVC_K) or _finite(blend(big, scores, labels))


PLAYS = {"rvc-offline": play_rvc_offline, "rvc-realtime": play_rvc_realtime, "applio-offline": play_rvc_offline,
         "applio-realtime": play_applio_realtime, "w-okada": play_w_okada, "deiteris": play_deiteris}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("index")
    parser.add_argument("--queries", required=True, help=".npy [n, D] float32 query frames")
    parser.add_argument("--vectors", help=".npy [ntotal, D] the vectors the index must reconstruct exactly")
    parser.add_argument("--dim", type=int)
    args = parser.parse_args(argv)
    vectors = np.load(args.vectors) if args.vectors else None
    result = replay(args.index, np.load(args.queries), vectors, args.dim)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
