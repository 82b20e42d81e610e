"""build/plan.py: every stage's decisions and memory estimate, made once from headers and config."""

import pytest
from rvc_index.build.plan import make_plan
from rvc_index.compute.backend import select_backend
from rvc_index.config.loading import load_config
from rvc_index.data.sources import resolve_experiment, scan_manifest


@pytest.fixture
def manifest(make_experiment):
    return scan_manifest(resolve_experiment(make_experiment("plan", 5000, 256)))


def test_plan_follows_the_config(manifest):
    cpu = select_backend("cpu")
    plain = make_plan(manifest, load_config("tips-plain"), cpu, local=True)
    assert plain.compression.apply is False and plain.expansion is None and plain.n_vectors == 5000
    assert [s.stage for s in plain.stages] == ["check", "train", "add", "evaluate", "write"]
    squeezed = make_plan(manifest, load_config("tips", ["compress.row_threshold=1000", "compress.n_centroids=300"]),
                         cpu, local=True)
    assert squeezed.compression.apply and squeezed.kmeans is not None and squeezed.n_vectors == 300
    assert squeezed.expansion is not None and squeezed.expansion.n_rows == 300
    assert squeezed.index.n_rows == 300
    assert [s.stage for s in squeezed.stages] == ["check", "compress", "expand", "train", "add", "evaluate", "write"]


def test_the_value_check_rows_replan(manifest):
    config = load_config("rvc-classic", ["compress.row_threshold=4990"])
    assert make_plan(manifest, config, select_backend("cpu"), True).compression.apply
    assert not make_plan(manifest, config, select_backend("cpu"), True, n_rows=4980).compression.apply


def test_smaller_chunks_lower_the_peak(manifest):
    config = load_config("rvc-classic")
    big = make_plan(manifest, config, select_backend("cpu"), local=True, chunk_mb=64)
    small = make_plan(manifest, config, select_backend("cpu"), local=True, chunk_mb=0.1)
    assert small.peak()[0] < big.peak()[0]
    assert big.held_before("add") == big.estimate("train").retained


def test_expansion_spill_and_route_are_the_stage_plans(manifest):
    config = load_config("tips", ["expand.spill_mb=0.5", "expand.exact_max_rows=100"])
    plan = make_plan(manifest, config, select_backend("cpu"), local=True)
    assert plan.expansion.spill and plan.expansion.method == "ivf"
    assert plan.estimate("expand").retained == 0  # spilled copies are on disk
    assert "spilled to disk" in " ".join(plan.describe())
