"""compute/neighbours.py: exact tiled neighbours and the IVF route over xp, on numpy."""

import numpy as np
from rvc_index.compute.kernels import squared_norms
from rvc_index.compute.neighbours import (
    exact_neighbours,
    ivf_neighbours,
    plan_groups,
    probe_lists,
    probe_recall,
    tiles,
)


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


def ivf_reference(x: np.ndarray, probes: np.ndarray, k: int) -> np.ndarray:
    """An IVF search written plainly: each row's k best among the members of the lists it probes."""
    home = probes[:, 0]
    found = []
    for row in range(len(x)):
        candidates = np.flatnonzero(np.isin(home, probes[row]))
        scores = x[candidates] @ x[row]
        found.append(set(candidates[np.argsort(-scores, kind="stable")[:k]].tolist()))
    return found


def test_ivf_batches_find_what_a_plain_ivf_search_finds_on_any_budget_and_threads():
    x = unit_rows(1500, 16, seed=3)
    rng = np.random.default_rng(2)
    centres = x[rng.choice(len(x), 25, replace=False)]
    probes = probe_lists(np, x, centres, 3, 1 << 20)
    want = ivf_reference(x, probes, 8)
    for tile_bytes, workers in ((1 << 26, 1), (1 << 16, 2), (20_000, 1)):  # 20 kB: big lists cut into row slices
        found, gflop = ivf_neighbours(np, x, probes, len(centres), 8, workers=workers, tile_bytes=tile_bytes)
        assert found.shape == (1500, 8) and (found >= 0).all() and gflop > 0
        assert [set(row.tolist()) for row in found] == want


def test_ivf_groups_share_a_size_class_and_cover_every_probing_row_once():
    rng = np.random.default_rng(4)
    members = rng.integers(1, 400, 300)
    probers = np.maximum(0, members + rng.integers(-50, 50, 300))
    probers[7] = 0  # probed by nobody at this rank
    groups = plan_groups(probers, members, 1 << 22, 64)
    covered = np.zeros(300, np.int64)
    for lists, first, count in groups:
        assert members[lists].max() <= 1.5 * members[lists].min() + 1  # one size class
        covered[lists] += np.minimum(probers[lists] - first, count).clip(0)
    np.testing.assert_array_equal(covered, probers)
    assert len(groups) < 100  # batches by class, not one per list
    huge = plan_groups(np.array([5000]), np.array([5000]), 1 << 20, 64)  # 100 MB of scores alone: row slices
    assert len(huge) > 1 and sum(min(count, 5000 - first) for _, first, count in huge) == 5000
