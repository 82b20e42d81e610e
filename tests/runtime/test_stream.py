"""runtime/stream.py: chunks in order, only the chunks a sample needs, the same rows on threads and clusters."""

import dask.array as da
import numpy as np
from rvc_index.runtime.stream import ROWS_READ, iter_batches, iter_blocks, sample_row_ids, take_rows


def chunked(rows: int = 1000, dim: int = 8, chunk: int = 128) -> tuple[np.ndarray, da.Array]:
    data = np.arange(rows * dim, dtype=np.float32).reshape(rows, dim)
    return data, da.from_array(data, chunks=(chunk, dim))


def test_blocks_come_in_order_on_threads_and_on_a_cluster(client):
    data, array = chunked()
    assert np.array_equal(np.concatenate(list(iter_blocks(array, prefetch=3))), data)
    assert np.array_equal(np.concatenate(list(iter_blocks(array, client))), data)
    assert [b.shape[0] for b in iter_blocks(data, block_rows=300)] == [300, 300, 300, 100]


def test_batches_cut_every_chunk_and_keep_the_order():
    data, array = chunked()
    batches = list(iter_batches(array, 100))
    assert max(b.shape[0] for b in batches) == 100 and np.array_equal(np.concatenate(batches), data)


def test_take_rows_reads_only_the_chunks_holding_the_sample():
    data, array = chunked()
    ids = np.array([5, 130, 131, 999])
    assert np.array_equal(take_rows(array, ids), data[ids])
    assert np.array_equal(take_rows(data, ids), data[ids]) and take_rows(array, ids[:0]).shape == (0, 8)


def test_samples_are_seeded_sorted_and_distinct():
    a = sample_row_ids(10_000, 500, np.random.default_rng(3))
    assert np.array_equal(a, sample_row_ids(10_000, 500, np.random.default_rng(3)))
    assert len(np.unique(a)) == 500 and np.all(np.diff(a) > 0)
    assert np.array_equal(sample_row_ids(10, 50, np.random.default_rng(0)), np.arange(10))


def test_the_read_counter_counts_rows_read_from_files(make_experiment, feature_set):
    features = feature_set(make_experiment("counted", 3000, 256))
    before = ROWS_READ.rows
    sum(block.shape[0] for block in iter_blocks(features.array))
    assert ROWS_READ.rows - before == 3000
