"""Every device route under the counting CuPy stand-in (``cupy_standin.py``), on a ``Backend("gpu", XP)``:
the init, pinned staging, the k-means core on the device route end to end (rows resident, or a sample then
streamed passes) and on the minibatch route, the evaluation's exact neighbours and the IVF expansion. Each
must run without a call CuPy 14.2 would refuse, and its device-to-host transfers (hidden synchronisations
included) must not grow with K, the list count or the row count: one per pass at most.
"""

import numpy as np
import pytest
from cupy_standin import XP, DeviceArray, measure, with_cupyx
from rvc_index.compute.backend import Backend
from rvc_index.compute.init import d2_init, random_init
from rvc_index.compute.neighbours import exact_neighbours, ivf_neighbours, probe_lists, probe_recall
from rvc_index.compute.warm import ensure_warm
from rvc_index.config.schema import BudgetConfig, CompressConfig
from rvc_index.evaluation.metrics import exact_knn
from rvc_index.runtime.run import HostOnly, Run
from rvc_index.stages.compress import compress, plan_compression

GPU = Backend("gpu", XP)


@pytest.fixture(autouse=True)
def _cupyx(monkeypatch):
    with_cupyx(monkeypatch)
    ensure_warm(GPU)  # the first device use of the process warms the kernels: not part of what a route costs


def rows(n, dim=16, seed=0, unit=False):
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True) if unit else x


def test_device_init_costs_a_fixed_number_of_calls_and_no_transfer():
    costs = set()
    for n, k in [(4000, 16), (16000, 64), (32000, 256)]:
        x = XP.asarray(rows(n))
        d2 = measure(lambda x=x, k=k: d2_init(XP, x, k, np.random.default_rng(1)))
        uploads = DeviceArray.counts.uploads  # one host draw of uniforms per round
        plain = measure(lambda x=x, k=k: random_init(XP, x, k, np.random.default_rng(1)))
        costs.add((d2, uploads, plain))
    assert len(costs) == 1, costs
    (calls, transfers), uploads, plain = costs.pop()
    assert transfers == 0 and plain[1] == 0 and uploads == 8 and calls < 240


@pytest.mark.parametrize("sizes", [[1000] * 6, [1000, 1200, 900, 1300, 1100, 1000]])
def test_pinned_staging_copies_each_block_once_and_reads_nothing_back(sizes):
    blocks = [rows(n, 8, seed=i).astype(np.float64) for i, n in enumerate(sizes)]
    out = XP.empty((sum(sizes), 8), dtype=XP.float32)
    calls, transfers = measure(lambda: [None for _ in GPU.upload(blocks, out=out)])
    counts = DeviceArray.counts
    assert (calls, transfers, counts.uploads) == (0, 0, len(blocks))  # one pinned copy per block, no kernel
    assert counts.waits == len(blocks) - 1  # the host waits for a buffer's previous copy, not for the compute
    assert counts.pinned <= 2 + sum(b > max(sizes[:i], default=0) for i, b in enumerate(sizes))
    np.testing.assert_array_equal(out.get(), np.concatenate(blocks).astype(np.float32))
    staged = [s.get() for s in GPU.upload(blocks)]  # without ``out``: each valid until the next is asked for
    assert all(np.array_equal(s, b.astype(np.float32)) for s, b in zip(staged, blocks))


def test_the_device_kmeans_route_reads_back_once_per_pass(make_experiment, feature_set):
    seen = {}
    for n, k, budget in [(4000, 64, 64), (12000, 256, 64), (12000, 256, 4)]:  # 4 MiB: the streamed route
        features = feature_set(make_experiment(f"s{n}_{k}_{budget}", n, 64))
        config = CompressConfig(row_threshold=100, n_centroids=k, route="device", device_budget_mb=budget,
                                lloyd_passes=3, stream_passes=1, stop_tol=0.0)
        centres = {}
        seen[(n, k, budget)] = measure(lambda f=features, c=config, out=centres: out.setdefault(
            "c", compress(f, plan_compression(f.n_rows, f.dim, c, BudgetConfig(), GPU), Run(GPU))))[1]
        assert centres["c"].shape == (k, 64) and np.isfinite(centres["c"]).all()
    # resident: each pass's MSD (3), every MSD and the re-seeded count once more, the centres; streamed: the
    # streamed pass's MSD and its own closing read
    assert seen == {(4000, 64, 64): 5, (12000, 256, 64): 5, (12000, 256, 4): 7}


