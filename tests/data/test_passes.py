"""Few reads of a big collection (data/feature_set.py, runtime/stream.py, stages/compress.py): the
value check draws the init sample in its own read, a large collection gets one Lloyd pass after it,
the final pass runs on local threads in chunk order, and the dead-centre rule does not churn."""

import numpy as np
from rvc_index.compute.backend import select_backend
from rvc_index.compute.lloyd import N_FAR, ResidentRows
from rvc_index.compute.minibatch import fit_minibatch, new_state
from rvc_index.compute.two_level import TwoLevel, coarse_cells
from rvc_index.config.loading import load_config
from rvc_index.config.schema import CompressConfig
from rvc_index.data.feature_set import open_feature_set
from rvc_index.data.layouts import resolve_experiment
from rvc_index.data.sources import scan_manifest
from rvc_index.runtime.run import Run
from rvc_index.runtime.stream import ROWS_READ, iter_blocks, local_threads
from rvc_index.stages.compress import fit_centroids, plan_kmeans
from rvc_index.stages.passes import ChunkRows, PassCache
from rvc_index.tools import speechlike
from stage_runs import planned_kmeans

CPU = select_backend("cpu")


def open_set(path, sample_rows=0, chunk_mb=0.25):
    experiment = resolve_experiment(sorted(path.glob("3_feature*"))[0])
    return open_feature_set(experiment, scan_manifest(experiment), chunk_mb, sample_rows=sample_rows,
                            run=Run(CPU, seed=1))


def test_value_check_draws_the_sample_from_every_chunk_in_its_one_read(make_experiment):
    path = make_experiment("check", 6000, 64)
    before = ROWS_READ.rows
    features = open_set(path, sample_rows=600)
    assert ROWS_READ.rows - before == 6000  # the check read every row once, the sample came with it
    assert len(features.chunks) >= 4 and len(features.sample) == 600
    rows = np.concatenate(list(iter_blocks(features.array)))
    sample, ids = features.sample.take(600, np.random.default_rng(0))
    np.testing.assert_array_equal(rows[ids], sample)  # each drawn row's id in the collection
    found = {r.tobytes() for r in rows}
    assert all(r.tobytes() in found for r in sample)  # real rows of the collection
    starts = np.cumsum((0,) + features.chunk_rows)
    owner = [np.searchsorted(starts, np.flatnonzero((rows == r).all(1))[0], side="right") - 1 for r in sample]
    assert len(set(owner)) == len(features.chunks)  # stratified: every chunk contributes
    assert features.sample.take(600, np.random.default_rng(0)) is None  # handed over once, then released
    again = open_set(path, sample_rows=600).sample.take(600, np.random.default_rng(0))
    np.testing.assert_array_equal(again.rows, sample)  # seeded


def test_the_sample_leaves_out_drawn_rows_holding_nan_and_keeps_ids_straight(make_experiment):
    path = make_experiment("nan", 3000, 64)
    folder = sorted(path.glob("3_feature*"))[0]
    first = sorted(folder.glob("*.npy"))[0]
    broken = np.load(first)
    broken[::2, 5] = np.nan  # half its rows dropped by the check
    np.save(first, broken)
    features = open_set(path, sample_rows=1500)
    rows = np.concatenate(list(iter_blocks(features.array)))
    assert features.n_rows == 3000 - (len(broken) + 1) // 2
    drawn = features.sample.take(1300, np.random.default_rng(0))
    assert drawn is not None and np.isfinite(drawn.rows).all()
    assert (np.diff(drawn.ids) > 0).all()
    np.testing.assert_array_equal(rows[drawn.ids], drawn.rows)


def one_pass(features, assigner, cache=None):
    return ChunkRows(features, Run(CPU), cache).pass_sums(np, assigner, N_FAR)


def test_seeded_coarse_cells_and_reused_buffers_give_the_same_pass(make_experiment):
    features = open_set(make_experiment("seeded", 5000, 64))
    rows = np.concatenate(list(iter_blocks(features.array)))
    assigner = TwoLevel(rows[::400].copy(), 2, 1)
    assigner.prepare(np, rows[::40].copy())
    fresh = one_pass(features, assigner)
    ids = np.sort(np.random.default_rng(0).choice(5000, 2000, replace=False))
    cache = PassCache()
    cache.seed_cells(np, features.chunk_rows, ids, coarse_cells(np, assigner.tree, rows[ids], 1))
    assert all((c[:, 0] < 0).any() for c in cache.cells.values())  # the other rows: not known yet
    seeded = one_pass(features, assigner, cache)
    again = one_pass(features, assigner, cache)  # cells and buffers from the first
    for part in (seeded, again):
        np.testing.assert_array_equal(part.counts, fresh.counts)
        np.testing.assert_array_equal(part.sums, fresh.sums)
    lent = np.zeros((3 * features.max_chunk_rows + 5, 64), np.float32)  # e.g. the init sample, done with
    adopted = PassCache()
    assert adopted.adopt(lent, features.max_chunk_rows, 2) == 2 and adopted.adopt(lent[:, :8], 10, 2) == 0
    borrowed = one_pass(features, assigner, adopted)
    np.testing.assert_array_equal(borrowed.sums, fresh.sums)
    handed_back = [adopted.buffers.get() for _ in range(adopted.buffers.qsize())]
    assert sum(np.shares_memory(b, lent) for b in handed_back) == 2  # read into the lent pages, then kept
    norms = np.concatenate([cache.norms[i] for i in range(len(features.chunks))])  # kept for the next pass
    np.testing.assert_array_equal(norms, np.einsum("ij,ij->i", rows, rows))
    last = PassCache(keep_norms=False)  # no pass follows: nothing to keep them for
    np.testing.assert_array_equal(one_pass(features, assigner, last).sums, fresh.sums)
    assert last.norms == {} and len(last.cells) == len(features.chunks)
    known = np.concatenate([cache.cells[i] for i in range(len(features.chunks))])
    np.testing.assert_array_equal(known, coarse_cells(np, assigner.tree, rows, 1))  # every row's, as if found afresh
    assert 1 <= cache.buffers.qsize() <= local_threads()  # a buffer per thread, handed from pass to pass


