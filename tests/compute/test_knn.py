"""The one exact k-NN (compute/knn.py): rounds of argmax and argpartition, column tiles merged, both metrics,
streamed blocks with rows left out, and the 1-NN the k-means assignment and init use."""

import numpy as np
import pytest
from rvc_index.compute.knn import ROUNDS_MAX_K, db_tile_columns, knn, nearest, select_top_k, top_k
from rvc_index.compute.neighbours import exact_neighbours


def distinct_scores(rows, cols, seed=0):
    """Scores without ties: every top-k has one answer."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(cols) for _ in range(rows)]).astype(np.float32) / cols


@pytest.mark.parametrize("k", [1, 8, ROUNDS_MAX_K, ROUNDS_MAX_K + 9])
def test_select_top_k_equals_a_full_sort(k):
    scores = distinct_scores(50, 300)
    expected = np.argsort(-scores, axis=1)[:, :k]
    values, columns = select_top_k(np, scores.copy(), k)
    if k <= ROUNDS_MAX_K:  # rounds of argmax: largest first
        np.testing.assert_array_equal(columns, expected)
    np.testing.assert_array_equal(np.sort(columns, axis=1), np.sort(expected, axis=1))
    np.testing.assert_array_equal(values, np.take_along_axis(scores, columns, axis=1))
    assert columns.dtype == np.int64


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_column_tiles_merge_to_the_brute_force_answer(metric):
    rng = np.random.default_rng(1)
    queries = rng.standard_normal((70, 24)).astype(np.float32)
    db = rng.standard_normal((1000, 24)).astype(np.float32)
    bias = -0.5 * np.einsum("ij,ij->i", db, db) if metric == "l2" else None
    tile_bytes = 4 * 256 * 150  # 150 database rows per column tile: 7 tiles merged
    assert db_tile_columns(len(db), 8, tile_bytes) == 150
    scores, ids = top_k(np, queries, db, 8, tile_bytes, bias)
    if metric == "l2":
        truth = np.argsort(((queries[:, None, :] - db[None]) ** 2).sum(-1), axis=1)[:, :8]
    else:
        truth = np.argsort(-(queries @ db.T), axis=1)[:, :8]
    np.testing.assert_array_equal(ids, truth)
    full = queries @ db.T + (0 if bias is None else bias)
    np.testing.assert_allclose(scores, np.take_along_axis(full, truth, axis=1), rtol=1e-5, atol=1e-5)


def test_exact_neighbours_over_query_tiles_and_threads():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((900, 16)).astype(np.float32)
    truth = np.argsort(-(x @ x.T), axis=1)[:, :5]
    for workers, tile_bytes in [(1, 4 * 900 * 300), (3, 4 * 256 * 100)]:  # 3 query tiles; column tiles on threads
        np.testing.assert_array_equal(exact_neighbours(np, x, x, 5, tile_bytes, workers), truth)


@pytest.mark.parametrize("k", [3, ROUNDS_MAX_K + 4])
def test_knn_over_streamed_blocks_leaves_rows_out_and_returns_squared_distances(k):
    rng = np.random.default_rng(4)
    queries = rng.standard_normal((300, 12)).astype(np.float32)  # two query tiles of 256
    db = rng.standard_normal((2000, 12)).astype(np.float32)
    keep = rng.random(2000) > 0.3
    blocks = [db[:700], db[700:1300], db[1300:]]
    dists, ids = knn(np, queries, blocks, k, 4 * 256 * 128, keep=lambda a, b: keep[a:b])
    full = ((queries[:, None, :].astype(np.float64) - db[None]) ** 2).sum(-1)
    full[:, ~keep] = np.inf
    truth = np.argsort(full, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(ids, truth)  # nearest first, ties by id
    np.testing.assert_allclose(dists, np.take_along_axis(full, truth, axis=1), rtol=1e-4, atol=1e-3)
    few = np.zeros(2000, bool)
    few[[5, 1500]] = True  # two rows kept: the rest of each answer is -1 at inf
    dists, ids = knn(np, queries[:4], blocks, 4, 1 << 20, keep=lambda a, b: few[a:b])
    assert (np.sort(ids[:, :2], axis=1) == [5, 1500]).all() and (ids[:, 2:] == -1).all()
    assert np.isinf(dists[:, 2:]).all() and np.isfinite(dists[:, :2]).all()
    ip, ip_ids = knn(np, queries, [db], 5, 1 << 20, l2=False)
    np.testing.assert_array_equal(ip_ids, np.argsort(-(queries @ db.T), axis=1, kind="stable")[:, :5])


def test_nearest_is_the_1nn_in_tiles():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1000, 16)).astype(np.float32)
    centres = rng.standard_normal((37, 16)).astype(np.float32)
    labels, dists = nearest(np, x, centres, tile_rows=64)
    full = ((x[:, None, :] - centres[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(labels, full.argmin(1))
    np.testing.assert_allclose(dists, full.min(1), rtol=1e-4, atol=1e-4)
    assert labels.dtype == np.int64 and dists.dtype == np.float32


@pytest.mark.gpu
def test_gpu_tiles_find_the_numpy_neighbours():
    from rvc_index.compute.backend import select_backend

    gpu = select_backend("gpu")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5000, 64)).astype(np.float32)
    on_gpu = gpu.to_host(exact_neighbours(gpu.xp, gpu.asarray(x), gpu.asarray(x), 8, 4 * 256 * 1000))
    same = (np.sort(on_gpu, axis=1) == np.sort(exact_neighbours(np, x, x, 8, 1 << 26), axis=1)).all(axis=1)
    assert same.mean() > 0.999  # fp32 products on two devices may order a near-tie differently
