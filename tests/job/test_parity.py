"""rvc-classic makes RVC's decisions and, at RVC's nprobe, RVC's recall (benchmarks/rvc_recipe.py)."""

from dataclasses import asdict

import faiss
import numpy as np
import pytest
from rvc_index.compute.backend import select_backend
from rvc_index.config.loading import load_config
from rvc_index.evaluation.metrics import exact_knn, recall_at_k
from rvc_index.job.runner import build_experiment
from rvc_index.tools.synth import utterances

from benchmarks.rvc_recipe import rvc_train_index


def recall_at_nprobe(index, vectors, queries, nprobe):
    faiss.extract_index_ivf(index).nprobe = nprobe
    _, found = index.search(queries, 8)
    _, truth = exact_knn(select_backend("cpu"), queries, [vectors], 8)
    return recall_at_k(found, truth, 8)


@pytest.mark.parametrize("rows, dim, overrides", [
    (12_000, 768, []),
    (6_000, 256, ["compress.row_threshold=4000", "compress.n_centroids=400", "compress.method=sklearn"]),
])
def test_rvc_classic_matches_rvcs_recipe(rows, dim, overrides, make_experiment, tmp_path):
    exp = make_experiment("parity", rows, dim)
    feature_dir = exp / f"3_feature{dim}"
    config = load_config("configs/rvc-classic.yaml", ["seed=3", *overrides])
    ours = build_experiment(exp, config, tmp_path / "ours")
    rvc = rvc_train_index(feature_dir, dim, seed=3, row_threshold=config.compress.row_threshold,
                          n_centroids=config.compress.n_centroids)
    report = asdict(ours.record)
    assert report["compression"]["applied"] == rvc.compressed
    assert report["index"]["n_list"] == rvc.n_ivf
    assert report["index"]["ntotal"] == rvc.index.ntotal
    index = faiss.read_index(str(ours.index_path))
    vectors = index.reconstruct_n(0, index.ntotal)
    queries = np.concatenate(list(utterances(2000, dim, [5, dim])))[:2000]
    ours_recall = recall_at_nprobe(index, vectors, queries, 1)
    rvc_recall = recall_at_nprobe(rvc.index, rvc.big_npy, queries, 1)
    assert abs(ours_recall - rvc_recall) <= 0.01, (ours_recall, rvc_recall)
    # the same vectors, in another order (RVC shuffles the stored rows; we keep file order)
    order = np.lexsort(vectors.T)
    np.testing.assert_allclose(vectors[order], rvc.big_npy[np.lexsort(rvc.big_npy.T)], rtol=1e-5, atol=1e-5)


def test_parity_is_exact_not_lucky(make_experiment, tmp_path):
    """Same seed -> the very same inverted lists as RVC's recipe (ids mapped through the shuffle)."""
    exp = make_experiment("lists", 5000, 256)
    config = load_config("configs/rvc-classic.yaml", ["seed=11", "evaluate.recall_queries=0"])
    built = build_experiment(exp, config, tmp_path / "o", backend=select_backend("cpu"))  # bitwise parity: CPU faiss
    ours = faiss.read_index(str(built.index_path))
    rvc = rvc_train_index(exp / "3_feature256", 256, seed=11)
    ours_centroids = faiss.extract_index_ivf(ours).quantizer.reconstruct_n(0, rvc.n_ivf)
    rvc_centroids = faiss.extract_index_ivf(rvc.index).quantizer.reconstruct_n(0, rvc.n_ivf)
    np.testing.assert_allclose(ours_centroids, rvc_centroids, rtol=1e-4, atol=1e-4)
