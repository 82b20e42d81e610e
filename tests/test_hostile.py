"""Hostile inputs (issue 15): our own outputs, odd names and file kinds, files changing mid-build,
lying headers, crafted configs and index files. Each test is a row of docs/reliability.md's matrix."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import struct
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import pytest
from rvc_index.cli import main
from rvc_index.config.loading import config_from_dict, load_config
from rvc_index.config.schema import WIDE_INT_KEYS, Config, ConfigError
from rvc_index.data.feature_set import open_feature_set
from rvc_index.data.layouts import resolve_experiment
from rvc_index.data.sources import FeatureFileError, SourceError, load_features, scan_manifest
from rvc_index.evaluation.holdout import holdout_from_folder
from rvc_index.evaluation.index_file import IndexFileError, read_index_file
from rvc_index.inspection.rvc_files import OutputError, check_stem
from rvc_index.tools.synth import SpeakerSpec, write_speaker

REPO = Path(__file__).resolve().parent.parent
FAST = ["evaluate.recall_queries=100", "evaluate.plot=false", "evaluate.nprobe_sweep=false"]


def rows(n: int, dim: int = 256, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def folder_of(tmp_path: Path, parts: dict[str, np.ndarray], name: str = "3_feature256") -> Path:
    folder = tmp_path / "spk" / name
    folder.mkdir(parents=True)
    for file, array in parts.items():
        np.save(folder / file, array)
    return folder


def build(path: Path, out: Path, *settings: str) -> int:
    sets = [arg for item in [*FAST, *settings] for arg in ("--set", item)]
    return main(["-q", "build", str(path), "--out", str(out), "--config", "rvc-classic", "--backend", "cpu", *sets])


def report_of(out: Path) -> dict:
    return json.loads(next(out.glob("rvc-index-*.report.json")).read_text())


def manifest_of(folder: Path, on_bad_file: str = "error"):
    return scan_manifest(resolve_experiment(folder), on_bad_file)


# --- our own outputs, hidden and temporary files ---------------------------------------------------------------

def test_own_outputs_are_never_read_as_features(tmp_path):
    """``build F --out F --set output.write_total_fea=true``: the second and third builds still see 1,800 rows."""
    folder = tmp_path / "F"
    folder.mkdir()
    for i in range(3):
        np.save(folder / f"{i}.npy", rows(600, seed=i))
    np.save(folder / "x.tmp-7.npy", rows(50))  # a temporary name, even without the leading dot
    assert build(folder, folder, "output.write_total_fea=true") == 0
    assert np.load(folder / "total_fea.npy").shape == (1800, 256)
    assert build(folder, folder, "output.write_total_fea=true") == 0  # up to date: our outputs are not inputs
    assert main(["-q", "build", str(folder), "--out", str(folder), "--config", "rvc-classic", "--backend", "cpu",
                 "--force", *[a for s in [*FAST, "output.write_total_fea=true"] for a in ("--set", s)]]) == 0
    report = report_of(folder)
    assert report["rows"] == report["index"]["ntotal"] == 1800
    assert np.load(folder / "total_fea.npy").shape == (1800, 256)
    manifest = manifest_of(folder)
    assert [f.name for f in manifest.files] == ["0.npy", "1.npy", "2.npy"]
    assert "total_fea.npy" in manifest.ignored and "x.tmp-7.npy" not in manifest.ignored


def test_appledouble_files_are_ignored_with_a_note(tmp_path, caplog):
    folder = folder_of(tmp_path, {"a.npy": rows(20)})
    (folder / "._a.npy").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(60))
    (folder / ".a.npy.tmp-123").write_bytes(b"half")
    manifest = manifest_of(folder)
    assert [f.name for f in manifest.files] == ["a.npy"] and manifest.ignored == ("._a.npy",)
    assert "macOS AppleDouble metadata (._a.npy)" in caplog.text


def test_rvc_total_fea_is_not_replaced_without_force(tmp_path, capsys):
    folder = folder_of(tmp_path, {"a.npy": rows(300), "b.npy": rows(300, seed=1)})
    theirs = folder.parent / "total_fea.npy"  # RVC's, beside its feature folder: the default output folder
    np.save(theirs, rows(10))
    before = theirs.read_bytes()
    assert build(folder.parent, folder.parent, "output.write_total_fea=true") == 1
    assert f"{theirs}: exists and was not written by this preset (RVC's own?); use --force" in capsys.readouterr().err
    assert theirs.read_bytes() == before and not list(folder.parent.glob("*.index"))
    assert main(["-q", "build", str(folder.parent), "--config", "rvc-classic", "--backend", "cpu", "--force",
                 *[a for s in [*FAST, "output.write_total_fea=true"] for a in ("--set", s)]]) == 0
    assert np.load(theirs).shape == (600, 256)


# --- names and kinds of entries --------------------------------------------------------------------------------

def test_non_utf8_file_name_builds_and_is_named(tmp_path, capsys):
    folder = folder_of(tmp_path, {"a.npy": rows(300), "b.npy": rows(300, seed=1)})
    odd = os.path.join(os.fsencode(folder), b"caf\xe9.npy")
    with open(odd, "wb") as handle:
        np.save(handle, rows(300, seed=2))
    assert build(folder, tmp_path / "out") == 0
    assert report_of(tmp_path / "out")["rows"] == 900
    with open(odd, "r+b") as handle:
        handle.truncate(1000)
    assert build(folder, tmp_path / "out2") == 1
    assert f"{folder}/caf\\xe9.npy: truncated" in capsys.readouterr().err


def test_long_experiment_name_fails_before_any_work(tmp_path, capsys):
    check_stem("v", "x" * 160)
    with pytest.raises(OutputError, match="the experiment name is 230 bytes"):
        check_stem("v", "x" * 230)
    folder = folder_of(tmp_path, {"a.npy": rows(50)})
    named = folder.parent.rename(tmp_path / ("v" * 230))
    started = time.perf_counter()
    assert build(named, tmp_path / "out") == 1
    assert "the experiment name is 230 bytes" in capsys.readouterr().err
    assert time.perf_counter() - started < 5
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_dangling_symlink_is_a_bad_file(tmp_path):
    folder = folder_of(tmp_path, {"a.npy": rows(20)})
    (folder / "b.npy").symlink_to("/mnt/unmounted-nas/b.npy")
    with pytest.raises(SourceError, match=r"b.npy: symbolic link to /mnt/unmounted-nas/b.npy, which does not exist"):
        manifest_of(folder)
    assert manifest_of(folder, "skip").skipped[0][0] == "b.npy"


def test_fifo_and_device_files_are_bad_files_never_opened(tmp_path):
    folder = folder_of(tmp_path, {"a.npy": rows(20)})
    os.mkfifo(folder / "fifo.npy")  # opening it for reading would block forever
    (folder / "zero.npy").symlink_to("/dev/zero")
    (folder / "sub.npy").mkdir()
    with pytest.raises(SourceError) as info:
        manifest_of(folder)
    assert "fifo.npy: a FIFO, not a feature file" in str(info.value)
    assert "zero.npy: a character device, not a feature file" in str(info.value)
    assert "sub.npy" not in str(info.value)  # a folder is ignored, not a bad file
    manifest = manifest_of(folder, "skip")
    assert [f.name for f in manifest.files] == ["a.npy"] and manifest.ignored == ("sub.npy",)
    with pytest.raises(FeatureFileError, match="a FIFO"):
        load_features(folder / "fifo.npy", 256)


def test_feature_dir_symlink_loop_is_named(tmp_path):
    exp = tmp_path / "spk"
    exp.mkdir()
    (exp / "3_feature768").symlink_to(exp / "3_feature768")
    with pytest.raises(SourceError, match=r"3_feature768: symbolic link loop"):
        resolve_experiment(exp)
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(SourceError, match=r"loop: symbolic link loop"):
        resolve_experiment(tmp_path / "loop")


def _npy_with_header(path: Path, header: str, data: bytes = b"") -> Path:
    text = header.encode("latin1")
    text += b" " * (-(10 + len(text) + 1) % 64) + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + data)
    return path


LYING_HEADERS = {
    "trillion-rows": ("{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, 256), }", "truncated"),
    "beyond-int64": ("{'descr': '<f4', 'fortran_order': False, 'shape': (10**30, 256), }", "not a valid .npy"),
    "huge-literal": ("{'descr': '<f4', 'fortran_order': False, 'shape': (" + "9" * 30 + ", 256), }", "truncated"),
    "negative": ("{'descr': '<f4', 'fortran_order': False, 'shape': (-5, 256), }", "negative dimension"),
    "zero-width": ("{'descr': '<f4', 'fortran_order': False, 'shape': (10, 0), }", "width 0"),
    "object": ("{'descr': '|O', 'fortran_order': False, 'shape': (2, 256), }", "holds Python objects"),
    "nested": ("{'descr': '<f4', 'fortran_order': False, 'shape': " + "(" * 300 + ")" * 300 + "}",
               "not a valid .npy"),
}


@pytest.mark.parametrize("case", sorted(LYING_HEADERS))
def test_lying_headers_are_bad_files(case, tmp_path):
    header, problem = LYING_HEADERS[case]
    folder = tmp_path / "loose"
    folder.mkdir()
    np.save(folder / "a.npy", rows(20))
    _npy_with_header(folder / "b.npy", header, bytes(4096))
    with pytest.raises(SourceError, match=problem) as info:
        manifest_of(folder)
    assert f"{folder / 'b.npy'}: " in str(info.value)


class _Trap:
    def __reduce__(self):
        return (open, (str(Path(os.environ["RVC_INDEX_TRAP"])), "w"))


def test_pickled_arrays_are_never_unpickled(tmp_path, monkeypatch):
    trap = tmp_path / "unpickled"
    monkeypatch.setenv("RVC_INDEX_TRAP", str(trap))
    folder = folder_of(tmp_path, {"a.npy": rows(20)})
    np.save(folder / "b.npy", np.array([_Trap(), _Trap()], dtype=object), allow_pickle=True)
    with pytest.raises(SourceError, match="b.npy: holds Python objects"):
        manifest_of(folder)
    with pytest.raises(FeatureFileError):
        load_features(folder / "b.npy", 256)
    assert not trap.exists()
    assert pickle.loads(pickle.dumps(1)) == 1  # pickle itself works here: the trap is real


# --- files that change while a build runs ---------------------------------------------------------------------

@pytest.mark.parametrize("new_rows", [100, 450])  # 450: the old check blamed a later file
@pytest.mark.parametrize("chunk_mb", [0.05, 64.0])  # one file per chunk / every file in one chunk
def test_file_changed_during_the_build_is_named(tmp_path, new_rows, chunk_mb):
    folder = folder_of(tmp_path, {f"{i}.npy": rows(400 if i == 1 else 50, seed=i) for i in range(4)})
    experiment = resolve_experiment(folder)
    features = open_feature_set(experiment, scan_manifest(experiment), chunk_mb)
    np.save(folder / "1.npy", rows(new_rows, seed=9))  # rewritten after the scan, before [train] reads it
    with pytest.raises(FeatureFileError) as info:
        features.array.compute()
    assert str(info.value).startswith(f"{folder / '1.npy'}: changed during the build: 400 rows when the build "
                                      f"started, {new_rows} now")


# --- scale ----------------------------------------------------------------------------------------------------

def test_scan_is_linear_in_the_number_of_files(tmp_path):
    """One-frame files (hard links of one): 10x the files, about 10x the scan's CPU time. The old scan's
    list membership test made it quadratic: 40,000 files took ~40x the time of 4,000 (50,000: 60 s)."""
    def folder_of_files(n: int) -> Path:
        folder = tmp_path / f"n{n}"
        folder.mkdir()
        np.save(folder / "00000.npy", rows(1))
        for i in range(1, n):
            os.link(folder / "00000.npy", folder / f"{i:05d}.npy")
        (folder / "notes.txt").write_text("ignored")
        return folder

    def scan_seconds(folder: Path) -> float:
        started = time.process_time()  # this process's CPU: other processes on the machine do not count
        manifest_of(folder)
        return time.process_time() - started

    small, large = folder_of_files(4000), folder_of_files(40000)
    small_s = min(scan_seconds(small) for _ in range(3))
    large_s = scan_seconds(large)
    assert large_s < 20 * max(small_s, 0.05), (small_s, large_s)


# --- configs --------------------------------------------------------------------------------------------------

def _alias_bomb(levels: int) -> str:
    """``seed:`` holding 9^levels strings, in ~60 bytes per level (the old message printed them all)."""
    lines = ["seed:", "  - &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"  - &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("levels", [6, 9])
def test_yaml_alias_bomb_is_refused_at_once(levels, tmp_path, capsys):
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb(levels))
    assert len(path.read_bytes()) < 600
    started = time.perf_counter()
    assert main(["build", str(tmp_path), "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert time.perf_counter() - started < 2 and len(err) < 400, err[:1000]
    assert f"{path}: line 2: YAML aliases are not allowed in a config" in err


def test_duplicate_yaml_key_is_named_with_its_line(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("name: mine\nindex:\n  nprobe: 4\nseed: 1\nindex:\n  nprobe: 8\n")
    with pytest.raises(ConfigError, match=r"dup.yaml: line 5: duplicate key 'index' \(first at line 2\)"):
        load_config(path)
    path.write_text("index:\n  nprobe: 4\n  nprobe: 8\n")
    with pytest.raises(ConfigError, match=r"line 3: duplicate key 'nprobe' \(first at line 2\)"):
        load_config(path)


def _keys(kind: type) -> list[str]:
    config = Config()
    keys = [f.name for f in dataclasses.fields(config) if type(getattr(config, f.name)) is kind]
    for section in dataclasses.fields(config):
        value = getattr(config, section.name)
        if dataclasses.is_dataclass(value):
            keys += [f"{section.name}.{f.name}" for f in dataclasses.fields(value)
                     if type(getattr(value, f.name)) is kind]
    return keys


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_non_finite_numbers_name_the_key(value):
    for key in _keys(float):
        with pytest.raises(ConfigError, match=rf"^{key} must be a finite number"):
            config_from_dict({}, [f"{key}={value}"])


def test_out_of_range_integers_name_the_key():
    for key in _keys(int):
        limit = WIDE_INT_KEYS.get(key, 2**31 - 1)
        with pytest.raises(ConfigError, match=rf"^{key} must be between"):
            config_from_dict({}, [f"{key}={limit + 1}"])
    with pytest.raises(ConfigError, match=r"^seed must be >= 0, got -1"):
        config_from_dict({}, ["seed=-1"])
    assert config_from_dict({}, ["seed=2147483647", "compress.row_threshold=1000000000000"]).seed == 2**31 - 1


@pytest.mark.parametrize("override, message", [
    ("seed=4294967295", "seed must be between"),
    ("seed=.nan", "seed: expected an integer, got nan"),
    ("cluster.memory=1e400GB", "cluster.memory: '1e400GB' is not a size"),
    ("cluster.memory=-5GB", "cluster.memory: '-5GB' is not a size"),
    ("cluster.queue=" + "q" * 5000, "cluster.queue: expected a line of at most 1024 printable characters"),
    ('cluster.account="a\\0b"', "cluster.account: expected a line"),  # YAML's \0: a NUL byte
    ("name=" + "n" * 200, "name must be a word of 1 to 64"),
    ("name=..", "name must be a word"),
    ("seed=" + "[" * 50 + "]" * 50, "--set seed: line 1: nested deeper than 8 levels"),
])
def test_hostile_overrides_are_config_errors(override, message):
    with pytest.raises(ConfigError) as info:
        config_from_dict({}, [override])
    assert message in str(info.value) and len(str(info.value)) < 400


@pytest.mark.parametrize("content, message", [
    (b"seed: !!python/object/apply:os.system ['touch pwned']\n", "not valid YAML: could not determine a constructor"),
    (b"seed: " + b"[" * 2000 + b"]" * 2000 + b"\n", "nest"),  # libyaml's own limit, or ours
    (b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "not UTF-8 text"),
    (b"# padding\n" * 200_000, "larger than 1048576 bytes: not a config"),
    (b"- a list\n", "expected a mapping at the top level"),
    (b"seed: [" + b"1, " * 20_000 + b"1]\n", "seed: expected an integer, got [1, 1, 1, 1, ...]"),
])
def test_hostile_yaml_is_a_config_error(content, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "hostile.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value) and len(str(info.value)) < 600
    assert not (tmp_path / "pwned").exists()


def test_tune_out_into_a_missing_folder_fails_up_front(tmp_path, capsys):
    folder = folder_of(tmp_path, {"a.npy": rows(500), "b.npy": rows(500, seed=1)})
    started = time.perf_counter()
    assert main(["-q", "tune", str(folder), "--quick", "--backend", "cpu", "--out",
                 str(tmp_path / "missing" / "tuned.yaml")]) == 1
    assert f"--out {tmp_path / 'missing' / 'tuned.yaml'}: {tmp_path / 'missing'} is not a folder" in \
        capsys.readouterr().err
    assert time.perf_counter() - started < 5


# --- evaluation inputs ----------------------------------------------------------------------------------------

def _index_over(folder: Path, path: Path) -> Path:
    data = np.concatenate([np.load(p) for p in sorted(folder.glob("*.npy"))])
    index = faiss.index_factory(data.shape[1], "IVF4,Flat")
    index.train(data)
    index.add(data)
    faiss.write_index(index, str(path))
    return path


def test_eval_queries_with_all_nan_files(tmp_path):
    queries = folder_of(tmp_path, {"a.npy": np.full((60, 256), np.nan, np.float32), "b.npy": rows(80),
                                   "c.npy": np.full((70, 256), np.inf, np.float32)}, "queries")
    for seed in range(8):
        holdout = holdout_from_folder(queries, 100, seed, 256)
        assert holdout.queries.shape == (80, 256) and holdout.files == ("b.npy",)
    for name in ("b.npy",):
        np.save(queries / name, np.full((5, 256), np.nan, np.float32))
    with pytest.raises(ValueError, match="every query frame holds NaN or Inf"):
        holdout_from_folder(queries, 100, 0, 256)


def _eval_cli(index: Path, features: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rvc_index", "eval", str(index), str(features), "--backend", "cpu",
                           "--no-sweep", "--max-queries", "50"], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_eval_refuses_an_idmap_index(tmp_path, capsys):
    folder = folder_of(tmp_path, {f"{i}.npy": rows(100, seed=i) for i in range(4)})
    idmap = faiss.IndexIDMap(faiss.IndexFlatL2(256))
    idmap.add_with_ids(np.concatenate([np.load(p) for p in sorted(folder.glob("*.npy"))]), np.arange(400) * 3)
    faiss.write_index(idmap, str(tmp_path / "idmap.index"))
    proc = _eval_cli(tmp_path / "idmap.index", folder)  # faiss aborted the process (SIGABRT, exit 134)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f"{tmp_path / 'idmap.index'}: IndexIDMap is not supported: only IVF indexes" in proc.stderr
    assert main(["inspect", str(tmp_path / "idmap.index")]) == 1
    assert "IndexIDMap is not supported" in capsys.readouterr().err


@pytest.mark.parametrize("layout", ["IVF4,Flat", "IVF4,PQ32x4fs,RFlat"])
def test_eval_refuses_a_corrupted_ntotal(layout, tmp_path):
    folder = folder_of(tmp_path, {f"{i}.npy": rows(100, seed=i) for i in range(4)})
    data = np.concatenate([np.load(p) for p in sorted(folder.glob("*.npy"))])
    index = faiss.index_factory(256, layout)
    index.train(data)
    index.add(data)
    path = tmp_path / "corrupt.index"
    raw = bytearray(faiss.serialize_index(index).tobytes())
    assert struct.unpack("<iq", raw[4:16]) == (256, 400)  # fourcc, d, ntotal: the outer header
    raw[8:16] = struct.pack("<q", 10**15)
    path.write_bytes(bytes(raw))
    with pytest.raises(IndexFileError, match=r"corrupted: vector counts disagree \(the header 1000000000000000"):
        read_index_file(path)
    if layout == "IVF4,Flat":  # the CLI once looped over 10^15 vectors: now it stops at once
        proc = _eval_cli(path, folder, timeout=60)
        assert proc.returncode == 1 and "corrupted: vector counts disagree" in proc.stderr, proc.stderr[-2000:]
    assert read_index_file(_index_over(folder, tmp_path / "fine.index")).ntotal == 400


# --- round 2 (issue 24): output options, console encodings, arguments and environment -----------------------

def test_output_options_are_checked_before_any_work(tmp_path, capsys):
    """Each ran the whole job, then failed naming a temporary file; ``--out ""`` wrote into this folder."""
    folder = folder_of(tmp_path, {"a.npy": rows(500), "b.npy": rows(500, seed=1)})
    index = _index_over(folder, tmp_path / "x.index")
    (tmp_path / "adir").mkdir()
    (tmp_path / "adir.index").mkdir()
    missing = tmp_path / "missing" / "m.json"
    cases = [
        (["eval", str(index), str(folder), "--json", str(missing)], f"--json {missing}: {missing.parent} is not a "
                                                                     "folder (it does not exist)"),
        (["eval", str(index), str(folder), "--png", str(tmp_path / "adir")], f"--png {tmp_path / 'adir'}: is a folder"),
        (["tune", str(folder), "--quick", "--out", str(tmp_path / "adir")], f"--out {tmp_path / 'adir'}: is a folder"),
        (["build", str(folder), "--index-path", str(tmp_path / "adir.index")], "adir.index: is a folder"),
        (["build", str(folder), "--out", ""], "--out '': an empty path"),
        (["batch", str(tmp_path), "--out", ""], "--out '': an empty path"),
        (["batch", str(tmp_path), "--report", str(tmp_path / "adir")], f"--report {tmp_path / 'adir'}: is a folder"),
        (["batch", str(tmp_path), "--performance-report", str(missing)], f"--performance-report {missing}: "),
    ]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for args, message in cases:
        started = time.perf_counter()
        assert main(["-q", *args, "--backend", "cpu"]) == 1, args
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (args, err)
        assert time.perf_counter() - started < 3, args
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written, anywhere


def test_a_successful_build_exits_0_on_any_console_encoding(tmp_path):
    """A Windows pipe, file or GUI wrapper gets the ANSI code page: printing ``Zoë歌`` raised UnicodeEncodeError
    after the index was written (a traceback, exit 1). Now what the encoding lacks is escaped."""
    write_speaker(tmp_path / "logs", SpeakerSpec("Zoë歌", 1500, 256))
    sets = [a for item in FAST for a in ("--set", item)]
    for encoding in ("cp1252", "ascii"):
        env = {**os.environ, "PYTHONIOENCODING": encoding}
        for command in (["build", str(tmp_path / "logs" / "Zoë歌"), "--out", str(tmp_path / encoding)],
                        ["batch", str(tmp_path / "logs"), "--out", str(tmp_path / f"batch-{encoding}"),
                         "--workers", "1"])[:2 if encoding == "cp1252" else 1]:
            proc = subprocess.run([sys.executable, "-m", "rvc_index", *command, "--config", "rvc-classic",
                                   "--backend", "cpu", *sets], env=env, capture_output=True, timeout=300)
            assert proc.returncode == 0, proc.stderr.decode(encoding, "replace")[-3000:]
            assert b"\\u6b4c" in proc.stdout and b"Traceback" not in proc.stderr  # 歌, escaped
    assert len(list((tmp_path / "ascii").glob("*.index"))) == 1


@pytest.mark.parametrize("option, value", [("--min-recall", "nan"), ("--min-recall", "-0.5"),
                                           ("--min-recall", "1.01"), ("--max-us-per-frame", "-1"),
                                           ("--max-ram-mb", "inf")])
def test_tune_targets_are_checked_before_any_measurement(option, value, tmp_path, capsys, monkeypatch):
    def measured(*args, **kwargs):
        raise AssertionError("the value check ran for a target that cannot be met")

    monkeypatch.setattr("rvc_index.data.feature_set.open_feature_set", measured)
    folder = folder_of(tmp_path, {"a.npy": rows(500), "b.npy": rows(500, seed=1)})
    assert main(["-q", "tune", str(folder), "--quick", "--backend", "cpu", "--out", str(tmp_path / "t.yaml"),
                 option, value]) == 1
    err = capsys.readouterr().err
    assert f"{option} " in err and "must be a number" in err and err.count("\n") == 1


def test_a_deleted_current_folder_is_one_line(tmp_path):
    """``batch`` started from a deleted folder printed seven Dask tracebacks, ``build`` a bare ``[Errno 2]``."""
    folder = folder_of(tmp_path, {"a.npy": rows(500), "b.npy": rows(500, seed=1)})
    gone = tmp_path / "gone"
    for command in (["build", str(folder)], ["batch", str(tmp_path)]):
        gone.mkdir()
        proc = subprocess.run(["bash", "-c", f'cd "{gone}" && rmdir "{gone}" && exec "$0" "$@"', sys.executable,
                               "-m", "rvc_index", *command, "--out", str(tmp_path / "out"), "--backend", "cpu"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr[-3000:]
        assert "the current folder cannot be found" in proc.stderr and "cd into a folder" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [(["--dim", "0"], "--dim 0: at least 64"),
                                           (["--rows", "0"], "--rows 0: at least 1"),
                                           (["--speakers", "-1"], "--speakers -1: at least 1"),
                                           (["--dim", "32"], "--dim 32: at least 64")])
def test_synth_arguments_are_checked(args, message, tmp_path, capsys):
    assert main(["synth", str(tmp_path / "s"), *args]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "s").exists()
    assert main(["synth", "", "--rows", "10"]) == 1 and "ROOT '': an empty path" in capsys.readouterr().err


def test_case55_no_key_loosens_the_searches_every_consumer_makes(tmp_path, capsys, consumer_check):
    """`--set index.search_k=1` (24 D) stored an nprobe that left -1 labels in RVC's k=8 searches and let a 5-row
    voice build while the verdict said retrieval stayed on. The key is gone; the row minimum, the stored nprobe and
    the verdict's -1 share hold for k=8 (every consumer; w-okada's k=1 is filled whenever k=8 is)."""
    with pytest.raises(ConfigError, match="index.search_k' is no longer used: every consumer searches k=8"):
        config_from_dict({}, ["index.search_k=1"])
    five = tmp_path / "five" / "3_feature256"
    five.mkdir(parents=True)
    np.save(five / "a.npy", rows(5))
    assert main(["build", str(five.parent), "--out", str(tmp_path / "o5"), "--backend", "cpu"]) == 1
    assert "only 5 rows" in capsys.readouterr().err
    write_speaker(tmp_path / "logs", SpeakerSpec("few", 2000, 256))  # 600 lists of about 3 vectors: nprobe raised
    assert main(["build", str(tmp_path / "logs" / "few"), "--out", str(tmp_path / "o"), "--backend", "cpu",
                 "--set", "index.n_list=600", "--set", "index.min_rows_per_list=1", "--set", "index.nprobe=1",
                 "--set", "evaluate.full=true"]) == 0
    report = json.loads(next((tmp_path / "o").glob("*.report.json")).read_text())
    assert report["index"]["nprobe"] > report["index"]["nprobe_configured"] == 1
    assert report["evaluation"]["k"] == 8 and report["evaluation"]["missing_label_share"] == 0.0
    replayed = consumer_check(next((tmp_path / "o").glob("*.index")), rows(200, seed=9), None, 256)
    assert all(r["consumers"]["w-okada"]["ok"] and r["consumers"]["rvc-realtime"]["ok"] for r in replayed.values())
