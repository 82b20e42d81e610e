"""Index file names and places: presets that never collide, Applio's layout, --name and --index-path."""

from __future__ import annotations

import numpy as np
import pytest
from rvc_index.cli import main
from rvc_index.config.schema import IndexConfig
from rvc_index.data.layouts import resolve_experiment
from rvc_index.inspection.rvc_files import OutputError
from rvc_index.job.naming import ascii_name, index_file_name, output_place
from rvc_index.stages.indexing import plan_index
from rvc_index.tools.synth import SpeakerSpec, sample_frames, write_speaker

FAST = ["--set", "evaluate.recall_queries=0", "--set", "evaluate.plot=false", "--backend", "cpu"]


def test_file_names_follow_rvc_and_applio_and_carry_the_preset():
    flat = plan_index(100_000, 768, IndexConfig())
    assert index_file_name("spk", "v2", flat, 1, "rvc", "rvc-classic") == \
        "added_IVF2564_Flat_rvc-classic_nprobe_1_spk_v2.index"
    coded = plan_index(100_000, 768, IndexConfig(lists="fp16", sqrt_factor=2))
    tips, plain = (index_file_name("spk", "v2", coded, 9, "rvc", p) for p in ("tips", "tips-plain"))
    assert tips == "added_IVF632_SQfp16_tips_nprobe_9_spk_v2.index" and tips != plain
    pq = plan_index(100_000, 256, IndexConfig(lists="pq8", sqrt_factor=2))
    assert index_file_name("spk", "v1", pq, 9, "rvc", "x") == "added_IVF632_PQ16_x_nprobe_9_spk_v1.index"
    for name in (tips, plain):  # RVC's lookup: ends in .index, no "trained", holds the model name
        assert name.startswith("added_IVF") and name.endswith(".index") and "trained" not in name and "spk" in name
    assert index_file_name("spk", "v2", coded, 9, "applio", "tips") == "spk.index"
    assert ascii_name("Zoë").startswith("Zoe-")


def test_two_presets_into_one_folder_keep_two_indexes(tmp_path):
    write_speaker(tmp_path / "logs", SpeakerSpec("spk", 1500, 256))
    exp = tmp_path / "logs" / "spk"
    assert main(["build", str(exp), "--config", "tips", *FAST]) == 0
    assert main(["build", str(exp), "--config", "tips-plain", *FAST]) == 0
    names = sorted(p.name for p in exp.glob("*.index"))
    assert len(names) == 2 and "_tips_nprobe_" in names[0] + names[1] and "_tips-plain_" in names[0] + names[1]


def test_applio_layout_is_named_after_the_model_folder(tmp_path, capsys):
    model = tmp_path / "logs" / "alice"
    (model / "extracted").mkdir(parents=True)
    for i in range(6):
        np.save(model / "extracted" / f"0_{i}.npy", sample_frames(250, 768, seed=i))
    for path in (model, model / "extracted"):
        experiment = resolve_experiment(path)
        assert (experiment.name, experiment.feature_dir, experiment.exp_dir) == ("alice", model / "extracted", model)
    assert main(["build", str(model), "--set", "output.naming=applio", *FAST]) == 0
    assert (model / "alice.index").is_file() and not (model / "extracted.index").exists()
    capsys.readouterr()
    # another preset would replace alice.index: refused before any work, naming the other build
    assert main(["build", str(model / "extracted"), "--config", "rvc-classic", "--set", "output.naming=applio",
                 *FAST]) == 1
    assert "written by another build here" in capsys.readouterr().err
    target = tmp_path / "weights" / "bob.index"
    assert main(["build", str(model), "--index-path", str(target), "--name", "bob", *FAST]) == 0
    assert target.is_file() and list(target.parent.glob("rvc-index-bob-*.report.json"))


def test_bad_index_paths_and_names_are_refused(tmp_path):
    experiment = resolve_experiment(tmp_path)
    with pytest.raises(OutputError, match="must name a '<something>.index' file"):
        output_place(experiment, index_path=tmp_path / "x.idx")
    with pytest.raises(OutputError, match="'trained' in the index file name"):
        output_place(experiment, index_path=tmp_path / "trained_x.index")
    with pytest.raises(OutputError, match="not a plain name"):
        output_place(experiment, name="a/b")
    place = output_place(experiment, index_path=tmp_path / "sub" / "x.index", name="voice")
    assert (place.out, place.index_file, place.experiment.name) == (tmp_path / "sub", "x.index", "voice")


def test_per_experiment_names_that_meet_say_whose_the_report_is(tmp_path, capsys):
    """Issue 24 C: ``rvc-index-<exp>-<preset>.*`` is the same for experiment ``alice`` with preset ``tips-plain``
    and ``alice-tips`` with preset ``plain``: the second build is refused before any work, naming the first
    build's experiment and preset, even with --force (which deleted alice's index); alice's files stay."""
    logs = tmp_path / "logs"
    for name in ("alice", "alice-tips"):
        write_speaker(logs, SpeakerSpec(name, 1500, 256))
    out = tmp_path / "shared"
    assert main(["-q", "build", str(logs / "alice"), "--out", str(out), *FAST]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    for force in ([], ["--force"]):
        assert main(["-q", "build", str(logs / "alice-tips"), "--out", str(out), "--set", "name=plain", *FAST,
                     *force]) == 1
        err = capsys.readouterr().err
        assert "rvc-index-alice-tips-plain.report.json: the report of experiment 'alice' (preset tips-plain)" in err
        assert "experiment 'alice-tips', preset plain" in err and "--name or --out" in err
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".rvc-index.lock"} == \
            {name: data for name, data in before.items() if name != ".rvc-index.lock"}
    assert main(["-q", "build", str(logs / "alice-tips"), "--out", str(tmp_path / "own"), "--set", "name=plain",
                 *FAST]) == 0
    assert main(["-q", "build", str(logs / "alice"), "--out", str(out), *FAST]) == 0  # alice's: up to date
