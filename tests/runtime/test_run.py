"""The execution context (runtime/run.py) and the one local thread map (runtime/threads.py)."""

import threading
import time

import numpy as np
import pytest
from rvc_index.compute.backend import select_backend
from rvc_index.runtime.run import HOST_RUN, Run
from rvc_index.runtime.threads import in_threads, local_threads


def test_in_threads_keeps_order_and_runs_numpy_work_on_every_core():
    seen = set()

    def work(i):
        seen.add(threading.get_ident())
        x = np.full((200, 200), float(i), np.float32)
        return float((x @ x)[0, 0])

    workers = local_threads()
    assert list(in_threads(work, range(12), workers)) == [200.0 * i * i for i in range(12)]
    assert list(in_threads(work, [], workers)) == []
    assert (threading.main_thread().ident not in seen) == (workers > 1)  # a pool of one thread per core


def test_in_threads_submits_a_bounded_window_ahead():
    """Items are submitted at most ``ahead`` beyond the one being yielded: results waiting for an earlier one (a
    chunk's k-means sums, a loaded chunk) stay few, whatever the number of items."""
    started, lock = [], threading.Lock()

    def work(i):
        with lock:
            started.append(i)
        return i

    taken = []
    for result in in_threads(work, range(40), 2, ahead=3):
        time.sleep(0.002)  # let the pool run ahead as far as it may
        with lock:
            assert len(started) <= result + 3  # never more than ``ahead`` submitted beyond this one
        taken.append(result)
    assert taken == list(range(40))


def test_in_threads_without_a_window_lets_no_worker_wait_for_a_slow_item_ahead():
    """Uneven items (the init's coarse cells): while the first item runs long, the other worker goes through all
    the rest; a window of ``ahead`` items would hold it to a few."""
    done, lock = [], threading.Lock()

    def work(i):
        time.sleep(0.5 if i == 0 else 0.001)
        with lock:
            done.append(i)
        return i

    results = in_threads(work, range(30), 2)
    assert next(results) == 0 and len(done) == 30  # every other item finished while item 0 ran
    assert list(results) == list(range(1, 30))
    done.clear()
    windowed = in_threads(work, range(30), 2, ahead=4)
    assert next(windowed) == 0 and len(done) <= 4
    assert list(windowed) == list(range(1, 30))


def test_in_threads_raises_what_an_item_raised():
    def work(i):
        if i == 5:
            raise ValueError("item 5")
        return i

    with pytest.raises(ValueError, match="item 5"):
        list(in_threads(work, range(10), 2))


def test_run_maps_on_local_threads_and_reads_blocks_locally():
    run = Run(select_backend("cpu"), seed=3, label="alice")
    assert run.local and run.prefix == "alice: " and run.workers() == local_threads()
    assert list(run.map(lambda i: i * i, range(6))) == [0, 1, 4, 9, 16, 25]
    assert run.rng().integers(1 << 30) == np.random.default_rng(3).integers(1 << 30)  # each call starts afresh
    rows = np.arange(20, dtype=np.float32).reshape(10, 2)
    assert np.array_equal(np.concatenate(list(run.blocks(rows))), rows)
    assert np.array_equal(run.take_rows(rows, np.array([1, 7])), rows[[1, 7]])
    assert [b.shape[0] for b in run.batches(rows, 4)] == [4, 4, 2]
    assert HOST_RUN.local and HOST_RUN.workers() == local_threads() and not HOST_RUN.backend.is_gpu
