"""The build's evaluation sized to the build (evaluation/sizing.py), its typed JSON, and the cheap -1 share."""

import json
from dataclasses import asdict, replace

import faiss
import numpy as np
import pytest
from rvc_index.compute.backend import select_backend
from rvc_index.config.loading import load_config
from rvc_index.config.schema import ConfigError, EvaluateConfig
from rvc_index.data.feature_set import open_feature_set
from rvc_index.data.layouts import resolve_experiment
from rvc_index.data.sources import scan_manifest
from rvc_index.evaluation.evaluate import evaluate_index
from rvc_index.evaluation.holdout import Holdout, holdout_from_features
from rvc_index.evaluation.result import Evaluation, EvaluationSkipped
from rvc_index.evaluation.sizing import (
    FLOOR_QUERIES,
    MIN_QUERIES,
    PICTURE_S,
    exact_seconds,
    full_plan,
    nprobe_values,
    plan_evaluation,
)
from rvc_index.job.runner import build_experiment
from rvc_index.runtime.records import from_json
from rvc_index.runtime.run import Run
from rvc_index.runtime.stream import take_rows
from rvc_index.tools.synth import utterances

DEFAULT = EvaluateConfig()


def test_full_when_asked_or_without_a_build():
    for plan in (plan_evaluation(EvaluateConfig(full=True), 10_000_000, 10_000, 768, stored_is_original=False,
                                 build_seconds=600.0),
                 plan_evaluation(DEFAULT, 60_000, 60_000, 768, stored_is_original=True, build_seconds=None)):
        assert plan.full and plan.queries == 500 and plan.reference and plan.sweep and plan.plot
        assert plan.latency_frames == 500 and plan.repeats_within(1.0) == 5
        assert plan.sweep_within(64, 4, 1.0) == nprobe_values(64, 4)


def test_queries_shrink_with_the_collection_and_stay_within_the_budget():
    small = plan_evaluation(DEFAULT, 6_000, 6_000, 768, stored_is_original=True, build_seconds=3.0)
    mid = plan_evaluation(DEFAULT, 60_000, 60_000, 768, stored_is_original=True, build_seconds=10.0)
    big = plan_evaluation(DEFAULT, 200_000, 200_000, 768, stored_is_original=True, build_seconds=10.0)
    fast = plan_evaluation(DEFAULT, 200_000, 200_000, 768, stored_is_original=True, build_seconds=5.0)
    assert small.queries > mid.queries > big.queries >= MIN_QUERIES  # one one-second window, when it fits
    assert FLOOR_QUERIES < fast.queries < MIN_QUERIES and fast.estimate_s <= fast.budget_s  # as many as fit
    assert plan_evaluation(DEFAULT, 200_000, 200_000, 768, stored_is_original=True,
                           build_seconds=0.5).queries == FLOOR_QUERIES  # never fewer
    for plan in (small, mid):
        assert plan.budget_s == pytest.approx(0.1 * (3.0 if plan is small else 10.0))
        assert plan.estimate_s <= plan.budget_s and not plan.full and plan.reference
    assert any("query frames" in note for note in mid.notes)
    assert plan_evaluation(EvaluateConfig(max_share=0.5), 60_000, 60_000, 768, stored_is_original=True,
                           build_seconds=10.0).queries > mid.queries


def test_the_reference_over_original_frames_is_kept_only_when_affordable():
    # 10M frames compressed to 10k centroids: exact k-NN over the centroids is cheap, a pass over the frames is not
    huge = plan_evaluation(DEFAULT, 10_000_000, 10_000, 768, stored_is_original=False, build_seconds=650.0)
    assert not huge.reference and huge.queries == 500 and huge.estimate_s <= huge.budget_s
    assert any("10,000,000 original frames" in note for note in huge.notes)
    assert exact_seconds(500, 10_000_000, 768) > huge.budget_s  # what the old evaluation paid (386 s measured)
    small = plan_evaluation(DEFAULT, 300_000, 10_000, 768, stored_is_original=False, build_seconds=400.0)
    assert small.reference and small.estimate_s <= small.budget_s


def test_picture_latency_and_sweep_follow_the_budget():
    short = plan_evaluation(DEFAULT, 6_000, 6_000, 768, stored_is_original=True, build_seconds=3.0)
    long = plan_evaluation(DEFAULT, 60_000, 60_000, 768, stored_is_original=True, build_seconds=10 * (PICTURE_S + 5))
    assert not short.plot and any("report.png" in note for note in short.notes) and long.plot
    forced = plan_evaluation(EvaluateConfig(plot=True), 6_000, 6_000, 768, stored_is_original=True, build_seconds=3.0)
    assert forced.plot and not plan_evaluation(EvaluateConfig(plot=False), 6_000, 6_000, 768, stored_is_original=True,
                                               build_seconds=1e4).plot
    assert short.repeats_within(1e-3) == 1  # nothing left: the one repeat in the estimate
    assert long.repeats_within(1e-6) == 5
    values = long.sweep_within(256, 4, 1e-6)
    assert values == nprobe_values(256, 4)  # cheap searches: the whole sweep
    some = long.sweep_within(256, 4, 2e-4)
    assert 3 <= len(some) < len(values) and some == values[:len(some)]  # the cheapest nprobe values first
    assert long.sweep_within(256, 4, 1.0) == []  # under three points: no curve
    assert plan_evaluation(EvaluateConfig(nprobe_sweep=False), 60_000, 60_000, 768, stored_is_original=True,
                           build_seconds=1e4).sweep_within(256, 4, 1e-9) == []


