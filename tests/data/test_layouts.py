"""data/layouts.py: where RVC's and Applio's features live, for one build and for a batch's discovery."""

import numpy as np
import pytest
from rvc_index.data.files import SourceError
from rvc_index.data.layouts import feature_dir_name, find_experiments, is_experiment, resolve_experiment
from rvc_index.data.sources import scan_manifest


def npy(folder, n=10, dim=768, name="a.npy"):
    """``folder`` (made) holding one [n, dim] feature file; the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / name, np.random.default_rng(n).standard_normal((n, dim)).astype(np.float32))
    return folder


def test_resolve_experiment_forms(tmp_path):
    folder = npy(tmp_path / "spk" / "3_feature768")
    by_exp = resolve_experiment(tmp_path / "spk")
    by_dir = resolve_experiment(folder)
    assert by_exp == by_dir
    assert (by_exp.name, by_exp.version, by_exp.expected_dim) == ("spk", "v2", 768)
    assert by_exp.exp_dir == (tmp_path / "spk").absolute()
    plain = npy(tmp_path / "loose", dim=256)
    loose = resolve_experiment(plain)
    assert (loose.name, loose.version, loose.expected_dim) == ("loose", None, None)
    assert scan_manifest(loose).version == "v1"


def test_both_versions_in_one_experiment_is_ambiguous(tmp_path):
    npy(tmp_path / "spk" / "3_feature768")
    npy(tmp_path / "spk" / "3_feature256", dim=256)
    with pytest.raises(SourceError, match="both 3_feature256"):
        resolve_experiment(tmp_path / "spk")


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(SourceError, match="no such folder"):
        resolve_experiment(tmp_path / "absent")
    folder = tmp_path / "spk" / "3_feature768"
    folder.mkdir(parents=True)
    with pytest.raises(SourceError, match="holds no .npy"):
        resolve_experiment(tmp_path / "spk")
    (folder / "notes.txt").write_text("x")
    with pytest.raises(SourceError, match="holds no .npy"):
        scan_manifest(resolve_experiment(folder))


def test_applio_model_folders_resolve_to_their_extracted_features(tmp_path):
    npy(tmp_path / "model" / "extracted")
    for path in (tmp_path / "model", tmp_path / "model" / "extracted"):
        experiment = resolve_experiment(path)
        assert (experiment.name, experiment.feature_dir.name, experiment.exp_dir) == (
            "model", "extracted", (tmp_path / "model").absolute())
        assert experiment.version is None and scan_manifest(experiment).version == "v2"


def test_discovery_finds_rvc_and_applio_experiments_and_leaves_out_the_tools_silence(tmp_path):
    """RVC and Applio ship logs/mute (3_feature256 and 3_feature768: both widths, so it would fail as an
    experiment), Applio logs/mute_spin and mute_spin-v2 (extracted) and logs/reference (plain .npy)."""
    logs = tmp_path / "logs"
    npy(logs / "rvc-voice" / "3_feature768")
    npy(logs / "applio-voice" / "extracted")
    npy(logs / "mute" / "3_feature256", dim=256, name="mute.npy")
    npy(logs / "mute" / "3_feature768", name="mute.npy")
    for tool in ("mute_spin", "mute_spin-v2"):
        npy(logs / tool / "extracted", name="mute.npy")
    npy(logs / "reference", name="ref32000_feats.npy")
    assert [p.name for p in find_experiments(logs)] == ["applio-voice", "rvc-voice"]
    assert is_experiment(logs / "mute") and not is_experiment(logs / "reference")
    assert find_experiments(logs / "mute") == [(logs / "mute").absolute()]  # named itself: built as asked
    with pytest.raises(SourceError, match="no experiments"):
        find_experiments(logs / "reference")


def test_rvcs_feature_folder_names():
    assert [feature_dir_name(d) for d in (256, 768, 1024)] == ["3_feature256", "3_feature768", "3_feature1024"]
