"""End to end: both presets on a real LocalCluster, RVC compatibility, resume, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest
from rvc_index.compute.backend import Backend
from rvc_index.config.loading import load_config
from rvc_index.data.sources import SourceError
from rvc_index.inspection.rvc_files import OutputError
from rvc_index.job.runner import build_experiment
from rvc_index.tools.synth import utterances
from stage_runs import planned_expand

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def features_of(exp_dir: Path) -> np.ndarray:
    folder = next(exp_dir.glob("3_feature*"))
    return np.concatenate([np.load(p) for p in sorted(folder.glob("*.npy"))])


def held_out(n, dim, seed=99):
    return np.concatenate(list(utterances(n, dim, [seed, dim])))[:n]


@pytest.mark.parametrize("preset, dim", [("rvc-classic", 768), ("tips", 768), ("tips", 256), ("tips-plain", 768)])
def test_preset_builds_an_rvc_ready_index(preset, dim, make_experiment, client, consumer_check):
    exp = make_experiment("alice", 6000, dim)
    config = load_config(CONFIGS / f"{preset}.yaml")
    result = build_experiment(exp, config, client=client)
    assert result.status == "built"
    version = "v2" if dim == 768 else "v1"
    assert result.index_path.parent == exp.absolute()
    assert result.index_path.name.startswith("added_IVF") and result.index_path.name.endswith(f"_alice_{version}.index")
    assert "trained" not in str(result.index_path)
    report = json.loads(result.report_path.read_text())
    assert report["rows"] == 6000 and report["index"]["ntotal"] == 6000
    assert report["evaluation"]["missing_label_share"] == 0.0
    assert report["evaluation"]["recall_at_k"] > (0.85 if preset.startswith("tips") else 0.3)
    assert (exp / f"rvc-index-alice-{preset}.config.yaml").is_file()
    assert load_config(exp / f"rvc-index-alice-{preset}.config.yaml") == config
    stored = features_of(exp)
    if config.expand.enabled:  # tips stores the alpha-QE expansions of the features (rvc_index.stages.expand)
        stored = planned_expand(stored, config.expand, Backend("cpu", np)).vectors
    replayed = consumer_check(result.index_path, held_out(500, dim), stored, dim)
    assert {r["ntotal"] for r in replayed.values()} == {6000} and len(replayed) == 3
    assert {r["nprobe"] for r in replayed.values()} == {report["index"]["nprobe"]}
    assert not [p for p in exp.iterdir() if ".tmp-" in p.name]


def test_compressed_build_stores_centroids_in_feature_scale(make_experiment, consumer_check, client):
    exp = make_experiment("bob", 9000, 256)
    config = load_config(CONFIGS / "rvc-classic.yaml",
                         ["compress.row_threshold=4000", "compress.n_centroids=600", "output.write_total_fea=true"])
    result = build_experiment(exp, config, client=client)
    assert result.record.compression.applied
    index = faiss.read_index(str(result.index_path))
    assert index.ntotal == 600
    total_fea = np.load(exp / "total_fea.npy")
    assert total_fea.shape == (600, 256)
    data = features_of(exp)
    norm_ratio = np.linalg.norm(total_fea, axis=1).mean() / np.linalg.norm(data, axis=1).mean()
    assert 0.7 < norm_ratio <= 1.0
    consumer_check(result.index_path, held_out(300, 256), total_fea, 256)


def test_tiny_lists_raise_the_stored_nprobe(tmp_path, consumer_check):
    folder = tmp_path / "logs" / "carol" / "3_feature256"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    body = np.concatenate(list(utterances(4000, 256, [1, 256])))
    outliers = rng.standard_normal((40, 256)).astype(np.float32) * 40  # each far from everything
    np.save(folder / "a.npy", body)
    np.save(folder / "b.npy", outliers)
    config = load_config(CONFIGS / "rvc-classic.yaml")
    result = build_experiment(folder, config)
    info = result.record.index
    assert info.list_size_min < 8
    assert info.nprobe > 1 and info.nprobe_configured == 1
    assert f"nprobe_{info.nprobe}_carol_v1" in result.index_path.name
    consumer_check(result.index_path, np.concatenate([outliers + 0.5, body[:100] + 0.01]), None, 256)


def test_rerun_skips_and_changes_rebuild(make_experiment, tmp_path):
    exp = make_experiment("dave", 3000, 256)
    config = load_config(CONFIGS / "tips.yaml")
    first = build_experiment(exp, config)
    again = build_experiment(exp, config)
    assert again.status == "skipped" and again.index_path == first.index_path
    other = load_config(CONFIGS / "tips.yaml", ["index.nprobe=4"])
    with pytest.raises(OutputError, match="--force"):
        build_experiment(exp, other)
    forced = build_experiment(exp, other, force=True)
    assert forced.status == "built"
    indexes = sorted(p.name for p in exp.glob("*.index"))
    assert indexes == [forced.index_path.name]
    np.save(next(exp.glob("3_feature*")) / "extra.npy", held_out(200, 256))
    assert build_experiment(exp, other).status == "built"


def test_bad_input_leaves_nothing_behind(tmp_path, make_experiment):
    exp = make_experiment("erin", 2000, 768)
    (exp / "3_feature768" / "00001.npy").write_bytes(b"\x93NUMPY broken")
    out = tmp_path / "out"
    with pytest.raises(SourceError, match="00001.npy: not a valid .npy"):
        build_experiment(exp, load_config(CONFIGS / "tips.yaml"), out)
    assert list(out.iterdir()) == []


def test_trained_in_output_path_is_refused(make_experiment, tmp_path):
    exp = make_experiment("frank", 500, 256)
    with pytest.raises(OutputError, match="'trained'"):
        build_experiment(exp, load_config(CONFIGS / "tips.yaml"), tmp_path / "trained_out")


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "rvc_index", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_cli_build_and_inspect(make_experiment, tmp_path):
    exp = make_experiment("gina", 3000, 768)
    out = tmp_path / "out"
    proc = run_cli("-v", "build", str(exp / "3_feature768"), "--config", "rvc-classic", "--out", str(out),
                   "--backend", "cpu", "--set", "evaluate.recall_queries=200")
    assert proc.returncode == 0, proc.stderr
    for decision in ("rows x 768", "compression: 3,000 rows <= compress.row_threshold 200,000", "IVF76,Flat",
                     "backend: cpu",
                     "[add] done", "add: 3,000/3,000 vectors"):
        assert decision in proc.stderr
    index = next(out.glob("*.index"))
    assert index.name == "added_IVF76_Flat_nprobe_1_gina_v2.index" or "_nprobe_" in index.name
    inspected = run_cli("inspect", str(index))
    assert inspected.returncode == 0, inspected.stderr
    info = json.loads(inspected.stdout)
    assert info["type"] == "IndexIVFFlat" and info["ntotal"] == 3000 and info["n_list"] == 76
    assert {"nprobe", "list_size_min", "list_size_median", "list_size_max"} <= set(info)
    assert set(info["consumers"].values()) == {"ok"} and len(info["consumers"]) == 6  # every tool of docs/consumers.md
    assert info["holdings_mb"]["big"] == round(3000 * 768 * 4 / 2**20, 1) and info["us_per_frame"] > 0


def test_cli_bad_input_exits_non_zero_naming_the_file(make_experiment, tmp_path):
    exp = make_experiment("hank", 1000, 768)
    np.save(exp / "3_feature768" / "00000.npy", np.zeros((10, 512), np.float32))
    proc = run_cli("build", str(exp), "--out", str(tmp_path / "o"))
    assert proc.returncode == 1
    assert "00000.npy: width 512 does not match the folder's 768" in proc.stderr
    assert not list((tmp_path / "o").glob("*"))
    proc = run_cli("build", str(exp), "--set", "index.nprobes=3")
    assert proc.returncode == 1 and "unknown config key 'index.nprobes'" in proc.stderr


def test_code_fingerprint_covers_every_module_the_output_depends_on():
    """Editing the CLI or batch code keeps finished outputs; editing what computes them does not.

    Every ``rvc_index`` module imported by a hashed module (except the runner, which also drives
    evaluation, reports, locks and the memory guard) must itself be hashed (``resume.OUTPUT_LAYERS``).
    """
    import ast

    from rvc_index.job import resume

    hashed = {p.relative_to(resume.PACKAGE_DIR).with_suffix("").as_posix().replace("/", ".")
              for p in resume.output_sources()}
    assert {"compute.lloyd", "stages.compress", "data.sources", "config.schema", "job.runner"} <= hashed
    for path in resume.output_sources():
        if path.name in ("runner.py", "__init__.py"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {node.module.removeprefix("rvc_index.") for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rvc_index.")}
        missing = imported - hashed - {"errors"}  # error classes decide no output
        if path.name == "plan.py":  # it sizes the evaluation stage; evaluation decides no stored byte
            missing = {m for m in missing if not m.startswith("evaluation.")}
        assert not missing, f"{path} imports {sorted(missing)}, not hashed by resume.OUTPUT_LAYERS"
    assert not any(name.startswith(("cli", "batch.", "evaluation.")) for name in hashed)
