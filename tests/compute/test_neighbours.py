"""compute/neighbours.py: exact tiled neighbours and the IVF route over xp, on numpy."""

import numpy as np
from rvc_index.compute.kmeans import squared_norms
from rvc_index.compute.neighbours import exact_neighbours, ivf_neighbours, probe_lists, probe_recall, tiles


def unit_rows(n: int = 3000, dim: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, dim))
    x = (centres[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, dim))).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute(x: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(x @ x.T), axis=1, kind="stable")[:, :k]


def test_exact_neighbours_match_brute_force_for_any_tile_and_worker_count():
    x = unit_rows()
    truth = brute(x, 8)
    for tile_bytes, workers in ((1 << 16, 1), (1 << 20, 2), (1 << 26, 1)):
        found = exact_neighbours(np, x, x, 8, tile_bytes, workers)
        assert found.shape == (3000, 8)
        assert np.mean([len(set(a) & set(b)) / 8 for a, b in zip(found, truth)]) > 0.999


def test_tiles_cover_every_row_once():
    spans = tiles(1000, 128, 2)
    assert spans[0][0] == 0 and spans[-1][1] == 1000 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))


def test_ivf_route_reaches_high_recall_with_enough_probes():
    x = unit_rows()
    rng = np.random.default_rng(1)
    centres = x[rng.choice(len(x), 40, replace=False)]
    truth = brute(x, 8)
    queries = rng.choice(len(x), 64, replace=False)
    recall = probe_recall(np, x, centres, queries, truth[queries], 16)
    assert recall[-1] >= recall[0] and recall[-1] > 0.95
    probes = probe_lists(np, x, centres, 8, 1 << 20)
    found, gflop = ivf_neighbours(np, x, probes, len(centres), 8)
    assert gflop > 0
    assert np.mean([len(set(a) & set(b)) / 8 for a, b in zip(found[queries], truth[queries])]) > 0.9
    assert squared_norms(np, x).max() < 1.0001
