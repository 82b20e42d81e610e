"""RVC's retrieval, run against an index file: the compatibility check of the contract.

Standalone on purpose (only numpy and faiss): it runs under RVC's own pins (faiss-cpu 1.7.3,
numpy < 2) as ``python rvc_compat.py INDEX --queries Q.npy [--vectors V.npy] [--dim D]`` and
prints one JSON object; exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import json
import sys

import faiss
import numpy as np

RVC_K = 8


def stored_nprobe(index: faiss.Index) -> int | None:
    """nprobe of the IVF inside ``index`` (faiss 1.7.3's extract_index_ivf cannot unwrap a refine index)."""
    index = faiss.downcast_index(index)
    if hasattr(index, "base_index"):
        index = faiss.downcast_index(index.base_index)
    return int(index.nprobe) if hasattr(index, "nprobe") else None


def rvc_retrieval_check(path: str, queries: np.ndarray, vectors: np.ndarray | None = None,
                        dim: int | None = None) -> dict:
    """Load ``path`` and do exactly what RVC's inference does; report each check."""
    index = faiss.read_index(path)
    big_npy = index.reconstruct_n(0, index.ntotal)
    score, ix = index.search(np.ascontiguousarray(queries, dtype=np.float32), k=RVC_K)
    with np.errstate(divide="ignore", invalid="ignore"):
        weight = np.square(1 / score)
        weight /= weight.sum(axis=1, keepdims=True)
        blended = (big_npy[ix] * np.expand_dims(weight, axis=2)).sum(axis=1)
    checks = {
        "dim": dim is None or index.d == dim,
        "metric_l2": index.metric_type == faiss.METRIC_L2,
        "ntotal_positive": index.ntotal > 0,
        "reconstruct_finite": bool(np.isfinite(big_npy).all()),
        "reconstruct_exact": vectors is None or bool(np.array_equal(big_npy, vectors)),
        "no_missing_labels": bool((ix >= 0).all()),
        "blend_finite": bool(np.isfinite(blended).all()),
    }
    nprobe = stored_nprobe(index)
    return {
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "type": type(faiss.downcast_index(index)).__name__,
        "d": int(index.d),
        "ntotal": int(index.ntotal),
        "nprobe": nprobe,
        "checks": checks,
        "ok": all(checks.values()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("index")
    parser.add_argument("--queries", required=True, help=".npy [n, D] float32 query frames")
    parser.add_argument("--vectors", help=".npy [ntotal, D] the vectors the index must reconstruct")
    parser.add_argument("--dim", type=int)
    args = parser.parse_args(argv)
    vectors = np.load(args.vectors) if args.vectors else None
    result = rvc_retrieval_check(args.index, np.load(args.queries), vectors, args.dim)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
