"""The device route of the k-means core on numpy: the sorted segment sums (compute/segments), full-batch passes
over resident tiles (compute/lloyd), the batched D^2 init (compute/init), the row kernels, the stage route
(stages/compress_device) and compress's route choice."""

import logging

import numpy as np
import pytest
from rvc_index.compute.backend import Backend, select_backend
from rvc_index.compute.init import d2_init, random_init
from rvc_index.compute.kernels import KERNELS, row_check, squared_norms
from rvc_index.compute.knn import nearest
from rvc_index.compute.lloyd import ResidentRows, lloyd
from rvc_index.compute.minibatch import inertia
from rvc_index.compute.segments import one_hot_sums, segment_sums, sorted_segment_sums
from rvc_index.config.loading import load_config
from rvc_index.config.schema import CompressConfig, ConfigError
from rvc_index.runtime.stream import iter_blocks
from rvc_index.stages.compress_device import choose_route
from rvc_index.stages.kmeans_plan import kmeans_route, plan_kmeans
from stage_runs import planned_kmeans

CPU = select_backend("cpu")


def blobs(n, dim, centres, seed=0, spread=0.05):
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((centres, dim)) * 3
    return (means[rng.integers(0, centres, n)] + spread * rng.standard_normal((n, dim))).astype(np.float32)


@pytest.mark.parametrize("sums", [one_hot_sums, lambda labels, x, k: sorted_segment_sums(np, labels, x, k, block=64)])
def test_segment_sums_equal_add_at_with_empty_segments(sums):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5000, 12)).astype(np.float32) * 100
    labels = rng.choice(np.array([0, 3, 4, 9]), 5000)  # 1, 2, 5..8 empty; 9 = k - 1
    found, counts = sums(labels, x, 10)
    expected = np.zeros((10, 12))
    np.add.at(expected, labels, x.astype(np.float64))
    assert found.dtype == np.float32 and counts.dtype == np.int64
    np.testing.assert_allclose(found, expected, rtol=1e-5, atol=1e-2)  # float32 sums of ~1250 rows of 100
    np.testing.assert_array_equal(counts, np.bincount(labels, minlength=10))
    assert segment_sums(np, labels, x, 10)[0].dtype == np.float32


