"""The verdict in plain words (log's last lines, report.png) and the quiet default log."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import faiss
from rvc_index.evaluation.verdict import verdict_lines
from rvc_index.tools.synth import SpeakerSpec, sample_frames, write_speaker

REPO = Path(__file__).resolve().parents[2]
FAST = ["--backend", "cpu", "--set", "evaluate.recall_queries=200", "--set", "evaluate.plot=false"]


def evaluation(recall: float, missing: float, blend: float | None) -> dict:
    return {"k": 8, "queries": 500, "recall_at_k": recall, "missing_label_share": missing,
            "blend_error": None if blend is None else {"mean": blend}}


def test_verdict_words_follow_the_numbers():
    good = verdict_lines(evaluation(0.998, 0.0, 0.0011))
    assert good[0].startswith("verdict: good: this index finds 99.8 % of the 8 neighbours exact search finds")
    assert "no -1 labels" in good[1] and "0.1 % away" in good[2]
    poor = verdict_lines(evaluation(0.70, 0.012, 0.2), {"file": "old.index", "recall_at_k": 0.37,
                                                          "missing_label_share": 0.05})
    assert poor[0].startswith("verdict: poor") and "1.2 % of searches return fewer than 8" in poor[1]
    assert poor[3] == ("the index it replaces (old.index): finds 37 % of exact search's neighbours "
                       "(recall@8 0.370), -1 labels in 5 % of searches")
    assert "not measured" in verdict_lines(evaluation(0.99, 0.0, None))[2]
    assert verdict_lines({"skipped": "one file"}) == ["verdict: not measured: one file"]


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
    faiss.write_index(old, str(exp / "added_IVF64_Flat_nprobe_1_spk_v1.index"))
    quiet = _build("build", str(exp), "--config", "rvc-classic", *FAST)
    assert quiet.returncode == 0, quiet.stderr
    lines = quiet.stderr.strip().splitlines()
    assert len([line for line in lines if " WARNING " not in line]) <= 11, quiet.stderr  # was 24 before -v existed
    assert "[train] start" not in quiet.stderr and "add: " not in quiet.stderr
    tail = "\n".join(lines[-6:])  # the verdict's four lines, then the tools that load it and what they hold
    assert "verdict: " in tail and "the index it replaces (added_IVF64_Flat_nprobe_1_spk_v1.index): finds" in tail
    report = next(exp.glob("rvc-index-*.report.json")).read_text()
    assert '"verdict"' in report and '"replaced"' in report
    loud = _build("-v", "build", str(exp), "--config", "rvc-classic", "--force", *FAST)
    assert loud.returncode == 0 and "[train] start" in loud.stderr and "add: 3,000/3,000 vectors" in loud.stderr
    assert len(loud.stderr.strip().splitlines()) > len(lines) + 5


def test_a_foreign_index_that_would_abort_faiss_is_skipped_not_measured(make_experiment, feature_set, tmp_path):
    """An ``IndexIDMap`` beside the voice: faiss aborts the process in ``reconstruct_n`` of one, so the
    index a build replaces is checked before it is measured."""
    import numpy as np
    from rvc_index.compute.backend import select_backend
    from rvc_index.config.loading import load_config
    from rvc_index.evaluation.verdict import measure_replaced

    features = feature_set(make_experiment("idmap", 3000, 256))
    ids = faiss.IndexIDMap(faiss.IndexFlatL2(256))
    frames = sample_frames(3000, 256)[:3000]
    ids.add_with_ids(frames, np.arange(3000, dtype=np.int64))
    path = tmp_path / "added_old_idmap_v1.index"
    faiss.write_index(ids, str(path))
    result = measure_replaced(path, features, load_config("tips-plain").evaluate, select_backend("cpu"))
    assert result["file"] == path.name and "skipped" in result and "recall_at_k" not in result
