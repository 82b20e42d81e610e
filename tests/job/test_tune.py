"""Autotune: the choice rule by hand, a real tune on small data, and the preset it writes."""

import os
import subprocess
import sys

import pytest
from rvc_index.compute.backend import select_backend
from rvc_index.config.loading import load_config
from rvc_index.data.feature_set import open_feature_set
from rvc_index.data.layouts import resolve_experiment
from rvc_index.data.sources import scan_manifest
from rvc_index.job.runner import build_experiment
from rvc_index.job.tune import Layout, Target, Trial, TuneError, choose, layouts, tune, write_preset
from rvc_index.runtime.run import Run


def trial(recall, us, ram, missing=0.0, nprobe=4):
    return Trial("fp16", 1.0, 64, 0, nprobe, recall, missing, 0.01, us, ram)


def test_choose_the_cheapest_trial_meeting_the_target():
    trials = [trial(0.97, 30, 100), trial(0.96, 20, 120), trial(0.99, 10, 90, missing=0.01), trial(0.90, 5, 50)]
    assert choose(trials, Target(0.95)) == trials[1]  # fastest of those meeting recall with no -1 label
    assert choose(trials, Target(0.95, objective="memory")) == trials[0]
    assert choose(trials, Target(0.95, max_us_per_frame=25, objective="memory")) == trials[1]
    assert choose(trials, Target(0.95, max_ram_mb=110)) == trials[0]
    assert choose(trials, Target(0.999)) is None
    assert choose(trials, Target(0.85)) == trials[3]


def test_layout_grid():
    grid = layouts()
    assert Layout("pq8", 1.0) in grid and Layout("sq8", 4.0) in grid and Layout("fp16", 2.0) in grid
    assert Layout("flat", 16.0) in grid and Layout("flat", 1.0) in grid
    assert layouts(("fp16",), (2.0,)) == [Layout("fp16", 2.0)]


@pytest.fixture(scope="module")
def speaker(tmp_path_factory):
    from rvc_index.tools.synth import SpeakerSpec, write_speaker

    return write_speaker(tmp_path_factory.mktemp("tune") / "logs", SpeakerSpec("tuna", 6000, 64))


def features_of(folder):
    experiment = resolve_experiment(folder)
    return open_feature_set(experiment, scan_manifest(experiment))


def test_tune_picks_a_config_that_builds_to_its_measured_recall(speaker, tmp_path):
    base = load_config("configs/tips.yaml", ["expand.enabled=false"])
    target = Target(min_recall=0.9)
    grid = [Layout("fp16", 1.0), Layout("flat", 4.0)]
    result = tune(features_of(speaker), base, target, Run(select_backend("cpu"), seed=base.seed), layout_list=grid,
                  name="tuned-test")
    chosen = result.chosen
    assert chosen is not None and chosen.meets(target)
    assert {t.lists for t in result.trials} == {"fp16", "flat"}
    feasible = [t for t in result.trials if t.meets(target)]
    assert chosen.us_per_frame == min(t.us_per_frame for t in feasible)
    # the smallest nprobe meeting the target is found (no trial of that layout below it meets it)
    same = [t for t in result.trials if (t.lists, t.sqrt_factor) == (chosen.lists, chosen.sqrt_factor)]
    assert all(t.recall_at_k < 0.9 for t in same if t.nprobe < chosen.nprobe)

    path = write_preset(tmp_path / "tuned.yaml", result)
    config = load_config(path)
    assert config.name == "tuned-test" and config.index.lists == chosen.lists
    assert (config.index.nprobe, config.index.sqrt_factor) == (chosen.nprobe, chosen.sqrt_factor)
    assert path.read_text().startswith("# Written by `rvc-index tune`")
    # every query, as tune measured (a build's own evaluation is otherwise sized to its time)
    built = build_experiment(speaker, load_config(path, ["evaluate.full=true"]), tmp_path / "out")
    assert built.record.index.n_list == chosen.n_list
    # the build evaluates on the same held-out utterances: it finds what tune measured
    # (faiss's list training on 2 threads is not bit-reproducible, so the rebuilt index may differ a little)
    assert built.record.evaluation.recall_at_k == pytest.approx(chosen.recall_at_k, abs=0.05)
    assert built.record.evaluation.recall_at_k >= target.min_recall - 0.02
    assert built.record.evaluation.missing_label_share == 0.0


def test_an_unreachable_target_writes_nothing(speaker, tmp_path):
    base = load_config("configs/tips.yaml", ["expand.enabled=false"])
    result = tune(features_of(speaker), base, Target(min_recall=0.9, max_us_per_frame=0.001),
                  Run(select_backend("cpu")), layout_list=[Layout("flat", 4.0)])
    assert result.chosen is None and result.config is None and result.trials
    with pytest.raises(TuneError, match="no configuration met"):
        write_preset(tmp_path / "x.yaml", result)
    assert not (tmp_path / "x.yaml").exists()


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "rvc_index", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_tune_cli_writes_a_loadable_preset(speaker, tmp_path):
    out = tmp_path / "mine.yaml"
    proc = run_cli("tune", str(speaker), "--quick", "--min-recall", "0.85", "--out", str(out), "--name", "mine",
                   "--backend", "cpu", "--set", "expand.enabled=false")
    assert proc.returncode == 0, proc.stderr
    assert "chosen:" in proc.stdout and "meets" in proc.stdout
    config = load_config(out)
    assert config.name == "mine" and config.index.lists in ("flat", "fp16") and not config.expand.enabled
    proc = run_cli("tune", str(speaker), "--quick", "--min-recall", "1", "--max-us-per-frame", "0.001", "--out",
                   str(tmp_path / "no.yaml"), "--backend", "cpu", "--set", "expand.enabled=false")  # 1 ns: never met
    assert proc.returncode == 1 and "no configuration met the target" in proc.stderr
    assert not (tmp_path / "no.yaml").exists()


def test_tuned_pq_size_is_written_per_dimension_so_it_fits_v1_and_v2():
    from rvc_index.job.tune import tuned_config
    from rvc_index.stages.indexing import plan_index

    base = load_config("configs/tips.yaml")
    default = tuned_config(base, Trial("pq8", 1.0, 316, 48, 4, 0.97, 0.0, 0.01, 40.0, 300.0), 768, "t")
    assert default.index.pq_m == 0 and default.index.lists == "pq8"
    assert plan_index(100_000, 768, default.index).pq_m == 48 and plan_index(100_000, 256, default.index).pq_m == 16
    other = tuned_config(base, Trial("pq8", 2.0, 632, 32, 8, 0.95, 0.0, 0.01, 60.0, 300.0), 768, "t")
    assert other.index.pq_m == 32
    flat = tuned_config(base, Trial("flat", 16.0, 5000, 0, 9, 0.95, 0.0, 0.01, 90.0, 300.0), 768, "t")
    assert flat.index.lists == "flat" and flat.index.nprobe == 9 and flat.index.sqrt_factor == 16.0
