"""job/guard.py: the plan's estimates against the memory available now."""

import pytest
from rvc_index.compute.backend import select_backend
from rvc_index.config.loading import load_config
from rvc_index.data.layouts import resolve_experiment
from rvc_index.data.sources import scan_manifest
from rvc_index.job.guard import StageMemoryError, guard_plan
from rvc_index.job.plan import make_plan


@pytest.fixture
def manifest(make_experiment):
    return scan_manifest(resolve_experiment(make_experiment("guarded", 20_000, 256)))


def make(manifest, *overrides):
    config = load_config("rvc-classic", list(overrides))
    return config, (lambda chunk_mb: make_plan(manifest, config, select_backend("cpu"), True, chunk_mb))


def test_a_plan_that_fits_passes_and_reports_its_estimates(manifest):
    config, plan = make(manifest)
    checked, guard = guard_plan(plan, config.source.chunk_mb, config.safety, "guarded")
    guard.check(checked, "add")
    report = guard.record(checked)
    assert report.estimated_peak_mb > 0 and set(report.stages_mb) >= {"check", "train", "add", "write"}
    assert report.chunk_mb == checked.chunk_mb and report.shrunk_from_chunk_mb is None


def test_a_plan_beyond_the_limit_is_refused_naming_stage_and_limit(manifest):
    config, plan = make(manifest, "safety.memory_limit_mb=1")
    refused = r"guarded: the plan would peak at about .* stage .*safety.memory_limit_mb=1"
    with pytest.raises(StageMemoryError, match=refused):
        guard_plan(plan, config.source.chunk_mb, config.safety, "guarded")
    off, plan_off = make(manifest, "safety.memory_limit_mb=1", "safety.memory_guard=off")
    assert guard_plan(plan_off, off.source.chunk_mb, off.safety)[0].n_rows == 20_000


def test_shrink_mode_lowers_the_chunk_size_until_the_plan_fits(manifest):
    config, plan = make(manifest, "source.chunk_mb=16")
    whole, small = plan(16.0).peak()[0], plan(1.0).peak()[0]
    assert whole > small
    import psutil

    limit = (psutil.Process().memory_info().rss + (whole + small) / 2 / 0.9) / 2**20
    _, shrink_plan = make(manifest, "source.chunk_mb=16", f"safety.memory_limit_mb={limit:.0f}",
                          "safety.memory_guard=shrink")
    shrink = load_config("rvc-classic", ["source.chunk_mb=16", f"safety.memory_limit_mb={limit:.0f}",
                                         "safety.memory_guard=shrink"])
    smaller, guard = guard_plan(shrink_plan, 16.0, shrink.safety)
    assert guard.shrunk_from == 16.0 and smaller.chunk_mb < 16.0
