"""runtime/memory.py: the budget and the peak, portable (psutil; ``resource`` only where it exists)."""

from rvc_index.runtime.memory import StageEstimate, mb, memory_budget, peak_rss_mb


def test_budget_and_peak_are_real_numbers_and_the_limit_binds():
    assert memory_budget().available > 0 and peak_rss_mb() > 10
    assert memory_budget(limit_mb=1).source.startswith("safety.memory_limit_mb=1")
    assert memory_budget(limit_mb=1).available == 0  # this process already holds more than 1 MiB


def test_an_estimate_needs_what_it_holds_and_keeps():
    estimate = StageEstimate("add", 3 * 2**20, 2**20, "x")
    assert estimate.need == 4 * 2**20 and mb(estimate.need) == "4 MB"
