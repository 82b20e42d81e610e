"""runtime/memory.py: the budget and the peak, portable (psutil; ``resource`` only where it exists)."""

import sys

import numpy as np
import pytest
from rvc_index.runtime.memory import StageEstimate, mb, memory_budget, peak_rss_mb, release_freed_memory


def test_budget_and_peak_are_real_numbers_and_the_limit_binds():
    assert memory_budget().available > 0 and peak_rss_mb() > 10
    assert memory_budget(limit_mb=1).source.startswith("safety.memory_limit_mb=1")
    assert memory_budget(limit_mb=1).available == 0  # this process already holds more than 1 MiB


def test_an_estimate_needs_what_it_holds_and_keeps():
    estimate = StageEstimate("add", 3 * 2**20, 2**20, "x")
    assert estimate.need == 4 * 2**20 and mb(estimate.need) == "4 MB"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_release_freed_memory_hands_thread_arenas_back_to_the_os():
    import threading

    import psutil

    def churn():  # 1 MB arrays sit below glibc's mmap threshold: they come from this thread's arena
        kept = [np.ones(2**18, np.float32) for _ in range(150)]
        del kept[:-1]

    threads = [threading.Thread(target=churn) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    before = psutil.Process().memory_info().rss
    release_freed_memory()
    after = psutil.Process().memory_info().rss
    assert before - after > 100 * 2**20  # most of the 300 MB freed by the threads leaves the process