def test_compress_without_minibatch_epochs_reads_the_collection_twice(make_experiment):
    path = make_experiment("reads", 8000, 64)
    config = load_config(None, ["compress.row_threshold=100", "compress.n_centroids=300", "compress.epochs=0",
                                 "compress.final_passes=1"]).compress
    kplan = plan_kmeans(8000, 300, config, CPU)
    before = ROWS_READ.rows
    features = open_set(path, sample_rows=kplan.check_sample_rows)
    state = planned_kmeans(features, 300, config, CPU, seed=0)
    assert (ROWS_READ.rows - before) / features.n_rows == 2.0  # value check + sample, then the final pass
    assert np.isfinite(state.centres).all() and state.coarse is not None
    large = plan_kmeans(10_000_000, 10_000, CompressConfig(epochs=1.0), CPU)
    assert large.steps == 0 and large.lloyd_passes == 1  # large: no epoch of its own, one Lloyd pass: 2 reads


def test_local_threaded_final_pass_equals_one_pass_in_memory(make_experiment):
    features = open_set(make_experiment("threads", 5000, 64))
    assert len(features.chunks) >= 4
    rows = np.concatenate(list(iter_blocks(features.array)))
    assigner = TwoLevel(rows[:: 500].copy(), 1, 2)
    assigner.prepare(np, rows[:: 50].copy())
    streamed = one_pass(features, assigner)
    whole = ResidentRows(rows).pass_sums(np, assigner, N_FAR)
    np.testing.assert_array_equal(streamed.counts, whole.counts)
    np.testing.assert_allclose(streamed.sums, whole.sums, rtol=1e-4, atol=1e-3)
    assert streamed.rows == 5000
    again = one_pass(features, assigner)
    np.testing.assert_array_equal(again.sums, streamed.sums)  # merged in chunk order: bit-identical
    cache = PassCache()
    first = one_pass(features, assigner, cache)
    assert sorted(cache.cells) == list(range(len(features.chunks)))  # every chunk's coarse cells kept
    assert sum(len(c) for c in cache.cells.values()) == 5000 and all(c.shape[1] == 2 for c in cache.cells.values())
    kept = one_pass(features, assigner, cache)  # the next pass skips the coarse step
    for part in (first, kept):
        np.testing.assert_array_equal(part.sums, streamed.sums)
        np.testing.assert_array_equal(part.counts, streamed.counts)


def test_dead_centre_rule_reseeds_a_small_fraction_on_unbalanced_data():
    """Zipf-sized clusters and 20 % duplicate silence: the old usage-EMA rule re-seeded several times
    K here; now a centre is re-seeded only when it wins nothing, at most once."""
    x = speechlike.sample_frames("zipf", 30_000, 32, seed=4)
    x = x[np.random.default_rng(0).permutation(len(x))]
    k = 500
    state = new_state(np, x[np.random.default_rng(1).choice(len(x), k, replace=False)].copy())
    fit_minibatch(CPU, (x[i:i + 1024] for _ in range(3) for i in range(0, len(x) - 1023, 1024)), state)
    assert 0 < state.reseeded <= 0.2 * k


def test_compress_of_a_resident_collection_reads_once_and_fits_the_same_centres(make_experiment):
    """The value check keeps the chunks; the k-means passes read them from memory, not the files, and
    leave them as they were: the same centres bit for bit, one read in all."""
    path = make_experiment("resident", 6000, 64)
    config = load_config(None, ["compress.row_threshold=100", "compress.n_centroids=200"]).compress
    kplan = plan_kmeans(6000, 200, config, CPU)
    experiment = resolve_experiment(sorted(path.glob("3_feature*"))[0])
    fitted, reads, chunks = [], [], []
    for resident in (True, False):
        before = ROWS_READ.rows
        features = open_feature_set(experiment, scan_manifest(experiment), 0.25, sample_rows=kplan.check_sample_rows,
                                    run=Run(CPU, seed=1), resident=resident)
        fitted.append(fit_centroids(features, kplan, Run(CPU)).centres)
        reads.append((ROWS_READ.rows - before) / features.n_rows)
        chunks.append([features.load_chunk(i).copy() for i in range(len(features.chunks))])
    assert reads[0] == 1.0 and reads[1] == 1.0 + kplan.lloyd_passes  # the streamed set reads again per Lloyd pass
    np.testing.assert_array_equal(fitted[0], fitted[1])
    for kept, streamed in zip(*chunks):  # the passes wrote nothing into the chunks they were lent
        np.testing.assert_array_equal(kept, streamed)