def test_max_share_is_validated():
    with pytest.raises(ConfigError, match="evaluate.max_share"):
        load_config("configs/tips-plain.yaml", ["evaluate.max_share=0"])
    with pytest.raises(ConfigError, match="evaluate.plot"):
        load_config("configs/tips-plain.yaml", ["evaluate.plot=sometimes"])


def test_evaluation_serialises_to_the_report_json():
    data = np.concatenate(list(utterances(3000, 64, [1, 64])))
    index = faiss.index_factory(64, "IVF16,Flat")
    index.train(data)
    index.add(data)
    holdout = Holdout(data[:200], ((0, 300),), ("a",), len(data))
    plan = plan_evaluation(DEFAULT, 3000, 3000, 64, stored_is_original=False, build_seconds=1.0)
    result = evaluate_index(index, holdout, data, Run(select_backend("cpu")), exclude_ids=np.arange(300), plan=plan)
    assert isinstance(result, Evaluation) and result.plan == plan
    out = json.loads(json.dumps(asdict(result)))
    assert set(out) >= {"k", "queries", "holdout", "recall_at_k", "missing_label_share", "blend_error", "coverage",
                        "coverage_exact", "latency", "size", "list_sizes", "plan", "seconds"}
    assert not any("@" in key or key.endswith("_8") for key in out)  # one spelling: recall_at_k
    assert out["recall_at_k"] == result.recall_at_k and out["latency"]["us_per_frame"] == result.latency.us_per_frame
    assert out["blend_error"]["histogram"]["counts"] == list(result.blend_error.histogram.counts)
    assert "recall@8" in result.summary_line() and "blend error" in result.summary_line()
    assert asdict(EvaluationSkipped("one file")) == {"skipped": "one file"}
    assert from_json(Evaluation, out) == result  # what report.json holds reads back as the typed result
    no_reference = evaluate_index(index, holdout, data, Run(select_backend("cpu")), exclude_ids=np.arange(300),
                                  plan=replace(full_plan(200), reference=False))
    blank = asdict(no_reference)
    assert blank["blend_error"] is None and blank["coverage_exact"] is None and blank["coverage"] > 0
    assert "not measured" in no_reference.summary_line()


def test_held_out_queries_are_the_collection_rows_read_from_their_files(make_experiment):
    folder = make_experiment("nan", 4000, 64) / "3_feature64"
    path = sorted(folder.glob("*.npy"))[1]
    array = np.load(path)
    array[3] = np.nan  # a dropped row shifts every row after it
    np.save(path, array)
    experiment = resolve_experiment(folder)
    features = open_feature_set(experiment, scan_manifest(experiment))
    assert features.dropped_rows == 1
    start = int(features.file_rows[0])  # where the file with the NaN row starts in the collection
    held_the_nan_file = 0
    for seed in range(6):
        holdout = holdout_from_features(features, 0.5, 400, seed)
        ids = np.concatenate([np.arange(a, b) for a, b in holdout.ranges])
        rows = take_rows(features.array, ids)
        assert np.isfinite(holdout.queries).all()
        assert all((rows == q).all(axis=1).any() for q in holdout.queries)  # every query is a held-out row
        held_the_nan_file += start in {a for a, _ in holdout.ranges}
    assert held_the_nan_file  # the file read directly, its NaN row dropped, was among them


def test_a_default_build_sizes_its_evaluation(make_experiment, tmp_path):
    exp = make_experiment("sized", 6000, 64) / "3_feature64"
    built = build_experiment(exp, load_config("configs/tips-plain.yaml"), tmp_path / "out")
    evaluation = built.record.evaluation
    plan = evaluation.plan
    assert not plan.full and plan.budget_s > 0 and evaluation.queries <= plan.queries
    assert evaluation.recall_at_k > 0.9 and evaluation.blend_error is not None  # stored = original frames
    late = build_experiment(exp, load_config("configs/tips-plain.yaml"), tmp_path / "late", head_start_s=50.0)
    assert late.record.evaluation.plan.budget_s >= 5.0  # the command's seconds before the build count
    assert late.record.evaluation.queries >= evaluation.queries