def test_sorted_sums_keep_a_small_segment_exact_beside_a_huge_one():
    """The float64 prefix of block totals: a one-row centre after 100,000 rows of large values is not lost to
    cancellation (a float32 prefix over the whole tile would lose it)."""
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.uniform(900, 1100, (100_000, 4)), [[0.5, -0.25, 1e-3, 2.0]]]).astype(np.float32)
    labels = np.concatenate([np.zeros(100_000, np.int64), [1]])
    sums, counts = sorted_segment_sums(np, labels, x, 2)
    np.testing.assert_allclose(sums[1], x[-1], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(sums[0], x[:-1].astype(np.float64).sum(0), rtol=1e-5)
    assert counts.tolist() == [100_000, 1]


def test_row_kernels_and_their_references():
    x = np.array([[1.0, 2.0, 3.0], [np.nan, 0, 0], [0, np.inf, 0], [5e30, 0, 0], [-5e30, 0, 0]], np.float32)
    np.testing.assert_array_equal(row_check(np, x, 1e30), [0, 2, 2, 1, 1])
    np.testing.assert_allclose(squared_norms(np, x[:1]), [14.0])
    assert set(KERNELS) == {"rvc_index_sq_norms", "rvc_index_row_check"}


def test_one_pass_is_a_lloyd_step_and_empty_centres_take_the_farthest_rows():
    x = blobs(3000, 8, 6, seed=1)
    start = random_init(np, x, 6, np.random.default_rng(2))
    start[5] = 1e3  # wins no row
    result = lloyd(np, ResidentRows(x, 700), start.copy(), 1)  # 5 tiles merged
    labels = np.argmin(((x[:, None] - start[None]) ** 2).sum(-1), axis=1)
    dists = ((x - start[labels]) ** 2).sum(-1)
    for j in range(5):
        np.testing.assert_allclose(result.centres[j], x[labels == j].mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(result.centres[5], x[np.argmax(dists)])
    assert result.reseeded == 1 and result.counts[5] == 0
    assert result.msd == [pytest.approx(dists.mean(), rel=1e-5)]


def test_d2_init_covers_separated_clusters_better_than_random():
    x = blobs(4000, 16, 40, seed=3, spread=0.01)
    d2 = d2_init(np, x, 40, np.random.default_rng(0), tile_elements=4096)
    rnd = random_init(np, x, 40, np.random.default_rng(0))
    assert len({tuple(row) for row in d2}) == 40  # distinct rows
    d2_msd = nearest(np, x, d2, tile_rows=512)[1].mean()
    assert d2_msd < 0.5 * nearest(np, x, rnd, tile_rows=512)[1].mean()
    np.testing.assert_array_equal(d2, d2_init(np, x, 40, np.random.default_rng(0), tile_elements=4096))


def test_route_choice_follows_device_and_budget():
    assert kmeans_route(CompressConfig(), CPU)[0] == "minibatch"
    assert kmeans_route(CompressConfig(), Backend("gpu", np))[0] == "device"  # decided from the backend's kind
    assert kmeans_route(CompressConfig(route="minibatch"), Backend("gpu", np))[0] == "minibatch"
    plan = plan_kmeans(1_000_000, 10_000, CompressConfig(route="device"), CPU)
    assert plan.route == "device" and plan.steps == 0 and "compress.route=device" in plan.describe()
    assert plan.precision == "fp32" and plan.stop_tol == CompressConfig().stop_tol  # no TF32 on a CPU
    assert plan_kmeans(10**6, 10**4, CompressConfig(route="device", precision="tf32"), CPU).precision == "tf32"
    on_gpu = plan_kmeans(10**6, 10**4, CompressConfig(route="minibatch"), Backend("gpu", np))
    assert on_gpu.init == "kmeans++" and not on_gpu.two_level  # a device: batched D^2, exact assignment
    fits = choose_route(1_000_000, 768, plan_kmeans(10**6, 10**4, CompressConfig(device_budget_mb=8000), CPU), CPU,
                        50_000)
    assert fits.name == "resident" and fits.device_rows == 1_000_000 and "fit the 8,000 MiB budget" in fits.reason
    small = choose_route(3_000_000, 768, plan_kmeans(3 * 10**6, 10**4, CompressConfig(device_budget_mb=4000), CPU),
                         CPU, 50_000)
    assert small.name == "streamed" and 10_000 <= small.device_rows < 3_000_000 and small.stream_passes == 2
    assert "exceed the 4,000 MiB budget" in small.reason
    with pytest.raises(ConfigError, match="compress.lloyd_passes"):
        load_config(None, ["compress.lloyd_passes=0"])
    with pytest.raises(ConfigError, match="compress.stop_tol"):
        load_config(None, ["compress.stop_tol=1.5"])
    with pytest.raises(ConfigError, match="compress.precision"):
        load_config(None, ["compress.precision=fp16"])


def test_device_route_beats_ten_lloyd_passes_from_random_init(make_experiment, caplog, feature_set):
    features = feature_set(make_experiment("dev", 12000, 64))
    rows = np.concatenate(list(iter_blocks(features.array)))
    config = load_config(None, ["compress.row_threshold=100", "compress.route=device", "compress.init=kmeans++"])
    with caplog.at_level(logging.INFO, logger="rvc_index"):
        ours = CPU.to_host(planned_kmeans(features, 200, config.compress, CPU, seed=0).centres)
    assert "device route resident" in caplog.text and "converged" in caplog.text  # stopped on the MSD's change
    plain = lloyd(np, rows, random_init(np, rows, 200, np.random.default_rng(0)), 10).centres
    assert ours.shape == (200, 64) and np.isfinite(ours).all()
    assert inertia(CPU, [rows], ours) <= inertia(CPU, [rows], plain)


def test_streamed_route_under_a_small_budget_passes_over_every_row(make_experiment, caplog, feature_set):
    features = feature_set(make_experiment("big", 12000, 64), chunk_mb=0.25)
    rows = np.concatenate(list(iter_blocks(features.array)))
    config = load_config(None, ["compress.row_threshold=100", "compress.route=device",
                                "compress.device_budget_mb=1.5"]).compress
    with caplog.at_level(logging.INFO, logger="rvc_index"):
        state = planned_kmeans(features, 200, config, CPU, seed=0)
    assert "device route streamed" in caplog.text and "streamed pass 2 over 12,000 rows" in caplog.text
    assert int(state.counts.sum()) == 12_000  # the last pass saw every row
    resident = planned_kmeans(features, 200, CompressConfig(row_threshold=100, route="device"), CPU, seed=0)
    assert inertia(CPU, [rows], state.centres) <= 1.1 * inertia(CPU, [rows], resident.centres)


@pytest.mark.gpu
def test_gpu_device_route_matches_numpy_quality(make_experiment, feature_set):
    features = feature_set(make_experiment("gpu", 12000, 64))
    rows = np.concatenate(list(iter_blocks(features.array)))
    gpu = select_backend("gpu")
    for precision in ("fp32", "tf32"):
        config = CompressConfig(row_threshold=100, route="device", init="kmeans++", precision=precision)
        on_gpu = gpu.to_host(planned_kmeans(features, 200, config, gpu, seed=0).centres)
        on_cpu = planned_kmeans(features, 200, config, CPU, seed=0).centres
        assert inertia(CPU, [rows], on_gpu) <= 1.01 * inertia(CPU, [rows], on_cpu), precision


@pytest.mark.gpu
def test_gpu_kernels_equal_their_numpy_references():
    gpu = select_backend("gpu")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3000, 96)).astype(np.float32)
    x[5, 3], x[9, 0], x[11, 2] = np.nan, -np.inf, 3e30
    np.testing.assert_array_equal(gpu.to_host(row_check(gpu.xp, gpu.asarray(x), 1e30)), row_check(np, x, 1e30))
    np.testing.assert_allclose(gpu.to_host(squared_norms(gpu.xp, gpu.asarray(x[12:]))), squared_norms(np, x[12:]),
                               rtol=1e-5)
    labels = rng.integers(0, 300, 3000)
    sums, counts = sorted_segment_sums(gpu.xp, gpu.asarray(labels[12:], dtype=np.int64), gpu.asarray(x[12:]), 300)
    want_sums, want_counts = one_hot_sums(labels[12:], x[12:], 300)
    np.testing.assert_allclose(gpu.to_host(sums), want_sums, rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(gpu.to_host(counts), want_counts)
