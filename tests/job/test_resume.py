"""job/resume.py: what decides whether a finished build is reused."""

import dataclasses
import json
from dataclasses import replace

from rvc_index.config.loading import load_config
from rvc_index.config.schema import ClusterConfig, SafetyConfig
from rvc_index.job import resume
from rvc_index.job.naming import BuildFiles
from rvc_index.job.record import BuildRecord


def test_config_fingerprint_ignores_where_and_how_guarded_a_build_runs():
    config = load_config("rvc-classic")
    moved = replace(config, cluster=replace(ClusterConfig(), jobs=7), safety=replace(SafetyConfig(), lock="fail"))
    assert resume.config_fingerprint(moved) == resume.config_fingerprint(config)
    assert resume.config_fingerprint(load_config("rvc-classic", ["seed=1"])) != resume.config_fingerprint(config)


def test_code_fingerprint_follows_the_output_layers_not_the_cli():
    hashed = {p.relative_to(resume.PACKAGE_DIR).as_posix() for p in resume.output_sources()}
    assert "compute/lloyd.py" in hashed and "stages/indexing.py" in hashed and "job/plan.py" in hashed
    assert not any(p.startswith(("cli", "batch/", "evaluation/")) for p in hashed)
    assert resume.code_fingerprint() == resume.code_fingerprint()


def test_finished_build_needs_the_fingerprint_and_an_intact_plain_named_index(tmp_path, record_fields):
    files = BuildFiles(tmp_path, "spk", "rvc-classic")
    (tmp_path / "a.index").write_bytes(b"12345")
    record = BuildRecord(**{**record_fields, "fingerprint": "f", "index_file": "a.index", "index_bytes": 5})
    report = json.loads(json.dumps(dataclasses.asdict(record)))
    assert resume.finished_build(report, files, "f") == record
    assert resume.finished_build(report, files, "g") is None
    assert resume.finished_build({**report, "index_bytes": 4}, files, "f") is None
    assert resume.finished_build({**report, "index_file": "../a.index"}, files, "f") is None
    assert resume.finished_build({**report, "index_file": None}, files, "f") is None
    assert resume.finished_build(None, files, "f") is None
    assert resume.finished_build({"fingerprint": "f", "index_file": "a.index", "index_bytes": 5}, files, "f") is None
    assert resume.finished_build({**report, "verdict": None}, files, "f") is None  # an older report: rebuild
