"""The k-means core (compute/lloyd.py) and its CPU assigners (two_level.py, hierarchy.py), mini-batch steps
(minibatch.py): exact and two-level assignment, init, Sculley/EMA updates, dead-centre re-seeding, Lloyd passes;
CPU, plus a GPU agreement check."""

import numpy as np
import pytest
from rvc_index.compute.backend import select_backend
from rvc_index.compute.hierarchy import allocate, two_level_init
from rvc_index.compute.init import init_centres
from rvc_index.compute.kernels import squared_norms
from rvc_index.compute.knn import nearest
from rvc_index.compute.lloyd import Exact, ResidentRows, accumulate, farthest, lloyd, merge, update
from rvc_index.compute.minibatch import fit_minibatch, inertia, minibatch_step, new_state
from rvc_index.compute.segments import segment_sums
from rvc_index.compute.two_level import (
    TwoLevel,
    assign_two_level,
    build_tree,
    coarse_cells,
    nearest_cells,
)

CPU = select_backend("cpu")


def blobs(n_per, centres, spread, seed=0):
    rng = np.random.default_rng(seed)
    x = np.concatenate([c + spread * rng.standard_normal((n_per, centres.shape[1])) for c in centres])
    return x[rng.permutation(len(x))].astype(np.float32)


def true_blobs(k, dim, seed=1, scale=20.0):
    return (np.random.default_rng(seed).standard_normal((k, dim)) * scale).astype(np.float32)


def max_miss(found, true):
    """Largest distance from a true centre to the nearest found one."""
    return np.sqrt(((found[:, None] - true[None]) ** 2).sum(-1)).min(axis=0).max()


def fit(x, centres, iters):
    """(centres, counts) of ``iters`` exact Lloyd passes over ``x`` in memory."""
    result = lloyd(np, x, centres.copy(), iters)
    return result.centres, result.counts


