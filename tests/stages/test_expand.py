"""Alpha query expansion: float64 reference, norms, NaN safety, IVF recall, spill, end to end."""

import json
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
from rvc_index.compute.backend import Backend, select_backend
from rvc_index.config.loading import config_from_dict, load_config
from rvc_index.config.schema import ConfigError, ExpandConfig
from rvc_index.job.record import ExpansionRecord
from rvc_index.job.runner import build_experiment
from rvc_index.stages.expand import ExpandError
from rvc_index.tools.synth import utterances
from stage_runs import planned_expand

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
CPU = Backend("cpu", np)


def clustered(n, dim, seed=0, clusters=12, spread=0.8):
    """Rows near a few random centres, with varied norms: neighbours have large cosines."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    rows = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, dim))
    return (rows * rng.uniform(0.5, 3.0, (n, 1))).astype(np.float32)


def reference(x, k, alpha, scale="feature"):
    """Steps 1-5 of the issue in float64 NumPy, with exact k-NN by cosine."""
    x = np.asarray(x, np.float64)
    norms = np.linalg.norm(x, axis=1)
    unit = x / np.maximum(norms, 1e-9)[:, None]
    cos = unit @ unit.T
    ids = np.argsort(-cos, axis=1, kind="stable")[:, :k]
    weights = np.maximum(np.take_along_axis(cos, ids, axis=1), 0.0) ** alpha
    total = np.einsum("nk,nkd->nd", weights, unit[ids])
    direction = total / np.maximum(np.linalg.norm(total, axis=1), 1e-9)[:, None]
    return (direction if scale == "unit" else direction * norms[:, None]), ids


def exact_ids(x, k, rows=None):
    """Exact cosine k-NN ids of ``x[:rows]`` among all rows of ``x``."""
    unit = x / np.maximum(np.linalg.norm(x, axis=1), 1e-9)[:, None]
    return np.argsort(-(unit[:rows] @ unit.T), axis=1)[:, :k]


def row_relative_error(a, b):
    return np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(b, axis=1), 1e-30)


def neighbour_recall(found, truth):
    return np.mean([len(set(f[f >= 0]) & set(t)) / len(t) for f, t in zip(found, truth)])


@pytest.mark.parametrize("alpha", [3.0, 0.5, 0.0])
@pytest.mark.parametrize("route", ["exact", "ivf-all-lists"])
def test_equals_float64_reference(alpha, route):
    x = clustered(900, 48, seed=1)
    config = ExpandConfig(enabled=True, alpha=alpha, method="exact")
    if route == "ivf-all-lists":  # probing every list makes the IVF search exact
        config = ExpandConfig(enabled=True, alpha=alpha, method="ivf", n_list=12, nprobe=12)
    result = planned_expand(x, config, CPU)
    expected, _ = reference(x, 8, alpha)
    assert row_relative_error(result.vectors, expected).max() < 1e-5
    assert result.neighbours == 8 and result.method == ("exact" if route == "exact" else "ivf")
    cos = np.einsum("nd,nd->n", expected, x) / np.linalg.norm(expected, axis=1) / np.linalg.norm(x, axis=1)
    assert result.mean_cosine == pytest.approx(cos.mean(), abs=1e-5)
    if alpha == 3.0:
        assert 0.5 < result.mean_cosine < 0.999  # neighbours really were mixed in


def test_norms_restored_or_unit_when_asked():
    x = clustered(600, 32, seed=2)
    norms = np.linalg.norm(x, axis=1)
    feature = planned_expand(x, ExpandConfig(enabled=True), CPU)
    np.testing.assert_allclose(np.linalg.norm(feature.vectors, axis=1), norms, rtol=1e-5)
    assert not np.allclose(feature.vectors, x, rtol=1e-3)
    unit = planned_expand(x, ExpandConfig(enabled=True, scale="unit"), CPU)
    np.testing.assert_allclose(np.linalg.norm(unit.vectors, axis=1), 1.0, rtol=1e-5)
    assert row_relative_error(unit.vectors, reference(x, 8, 3.0, scale="unit")[0]).max() < 1e-5
    np.testing.assert_allclose(unit.vectors * norms[:, None], feature.vectors, rtol=1e-4, atol=1e-5)
    assert ExpansionRecord.of(feature).scale == "feature" and "feature scale" in ExpansionRecord.of(feature).note
    assert ExpansionRecord.of(unit).scale == "unit" and "normalise query frames" in ExpansionRecord.of(unit).note


@pytest.mark.parametrize("alpha", [0.0, 0.37, 1.0, 3.0, 7.5, 400.0])
@pytest.mark.parametrize("scale", ["feature", "unit"])
def test_no_nan_for_any_alpha_and_zero_rows(alpha, scale):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    x[100:140] = -x[:40]  # antipodes: negative cosines must weigh 0, not NaN
    x[[7, 50, 299]] = 0.0
    x[8] = 1e-30  # below the norm floor
    result = planned_expand(x, ExpandConfig(enabled=True, alpha=alpha, scale=scale), CPU)
    assert np.isfinite(result.vectors).all() and np.isfinite(result.mean_cosine)
    assert not result.vectors[[7, 50, 299]].any()  # zero rows stay zero
    lengths = np.linalg.norm(result.vectors, axis=1)
    live = np.linalg.norm(x, axis=1) > 1e-9
    if scale == "feature":
        np.testing.assert_allclose(lengths[live], np.linalg.norm(x, axis=1)[live], rtol=1e-5)
    else:
        np.testing.assert_allclose(lengths[live], 1.0, rtol=1e-5)
    if alpha == 400.0:  # every neighbour but the vector itself weighs ~0
        np.testing.assert_allclose(result.vectors[live], x[live] if scale == "feature" else
                                   x[live] / np.linalg.norm(x[live], axis=1, keepdims=True), rtol=1e-4, atol=1e-6)


def test_ivf_route_recall_on_speech_like_frames():
    x = np.concatenate(list(utterances(4000, 256, [5, 256])))
    result = planned_expand(x, ExpandConfig(enabled=True, method="ivf"), CPU)
    truth = exact_ids(x, 8)
    recall = neighbour_recall(result.neighbour_ids, truth)
    assert recall >= 0.95
    report = ExpansionRecord.of(result)
    assert report.method == "ivf" and report.n_list == 63 and 1 <= report.nprobe < 63
    assert report.neighbour_recall >= 0.96 and report.recall_queries == 128
    assert abs(report.neighbour_recall - recall) < 0.03  # the sampled estimate is close to the truth
    exact = planned_expand(x, ExpandConfig(enabled=True, method="exact"), CPU)
    assert np.median(row_relative_error(result.vectors, exact.vectors)) < 1e-5  # most rows: same neighbours


def test_fixed_nprobe_is_used_and_low_nprobe_loses_recall():
    x = np.concatenate(list(utterances(4000, 128, [6, 128])))
    truth = exact_ids(x, 8)
    one = planned_expand(x, ExpandConfig(enabled=True, method="ivf", n_list=60, nprobe=1), CPU)
    tuned = planned_expand(x, ExpandConfig(enabled=True, method="ivf", n_list=60), CPU)
    assert one.nprobe == 1 and tuned.nprobe > 1
    recall_one = neighbour_recall(one.neighbour_ids, truth)
    assert recall_one == pytest.approx(one.neighbour_recall, abs=0.05)
    assert recall_one < 0.95 <= neighbour_recall(tuned.neighbour_ids, truth)
    for result in (one, tuned):  # every vector finds itself (its own list is always probed)
        assert (result.neighbour_ids == np.arange(len(x))[:, None]).any(axis=1).all()


def test_spilled_result_is_a_memmap_equal_to_the_in_memory_one(tmp_path):
    x = clustered(700, 24, seed=4)
    in_memory = planned_expand(x, ExpandConfig(enabled=True), CPU)
    spilled = planned_expand(x, ExpandConfig(enabled=True, spill_mb=0), CPU, spill_dir=tmp_path)
    assert isinstance(spilled.vectors, np.memmap) and spilled.storage == "memmap"
    assert in_memory.storage == "memory" and not isinstance(in_memory.vectors, np.memmap)
    np.testing.assert_array_equal(spilled.vectors, in_memory.vectors)
    assert list(tmp_path.iterdir()) == []  # the temporary .npy is unlinked once mapped


def test_dask_input_streams_on_a_cluster(client):
    x = clustered(1500, 32, seed=5)
    lazy = da.from_array(x, chunks=(400, 32))
    streamed = planned_expand(lazy, ExpandConfig(enabled=True), CPU, client=client)
    np.testing.assert_array_equal(streamed.vectors, planned_expand(x, ExpandConfig(enabled=True), CPU).vectors)


def test_non_finite_input_is_refused():
    x = clustered(100, 8)
    x[42, 3] = np.inf
    with pytest.raises(ExpandError, match="NaN or Inf"):
        planned_expand(x, ExpandConfig(enabled=True), CPU)


def test_fewer_rows_than_neighbours_uses_them_all():
    x = clustered(5, 8)
    result = planned_expand(x, ExpandConfig(enabled=True, num_expand=8), CPU)
    assert result.neighbours == 5
    assert row_relative_error(result.vectors, reference(x, 5, 3.0)[0]).max() < 1e-5


def test_presets_and_validation():
    assert load_config(CONFIGS / "tips.yaml").expand == ExpandConfig(enabled=True)
    assert not load_config(CONFIGS / "rvc-classic.yaml").expand.enabled
    for override, message in [("expand.alpha=-1", "expand.alpha must be a finite number >= 0"),
                              ("expand.alpha=.inf", "expand.alpha"),
                              ("expand.num_expand=0", "expand.num_expand must be > 0"),
                              ("expand.scale=half", "expand.scale: 'half' is not one of"),
                              ("expand.target_recall=1.5", "expand.target_recall"),
                              ("expand.recall_queries=0", "expand.nprobe=0 .* needs expand.recall_queries"),
                              ("expand.nprobs=3", "did you mean 'expand.nprobe'")]:
        with pytest.raises(ConfigError, match=message):
            config_from_dict({}, [override])
    config_from_dict({}, ["expand.recall_queries=0", "expand.nprobe=4", "expand.spill_mb=0"])


def features_of(exp_dir):
    folder = next(exp_dir.glob("3_feature*"))
    return np.concatenate([np.load(p) for p in sorted(folder.glob("*.npy"))])


@pytest.mark.parametrize("preset, scale, spill_mb, on_cluster", [("tips", "feature", 1024, True),
                                                                  ("rvc-classic", "unit", 0, False)])
def test_build_with_expansion_is_rvc_ready(preset, scale, spill_mb, on_cluster, make_experiment, request,
                                           consumer_check):
    exp = make_experiment("quinn", 2000, 256)
    config = load_config(CONFIGS / f"{preset}.yaml", ["output.write_total_fea=true", "expand.enabled=true",
                                                       f"expand.scale={scale}", f"expand.spill_mb={spill_mb}",
                                                       "evaluate.recall_queries=200"])
    client = request.getfixturevalue("client") if on_cluster else None
    result = build_experiment(exp, config, backend=CPU, client=client)  # compared bytewise with the CPU expansion
    stored = np.load(exp / "total_fea.npy")
    raw = features_of(exp)
    np.testing.assert_array_equal(stored, planned_expand(raw, config.expand, CPU).vectors)
    expected_norms = np.linalg.norm(raw, axis=1) if scale == "feature" else np.ones(len(raw))
    np.testing.assert_allclose(np.linalg.norm(stored, axis=1), expected_norms, rtol=1e-5)
    queries = np.concatenate(list(utterances(300, 256, [77, 256])))
    replayed = consumer_check(result.index_path, queries, stored, 256)  # reconstruct_n == expanded rows, everywhere
    assert {r["ntotal"] for r in replayed.values()} == {2000}
    report = json.loads(result.report_path.read_text())
    expansion = report["expansion"]
    assert expansion["applied"] and expansion["neighbours"] == 8 and expansion["alpha"] == 3.0
    assert expansion["scale"] == scale and expansion["method"] == "exact"
    assert expansion["storage"] == ("memmap" if spill_mb == 0 else "memory")
    assert not [p for p in exp.iterdir() if ".tmp-" in p.name]  # spill files never outlive the build
    assert 0.5 < expansion["mean_cosine"] < 1.0 and expansion["seconds"] > 0
    assert "expand" in report["timings"]
    assert report["evaluation"]["missing_label_share"] == 0.0


def test_build_without_expansion_says_so(make_experiment):
    exp = make_experiment("rhea", 1200, 256)
    config = load_config(CONFIGS / "rvc-classic.yaml", ["evaluate.recall_queries=0"])
    assert not build_experiment(exp, config).record.expansion.applied


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["exact", "ivf"])
def test_cpu_and_gpu_agree(method):
    gpu = select_backend("gpu")
    x = np.concatenate(list(utterances(20000, 256, [8, 256])))
    config = ExpandConfig(enabled=True, method=method)
    on_cpu, on_gpu = planned_expand(x, config, CPU), planned_expand(x, config, gpu)
    assert on_gpu.method.startswith(method) and on_gpu.storage == "memory"
    same = (np.sort(on_cpu.neighbour_ids, axis=1) == np.sort(on_gpu.neighbour_ids, axis=1)).all(axis=1)
    assert same.mean() > (0.99 if method == "exact" else 0.8)
    assert row_relative_error(on_gpu.vectors[same], on_cpu.vectors[same]).max() < 1e-5
    assert on_gpu.mean_cosine == pytest.approx(on_cpu.mean_cosine, abs=1e-3)
    truth = exact_ids(x, 8, rows=2000)
    for result in (on_cpu, on_gpu):
        assert neighbour_recall(result.neighbour_ids[:2000], truth) >= 0.95
