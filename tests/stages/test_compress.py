"""Compress stage (pipeline/compress.py): planning, streaming from every chunk, partial sums on
Dask workers, RVC's sklearn mode, and bad input (K > rows, constant data)."""

import os

import numpy as np
import pytest
from rvc_index.compute.backend import select_backend
from rvc_index.compute.lloyd import Exact, ResidentRows
from rvc_index.compute.minibatch import inertia
from rvc_index.compute.two_level import TwoLevel
from rvc_index.config.loading import load_config
from rvc_index.config.schema import BudgetConfig, CompressConfig, ConfigError
from rvc_index.runtime.run import Run
from rvc_index.runtime.stream import iter_blocks
from rvc_index.stages.compress import CompressError, budget_vectors, plan_compression, plan_kmeans
from rvc_index.stages.passes import DaskRows, shuffled_batches
from sklearn.cluster import MiniBatchKMeans
from stage_runs import planned_kmeans

CPU = select_backend("cpu")


def all_rows(features):
    return np.concatenate(list(iter_blocks(features.array)))


def compress_config(**changes):
    overrides = [f"compress.{key}={value}" for key, value in changes.items()]
    return load_config(None, ["compress.row_threshold=100", *overrides]).compress


def test_plan_clamps_or_refuses_more_centroids_than_rows():
    budget = BudgetConfig()
    clamped = plan_compression(500, 64, CompressConfig(row_threshold=100, n_centroids=1000), budget, CPU)
    assert clamped.apply and clamped.n_centroids == 500
    with pytest.raises(CompressError, match="compress.n_centroids=1,000 is more than the 500 rows"):
        too_many = CompressConfig(row_threshold=100, n_centroids=1000, on_too_few_rows="error")
        plan_compression(500, 64, too_many, budget, CPU)
    assert not plan_compression(100, 64, CompressConfig(row_threshold=100, n_centroids=10), budget, CPU).apply


@pytest.mark.parametrize("dim, expected", [(768, 174_648), (256, 523_265)])
def test_the_budget_decides_how_many_vectors_are_stored(dim, expected):
    """512 MB of reconstructed vectors (and 1 GB of Applio realtime's GPU: 2 x big + a norm) hold this many."""
    budget = BudgetConfig()
    assert budget_vectors(dim, budget) == expected  # the GPU's 2 x D x 4 + 4 bytes per vector bind first
    config = CompressConfig()  # row_threshold and n_centroids 0: from the budget
    fits = plan_compression(expected, dim, config, budget, CPU)
    assert not fits.apply and "fit the budget" in fits.reason and fits.budget_vectors == expected
    over = plan_compression(expected + 1, dim, config, budget, CPU)
    assert over.apply and over.n_centroids == expected
    smaller = plan_compression(100_000, dim, config, BudgetConfig(big_mb=30, gpu_mb=60), CPU)
    assert smaller.apply and smaller.n_centroids == budget_vectors(dim, BudgetConfig(big_mb=30, gpu_mb=60))
    assert 10_000 <= smaller.n_centroids if dim == 768 else smaller.n_centroids >= 30_000
    rvc = plan_compression(300_000, dim, CompressConfig(row_threshold=200_000, n_centroids=10_000), budget, CPU)
    assert rvc.apply and rvc.n_centroids == 10_000  # RVC's rule when the config names it
    off = plan_compression(10**6, dim, CompressConfig(enabled=False), budget, CPU)
    assert not off.apply and "over the budget" in off.reason


def test_few_rows_per_centre_take_the_fixed_cells_route():
    config = CompressConfig()
    large = plan_kmeans(1_000_000, 174_648, config, CPU)
    assert large.fixed_cells and (large.spread, large.nprobe, large.refine_iters) == (1, 1, 0)
    assert large.sample_rows == 174_648 * 3 // 2 and "fixed cells" in large.describe()
    assert not plan_kmeans(1_000_000, 10_000, config, CPU).fixed_cells  # 100 rows per centre: two-level, spread 4
    assert not plan_kmeans(300_000, 174_648, CompressConfig(assign="exact"), CPU).fixed_cells


def test_kmeans_plan_memory_depends_on_k_not_n():
    config = CompressConfig()
    plans = [plan_kmeans(n, 10_000, config, CPU) for n in (1_000_000, 3_000_000, 50_000_000)]
    assert {p.sample_rows for p in plans} == {160_000}
    assert {p.batch_rows for p in plans} == {32_768}
    assert plans[0].n_coarse == 200 and plans[0].two_level
    small = plan_kmeans(5_000, 100, config, CPU)
    assert small.n_coarse == 1 and not small.two_level and small.sample_rows == 5_000
    mid = plan_kmeans(300_000, 10_000, config, CPU)
    assert mid.sample_rows == 150_000  # half the rows below 16 per centre: the init sample sets the quality
    exact = plan_kmeans(1_000_000, 10_000, CompressConfig(assign="exact"), CPU)
    assert exact.n_coarse == 200 and not exact.two_level


def test_config_rejects_bad_compress_settings():
    with pytest.raises(ConfigError, match="compress.decay"):
        load_config(None, ["compress.decay=0"])
    with pytest.raises(ConfigError, match="compress.sample_rows"):
        load_config(None, ["compress.sample_rows=500", "compress.n_centroids=1000"])
    with pytest.raises(ConfigError, match="compress.spread"):
        load_config(None, ["compress.spread=0"])
    with pytest.raises(ConfigError, match="compress.nprobe"):
        load_config(None, ["compress.nprobe=0"])
    with pytest.raises(ConfigError, match="compress.assign"):
        load_config(None, ["compress.assign=fast"])
    assert load_config(None, ["compress.epochs=0"]).compress.epochs == 0.0


