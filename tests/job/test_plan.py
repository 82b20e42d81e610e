"""job/plan.py: every stage's decisions and memory estimate, made once from headers and config."""

import pytest
from rvc_index.compute.backend import select_backend
from rvc_index.config.loading import load_config
from rvc_index.data.feature_set import stream_bytes
from rvc_index.data.layouts import resolve_experiment
from rvc_index.data.sources import scan_manifest
from rvc_index.job.plan import make_plan


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
    assert big.held_before("add") == big.estimate("check").retained + big.estimate("train").retained


def test_a_collection_no_bigger_than_a_pass_holds_is_read_once(manifest):
    """5000 x 256 float32 (5 MB) in one 64 MB chunk: the value check keeps it, the stages after it stream
    nothing (and the estimate says what it keeps); in 0.1 MB chunks it streams; never with a cluster."""
    config = load_config("tips-plain")
    kept = make_plan(manifest, config, select_backend("cpu"), local=True, chunk_mb=64)
    streamed = make_plan(manifest, config, select_backend("cpu"), local=True, chunk_mb=0.1)
    clustered = make_plan(manifest, config, select_backend("cpu"), local=False, chunk_mb=64)
    assert kept.resident and not streamed.resident and not clustered.resident
    assert kept.estimate("check").retained == 5000 * 256 * 4 and streamed.estimate("check").retained == 0
    assert "read once and kept in memory" in " ".join(kept.describe())
    assert streamed.estimate("add").need - kept.estimate("add").need == stream_bytes(manifest, 0.1, True)
    assert not make_plan(manifest, config, select_backend("cpu"), True, 64, resident=False).resident


def test_expansion_spill_and_route_are_the_stage_plans(manifest):
    config = load_config("tips", ["expand.spill_mb=0.5", "expand.exact_max_rows=100"])
    plan = make_plan(manifest, config, select_backend("cpu"), local=True)
    assert plan.expansion.spill and plan.expansion.method == "ivf"
    assert plan.estimate("expand").retained == 0  # spilled copies are on disk
    assert "spilled to disk" in " ".join(plan.describe())