def test_segment_sums_match_add_at():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1000, 12)).astype(np.float32)
    labels = rng.integers(0, 40, 1000)
    labels[labels == 7] = 8  # centre 7 gets nothing
    sums, counts = segment_sums(np, labels, x, 40)
    expected = np.zeros((40, 12), np.float32)
    np.add.at(expected, labels, x)
    np.testing.assert_allclose(sums, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(counts, np.bincount(labels, minlength=40))
    assert counts[7] == 0 and not sums[7].any()


def test_two_level_assignment_is_exact_when_probing_every_cell_and_close_with_one():
    rng = np.random.default_rng(4)
    x = blobs(60, true_blobs(50, 24, seed=4, scale=3.0), 1.0, seed=4)
    centres = x[rng.permutation(len(x))[:200]].copy()
    coarse, _ = fit(centres, centres[:10], 5)
    tree = build_tree(np, centres, coarse)
    exact_labels, exact_dists = nearest(np, x, centres)
    labels, dists = assign_two_level(np, tree, x, nprobe=10)
    np.testing.assert_array_equal(labels, exact_labels)
    np.testing.assert_allclose(dists, exact_dists, rtol=1e-4, atol=1e-4)
    labels1, dists1 = assign_two_level(np, tree, x, nprobe=1)
    np.testing.assert_allclose(dists1, ((x - centres[labels1]) ** 2).sum(1), rtol=1e-3, atol=1e-3)
    assert (dists1 >= exact_dists - 1e-3).all()
    assert (labels1 == exact_labels).mean() > 0.9
    _, dists3 = assign_two_level(np, tree, x, nprobe=3)
    assert exact_dists.mean() <= dists3.mean() < 1.01 * exact_dists.mean() < dists1.mean()


def test_spread_lists_each_centre_in_its_nearest_cells_and_closes_the_gap_to_exact():
    x = blobs(40, true_blobs(60, 16, seed=8, scale=2.0), 1.0, seed=8)  # overlapping blobs: many border rows
    centres = x[np.random.default_rng(8).permutation(len(x))[:300]].copy()
    coarse, _ = fit(centres, centres[:12], 5)
    exact_labels, exact = nearest(np, x, centres)
    tree4 = build_tree(np, centres, coarse, spread=4)
    listings = np.bincount(tree4.ids, minlength=300)
    assert (listings >= 1).all() and (listings <= 4).all() and listings.mean() > 3
    own = nearest(np, centres, coarse)[0]
    for j in range(12):  # distinct centres, all of the cell's own, the rest among their 4 nearest cells
        listed = tree4.ids[tree4.offsets[j]:tree4.offsets[j + 1]]
        assert len(set(listed.tolist())) == len(listed)
        assert set(np.flatnonzero(own == j)) <= set(listed.tolist())
        assert len(listed) <= max(int((own == j).sum()), 4 * 4 * 25)
        ranks = np.argsort(np.argsort(((centres[listed, None] - coarse[None]) ** 2).sum(-1), axis=1), axis=1)
        assert (ranks[:, j] < 4).all()
    np.testing.assert_allclose(tree4.centres, centres[tree4.ids])
    _, one = assign_two_level(np, build_tree(np, centres, coarse), x, 1)
    labels4, four = assign_two_level(np, tree4, x, 1)
    np.testing.assert_allclose(four, ((x - centres[labels4]) ** 2).sum(1), rtol=1e-3, atol=1e-3)
    assert exact.mean() <= four.mean() < one.mean()
    assert (labels4 == exact_labels).mean() > 0.97
    every, exact_again = assign_two_level(np, build_tree(np, centres, coarse, spread=12), x, 1)
    np.testing.assert_array_equal(every, exact_labels)  # every centre in every cell: exact


def test_a_coarse_centre_amid_the_others_lists_only_its_nearest_foreign_centres():
    rng = np.random.default_rng(12)
    coarse = np.concatenate([np.zeros((1, 8)), 10 * np.eye(8), -10 * np.eye(8)]).astype(np.float32)  # a hub at 0
    centres = (coarse[1:][rng.integers(16, size=640)] + 3 * rng.standard_normal((640, 8))).astype(np.float32)
    tree = build_tree(np, centres, coarse, spread=4)
    hub = tree.ids[tree.offsets[0]:tree.offsets[1]]
    cap = 4 * 4 * -(-640 // 17)
    assert len(hub) == cap  # near every centre's 4 nearest cells, but capped
    gaps = ((centres - coarse[0]) ** 2).sum(1)
    wanted = np.flatnonzero(np.argsort(np.argsort(((centres[:, None] - coarse[None]) ** 2).sum(-1), 1), 1)[:, 0] < 4)
    assert gaps[hub].max() <= np.sort(gaps[wanted])[cap - 1] + 1e-4  # the nearest ones are kept


def test_nearest_cells_are_the_smallest_scores_for_any_probe_count():
    scores = np.random.default_rng(3).standard_normal((500, 40)).astype(np.float32)
    for probes in (1, 2, 3, 4, 5, 9):
        found = nearest_cells(np, scores.copy(), probes)
        assert found.shape == (500, probes)
        want = np.sort(np.argsort(scores, axis=1)[:, :probes], axis=1)
        np.testing.assert_array_equal(np.sort(found, axis=1), want)


def test_kept_coarse_cells_give_the_same_assignment_and_stale_ones_still_find_a_centre():
    x = blobs(30, true_blobs(40, 12, seed=9), 1.0, seed=9)
    centres = x[::6].copy()
    coarse, _ = fit(centres, centres[:8], 5)
    tree = build_tree(np, centres, coarse, spread=2)
    cells = coarse_cells(np, tree, x, 2)
    assert cells.dtype == np.int16 and cells.shape == (len(x), 2)
    fresh = assign_two_level(np, tree, x, 2)
    kept = assign_two_level(np, tree, x, 2, cells)
    np.testing.assert_array_equal(kept[0], fresh[0])
    np.testing.assert_array_equal(kept[1], fresh[1])
    empty_coarse = np.concatenate([coarse, np.full((1, 12), 1e4, np.float32)])  # cell 8 owns no centre
    far_tree = build_tree(np, centres, empty_coarse)
    assert np.diff(far_tree.offsets)[8] == 0
    labels, dists = assign_two_level(np, far_tree, x, 1, np.full((len(x), 1), 8, np.int16))  # all stale
    np.testing.assert_array_equal(labels, assign_two_level(np, far_tree, x, 1)[0])
    assert np.isfinite(dists).all()


def test_a_tree_rebuilt_in_an_earlier_trees_buffer_equals_a_fresh_one():
    x = blobs(30, true_blobs(40, 12, seed=4), 1.0, seed=4)
    centres = x[::6].copy()
    coarse, _ = fit(centres, centres[:8], 5)
    first = build_tree(np, centres, coarse, spread=3)
    assert first.buffer.shape == (len(centres) * 3, 12) and np.shares_memory(first.centres, first.buffer)
    moved = centres + 0.5
    fresh = build_tree(np, moved, coarse, spread=3)
    reused = build_tree(np, moved, coarse, spread=3, buffer=first.buffer)
    assert reused.buffer is first.buffer
    for name in ("centres", "norms", "ids", "offsets"):
        np.testing.assert_array_equal(getattr(reused, name), getattr(fresh, name))


def test_the_inits_cells_give_the_same_refinement_as_cells_found_afresh():
    x = blobs(50, true_blobs(30, 16, seed=10), 1.0, seed=10)
    init = two_level_init(np, x, 120, 6, "kmeans++", np.random.default_rng(0), iters=2)
    assert init.cells.shape == (len(x), 1)
    np.testing.assert_array_equal(init.cells[:, 0], nearest(np, x, init.coarse)[0])
    np.testing.assert_array_equal(init.norms, squared_norms(np, x))
    refined = []
    for cells, norms in ((init.cells, init.norms), (None, None)):
        source = ResidentRows(x, threads=2, norms=norms, cells=cells)
        refined.append(lloyd(np, source, init.centres.copy(), 2, TwoLevel(init.coarse, 3, 1)).centres)
    np.testing.assert_allclose(refined[0], refined[1], rtol=1e-5, atol=1e-5)


def test_known_row_norms_give_the_same_assignment_and_slices_sum_as_the_whole():
    x = blobs(40, true_blobs(25, 16, seed=12), 1.0, seed=12)
    rng = np.random.default_rng(1)
    centres = x[rng.choice(len(x), 90, replace=False)].copy()
    norms = squared_norms(np, x)
    # norms summed over the whole array or tile by tile may differ in the last bit: the labels do not
    labels, dists = nearest(np, x, centres, tile_rows=128, x_norms=norms)
    np.testing.assert_array_equal(labels, nearest(np, x, centres, tile_rows=128)[0])
    np.testing.assert_allclose(dists, nearest(np, x, centres, tile_rows=128)[1], rtol=1e-5, atol=1e-2)
    tree = build_tree(np, centres, x[::100].copy(), spread=2)
    cells = coarse_cells(np, tree, x, 1)
    labels, dists = assign_two_level(np, tree, x, 1, cells)
    np.testing.assert_array_equal((labels, dists), assign_two_level(np, tree, x, 1, cells, norms))
    assigner = TwoLevel(x[::100].copy(), 2, 1)
    assigner.prepare(np, centres)
    sliced = ResidentRows(x, threads=3).pass_sums(np, assigner, 8)  # a slice of rows per core, merged in order
    whole_sums, whole_counts = segment_sums(np, labels, x, 90)
    np.testing.assert_array_equal(sliced.counts, whole_counts)
    np.testing.assert_allclose(sliced.sums, whole_sums, rtol=1e-5, atol=1e-4)
    assert float(sliced.sse) == pytest.approx(float(dists.astype(np.float64).sum()), rel=1e-5)
    assert farthest(np, dists, 0).shape == (0,) and farthest(np, dists, 3).tolist() == np.argsort(-dists)[:3].tolist()


def test_empty_coarse_cells_are_never_probed():
    x = np.random.default_rng(5).standard_normal((300, 8)).astype(np.float32)
    centres = x[:20].copy()
    coarse = np.concatenate([centres[:3], np.full((2, 8), 1e4, np.float32)])  # two cells own no centre
    tree = build_tree(np, centres, coarse)
    assert list(np.diff(tree.offsets)[3:]) == [0, 0]
    far = np.full((5, 8), 1e4, np.float32)  # rows nearest the empty cells
    labels, dists = assign_two_level(np, tree, far, nprobe=4)
    assert np.isfinite(dists).all() and (labels < 20).all()


def test_allocate_is_proportional_and_never_exceeds_rows():
    alloc = allocate(np.array([1000, 10, 0, 3, 500]), 100)
    assert alloc.sum() == 100 and (alloc <= [1000, 10, 0, 3, 500]).all()
    assert alloc[0] > alloc[4] > alloc[1] and alloc[2] == 0
    assert allocate(np.array([2, 3]), 5).tolist() == [2, 3]


@pytest.mark.parametrize("two_level", [False, True])
def test_minibatch_finds_well_separated_blobs(two_level):
    true = true_blobs(5 if not two_level else 24, 8)
    x = blobs(400, true, 0.5)
    k = true.shape[0] * (2 if two_level else 1)  # two-level shares centres by D^2 mass, not one per blob
    if two_level:
        rng = np.random.default_rng(0)
        centres, counts, coarse, *_ = two_level_init(np, x[:4000], k, 4, "kmeans++", rng, iters=3)
        state = new_state(np, centres, counts, coarse)
    else:
        state = new_state(np, init_centres(np, x[:500], k, "kmeans++", np.random.default_rng(0)))
    batches = (x[i:i + 256] for _ in range(3) for i in range(0, len(x) - 255, 256))
    fit_minibatch(CPU, batches, state, nprobe=2)
    assert max_miss(state.centres, true) < (0.7 if two_level else 0.3)  # every true centre has a found one nearby
    assert np.isfinite(inertia(CPU, [x], state.centres))


def test_two_level_init_reaches_the_true_centres_and_beats_random_rows():
    true = true_blobs(64, 16, seed=6)
    x = blobs(100, true, 0.5, seed=6)
    centres, counts, coarse, *_ = two_level_init(np, x, 128, 8, "kmeans++", np.random.default_rng(0), iters=5)
    assert centres.shape == (128, 16) and coarse.shape == (8, 16)
    assert counts.sum() == len(x)
    misses = np.sqrt(((centres[:, None] - true[None]) ** 2).sum(-1)).min(axis=0)
    assert (misses < 1.0).mean() >= 0.95  # within half a blob's radius (2.0): k-means may still merge two
    random_rows = init_centres(np, x, 128, "random", np.random.default_rng(0))
    from_random, *_ = two_level_init(np, x, 128, 8, "random", np.random.default_rng(0), iters=5)
    assert inertia(CPU, [x], centres) < inertia(CPU, [x], from_random) < inertia(CPU, [x], random_rows)


def test_kmeanspp_cells_share_centres_by_squared_distance_not_rows():
    """Half the rows are one repeated frame (digital silence): by rows that cell would get half the
    centres, all on one point; by D^2 mass it gets one and the spread rows get the rest."""
    assert list(allocate(np.array([2000, 2000]), 100, np.array([0.0, 1.0]))) == [1, 99]
    rng = np.random.default_rng(3)
    spread = (rng.standard_normal((2000, 8)) * 3.0 + 40.0).astype(np.float32)
    x = np.concatenate([np.zeros((2000, 8), np.float32), spread])
    centres, counts, *_ = two_level_init(np, x, 100, 2, "kmeans++", np.random.default_rng(0), iters=3)
    on_silence = int((np.abs(centres).max(axis=1) < 1e-3).sum())
    assert on_silence == 1
    assert (counts > 0).all()


def test_seeded_runs_are_identical_and_dead_centres_reseeded():
    x = blobs(300, np.eye(4, dtype=np.float32) * 10, 0.3, seed=2)
    init = np.concatenate([x[:4], np.full((4, 4), 1e3, np.float32)])  # 4 centres nobody will reach
    runs = []
    for _ in range(2):
        state = new_state(np, init.copy())
        batches = (x[i:i + 100] for i in range(0, len(x), 100))
        runs.append(fit_minibatch(CPU, batches, state, dead_threshold=1.0, dead_window=2))
    np.testing.assert_array_equal(runs[0].centres, runs[1].centres)
    assert runs[0].reseeded >= 4
    assert np.abs(runs[0].centres).max() < 100  # the unreachable centres now sit among the rows
    assert np.isfinite(runs[0].centres).all()
    never = new_state(np, init.copy())
    fit_minibatch(CPU, (x[i:i + 100] for i in range(0, len(x), 100)), never, dead_threshold=0.0)
    assert never.reseeded == 0 and np.abs(never.centres).max() >= 1e3


def test_two_level_runs_with_one_seed_are_identical():
    x = blobs(50, true_blobs(40, 12, seed=9, scale=2.0), 1.0, seed=9)
    results = []
    for _ in range(2):
        centres, counts, coarse, *_ = two_level_init(np, x[:1500], 100, 10, "kmeans++", np.random.default_rng(7), 3)
        state = new_state(np, centres, counts, coarse)
        fit_minibatch(CPU, (x[i:i + 500] for i in range(0, len(x), 500)), state, nprobe=2)
        results.append(state.centres)
    np.testing.assert_array_equal(results[0], results[1])


def test_decay_forgets_old_rows_and_sculley_does_not():
    """Sculley (decay 1) keeps the running mean of every row; an EMA (decay < 1) follows a shift."""
    rng = np.random.default_rng(8)
    before = rng.standard_normal((2000, 4)).astype(np.float32)
    after = before + np.float32(10.0)
    ends = {}
    for decay in (1.0, 0.5):
        state = new_state(np, np.zeros((1, 4), np.float32))
        batches = [before[i:i + 200] for i in range(0, 2000, 200)] + [after[i:i + 200] for i in range(0, 2000, 200)]
        fit_minibatch(CPU, batches, state, decay=decay, dead_threshold=0.0)
        ends[decay] = state.centres[0]
    np.testing.assert_allclose(ends[1.0], np.concatenate([before, after]).mean(0), atol=1e-3)
    np.testing.assert_allclose(ends[0.5], after[-400:].mean(0), atol=0.2)


def test_constant_data_never_gives_nan():
    x = np.full((500, 6), 3.0, np.float32)
    centres, counts, coarse, *_ = two_level_init(np, x, 20, 4, "kmeans++", np.random.default_rng(0), iters=3)
    state = new_state(np, centres, counts, coarse)
    for i in range(0, 500, 100):
        assert minibatch_step(np, state, x[i:i + 100]) == 0.0
    lloyd(np, x, state.centres, 1, state.assigner)
    assert np.isfinite(state.centres).all() and np.isfinite(state.counts).all()
    assert inertia(CPU, [x], state.centres) == 0.0
    random_centres = init_centres(np, x, 20, "kmeans++", np.random.default_rng(1))
    np.testing.assert_array_equal(random_centres, x[:20])


def test_lloyd_reseeds_empty_centres_instead_of_nan():
    x = blobs(100, np.eye(3, dtype=np.float32) * 10, 0.2, seed=3)
    centres = np.concatenate([x[:3], np.full((2, 3), -500.0, np.float32)])
    found, counts = fit(x, centres, 3)
    assert np.isfinite(found).all() and np.abs(found).max() < 20
    assert (counts > 0).sum() >= 3


def test_parts_merged_equal_one_pass_and_the_update_is_a_lloyd_step():
    x = blobs(200, true_blobs(6, 5, seed=2), 1.0, seed=2)
    centres = x[:6].copy()
    assigner = Exact()
    assigner.prepare(np, centres)
    whole = accumulate(np, assigner, x, n_far=8)
    parts = None
    for i in range(0, len(x), 250):
        parts = merge(np, parts, accumulate(np, assigner, x[i:i + 250], n_far=8), 8)
    np.testing.assert_allclose(parts.sums, whole.sums, rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(parts.counts, whole.counts)
    np.testing.assert_allclose(parts.far_dists, whole.far_dists, rtol=1e-5)
    assert parts.rows == len(x) and float(parts.sse) == pytest.approx(float(whole.sse), rel=1e-6)
    moved = centres.copy()
    assert update(np, moved, parts, assigner) == 0
    labels = nearest(np, x, centres)[0]
    expected = np.stack([x[labels == j].mean(axis=0) for j in range(6)])
    np.testing.assert_allclose(moved, expected, rtol=1e-4, atol=1e-4)


def test_empty_centres_take_the_farthest_rows_and_in_fixed_cells_only_their_cells():
    from rvc_index.compute.lloyd import reseed

    centres = np.zeros((6, 2), np.float32)
    empty = np.array([False, True, False, True, True, False])
    spares = np.arange(10, dtype=np.float32).reshape(5, 2) + 100  # in priority order
    fresh = reseed(np, centres, empty, spares)
    np.testing.assert_array_equal(fresh, empty)  # five spares, three empty centres: the first three, in order
    np.testing.assert_array_equal(centres[[1, 3, 4]], spares[:3])
    assert not centres[[0, 2, 5]].any()
    centres[:] = 0
    cells = np.array([0, 0, 1, 1, 1, 2])  # centre 1 in cell 0; 3, 4 in cell 1
    spare_cells = np.array([1, 2, 1, 1, 0])
    fresh = reseed(np, centres, empty, spares, spare_cells, cells, 3)
    np.testing.assert_array_equal(fresh, empty)
    np.testing.assert_array_equal(centres[1], spares[4])  # cell 0's one spare
    np.testing.assert_array_equal(centres[[3, 4]], spares[[0, 2]])  # cell 1's first two spares, in order
    assert not centres[[0, 2, 5]].any()  # cell 2's spare had no empty centre there


def test_passes_stop_when_the_msd_settles_and_a_fast_product_ends_with_an_exact_pass():
    x = blobs(300, true_blobs(12, 8, seed=5), 1.0, seed=5)
    start = x[np.random.default_rng(0).choice(len(x), 24, replace=False)]
    every = lloyd(np, x, start.copy(), 30)
    stopped = lloyd(np, x, start.copy(), 30, tol=1e-3)
    assert stopped.converged and len(stopped.msd) < 30 and len(every.msd) == 30
    assert stopped.msd[-1] <= 1.005 * every.msd[-1]  # what the passes it skipped would still have gained
    used = []

    def product(name):
        def run(a, b):
            used.append(name)
            return a @ b.T
        return run

    precise = lloyd(np, x, start.copy(), 30, Exact(fast=product("fast"), exact=product("exact")), tol=1e-3)
    calls_per_pass = used.count("exact")
    assert precise.converged and calls_per_pass >= 1 and used[-calls_per_pass:] == ["exact"] * calls_per_pass
    assert used[:-calls_per_pass] == ["fast"] * (len(used) - calls_per_pass)  # only the last pass is exact
    assert len(precise.msd) == len(stopped.msd) + 1  # the same passes (same products here), then the exact one


def test_kmeanspp_init_is_spread():
    x = blobs(100, np.eye(6, dtype=np.float32) * 50, 0.1)
    centres = init_centres(np, x, 6, "kmeans++", np.random.default_rng(0))
    labels, _ = nearest(np, centres, np.eye(6, dtype=np.float32) * 50)
    assert sorted(labels.tolist()) == list(range(6))


def test_init_needs_enough_rows():
    with pytest.raises(ValueError, match="at least 10 rows"):
        init_centres(np, np.zeros((5, 3), np.float32), 10, "random", np.random.default_rng(0))


@pytest.mark.gpu
@pytest.mark.parametrize("two_level", [False, True])
def test_cpu_and_gpu_agree(two_level):
    gpu = select_backend("gpu")
    x = blobs(200, true_blobs(30, 32, seed=12, scale=4.0), 1.0, seed=12)
    results = []
    for backend in (CPU, gpu):
        xp = backend.xp
        rows = backend.asarray(x)
        if two_level:
            centres, counts, coarse, *_ = two_level_init(xp, rows[:3000], 120, 8, "random", np.random.default_rng(1), 3)
            state = new_state(xp, centres, counts, coarse)
        else:
            state = new_state(xp, init_centres(xp, rows, 120, "random", np.random.default_rng(1)))
        fit_minibatch(backend, (x[i:i + 1000] for i in range(0, len(x), 1000)), state, nprobe=2)
        lloyd(xp, rows, state.centres, 1, state.assigner)
        results.append(backend.to_host(state.centres))
    # float sums differ in order on the device, which may flip a row sitting on a boundary
    close = np.isclose(results[0], results[1], rtol=1e-3, atol=1e-3).all(axis=1)
    assert close.mean() >= 0.98, close.mean()
    assert inertia(CPU, [x], results[1]) == pytest.approx(inertia(CPU, [x], results[0]), rel=1e-3)
