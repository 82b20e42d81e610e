import pickle

import numpy as np
import pytest
from rvc_index.data.feature_set import open_feature_set, plan_chunks
from rvc_index.data.files import FeatureFileError, load_checked
from rvc_index.data.layouts import resolve_experiment
from rvc_index.data.sources import SourceError, load_group, scan_manifest
from rvc_index.runtime.run import HostOnly, Run
from rvc_index.runtime.stream import ROWS_READ, iter_blocks, take_rows


def feature_dir(tmp_path, name="3_feature768", exp="spk"):
    folder = tmp_path / exp / name
    folder.mkdir(parents=True)
    return folder


def save(folder, name, array):
    np.save(folder / name, array)
    return folder / name


def open_set(path, client=None, seed=0, **kwargs):
    experiment = resolve_experiment(path)
    on_bad = kwargs.pop("on_bad_file", "error")
    return open_feature_set(experiment, scan_manifest(experiment, on_bad), on_bad_file=on_bad,
                            run=Run(HostOnly(), client, seed), **kwargs)


def rows(n, dim=768, seed=0):
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


BAD_FILES = {
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:-100]), "truncated"),
    "text": (lambda p: p.write_text("not numpy at all"), "not a valid .npy"),
    "random": (lambda p: p.write_bytes(np.random.default_rng(1).bytes(5000)), "not a valid .npy"),
    "one_d": (lambda p: np.save(p, np.zeros(768, np.float32)), "2-D"),
    "three_d": (lambda p: np.save(p, np.zeros((2, 3, 768), np.float32)), "2-D"),
    "width": (lambda p: np.save(p, np.zeros((5, 512), np.float32)), "width 512"),
    "v1_in_v2": (lambda p: np.save(p, np.zeros((5, 256), np.float32)), "v1 and v2"),
    "int": (lambda p: np.save(p, np.zeros((5, 768), np.int32)), "floating-point"),
    "complex": (lambda p: np.save(p, np.zeros((5, 768), np.complex64)), "floating-point"),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_file_is_named_with_its_problem(tmp_path, kind):
    folder = feature_dir(tmp_path)
    save(folder, "good.npy", rows(20))
    bad = save(folder, "bad.npy", rows(20))
    corrupt, problem = BAD_FILES[kind]
    corrupt(bad)
    with pytest.raises(SourceError, match=problem) as info:
        open_set(folder)
    assert str(bad) in str(info.value)
    skipped = open_set(folder, on_bad_file="skip")
    assert skipped.n_rows == 20
    assert [name for name, _ in skipped.manifest.skipped] == ["bad.npy"]


def test_float16_is_upcast_and_nan_rows_dropped(tmp_path):
    folder = feature_dir(tmp_path)
    half = rows(30).astype(np.float16)
    save(folder, "a.npy", half)
    with_nan = rows(40, seed=1)
    with_nan[[3, 7]] = np.nan
    with_nan[9, 5] = np.inf
    save(folder, "b.npy", with_nan)
    save(folder, "c.npy", np.zeros((0, 768), np.float32))
    (folder / "readme.txt").write_text("ignored")
    fs = open_set(folder)
    assert fs.n_rows == 30 + 37
    assert fs.dropped_rows == 3
    assert fs.manifest.empty_files == ("c.npy",)
    assert fs.manifest.ignored == ("readme.txt",)
    data = fs.array.compute()
    assert data.dtype == np.float32
    np.testing.assert_array_equal(data[:30], half.astype(np.float32))
    np.testing.assert_array_equal(data[30:], np.delete(with_nan, [3, 7, 9], axis=0))


def test_all_nan_file_is_an_error(tmp_path):
    folder = feature_dir(tmp_path)
    save(folder, "a.npy", rows(10))
    save(folder, "b.npy", np.full((4, 768), np.nan, np.float32))
    with pytest.raises(SourceError, match=r"b.npy: all 4 rows are NaN or Inf"):
        open_set(folder)


def test_files_in_sorted_order_and_chunked_lazily(tmp_path, client):
    folder = feature_dir(tmp_path)
    parts = {name: rows(50 + i, seed=i) for i, name in enumerate(["b.npy", "a.npy", "c10.npy", "c2.npy"])}
    for name, array in parts.items():
        save(folder, name, array)
    fs = open_set(folder, chunk_mb=0.3, client=client)
    expected = np.concatenate([parts[n] for n in sorted(parts)])
    assert fs.n_rows == expected.shape[0]
    assert len(fs.chunks) > 1
    np.testing.assert_array_equal(np.concatenate(list(iter_blocks(fs.array, client))), expected)
    np.testing.assert_array_equal(np.concatenate(list(iter_blocks(fs.array))), expected)
    # the graph names files; it does not carry their data
    assert len(pickle.dumps(dict(fs.array.__dask_graph__()))) < expected.nbytes / 20


