"""job/runner.py: one build per experiment and preset, whatever else shares the output folder."""

import json
from pathlib import Path

import faiss
import pytest
from rvc_index.compute.backend import select_backend
from rvc_index.config.loading import load_config
from rvc_index.job.runner import build_experiment
from rvc_index.runtime.stream import ROWS_READ

FAST = ["evaluate.recall_queries=0", "evaluate.plot=false"]


def classic(*overrides: str):
    return load_config("rvc-classic", [*FAST, *overrides])


def test_two_experiments_share_an_output_folder(make_experiment, tmp_path):
    """Issue 15 case 1: bob's build into alice's --out neither reads alice's report nor deletes her index."""
    out = tmp_path / "idx"
    alice_dir = make_experiment("alice", 2000, 256)
    alice = build_experiment(alice_dir, classic(), out, select_backend("cpu"))
    bob = build_experiment(make_experiment("bob", 2400, 256), classic(), out, select_backend("cpu"))
    assert alice.index_path.is_file() and bob.index_path.is_file() and alice.index_path != bob.index_path
    assert alice.report_path != bob.report_path
    again = build_experiment(alice_dir, classic(), out, select_backend("cpu"))
    assert again.status == "skipped" and bob.index_path.is_file()
    assert faiss.read_index(str(alice.index_path)).ntotal == 2000


def test_report_index_file_outside_the_folder_is_never_deleted(make_experiment, tmp_path):
    """Issue 15 case 3: a report naming ``../victim.txt`` (a downloaded experiment folder) with a stale
    fingerprint: the rebuild replaces the report and deletes nothing outside the output folder."""
    exp = make_experiment("carol", 2000, 256)
    out = tmp_path / "area" / "out"
    first = build_experiment(exp, classic(), out, select_backend("cpu"))
    victim = tmp_path / "area" / "victim.txt"
    victim.write_text("keep me")
    report = json.loads(first.report_path.read_text())
    report.update(index_file="../victim.txt", fingerprint="stale")
    first.report_path.write_text(json.dumps(report))
    second = build_experiment(exp, classic(), out, select_backend("cpu"))
    assert second.status == "built" and victim.read_text() == "keep me"
    assert json.loads(second.report_path.read_text())["index_file"] == second.index_path.name


@pytest.mark.parametrize("name", ["/etc/passwd", "..", "a/b.index", ""])
def test_a_report_naming_a_path_is_not_a_finished_build(make_experiment, tmp_path, name):
    exp = make_experiment("dave", 2000, 256)
    first = build_experiment(exp, classic(), tmp_path / "o", select_backend("cpu"))
    report = json.loads(first.report_path.read_text())
    report["index_file"] = name
    first.report_path.write_text(json.dumps(report))
    assert build_experiment(exp, classic(), tmp_path / "o", select_backend("cpu")).status == "built"


def test_the_report_records_the_plan_it_executed(make_experiment, tmp_path):
    result = build_experiment(make_experiment("erin", 3000, 256), classic("compress.row_threshold=1000",
                              "compress.n_centroids=200"), tmp_path / "o", select_backend("cpu"))
    plan = result.record.plan
    assert plan.rows == 3000 and plan.vectors == 200
    assert any(line.startswith("compression: 3,000 rows > compress.row_threshold 1,000") for line in plan.decisions)
    assert set(plan.stages_mb) >= {"check", "compress", "train", "add", "write"}
    assert Path(result.report_path).name == "rvc-index-erin-rvc-classic.report.json"


@pytest.mark.parametrize("overrides", [[], ["compress.row_threshold=1000", "compress.n_centroids=64"]])
def test_a_collection_kept_in_memory_is_read_once(make_experiment, tmp_path, overrides):
    """A collection no bigger than a pass's chunks is read once, by the value check: train, add, the
    k-means passes and the evaluation read no file. Without compression the index is the streamed
    build's byte for byte (the k-means of a compressed build sums per chunk: other chunks, other bits;
    tests/data/test_passes.py compares the same chunks kept and streamed)."""
    exp = make_experiment("kim", 4000, 256)
    results, reads = {}, {}
    for chunk_mb in (64.0, 0.2):
        before = ROWS_READ.rows
        results[chunk_mb] = build_experiment(
            exp, load_config("tips-plain", [f"source.chunk_mb={chunk_mb}", *overrides]),
            tmp_path / str(chunk_mb), select_backend("cpu"))
        reads[chunk_mb] = ROWS_READ.rows - before
    kept, streamed = results[64.0].record, results[0.2].record
    assert any(line.startswith("source: read once") for line in kept.plan.decisions)
    assert any(line.startswith("source: streamed") for line in streamed.plan.decisions)
    assert reads[64.0] == 4000 < reads[0.2]
    assert kept.evaluation.queries == streamed.evaluation.queries > 0
    if not overrides:
        assert kept.evaluation.recall_at_k == streamed.evaluation.recall_at_k
        assert results[64.0].index_path.read_bytes() == results[0.2].index_path.read_bytes()
