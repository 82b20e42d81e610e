import numpy as np

from pipeline.backend import select_backend
from pipeline.kmeans import fit_minibatch, inertia, init_centres, nearest_centres


def blobs(n_per, centres, spread, seed=0):
    rng = np.random.default_rng(seed)
    x = np.concatenate([c + spread * rng.standard_normal((n_per, centres.shape[1])) for c in centres])
    return x[rng.permutation(len(x))].astype(np.float32)


def test_nearest_centres_matches_brute_force():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 16)).astype(np.float32)
    c = rng.standard_normal((7, 16)).astype(np.float32)
    labels, dists = nearest_centres(np, x, c, tile_rows=64)
    full = ((x[:, None, :] - c[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(labels, full.argmin(1))
    np.testing.assert_allclose(dists, full.min(1), rtol=1e-4, atol=1e-4)


def test_minibatch_finds_well_separated_blobs():
    rng = np.random.default_rng(1)
    true = rng.standard_normal((5, 8)).astype(np.float32) * 20
    x = blobs(400, true, 0.5)
    backend = select_backend("cpu")
    batches = (x[i:i + 256] for _ in range(3) for i in range(0, len(x), 256))
    state = fit_minibatch(backend, batches, x[:500], 5, "kmeans++", seed=0)
    found = state.centres
    distance = np.sqrt(((found[:, None] - true[None]) ** 2).sum(-1))
    assert distance.min(axis=0).max() < 0.3  # every true centre has a found one nearby
    assert np.isfinite(inertia(backend, [x], found))


def test_seeded_runs_are_identical_and_dead_centres_reseeded():
    x = blobs(300, np.eye(4, dtype=np.float32) * 10, 0.3, seed=2)
    backend = select_backend("cpu")
    init = np.concatenate([x[:4], np.full((4, 4), 1e3, np.float32)])  # 4 centres nobody will reach
    runs = []
    for _ in range(2):
        batches = (x[i:i + 100] for i in range(0, len(x), 100))
        runs.append(fit_minibatch(backend, batches, init, 8, "random", seed=5, dead_after=2))
    np.testing.assert_array_equal(runs[0].centres, runs[1].centres)
    assert runs[0].reseeded >= 4
    assert np.abs(runs[0].centres).max() < 100


def test_kmeanspp_init_is_spread():
    x = blobs(100, np.eye(6, dtype=np.float32) * 50, 0.1)
    centres = init_centres(np, x, 6, "kmeans++", np.random.default_rng(0))
    labels, _ = nearest_centres(np, centres, np.eye(6, dtype=np.float32) * 50)
    assert sorted(labels.tolist()) == list(range(6))