def test_take_rows_loads_only_the_chunks_it_needs_in_order(tmp_path, client):
    folder = feature_dir(tmp_path)
    parts = [rows(40 + 7 * i, seed=i) for i in range(6)]
    for i, array in enumerate(parts):
        save(folder, f"u{i}.npy", array)
    fs = open_set(folder, chunk_mb=0.2)
    expected = np.concatenate(parts)
    assert len(fs.chunks) >= 3
    last_chunk = expected.shape[0] - fs.array.chunks[0][-1]
    for ids in (np.array([0, 1, 5, last_chunk - 1, expected.shape[0] - 1]),  # skips middle chunks
                np.arange(expected.shape[0]), np.array([], dtype=np.int64)):
        np.testing.assert_array_equal(take_rows(fs.array, ids), expected[ids])
        np.testing.assert_array_equal(take_rows(fs.array, ids, client), expected[ids])
    assert take_rows(fs.array, np.array([], dtype=np.int64)).shape == (0, expected.shape[1])


def test_manifest_records_files_and_fingerprint_tracks_changes(tmp_path):
    folder = feature_dir(tmp_path)
    save(folder, "a.npy", rows(10))
    save(folder, "b.npy", rows(12))
    manifest = scan_manifest(resolve_experiment(folder))
    assert [(f.name, f.rows, f.dim) for f in manifest.files] == [("a.npy", 10, 768), ("b.npy", 12, 768)]
    assert manifest.rows == 22 and manifest.bytes == sum(f.stat().st_size for f in folder.iterdir())
    before = manifest.fingerprint()
    assert scan_manifest(resolve_experiment(folder)).fingerprint() == before
    save(folder, "b.npy", rows(13))
    assert scan_manifest(resolve_experiment(folder)).fingerprint() != before


@pytest.mark.parametrize("sizes, limit", [([], 10), ([5], 10), ([30], 10), ([3, 3, 3, 3], 7), ([1] * 20, 4),
                                          ([9, 1, 9, 1], 10), ([4, 7, 2, 11, 3], 7)])
def test_plan_chunks_covers_every_file_once_in_order(sizes, limit):
    groups = plan_chunks(sizes, limit)
    flat = [i for start, stop in groups for i in range(start, stop)]
    assert flat == list(range(len(sizes)))
    for start, stop in groups:
        assert stop > start
        assert stop - start == 1 or sum(sizes[start:stop]) <= limit


@pytest.mark.parametrize("threads", [2, 3, 4])
def test_plan_chunks_is_a_multiple_of_the_threads_when_files_are_small(threads):
    sizes = [3] * 61  # 183 bytes: 7 chunks of at most 30 would leave one core computing the last alone
    groups = plan_chunks(sizes, 30, threads)
    assert len(groups) % threads == 0 and all(sum(sizes[a:b]) <= 30 for a, b in groups)
    widths = [sum(sizes[a:b]) for a, b in groups]
    assert max(widths) - min(widths) <= 6  # equal shares, to a file or two
    assert [i for a, b in groups for i in range(a, b)] == list(range(61))


def test_load_group_fills_a_given_buffer_and_a_chunk_loads_as_its_block(tmp_path):
    folder = feature_dir(tmp_path)
    a, b = rows(6, seed=1), rows(4, seed=2)
    b[1, 3] = np.inf
    paths = [str(save(folder, "a.npy", a)), str(save(folder, "b.npy", b))]
    buffer = np.full((12, 768), -1.0, np.float32)
    got = load_group(paths, 768, [6, 4], buffer)
    assert np.shares_memory(got, buffer) and got.shape == (9, 768)
    np.testing.assert_array_equal(got, np.concatenate([a, b[[0, 2, 3]]]))
    small = np.zeros((5, 768), np.float32)
    assert not np.shares_memory(load_group(paths, 768, [6, 4], small), small)  # too small: a result of its own
    save(folder, "c.npy", rows(7, seed=3))
    features = open_set(folder, chunk_mb=2 * 768 * 4 * 7 / 2**20)
    assert features.max_chunk_rows == max(sum(f.rows for f in features.manifest.files[x:y]) for x, y in features.chunks)
    for index, block in enumerate(iter_blocks(features.array)):
        reused = features.load_chunk(index, np.empty((features.max_chunk_rows, 768), np.float32))
        np.testing.assert_array_equal(reused, block)


def test_every_layout_reads_as_numpy_loads_it(tmp_path):
    base = np.random.default_rng(0).standard_normal((7, 5))
    layouts = {"be": base.astype(">f4"), "f8": base, "fortran": np.asfortranarray(base.astype(np.float32)),
               "f16": base.astype(np.float16), "empty": np.zeros((0, 5), np.float32), "flat": base[0],
               "cube": np.asfortranarray(np.arange(24.0).reshape(2, 3, 4))}
    for name, array in layouts.items():  # one open, one header parse: no second np.load of the file
        path = tmp_path / f"{name}.npy"
        np.save(path, array)
        got, want = load_checked(path), np.load(path)
        assert got.dtype == want.dtype and got.shape == want.shape, name
        np.testing.assert_array_equal(got, want)


def test_load_group_drops_nonfinite_rows(tmp_path):
    folder = feature_dir(tmp_path)
    a = rows(5)
    a[1] = np.inf
    path = save(folder, "a.npy", a)
    assert load_group([str(path)], 768, [5]).shape == (4, 768)