def test_shuffled_batches_draw_every_chunk_in_a_seeded_order(make_experiment, feature_set):
    features = feature_set(make_experiment("mix", 6000, 64), chunk_mb=0.05)
    assert len(features.chunks) >= 6
    rows = all_rows(features)

    def epoch(seed):
        return [batch.copy() for batch in shuffled_batches(features, 500, 6000, np.random.default_rng(seed), Run(CPU))]

    first, again, other = epoch(1), epoch(1), epoch(2)
    assert len(first) == 12 and all(b.shape == (500, 64) for b in first)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])
    seen = np.concatenate(first)  # every row once
    np.testing.assert_array_equal(np.sort(seen, axis=0), np.sort(rows, axis=0))
    starts = np.cumsum((0,) + features.chunk_rows)
    row_of = {r.tobytes(): i for i, r in enumerate(rows)}
    chunk_of_first_rows = {int(np.searchsorted(starts, row_of[b[0].tobytes()], "right")) - 1 for b in first}
    assert len(chunk_of_first_rows) >= 4  # batches begin in many chunks, not in file order


def test_minibatch_compress_beats_rvcs_sklearn_call(make_experiment, feature_set):
    features = feature_set(make_experiment("q", 8000, 64))
    rows = all_rows(features)
    config = compress_config(n_centroids=256)
    ours = CPU.to_host(planned_kmeans(features, 256, config, CPU, seed=0).centres)
    theirs = MiniBatchKMeans(n_clusters=256, batch_size=256 * (os.cpu_count() or 1), compute_labels=False,
                             init="random", random_state=0).fit(rows).cluster_centers_
    assert ours.shape == (256, 64) and np.isfinite(ours).all()
    assert inertia(CPU, [rows], ours) <= inertia(CPU, [rows], theirs)


def test_sklearn_mode_runs_rvcs_call(make_experiment, feature_set):
    from rvc_index.stages.compress import compress

    features = feature_set(make_experiment("sk", 3000, 64))
    config = compress_config(n_centroids=50, method="sklearn")
    plan = plan_compression(features.n_rows, features.dim, config, BudgetConfig(), CPU)
    assert plan.kmeans is None and plan.method == "sklearn"
    centres = compress(features, plan, Run(CPU, seed=4))
    rows = all_rows(features)[np.random.default_rng(4).permutation(features.n_rows)]
    expected = MiniBatchKMeans(n_clusters=50, batch_size=256 * (os.cpu_count() or 1), compute_labels=False,
                               init="random", random_state=4).fit(rows).cluster_centers_
    np.testing.assert_allclose(centres, expected, rtol=1e-5, atol=1e-5)


def test_streaming_on_a_local_cluster_equals_the_in_process_run(make_experiment, client, feature_set):
    path = make_experiment("dist", 8000, 64)
    config = compress_config(n_centroids=400, batch_rows=1000, epochs=1.0)
    local = planned_kmeans(feature_set(path), 400, config, CPU, seed=3)
    remote = planned_kmeans(feature_set(path, client=client), 400, config, CPU, seed=3, client=client)
    assert local.coarse is not None and local.step == 8
    np.testing.assert_allclose(remote.centres, local.centres, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(remote.counts, local.counts)


@pytest.mark.parametrize("two_level", [True, False])
def test_partial_sums_on_workers_equal_one_in_memory_pass(two_level, make_experiment, client, feature_set):
    features = feature_set(make_experiment("sums", 6000, 64), client=client)
    assert len(features.chunks) > 2
    rows = all_rows(features)
    rng = np.random.default_rng(0)
    centres = rows[rng.permutation(len(rows))[:300]].copy()
    assigner = TwoLevel(centres[:17].copy(), 1, 2) if two_level else Exact()
    assigner.prepare(np, centres)
    on_workers = DaskRows(features, Run(CPU, client)).pass_sums(np, assigner, 256)
    in_memory = ResidentRows(rows).pass_sums(np, assigner, 256)
    np.testing.assert_array_equal(on_workers.counts, in_memory.counts)
    np.testing.assert_allclose(on_workers.sums, in_memory.sums, rtol=1e-4, atol=1e-3)
    assert on_workers.rows == len(rows) and float(on_workers.sse) == pytest.approx(float(in_memory.sse), rel=1e-5)


def test_k_equal_to_rows_keeps_every_row(make_experiment, feature_set):
    features = feature_set(make_experiment("few", 300, 64))
    plan = plan_compression(features.n_rows, features.dim, compress_config(n_centroids=1000), BudgetConfig(), CPU)
    assert plan.n_centroids == 300
    state = planned_kmeans(features, plan.n_centroids, compress_config(n_centroids=1000), CPU, seed=0)
    assert state.coarse is not None  # 300 centres: the two-level path
    assert inertia(CPU, [all_rows(features)], state.centres) == pytest.approx(0.0, abs=1e-4)


def test_constant_collection_gives_finite_centres(tmp_path, feature_set):
    folder = tmp_path / "flat" / "3_feature256"
    folder.mkdir(parents=True)
    for i in range(4):
        np.save(folder / f"{i}.npy", np.full((200, 256), 0.25, np.float32))
    features = feature_set(folder, chunk_mb=0.2)
    for assign in ("two-level", "exact"):
        config = compress_config(n_centroids=300, assign=assign, batch_rows=200)
        centres = CPU.to_host(planned_kmeans(features, 300, config, CPU, seed=0).centres)
        assert np.isfinite(centres).all()
        np.testing.assert_allclose(centres, 0.25, atol=1e-6)
