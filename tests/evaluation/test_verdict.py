"""The verdict in plain words (log's last lines, report.png) and the quiet default log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import faiss
from rvc_index.evaluation.result import (
    Evaluation,
    EvaluationSkipped,
    HeldOut,
    Histogram,
    Latency,
    ReplacedIndex,
    Size,
    Spread,
)
from rvc_index.evaluation.verdict import verdict_lines
from rvc_index.tools.synth import SpeakerSpec, sample_frames, write_speaker

REPO = Path(__file__).resolve().parents[2]
FAST = ["--backend", "cpu", "--set", "evaluate.recall_queries=200", "--set", "evaluate.plot=false"]


def evaluation(recall: float, missing: float, blend: float | None) -> Evaluation:
    spread = None if blend is None else Spread(blend, blend, blend, blend, Histogram((0.0, 1.0), (1,)))
    return Evaluation(8, 500, HeldOut("collection", 3, 500, "held out"), recall, missing, spread, 1.0, None,
                      Latency(10.0, 10.0, 0.5, 50, 10, 1), Size(1000, 2000))


def test_verdict_words_follow_the_numbers():
    good = verdict_lines(evaluation(0.998, 0.0, 0.0011))
    assert good[0].startswith("verdict: good: this index finds 99.8 % of the 8 neighbours exact search finds")
    assert "no -1 labels" in good[1] and "0.1 % away" in good[2]
    poor = verdict_lines(evaluation(0.70, 0.012, 0.2), ReplacedIndex("old.index", 1000, 0.37, 0.05))
    assert poor[0].startswith("verdict: poor") and "1.2 % of searches return fewer than 8" in poor[1]
    assert poor[3] == ("the index it replaces (old.index): finds 37 % of exact search's neighbours "
                       "(recall@8 0.370), -1 labels in 5 % of searches")
    assert "not measured" in verdict_lines(evaluation(0.99, 0.0, None))[2]
    assert verdict_lines(EvaluationSkipped("one file")) == ["verdict: not measured: one file"]
    assert verdict_lines(None) == ["verdict: not measured: evaluation off (evaluate.recall_queries=0)"]
    assert "not measured (unreadable)" in verdict_lines(evaluation(0.9, 0.0, 0.01),
                                                        ReplacedIndex("x.index", skipped="unreadable"))[3]


def _build(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "rvc_index", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_default_log_is_a_few_lines_ending_with_the_verdict_and_the_replaced_index(tmp_path):
    write_speaker(tmp_path / "logs", SpeakerSpec("spk", 3000, 256))
    exp = tmp_path / "logs" / "spk"
    old = faiss.index_factory(256, "IVF64,Flat")  # an RVC-style index, nprobe 1
    frames = sample_frames(3000, 256, seed=0)
    old.train(frames)
    old.add(frames)
    old_name = "added_IVF64_Flat_nprobe_1_spk_v1.index"
    faiss.write_index(old, str(exp / old_name))
    quiet = _build("build", str(exp), "--config", "rvc-classic", *FAST)
    assert quiet.returncode == 0, quiet.stderr
    lines = quiet.stderr.strip().splitlines()
    assert len([line for line in lines if " WARNING " not in line]) <= 11, quiet.stderr  # was 24 before -v existed
    assert "[train] start" not in quiet.stderr and "add: " not in quiet.stderr
    tail = "\n".join(lines[-6:])  # the verdict's four lines, then the tools that load it and what they hold
    assert "verdict: " in tail and "the index it replaces (added_IVF64_Flat_nprobe_1_spk_v1.index): finds" in tail
    report = next(exp.glob("rvc-index-*.report.json")).read_text()
    verdict = json.loads(report)["verdict"]
    assert verdict["lines"][0].startswith("verdict: ") and verdict["replaced"]["file"] == old_name
    assert verdict["replaced"]["recall_at_k"] > 0
    loud = _build("-v", "build", str(exp), "--config", "rvc-classic", "--force", *FAST)
    assert loud.returncode == 0 and "[train] start" in loud.stderr and "add: 3,000/3,000 vectors" in loud.stderr
    assert len(loud.stderr.strip().splitlines()) > len(lines) + 5


def test_a_foreign_index_that_would_abort_faiss_is_skipped_not_measured(make_experiment, feature_set, tmp_path):
    """An ``IndexIDMap`` beside the voice: faiss aborts the process in ``reconstruct_n`` of one, so the
    index a build replaces is checked before it is measured."""
    import numpy as np
    from rvc_index.compute.backend import select_backend
    from rvc_index.evaluation.holdout import holdout_from_features
    from rvc_index.evaluation.verdict import measure_replaced

    features = feature_set(make_experiment("idmap", 3000, 256))
    ids = faiss.IndexIDMap(faiss.IndexFlatL2(256))
    frames = sample_frames(3000, 256)[:3000]
    ids.add_with_ids(frames, np.arange(3000, dtype=np.int64))
    path = tmp_path / "added_old_idmap_v1.index"
    faiss.write_index(ids, str(path))
    holdout = holdout_from_features(features, 0.05, 200, 0)
    result = measure_replaced(path, holdout, 256, select_backend("cpu"))
    assert result.file == path.name and result.skipped and result.recall_at_k is None