def test_load_group_reads_float32_in_place_and_converts_the_rest(tmp_path):
    folder = feature_dir(tmp_path)
    a, b, c, d = rows(6, seed=1), rows(4, seed=2), rows(5, seed=3), rows(3, seed=4)
    b[2, 7] = np.nan  # dropped, the rows after it close the gap
    paths = [save(folder, "a.npy", a), save(folder, "b.npy", b), save(folder, "c.npy", c.astype(np.float16)),
             save(folder, "d.npy", np.asfortranarray(d))]
    got = load_group([str(p) for p in paths], 768, [6, 4, 5, 3])
    want = np.concatenate([a, b[[0, 1, 3]], c.astype(np.float16).astype(np.float32), d])
    np.testing.assert_array_equal(got, want)
    buffer = np.full((8, 768), -1.0, np.float32)
    view = load_checked(paths[0], into=buffer)
    assert np.shares_memory(view, buffer) and view.shape == (6, 768)
    np.testing.assert_array_equal(buffer[:6], a)
    assert (buffer[6:] == -1.0).all()
    assert not np.shares_memory(load_checked(paths[0], into=buffer[:5]), buffer)  # too small: an array of its own
    assert not np.shares_memory(load_checked(paths[2], into=buffer), buffer)  # float16: converted, not in place
    with pytest.raises(FeatureFileError, match="changed during the build"):
        load_group([str(p) for p in paths], 768, [6, 5, 5, 3])


def mixed_folder(tmp_path):
    """float32 with NaN/Inf rows, float16, Fortran order, big-endian: every way a file reaches the rows."""
    folder = feature_dir(tmp_path)
    a, b, c, d = rows(6, seed=1), rows(9, seed=2), rows(5, seed=3), rows(7, seed=4)
    b[[2, 5], 7] = np.nan
    b[8, 0] = np.inf
    save(folder, "a.npy", a)
    save(folder, "b.npy", b)
    save(folder, "c.npy", c.astype(np.float16))
    save(folder, "d.npy", np.asfortranarray(d))
    save(folder, "e.npy", rows(4, seed=5).astype(">f4"))
    return folder


@pytest.mark.parametrize("chunk_mb", [0.02, 64.0])
def test_a_resident_collection_holds_what_its_files_stream(tmp_path, chunk_mb):
    """The value check keeps each chunk as ``load_chunk`` reads it from the files (NaN rows out, every
    dtype and order), draws the same init sample, and later passes read no file."""
    folder = mixed_folder(tmp_path)
    streamed = open_set(folder, chunk_mb=chunk_mb, sample_rows=12, seed=4)
    kept = open_set(folder, chunk_mb=chunk_mb, sample_rows=12, seed=4, resident=True)
    assert kept.is_resident and not streamed.is_resident and len(kept.resident) == len(kept.chunks)
    assert kept.n_rows == streamed.n_rows == 6 + 6 + 5 + 7 + 4 and kept.dropped_rows == 3
    for index in range(len(kept.chunks)):
        np.testing.assert_array_equal(kept.load_chunk(index), streamed.load_chunk(index))
    np.testing.assert_array_equal(kept.sample.rows, streamed.sample.rows)
    np.testing.assert_array_equal(kept.sample.ids, streamed.sample.ids)
    before = ROWS_READ.rows
    np.testing.assert_array_equal(np.concatenate(list(iter_blocks(kept))), np.concatenate(list(iter_blocks(streamed))))
    assert ROWS_READ.rows - before == streamed.n_rows  # the streamed set read its files; the resident one none
    ids = np.array([0, 7, 20, 27])
    np.testing.assert_array_equal(take_rows(kept, ids), take_rows(streamed, ids))


def test_a_resident_collection_streams_after_all_when_a_file_is_skipped(tmp_path):
    folder = mixed_folder(tmp_path)
    (folder / "0.npy").write_bytes(b"not a numpy file")  # skipped by the scan: the check never sees it
    assert open_set(folder, chunk_mb=64.0, resident=True, on_bad_file="skip").is_resident
    save(folder, "f.npy", np.full((5, 768), np.nan, np.float32))  # skipped by the value check: chunks planned again
    kept = open_set(folder, chunk_mb=64.0, resident=True, on_bad_file="skip")
    assert not kept.is_resident and [name for name, _ in kept.manifest.skipped] == ["0.npy", "f.npy"]
    assert kept.n_rows == 28 and np.concatenate(list(iter_blocks(kept))).shape == (28, 768)


def test_a_file_rewritten_after_the_scan_is_a_problem_of_the_resident_check(tmp_path):
    folder = mixed_folder(tmp_path)
    experiment = resolve_experiment(folder)
    manifest = scan_manifest(experiment)
    save(folder, "a.npy", rows(3, seed=1))  # shorter than its header said at the scan
    with pytest.raises(SourceError, match=r"a.npy: changed during the build: 6 rows when the build started, 3 now"):
        open_feature_set(experiment, manifest, 64.0, resident=True)
