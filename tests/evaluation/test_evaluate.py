"""Evaluation: metric functions on hand-computed cases, held-out utterances, and `rvc-index eval`."""

import json
import os
import subprocess
import sys
from dataclasses import asdict

import faiss
import numpy as np
import pytest
from rvc_index.compute.backend import faiss_threads, select_backend
from rvc_index.config.loading import load_config
from rvc_index.data.feature_set import open_feature_set
from rvc_index.data.layouts import resolve_experiment
from rvc_index.data.sources import scan_manifest
from rvc_index.evaluation.evaluate import evaluate_files, evaluate_index
from rvc_index.evaluation.holdout import (
    Holdout,
    HoldoutError,
    choose_files,
    choose_windows,
    holdout_from_features,
    ids_holding,
    row_digests,
)
from rvc_index.evaluation.measure import index_ram_bytes, search_latency, search_params
from rvc_index.evaluation.metrics import (
    blend_errors,
    coverage,
    exact_knn,
    gather_rows,
    missing_label_share,
    neighbour_rows,
    recall_at_k,
    rvc_blend,
    rvc_weights,
)
from rvc_index.evaluation.sizing import full_plan, nprobe_values
from rvc_index.job.runner import build_experiment
from rvc_index.runtime.run import Run
from rvc_index.tools.synth import utterances

CPU = select_backend("cpu")


def test_exact_knn_leaves_out_rows_and_marks_missing():
    rows = np.array([[1.0], [2.0], [3.0], [10.0]], np.float32)
    queries = np.array([[0.0]], np.float32)
    d, i = exact_knn(CPU, queries, [rows[:2], rows[2:]], 2, tile_rows=1)
    assert i.tolist() == [[0, 1]] and d.tolist() == [[1.0, 4.0]]
    d, i = exact_knn(CPU, queries, [rows], 2, keep=np.array([False, True, True, True]))
    assert i.tolist() == [[1, 2]] and d.tolist() == [[4.0, 9.0]]
    d, i = exact_knn(CPU, queries, [rows], 3, keep=np.array([False, False, True, False]))
    assert i.tolist() == [[2, -1, -1]] and d[0, 0] == 9.0 and np.isinf(d[0, 1:]).all()


def test_recall_and_missing_labels_by_hand():
    assert recall_at_k(np.array([[0, 1, -1]]), np.array([[0, 2, 3]]), 3) == pytest.approx(1 / 3)
    assert recall_at_k(np.array([[3, 2, 0], [5, 6, 7]]), np.array([[0, 2, 3], [1, 2, 3]]), 3) == pytest.approx(0.5)
    assert missing_label_share(np.array([[0, 1], [2, -1], [-1, -1], [3, 4]])) == 0.5
    assert missing_label_share(np.empty((0, 8), np.int64)) == 0.0


def test_rvc_blend_weights_by_hand():
    weights = rvc_weights(np.array([[1.0, 4.0]]), np.array([[0, 1]]))
    np.testing.assert_allclose(weights, [[16 / 17, 1 / 17]])  # (1/1)^2 : (1/4)^2
    neighbours = np.array([[[1.0, 0.0], [0.0, 1.0]]])
    np.testing.assert_allclose(rvc_blend(neighbours, weights), [[16 / 17, 1 / 17]])
    # a -1 label weighs nothing (RVC: its huge score underflows); an exact match takes all the weight
    np.testing.assert_allclose(rvc_weights(np.array([[1.0, 3e38]]), np.array([[4, -1]])), [[1.0, 0.0]])
    np.testing.assert_allclose(rvc_weights(np.array([[0.0, 2.0]]), np.array([[1, 2]])), [[1.0, 0.0]], atol=1e-20)
    # no label at all: zero weights, a zero blend (retrieval lost), never NaN
    lost = rvc_weights(np.array([[3e38, 3e38]]), np.array([[-1, -1]]))
    assert lost.tolist() == [[0.0, 0.0]] and not np.isnan(rvc_blend(neighbours, lost)).any()


