"""runtime/memory.py: the budget and the peak, portable (psutil; ``resource`` only where it exists)."""

import sys

import pytest
from rvc_index.runtime.memory import StageEstimate, mb, memory_budget, peak_rss_mb


def test_budget_and_peak_are_real_numbers_and_the_limit_binds():
    assert memory_budget().available > 0 and peak_rss_mb() > 10
    assert memory_budget(limit_mb=1).source.startswith("safety.memory_limit_mb=1")
    assert memory_budget(limit_mb=1).available == 0  # this process already holds more than 1 MiB


def test_an_estimate_needs_what_it_holds_and_keeps():
    estimate = StageEstimate("add", 3 * 2**20, 2**20, "x")
    assert estimate.need == 4 * 2**20 and mb(estimate.need) == "4 MB"


CHURN = """
import threading, numpy as np, psutil
from rvc_index.runtime.memory import release_freed_memory

def churn():  # 64 KB arrays sit below glibc's mmap threshold: they come from this thread's arena
    kept = [np.ones(2**14, np.float32) for _ in range(2400)]
    del kept[:-1]  # the last one pins the top of the arena: only a trim returns the rest

start = psutil.Process().memory_info().rss
threads = [threading.Thread(target=churn) for _ in range(2)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
before = psutil.Process().memory_info().rss
release_freed_memory()
print(start, before, psutil.Process().memory_info().rss)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_release_freed_memory_hands_thread_arenas_back_to_the_os():
    import subprocess

    out = subprocess.run([sys.executable, "-c", CHURN], capture_output=True, text=True, check=True).stdout
    start, before, after = map(int, out.split())  # a fresh process: no arena holds earlier tests' memory
    assert before - start > 120 * 2**20  # the threads' freed arrays stayed resident (up to 2 x 150 MB)
    assert before - after > 0.8 * (before - start)  # and the trim gave them back


PAGES = """
import os, sys
from pathlib import Path
from rvc_index.runtime.memory import avoid_compaction_stalls
print(avoid_compaction_stalls(Path(sys.argv[1])), os.environ.get("NUMPY_MADVISE_HUGEPAGE"), "numpy" in sys.modules)
"""


@pytest.mark.parametrize("defrag, changed", [("always defer defer+madvise [madvise] never", True),
                                             ("[always] defer defer+madvise madvise never", True),
                                             ("always defer defer+madvise madvise [never]", False),
                                             ("always [defer] defer+madvise madvise never", False)])
def test_numpys_huge_page_advice_is_off_only_where_faults_compact(tmp_path, defrag, changed):
    import os
    import subprocess

    path = tmp_path / "defrag"
    path.write_text(defrag + "\n")
    env = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    out = subprocess.run([sys.executable, "-c", PAGES, str(path)], capture_output=True, text=True, check=True,
                         env=env).stdout.split()
    assert out[-1] == "False"  # decided before numpy is imported
    assert (out[-2] == "0") is changed and ("compacts" in " ".join(out)) is changed
    env["NUMPY_MADVISE_HUGEPAGE"] = "1"  # the user's own setting wins
    out = subprocess.run([sys.executable, "-c", PAGES, str(path)], capture_output=True, text=True, check=True,
                         env=env).stdout.split()
    assert out == ["None", "1", "False"]


def test_zeros_in_huge_pages_are_zeros_and_large_ones_get_a_mapping_of_their_own():
    import mmap

    import numpy as np
    from rvc_index.runtime.memory import HUGE_PAGES_FROM, zeros_in_huge_pages

    small = zeros_in_huge_pages((4, 8), np.float32)
    assert small.shape == (4, 8) and small.dtype == np.float32 and not small.any()
    rows = HUGE_PAGES_FROM // (4 * 256) + 1
    large = zeros_in_huge_pages((rows, 256), np.float32)
    assert large.shape == (rows, 256) and large.flags.writeable and not large[::997].any()
    large[rows - 1] += 1.0  # written like any array
    assert float(large.sum()) == 256.0
    if getattr(mmap, "MADV_HUGEPAGE", None) is not None:  # Linux: its own private mapping, advised
        assert isinstance(large.base.base, memoryview) and isinstance(large.base.base.obj, mmap.mmap)
