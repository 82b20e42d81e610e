"""The consumer matrix (docs/consumers.md): every shipped preset, at under 100k, 100k-200k and over 200k rows,
and every list format and plan branch, builds an index that every tool loads and keeps retrieval on with,
under faiss 1.7.3 (RVC 20240604, w-okada), 1.14.3 (Applio) and the current one: read, ``reconstruct_n``,
``nprobe = 12``, k=1 and k=8 without a ``-1``, RVC's blend, GPU-clonable by faiss's cloner rules."""

from __future__ import annotations

import json
import subprocess
import sys

import faiss
import numpy as np
import pytest
from conftest import CONSUMERS_SCRIPT, replay_everywhere
from rvc_index.compute.backend import select_backend
from rvc_index.config.loading import load_config, preset_names
from rvc_index.inspection.consumers import CONSUMERS
from rvc_index.job.runner import build_experiment
from rvc_index.tools.synth import SpeakerSpec, sample_frames, write_speaker

DIM = 256  # v1 width: the sizes below at a quarter of v2's bytes (every layout rule is the same at 768)
SIZES = {"under-100k": 20_000, "100k-200k": 120_000, "over-200k": 210_000}
FAST = ["evaluate.recall_queries=0", "evaluate.plot=false"]


@pytest.fixture(scope="module")
def voices(tmp_path_factory):
    """One voice per size, written once for the module (``logs/<size>/3_feature256``)."""
    root = tmp_path_factory.mktemp("matrix") / "logs"
    return {size: write_speaker(root, SpeakerSpec(size, rows, DIM), seed=21) for size, rows in SIZES.items()}


def queries(n: int = 300) -> np.ndarray:
    """Frames of the same kind the voices were never built from (another seed): what a consumer searches with."""
    return sample_frames(n, DIM, seed=977)


def built(voice, preset: str, out, overrides=()) -> tuple[object, dict]:
    result = build_experiment(voice, load_config(preset, [*FAST, *overrides]), out, backend=select_backend("cpu"))
    assert result.status == "built"
    return result, json.loads(result.report_path.read_text())


@pytest.mark.parametrize("size", sorted(SIZES))
@pytest.mark.parametrize("preset", preset_names())
def test_every_shipped_preset_at_every_size_keeps_every_consumer_on(preset, size, voices, tmp_path):
    result, report = built(voices[size], preset, tmp_path / "out")
    replayed = replay_everywhere(result.index_path, queries(), None, DIM, tmp_path)
    assert set(replayed) >= {"1.7.3", "1.14.3"} and len(replayed) == 3
    for version, run in replayed.items():
        assert run["type"].startswith("IndexIVF"), (version, run["type"])
        assert run["nprobe"] == report["index"]["nprobe"]
        held = run["holdings"]
        assert held["big"] == run["ntotal"] * DIM * 4 and held["gpu_applio"] == 2 * held["big"] + 4 * run["ntotal"]
    config = load_config(preset)
    assert held["big"] <= config.budget.big_mb * 2**20 and held["gpu_applio"] <= config.budget.gpu_mb * 2**20
    assert report["index"]["holdings"] == held


@pytest.mark.parametrize("lists", ["flat", "fp16", "sq8", "pq8"])
def test_every_list_format_keeps_every_consumer_on(lists, voices, tmp_path):
    """Each format a budget can choose, forced: the same matrix."""
    result, report = built(voices["under-100k"], "tips-plain", tmp_path / lists, [f"index.lists={lists}"])
    assert report["index"]["lists"] == lists
    replay_everywhere(result.index_path, queries(), None, DIM, tmp_path)


@pytest.mark.parametrize("branch, overrides", [
    ("compressed, two-level k-means", ["budget.big_mb=1", "budget.gpu_mb=2"]),  # 1,024 centroids of 20,000 rows
    ("compressed, fixed cells", ["budget.big_mb=8", "budget.gpu_mb=16"]),  # 8,192: fewer than 8 rows per centre
    ("auto picks coded lists", ["budget.us_per_frame=70"]),  # flat lists estimated over it, fp16 within
    ("tiny lists raise nprobe", ["index.sqrt_factor=64", "index.min_rows_per_list=1", "index.nprobe=1"]),
])
def test_every_branch_of_the_plan_keeps_every_consumer_on(branch, overrides, voices, tmp_path):
    result, report = built(voices["under-100k"], "tips-plain", tmp_path / "out", overrides)
    compression = report["compression"]
    if branch.startswith("compressed"):
        assert compression["applied"] and ("fixed cells" in " ".join(report["plan"]["decisions"])) == \
            branch.endswith("fixed cells")
    if branch == "auto picks coded lists":
        assert report["index"]["lists"] != "flat"
    if branch == "tiny lists raise nprobe":
        assert report["index"]["nprobe"] >= report["index"]["nprobe_configured"]
    replay_everywhere(result.index_path, queries(), None, DIM, tmp_path)


def test_replay_names_what_breaks_each_consumer(tmp_path):
    """The replay fails where a consumer would: RFlat (Applio realtime, deiteris), a flat top level (Applio
    realtime), bare FastScan (its reconstruct_n crashes the process: every consumer), too few probed vectors
    (-1 labels: RVC realtime, w-okada). Run as the script, in a process of its own, as the matrix runs it."""
    x = sample_frames(4000, 64, seed=5)
    np.save(tmp_path / "q.npy", sample_frames(200, 64, seed=6))
    expected = {"IVF16,PQ32x4fs,RFlat": {"applio-realtime", "deiteris"}, "Flat": {"applio-realtime"},
                "IVF16,Flat": set(), "IVF16,PQ32x4fs": set(CONSUMERS)}
    for factory, broken in expected.items():
        index = faiss.index_factory(64, factory)
        index.train(x)
        index.add(x[:100] if factory == "IVF64,Flat" else x)
        assert replay_failures(index, tmp_path) == broken, factory
    starved = faiss.index_factory(64, "IVF64,Flat")
    starved.train(x)
    starved.add(x[:100])  # most of 64 lists empty: nprobe 1 finds fewer than 8, sometimes none
    assert {"rvc-offline", "rvc-realtime", "w-okada"} <= replay_failures(starved, tmp_path)


def replay_failures(index: faiss.Index, tmp_path) -> set[str]:
    """The consumers the replay script finds broken (all of them when the process crashes)."""
    path = tmp_path / "i.index"
    faiss.write_index(index, str(path))
    done = subprocess.run([sys.executable, str(CONSUMERS_SCRIPT), str(path), "--queries", str(tmp_path / "q.npy")],
                          capture_output=True, text=True, timeout=120)
    if not done.stdout.strip():
        assert done.returncode != 0
        return set(CONSUMERS)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert (done.returncode == 0) == result["ok"]
    return {name for name, c in result["consumers"].items() if not c["ok"]}