def test_blend_error_and_coverage_by_hand():
    np.testing.assert_allclose(blend_errors(np.array([[3.0, 4.0]]), np.array([[3.0, 0.0]])), [4 / 3])
    np.testing.assert_allclose(coverage(np.array([[0.0, 0.0], [1.0, 1.0]]), np.array([[3.0, 4.0], [1.0, 1.0]])),
                               [5.0, 0.0])


def test_gather_rows_across_blocks():
    data = np.arange(20, dtype=np.float32).reshape(10, 2)
    unique, rows = gather_rows([data[:3], data[3:7], data[7:]], np.array([[8, 1], [1, -1]]))
    assert unique.tolist() == [1, 8]
    np.testing.assert_array_equal(rows, data[[1, 8]])
    picked = neighbour_rows(unique, rows, np.array([[8, 1], [1, -1]]))
    np.testing.assert_array_equal(picked[0], data[[8, 1]])
    with pytest.raises(IndexError, match="past the 10 rows"):
        gather_rows([data], np.array([12]))


def test_choose_files_holds_out_whole_files():
    rng = np.random.default_rng(0)
    rows = [400, 300, 500, 200, 600, 100, 450, 350, 250, 150]
    files = choose_files(rows, 0.1, 8, rng)
    held = sum(rows[f] for f in files)
    assert files == sorted(files) and 100 <= held <= 600  # about 10% of 3300, in whole files
    assert choose_files([5000, 10], 0.5, 5000, np.random.default_rng(1)) == [1]  # keeps 5000 rows indexed
    with pytest.raises(HoldoutError, match="2 or more"):
        choose_files([1000], 0.1, 8, rng)
    with pytest.raises(HoldoutError, match="keeping"):
        choose_files([10, 10], 0.1, 15, rng)
    with pytest.raises(HoldoutError, match=r"\(0, 1\)"):
        choose_files([10, 10], 1.5, 1, rng)


def test_choose_windows_are_runs_capped_at_max_queries():
    windows = choose_windows([400, 30, 500], [0, 1, 2], 200, np.random.default_rng(0))
    assert sum(b - a for _, a, b in windows) == 200
    assert all(0 <= a < b <= [400, 30, 500][f] for f, a, b in windows)
    assert [f for f, _, _ in windows] == [0, 1, 2]
    assert windows[1][1:] == (0, 30)  # a short file gives all it has


def frames(n, dim=64, seed=0):
    return np.concatenate(list(utterances(n, dim, [seed, dim])))


def flat_ivf(data, n_list=16, nprobe=None):
    index = faiss.index_factory(data.shape[1], f"IVF{n_list},Flat")
    index.train(data)
    index.add(data)
    faiss.extract_index_ivf(index).nprobe = nprobe or n_list
    return index


def collection_holdout(data, file_rows, fraction=0.1, max_queries=300):
    offsets = np.concatenate([[0], np.cumsum(file_rows)])
    rng = np.random.default_rng(3)
    files = choose_files(file_rows, fraction, 8, rng)
    windows = choose_windows(file_rows, files, max_queries, rng)
    queries = np.concatenate([data[offsets[f] + a:offsets[f] + b] for f, a, b in windows])
    ranges = tuple((int(offsets[f]), int(offsets[f + 1])) for f in files)
    return Holdout(queries, ranges, tuple(str(f) for f in files), len(data))


def test_exhaustive_index_has_perfect_recall_and_no_blend_error():
    data = frames(3000)
    holdout = collection_holdout(data, [300] * 10)
    index = flat_ivf(data)  # nprobe = n_list: exact search
    result = asdict(evaluate_index(index, holdout, data, Run(CPU), exclude_ids=holdout.row_ids(),
                                   stored_is_original=True))
    assert result["recall_at_k"] == 1.0 and result["missing_label_share"] == 0.0
    assert result["blend_error"]["max"] < 1e-5
    assert result["coverage"] == pytest.approx(result["coverage_exact"], rel=1e-5)
    assert result["holdout"]["left_out_of_index"] == holdout.held_rows >= 300
    assert result["holdout"]["files"] == len(holdout.files)
    # the separate reference pass (stored_is_original=False) computes the same thing
    again = asdict(evaluate_index(index, holdout, data, Run(CPU), exclude_ids=holdout.row_ids(),
                                  plan=full_plan(len(holdout.queries), sweep=False)))
    assert again["blend_error"]["max"] < 1e-5 and again["recall_at_k"] == 1.0