def test_the_evaluations_exact_neighbours_cost_a_fixed_number_of_calls_per_tile():
    queries = rows(100)
    cost = {}
    for n in (3000, 12000):
        blocks = [rows(n // 3, seed=i) for i in range(3)]
        cost[n] = measure(lambda b=blocks, n=n: exact_knn(GPU, queries, b, 8, tile_rows=1000, keep=np.ones(n, bool)))
    per_tile = (cost[12000][0] - cost[3000][0]) / 9
    assert cost[3000][1] == cost[12000][1] == 2 and per_tile == int(per_tile) and per_tile < 45, cost


def ivf_cost(n_list, n=8000, nprobe=4):
    unit = XP.asarray(rows(n, unit=True, seed=5))
    centres = unit[XP.arange(n_list)].copy()
    probes = probe_lists(XP, unit, centres, nprobe, 1 << 26)
    truth = exact_neighbours(XP, unit[:50], unit, 8, 1 << 26)
    probing = measure(lambda: probe_lists(XP, unit, centres, nprobe, 1 << 26))
    recall = measure(lambda: probe_recall(XP, unit, centres, XP.arange(50), truth, nprobe))
    search = measure(lambda: ivf_neighbours(XP, unit, probes, n_list, 8))
    return probing, recall, search


def test_ivf_probing_and_recall_cost_do_not_grow_with_the_lists():
    small, large = ivf_cost(20), ivf_cost(80)
    assert small[:2] == large[:2] and small[0][1] == 0 and small[1][1] == 2  # recall: bincount's sync + result


def test_ivf_search_transfers_do_not_grow_with_the_lists_and_launches_follow_the_size_classes():
    small, large, many = ivf_cost(20)[2], ivf_cost(80)[2], ivf_cost(1000)[2]
    # the members' counts once, then each probe rank after the first its probing rows' counts: nprobe reads
    assert small[1] == large[1] == many[1] == 4, (small, large, many)
    # one batch per size class and rank (a few dozen), not one per list: 50x the lists, < 10x the launches
    assert many[0] < 10 * small[0], (small, many)


def test_the_minibatch_route_on_a_device_reads_back_a_fixed_number_of_times(make_experiment, feature_set):
    seen = []
    for n, k in [(4000, 64), (12000, 256)]:
        features = feature_set(make_experiment(f"m{n}_{k}", n, 64))
        config = CompressConfig(row_threshold=100, n_centroids=k, route="minibatch", epochs=1.0, init="random")
        plan = plan_compression(features.n_rows, features.dim, config, BudgetConfig(), GPU)
        seen.append(measure(lambda f=features, c=config, p=plan: compress(f, p, Run(GPU)))[1])
    assert seen[0] == seen[1], seen


def test_the_warm_up_launches_every_kernel_the_device_routes_launch(make_experiment, feature_set, tmp_path,
                                                                     monkeypatch):
    """``compute.warm`` must compile what a build's device routes compile (each call per operand dtypes: CuPy's
    kernel cache keys), so that a build never compiles in the middle of a timed step."""
    from rvc_index.compute.warm import run_every_route, warm_kernels

    monkeypatch.setenv("CUPY_CACHE_DIR", str(tmp_path))
    measure(lambda: run_every_route(GPU))
    warmed = set(DeviceArray.counts.kernels)
    features = feature_set(make_experiment("warm", 6000, 64))
    launched = set()
    for route, extra in (("device", {"device_budget_mb": 64}), ("device", {"device_budget_mb": 2}),
                         ("minibatch", {"epochs": 1.0})):
        config = CompressConfig(row_threshold=100, n_centroids=300, route=route, lloyd_passes=2, **extra)
        measure(lambda c=config: compress(features, plan_compression(6000, 64, c, BudgetConfig(), GPU), Run(GPU)))
        launched |= DeviceArray.counts.kernels
    queries = rows(50)
    measure(lambda: exact_knn(GPU, queries, [rows(3000, seed=2)], 8, keep=np.ones(3000, bool)))
    launched |= DeviceArray.counts.kernels
    for n_list in (20, 80):
        measure(lambda n_list=n_list: ivf_cost(n_list))
        launched |= DeviceArray.counts.kernels
    assert not launched - warmed, sorted(launched - warmed)
    assert warm_kernels(GPU).compiled == 0 and warm_kernels(GPU).describe().startswith("kernels warmed in")


def test_the_value_check_on_the_device_reads_back_once_per_chunk_and_agrees_with_the_host(make_experiment,
                                                                                          feature_set):
    from rvc_index.compute.values import device_row_codes
    from rvc_index.data.feature_set import open_feature_set
    from rvc_index.data.sources import value_bound

    path = make_experiment("values", 6000, 64)
    experiment, manifest = (lambda f: (f.experiment, f.manifest))(feature_set(path, chunk_mb=0.1))
    folder = sorted(path.glob("3_feature*"))[0]
    first = sorted(folder.glob("*.npy"))[0]
    broken = np.load(first)
    broken[::3, 2] = np.nan  # a third of its rows dropped
    np.save(first, broken)  # the same shape and bytes: the headers scanned above still hold
    opened = {}
    for where, codes in (("host", None), ("device", device_row_codes(GPU, value_bound(64)))):
        calls, transfers = measure(lambda codes=codes, where=where: opened.setdefault(where, open_feature_set(
            experiment, manifest, 0.1, sample_rows=500, run=Run(HostOnly(), seed=3), row_codes=codes)))
        if where == "device":
            assert transfers == len(opened[where].chunks) and calls <= 3 * len(opened[where].chunks)
    host, device = opened["host"], opened["device"]
    assert device.file_rows == host.file_rows and device.dropped_rows == host.dropped_rows > 0
    np.testing.assert_array_equal(device.sample.rows, host.sample.rows)
    np.testing.assert_array_equal(device.sample.ids, host.sample.ids)
    huge = np.load(first)
    huge[7, 1] = 1e35  # beyond float32 distances: the file is bad, named the same way on both routes
    np.save(first, huge)
    problems = []
    for codes in (None, device_row_codes(GPU, value_bound(64))):
        with pytest.raises(Exception) as caught:
            open_feature_set(experiment, manifest, 0.1, row_codes=codes)
        problems.append(str(caught.value))
    assert problems[0] == problems[1] and "row 7" in problems[0]


def test_a_whole_build_on_the_device_checks_values_there_and_takes_the_device_route(
        make_experiment, tmp_path, monkeypatch):
    """The runner on a GPU backend (faiss on the CPU beside it): the value check codes each chunk's rows on the
    device (one read back per chunk), the k-means takes the device route, and the index is the CPU build's kind."""
    import json

    import rvc_index.compute.values as values
    from rvc_index.config.loading import load_config
    from rvc_index.job.runner import build_experiment

    coded = []
    real = values.row_check
    monkeypatch.setattr(values, "row_check", lambda xp, rows, bound: coded.append(rows.shape[0]) or real(xp, rows,
                                                                                                       bound))
    exp = make_experiment("on-device", 6000, 256)
    config = load_config("tips-plain", ["compress.row_threshold=1000", "compress.n_centroids=200",
                                        "evaluate.recall_queries=0", "source.chunk_mb=0.5"])
    result = build_experiment(exp, config, tmp_path / "out", backend=GPU)
    report = json.loads(result.report_path.read_text())
    assert sum(coded) == 6000 and len(coded) >= 2  # every row coded on the device, one call per chunk
    assert any("route device" in line for line in report["plan"]["decisions"])
    assert report["rows"] == 6000 and report["index"]["ntotal"] == 200 and report["backend"].startswith("gpu")