def test_held_out_rows_never_come_back_from_the_index():
    data = frames(3000)
    holdout = collection_holdout(data, [300] * 10)
    index = flat_ivf(data, nprobe=4)
    keep = holdout.keep_mask(len(data))
    _, ids = index.search(holdout.queries, 8, params=search_params(index, keep=keep))
    assert not np.isin(ids, holdout.row_ids()).any()
    _, plain = index.search(holdout.queries, 8)
    assert np.isin(plain, holdout.row_ids()).mean() > 0.5  # without leaving out: mostly its own utterance
    assert faiss.extract_index_ivf(index).nprobe == 4  # per-call settings never touch the index


def test_approximate_index_is_measured_honestly():
    data = frames(4000)
    holdout = collection_holdout(data, [400] * 10)
    index = flat_ivf(data, n_list=64, nprobe=1)
    result = asdict(evaluate_index(index, holdout, data, Run(CPU), exclude_ids=holdout.row_ids(),
                                   stored_is_original=True, plan=full_plan(len(holdout.queries), repeats=1)))
    assert 0.0 < result["recall_at_k"] < 1.0 and result["blend_error"]["mean"] > 1e-3
    sweep = result["nprobe_sweep"]
    assert [r["nprobe"] for r in sweep] == nprobe_values(64, 1) == [1, 2, 4, 8, 16, 32, 64]
    assert sweep[-1]["recall_at_k"] == 1.0 and sweep[0]["recall_at_k"] == result["recall_at_k"]
    assert all(r["us_per_frame"] > 0 for r in sweep)
    assert sum(result["list_sizes"]["counts"]) == 64 and result["list_sizes"]["min"] >= 0
    assert result["latency"]["threads"] == 1 and result["latency"]["batch_frames"] == 50
    assert faiss.omp_get_max_threads() >= 1


def test_search_latency_restores_threads_and_counts_full_batches():
    data = frames(2000)
    index = flat_ivf(data, nprobe=2)
    threads = faiss.omp_get_max_threads()
    timing = search_latency(index, data[:230], repeats=1)
    assert timing.batches == 4 and timing.us_per_frame > 0
    assert timing.ms_per_second_audio == pytest.approx(timing.us_per_frame * 50 / 1000, rel=1e-2)
    assert faiss.omp_get_max_threads() == threads


@pytest.mark.parametrize("factory", ["IVF32,Flat", "IVF32,PQ32x4fs,RFlat", "IVF32,PQ64x4fs"])
def test_index_ram_matches_the_serialised_size(factory):
    data = frames(3000)
    index = faiss.index_factory(64, factory)
    with faiss_threads(1):  # 4-bit PQ training: tiny parallel regions crawl on a loaded machine
        index.train(data)
    index.add(data)
    serialised = faiss.serialize_index(index).size
    assert abs(index_ram_bytes(index) - serialised) / serialised < 0.02


def test_ids_holding_finds_held_out_frames_in_a_shuffled_index():
    data = frames(1200)
    order = np.random.default_rng(0).permutation(len(data))  # RVC shuffles its rows before adding
    stored = data[order]
    held = np.arange(100, 250)
    found = ids_holding([stored[:500], stored[500:]], row_digests(data[held]))
    np.testing.assert_array_equal(np.sort(order[found]), held)
    assert len(np.unique(row_digests(data))) == len(data)


def test_held_out_from_a_built_collection(make_experiment):
    exp = make_experiment("hold", 4000, 64) / "3_feature64"
    experiment = resolve_experiment(exp)
    features = open_feature_set(experiment, scan_manifest(experiment))
    holdout = holdout_from_features(features, 0.1, 250, seed=0)
    assert 0 < len(holdout.queries) <= 250
    everything = np.concatenate([np.load(p) for p in sorted(exp.glob("*.npy"))])
    ids = holdout.row_ids()
    assert all(np.isin(q, everything[ids]).all() for q in holdout.queries[:20])  # queries are held-out rows
    starts = {a for a, _ in holdout.ranges}
    offsets = set(np.concatenate([[0], np.cumsum(features.file_rows)]).tolist())
    assert starts <= offsets  # whole files
    assert holdout_from_features(features, 0.1, 250, seed=0).queries.tobytes() == holdout.queries.tobytes()


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "rvc_index", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_eval_cli_on_a_built_index(make_experiment, tmp_path):
    exp = make_experiment("evie", 5000, 64) / "3_feature64"
    config = load_config("configs/rvc-classic.yaml", ["evaluate.recall_queries=0"])
    built = build_experiment(exp, config, tmp_path / "out")
    out = tmp_path / "eval.json"
    proc = run_cli("eval", str(built.index_path), str(exp), "--holdout", "0.1", "--max-queries", "300",
                   "--json", str(out), "--png", str(tmp_path / "eval.png"), "--backend", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "recall@8:" in proc.stdout and "blend error:" in proc.stdout and "us/frame" in proc.stdout
    result = json.loads(out.read_text())
    assert result["holdout"]["left_out_of_index"] and result["holdout"]["source"] == "collection"
    assert 0.0 < result["recall_at_k"] <= 1.0 and result["missing_label_share"] == 0.0
    assert result["size"]["disk_bytes"] == built.index_path.stat().st_size
    assert result["index"]["n_list"] == built.record.index.n_list
    assert (tmp_path / "eval.png").stat().st_size > 10_000
    # a folder of other utterances as queries: nothing to leave out
    other = make_experiment("other", 600, 64, seed=5) / "3_feature64"
    separate = asdict(evaluate_files(built.index_path, exp, CPU, queries_dir=other, max_queries=200, sweep=False))
    assert separate["holdout"]["source"] == "separate folder" and 50 <= separate["queries"] <= 200


def test_eval_cli_refuses_a_v1_v2_mix(make_experiment, tmp_path):
    exp = make_experiment("mix", 3000, 64) / "3_feature64"
    built = build_experiment(exp, load_config("configs/rvc-classic.yaml", ["evaluate.recall_queries=0"]),
                             tmp_path / "o")
    wrong = make_experiment("wide", 500, 96) / "3_feature96"
    proc = run_cli("eval", str(built.index_path), str(wrong))
    assert proc.returncode == 1
    assert "96-d features" in proc.stderr and "holds 64-d vectors" in proc.stderr
    proc = run_cli("eval", str(tmp_path / "missing.index"), str(exp))
    assert proc.returncode == 1 and "no such index file" in proc.stderr


def test_a_compressed_index_is_evaluated_against_the_original_frames(make_experiment, tmp_path):
    exp = make_experiment("comp", 5000, 64) / "3_feature64"
    config = load_config("configs/rvc-classic.yaml", ["compress.row_threshold=2000", "compress.n_centroids=300",
                                                      "evaluate.recall_queries=300", "evaluate.holdout_fraction=0.1",
                                                      "evaluate.full=true"])  # the queries `eval` takes below
    built = build_experiment(exp, config, tmp_path / "out")
    evaluation = asdict(built.record.evaluation)
    assert built.record.index.ntotal == 300
    assert not evaluation["holdout"]["left_out_of_index"] and "centroids" in evaluation["holdout"]["note"]
    # 300 centroids cannot stand in for 5000 frames: the blend moves, and the measure says so
    assert evaluation["blend_error"]["mean"] > 0.01 and evaluation["coverage"] > evaluation["coverage_exact"]
    again = asdict(evaluate_files(built.index_path, exp, CPU, fraction=0.1, max_queries=300, sweep=False))
    # by content: only a centroid that k-means never moved off its initial row can be a held-out frame
    assert again["holdout"]["left_out_of_index"] < 10
    assert again["blend_error"]["mean"] == pytest.approx(evaluation["blend_error"]["mean"], rel=0.05)
