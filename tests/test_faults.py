"""The fault-tolerance matrix of docs/reliability.md: every bad input and every crash, one test each.

For every case: a message naming the file or setting and the problem, a non-zero exit for the
experiment concerned, nothing partial or temporary left in its output, and in a batch the other
experiments still build. Cases already covered in full elsewhere are listed in ``REFERENCES`` and
checked to exist by ``test_matrix_is_complete``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import psutil
import pytest
from rvc_index.batch.jobs import plan_jobs, run_batch
from rvc_index.cli import main
from rvc_index.compute.backend import select_backend
from rvc_index.config.loading import load_config
from rvc_index.data.layouts import resolve_experiment
from rvc_index.data.sources import scan_manifest, value_bound
from rvc_index.job.guard import StageMemoryError
from rvc_index.job.locks import HOLDER_NAME, LOCK_NAME
from rvc_index.job.naming import ascii_name
from rvc_index.job.plan import make_plan
from rvc_index.job.runner import build_experiment
from rvc_index.runtime.progress import get_logger
from rvc_index.tools.synth import SpeakerSpec, sample_frames, write_speaker

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
FAST = ["evaluate.recall_queries=100", "evaluate.plot=false", "cluster.dashboard_address="]
SET_FAST = [arg for item in FAST for arg in ("--set", item)]
CLASSIC = "rvc-classic"


def fast(preset: str = CLASSIC, *overrides: str):
    return load_config(CONFIGS / f"{preset}.yaml", [*FAST, *overrides])


def build_args(exp: Path, out: Path, *extra: str) -> list[str]:
    return ["-v", "build", str(exp), "--config", CLASSIC, "--out", str(out), "--backend", "cpu", *SET_FAST, *extra]


def leftovers(folder: Path) -> list[str]:
    """Temporary files and build locks anywhere under ``folder``."""
    return sorted(str(p) for p in Path(folder).rglob("*") if ".tmp-" in p.name or p.name in (LOCK_NAME, HOLDER_NAME))


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).rglob("*") if p.is_file()) if Path(folder).exists() else []


def speaker(root: Path, name: str, rows: int, dim: int = 256, seed: int = 0) -> Path:
    write_speaker(root, SpeakerSpec(name, rows, dim), seed)
    return root / name


def index_of(out: Path) -> tuple[str, bytes]:
    """(index file name, bytes) of the finished build in ``out`` (its report names it)."""
    report = json.loads(next(out.glob(f"rvc-index-*-{CLASSIC}.report.json")).read_text())
    return report["index_file"], (out / report["index_file"]).read_bytes()


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    """Read-only inputs: ``spk`` (3,000 x 256) and ``Zoë`` (1,000 x 256). Tests write only to --out."""
    root = tmp_path_factory.mktemp("shared")
    speaker(root, "spk", 3000)
    speaker(root, "Zoë", 1000, seed=13)
    return root


@pytest.fixture(autouse=True)
def _restore_logging():
    """``main`` points the package logger at this test's captured stderr: restore it afterwards."""
    logger = get_logger()
    handlers, level, propagate = logger.handlers[:], logger.level, logger.propagate
    yield
    logger.handlers[:], logger.propagate = handlers, propagate
    logger.setLevel(level)


@pytest.fixture
def log_lines():
    """Messages logged by the package while the test runs (in-process builds)."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = get_logger()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(level)


# --- one batch holding every bad input next to good experiments -------------------------------------------

def _bad(root: Path, name: str, dim: int, writer) -> Path:
    folder = speaker(root, name, 600, dim) / f"3_feature{dim}"
    bad = folder / "00000.npy"
    writer(bad)
    return bad


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # cut mid-data: the header is intact


def _scale_a_row(path: Path) -> None:
    rows = np.load(path)
    rows[3] *= 1e18  # finite, but its squared norm is beyond float32 (faiss's k-means aborted the process)
    np.save(path, rows)


def _random_payload(path: Path) -> None:
    """A valid float32 header whose payload is random bytes (NaN rows, and finite rows up to 3e38)."""
    payload = np.load(path).nbytes
    with open(path, "r+b") as handle:
        handle.seek(path.stat().st_size - payload)
        handle.write(np.random.default_rng(43).bytes(payload))


OVERFLOW = "float32 distances would overflow"
BAD_INPUTS = {  # case: (make(root, name) -> the path the message must name, the problem it must state)
    "01-truncated": (lambda r, n: _bad(r, n, 256, _truncate), "truncated: "),
    "02-random-bytes": (lambda r, n: _bad(r, n, 256, lambda p: p.write_bytes(np.random.default_rng(2).bytes(4096))),
                        "not a valid .npy"),
    "02-renamed-text": (lambda r, n: _bad(r, n, 256, lambda p: p.write_text("frame,value\n1,2\n")), "not a valid .npy"),
    "03-one-d": (lambda r, n: _bad(r, n, 256, lambda p: np.save(p, np.ones(256, np.float32))),
                 "expected a 2-D [frames, dim] array, got 1-D"),
    "03-three-d": (lambda r, n: _bad(r, n, 256, lambda p: np.save(p, np.ones((2, 5, 256), np.float32))), "got 3-D"),
    "04-wrong-width": (lambda r, n: _bad(r, n, 768, lambda p: np.save(p, np.ones((50, 512), np.float32))),
                       "width 512 does not match the folder's 768"),
    "05-v1-in-v2": (lambda r, n: _bad(r, n, 768, lambda p: np.save(p, np.ones((50, 256), np.float32))),
                    "width 256 does not match the folder's 768 (v1 and v2 features mixed?)"),
    "06-integer": (lambda r, n: _bad(r, n, 256, lambda p: np.save(p, np.ones((50, 256), np.int32))),
                   "expected floating-point features, got dtype int32"),
    "06-complex": (lambda r, n: _bad(r, n, 256, lambda p: np.save(p, np.ones((50, 256), np.complex64))),
                   "got dtype complex64"),
    "09-all-nan": (lambda r, n: _bad(r, n, 256, lambda p: np.save(p, np.full((40, 256), np.nan, np.float32))),
                   "all 40 rows are NaN or Inf"),
    "11-seven-rows": (lambda r, n: speaker(r, n, 7) / "3_feature256", "only 7 rows in"),
    "43-scaled-by-1e18": (lambda r, n: _bad(r, n, 768, _scale_a_row), "row 3 holds a value of magnitude"),
    "43-random-payload": (lambda r, n: _bad(r, n, 256, _random_payload), OVERFLOW),
    "43-float64-beyond-float32": (lambda r, n: _bad(r, n, 256, lambda p: np.save(p, np.full((40, 256), 1e200))),
                                  OVERFLOW),
    "12-empty-folder": (lambda r, n: _mkdir(r / n / "3_feature256"), "folder holds no .npy feature files"),
}


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


class BatchRun:
    def __init__(self, root: Path, out: Path, code: int, named: dict[str, Path]):
        self.root, self.out, self.code, self.named = root, out, code, named
        report = json.loads((out / "batch_report.json").read_text())
        self.records = {r["experiment"]: r for r in report["experiments"]}


@pytest.fixture(scope="module")
def batch(tmp_path_factory, client) -> BatchRun:
    """One batch over every bad input and the good experiments of cases 7-10, 13, 14 and 17."""
    root = tmp_path_factory.mktemp("faults") / "logs"
    named = {case: make(root, case) for case, (make, _) in BAD_INPUTS.items()}
    speaker(root, "good", 1500)
    half = speaker(root, "07-float16", 1000) / "3_feature256"
    for path in half.glob("*.npy"):
        np.save(path, np.load(path).astype(np.float16))
    np.save(speaker(root, "08-with-empty", 1000) / "3_feature256" / "00000b.npy", np.zeros((0, 256), np.float32))
    nan_file = speaker(root, "09-nan-rows", 1000) / "3_feature256" / "00001.npy"
    rows = np.load(nan_file)
    rows[[0, 5]] = np.nan
    rows[7, 3] = np.inf
    np.save(nan_file, rows)
    speaker(root, "10-tiny", 30)
    speaker(root, "13-Zoë", 800)
    speaker(root, "14-unwritable", 800)
    speaker(root, "17-pretrained", 800)
    out = root.parent / "out"
    out.mkdir()
    (out / "14-unwritable").write_text("a file where the output folder should be")
    code = main(["-q", "batch", str(root), "--config", CLASSIC, "--cluster", client.scheduler.address,
                 "--out", str(out), "--backend", "cpu", *SET_FAST])
    return BatchRun(root, out, code, named)


def test_batch_isolates_every_failure(batch):
    failed = {name for name, r in batch.records.items() if r["status"] == "failed"}
    assert batch.code == 1
    assert failed == set(BAD_INPUTS) | {"14-unwritable", "17-pretrained"}
    assert {r["status"] for name, r in batch.records.items() if name not in failed} == {"built"}
    assert leftovers(batch.out) == [] and leftovers(batch.root) == []
    for name in failed - {"14-unwritable"}:
        assert [f for f in files_in(batch.out / ascii_name(name)) if not f.endswith(".log")] == [], name  # but its log


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_fails_alone_naming_file_and_problem(case, batch, tmp_path, capsys):
    named, problem = batch.named[case], BAD_INPUTS[case][1]
    record = batch.records[case]
    assert record["status"] == "failed" and str(named) in record["error"] and problem in record["error"]
    out = tmp_path / "out"
    assert main(build_args(named.parent if named.suffix else named, out)) == 1  # the single build: exit 1
    err = capsys.readouterr().err
    assert str(named) in err and problem in err
    assert files_in(out) == [] and leftovers(tmp_path) == []


def test_case43_values_that_overflow_float32_fail_alone_and_are_not_retried(batch, tmp_path):
    """A finite value whose square overflows float32 aborted faiss's k-means (SIGABRT, no file named); in a
    batch it killed worker after worker (KilledWorker, retryable). Now the file is bad like any other: named,
    exit 1, alone in the batch, not retryable. Values up to the bound still build (faiss stays finite)."""
    for case in [c for c in BAD_INPUTS if c.startswith("43-")]:
        record = batch.records[case]
        assert record["retryable"] is False and "KilledWorker" not in record["error"], record
        assert record["attempts"] == 1 and str(batch.named[case]) in record["error"]
    folder = speaker(tmp_path / "logs", "edge", 3000) / "3_feature256"
    rows = np.load(folder / "00001.npy")
    bound = value_bound(256)
    rows[:2] = np.where(rows[:2] > 0, 0.99, -0.99) * bound  # the largest rows a build takes
    np.save(folder / "00001.npy", rows)
    for preset in (CLASSIC, "tips"):
        assert main(build_args(folder.parent, tmp_path / preset, "--config", preset)) == 0


def test_case07_float16_is_upcast(batch):
    report = json.loads((batch.out / "07-float16" / f"rvc-index-07-float16-{CLASSIC}.report.json").read_text())
    index = faiss.read_index(str(batch.out / "07-float16" / report["index_file"]))
    faiss.extract_index_ivf(index).make_direct_map()
    files = sorted((batch.root / "07-float16" / "3_feature256").glob("*.npy"))
    assert np.load(files[0]).dtype == np.float16
    expected = np.concatenate([np.load(p).astype(np.float32) for p in files])
    np.testing.assert_array_equal(index.reconstruct_n(0, index.ntotal), expected)


def test_case08_empty_array_is_skipped_and_counted(batch):
    report = json.loads((batch.out / "08-with-empty" / f"rvc-index-08-with-empty-{CLASSIC}.report.json").read_text())
    assert report["empty_files"] == ["00000b.npy"] and report["rows"] == report["index"]["ntotal"] == 1000


def test_case09_nan_rows_are_dropped_and_counted(batch):
    report = json.loads((batch.out / "09-nan-rows" / f"rvc-index-09-nan-rows-{CLASSIC}.report.json").read_text())
    assert report["dropped_rows"] == 3 and report["rows_declared"] == 1000
    assert report["rows"] == report["index"]["ntotal"] == 997


TINY = {"plain": [], "compressed": ["compress.row_threshold=10", "compress.n_centroids=16"],
        "forced-lists-and-pq": ["index.n_list=64", "index.min_coded_rows=0", "index.lists=pq8"]}


@pytest.mark.parametrize("variant", sorted(TINY))
@pytest.mark.parametrize("preset", [CLASSIC, "tips"])
def test_case10_fewer_rows_than_a_list_needs(preset, variant, batch, tmp_path, log_lines):
    """12 rows: fewer than one IVF list's 39 and than an 8-bit PQ codebook's 256 centres (tips expands too)."""
    if (preset, variant) == (CLASSIC, "plain"):  # also built in the batch
        assert batch.records["10-tiny"]["status"] == "built" and batch.records["10-tiny"]["rows"] == 30
    data = sample_frames(12, 256, seed=10)
    folder = tmp_path / "tiny" / "3_feature256"
    folder.mkdir(parents=True)
    for i, part in enumerate(np.array_split(data, 3)):
        np.save(folder / f"{i}.npy", part)
    result = build_experiment(folder.parent, fast(preset, *TINY[variant]), tmp_path / "out")
    index = faiss.read_index(str(result.index_path))
    assert index.ntotal == 12 and faiss.extract_index_ivf(index).nlist == 1
    _, labels = index.search(data + 0.01, 8)
    assert (labels >= 0).all()
    notes = " ".join(log_lines)
    assert "12 rows < index.min_rows_per_list=39: a single inverted list" in notes
    if preset == "tips":
        assert ("flat lists" in notes or "not pq8" in notes) and type(index).__name__ == "IndexIVFFlat"
    if variant == "forced-lists-and-pq":
        assert "index.n_list=64 needs 2496 rows: lowered to 1" in notes
    if variant == "compressed":
        assert "clamped to 12" in notes


def test_case11_fewer_than_8_finite_rows(tmp_path, capsys):
    folder = tmp_path / "nan" / "3_feature256"
    folder.mkdir(parents=True)
    rows = sample_frames(10, 256)
    rows[:3] = np.nan
    np.save(folder / "0.npy", rows)  # 10 rows declared, 7 usable
    assert main(build_args(folder, tmp_path / "out")) == 1
    assert f"only 7 rows in {folder}: RVC and Applio search k=8 neighbours" in capsys.readouterr().err
    assert files_in(tmp_path / "out") == []


def test_case12_missing_or_empty_folder(tmp_path, capsys):
    assert main(build_args(tmp_path / "absent", tmp_path / "out")) == 1
    assert f"{tmp_path / 'absent'}: no such folder" in capsys.readouterr().err
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "notes.txt").write_text("no features")
    assert main(build_args(tmp_path / "texts", tmp_path / "out")) == 1
    assert f"{tmp_path / 'texts'}: folder holds no .npy feature files" in capsys.readouterr().err
    assert main(["-q", "batch", str(tmp_path / "absent")]) == 1
    assert "no such folder" in capsys.readouterr().err
    assert files_in(tmp_path / "out") == []


def test_case13_non_ascii_names(batch, shared, tmp_path, capsys):
    stem = ascii_name("13-Zoë")
    assert stem.startswith("13-Zoe-") and stem.isascii()
    index = Path(batch.records["13-Zoë"]["index"])
    assert index.parent == batch.out / stem and index.name.endswith(f"_{stem}_v1.index")
    report = json.loads((index.parent / f"rvc-index-{stem}-{CLASSIC}.report.json").read_text())
    assert report["names"] == {"experiment": "13-Zoë", "in_file_names": stem, "ascii_path": True}

    out = tmp_path / "Zoë-out"  # an output folder RVC on Windows cannot open: warned, file name still ASCII
    assert main(build_args(shared / "Zoë", out)) == 0
    err = capsys.readouterr().err
    assert "Zoë: not ASCII: RVC's GUI and faiss on Windows refuse such paths" in err
    assert f"{out}: output folder is not ASCII" in err
    assert [p.name.endswith(f"_{ascii_name('Zoë')}_v1.index") for p in out.glob("*.index")] == [True]
    assert main(build_args(shared / "Zoë", tmp_path / "kept", "--set", "output.ascii_names=false")) == 0
    assert [p.name.endswith("_Zoë_v1.index") for p in (tmp_path / "kept").glob("*.index")] == [True]


def test_case14_output_under_a_regular_file(batch, shared, tmp_path, capsys):
    assert "14-unwritable: cannot create output folder" in batch.records["14-unwritable"]["error"]
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(build_args(shared / "spk", blocker / "out")) == 1
    assert f"{blocker / 'out'}: cannot create output folder: Not a directory" in capsys.readouterr().err


@pytest.fixture
def mount_tmpfs():
    """``mount_tmpfs(path, size, readonly=False)``; skips where mounting is not allowed (not root)."""
    mounted: list[Path] = []

    def mount(path: Path, size: str, readonly: bool = False) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        options = f"size={size}" + (",ro" if readonly else "")
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True,
                              text=True)
        if proc.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_case14_read_only_output_folder(shared, tmp_path, capsys, mount_tmpfs):
    if os.geteuid() == 0:  # root writes through chmod: a read-only file system stops it
        folder = mount_tmpfs(tmp_path / "ro", "1m", readonly=True)
    else:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
    assert main(build_args(shared / "spk", folder)) == 1
    assert f"{folder}: output folder is not writable" in capsys.readouterr().err
    assert main(build_args(shared / "spk", folder / "sub")) == 1
    assert f"{folder / 'sub'}: cannot create output folder" in capsys.readouterr().err
    assert files_in(folder) == []


def test_case15_a_foreign_index_is_never_replaced_without_force(shared, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    foreign = out / "spk.index"  # Applio's name for this experiment, written by some other tool
    foreign.write_bytes(b"someone else's index")
    applio = ["--set", "output.naming=applio"]
    assert main(build_args(shared / "spk", out, *applio)) == 1
    assert f"{foreign}: exists and was not written by this preset; use --force" in capsys.readouterr().err
    assert files_in(out) == ["spk.index"] and foreign.read_bytes() == b"someone else's index"
    assert main(build_args(shared / "spk", out, *applio, "--force")) == 0
    assert faiss.read_index(str(foreign)).ntotal == 3000 and leftovers(out) == []


def test_case17_rvc_rewritten_word_in_path_or_name(batch, shared, tmp_path, capsys):
    assert "'trained' in the output path" in batch.records["17-pretrained"]["error"]
    assert main(build_args(shared / "spk", tmp_path / "trained_indexes")) == 1
    assert "'trained' in the output path; RVC and Applio rewrite it" in capsys.readouterr().err
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "pretrained").symlink_to(shared / "spk")  # an experiment named *trained*
    assert main(build_args(tmp_path / "logs" / "pretrained", tmp_path / "clean")) == 1
    assert "pretrained: 'trained' in the experiment name" in capsys.readouterr().err
    assert files_in(tmp_path / "clean") == []


def test_case18_disk_full_keeps_the_old_index(shared, tmp_path, capsys, mount_tmpfs):
    out = mount_tmpfs(tmp_path / "small-disk", "5m")  # room for one 3.1 MB index, not for a second beside it
    first = build_experiment(shared / "spk", fast(), out)
    before = {name: (out / name).read_bytes() for name in files_in(out)}
    assert main(build_args(shared / "spk", out, "--force")) == 1
    err = capsys.readouterr().err
    assert f"{first.index_path}: could not be written (No space left on device); nothing was replaced" in err
    assert {name: (out / name).read_bytes() for name in files_in(out)} == before  # no temp, nothing replaced
    assert build_experiment(shared / "spk", fast(), out).status == "skipped"  # still a finished build


# --- real processes: a warm parent forks builds, so killing one costs no interpreter start -----------------

ZYGOTE = r"""
import json, os, resource, signal, sys, traceback
import faiss, numpy  # noqa: F401 - loaded before any fork: children start warm
import rvc_index.batch.jobs, rvc_index.job.runner  # noqa: F401
from rvc_index.cli import main, make_parser
make_parser()  # imports what the commands import
for line in sys.stdin:
    request = json.loads(line)
    if "wait" in request:
        _, status = os.waitpid(request["wait"], 0)
        print(json.dumps({"code": os.waitstatus_to_exitcode(status)}), flush=True)
        continue
    pid = os.fork()
    if pid == 0:
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        if request.get("max_file_bytes"):  # ulimit -f: writes past it fail with EFBIG, as on a full disk
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (request["max_file_bytes"], resource.RLIM_INFINITY))
        try:
            code = main(request["argv"])
        except BaseException:
            traceback.print_exc()
            code = 99
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    print(json.dumps({"pid": pid}), flush=True)
"""


class Forker:
    """A warm interpreter that forks ``rvc-index`` commands; faiss pinned to one thread (same bytes every run)."""

    def __init__(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], cwd=REPO, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def _ask(self, request: dict, timeout: float = 180.0) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"no answer to {request} in {timeout} s"
        return json.loads(self.proc.stdout.readline())

    def start(self, argv: list[str], log: Path, max_file_bytes: int = 0) -> int:
        return self._ask({"argv": argv, "log": str(log), "max_file_bytes": max_file_bytes})["pid"]

    def wait(self, pid: int) -> int:
        return self._ask({"wait": pid})["code"]

    def run(self, argv: list[str], log: Path, max_file_bytes: int = 0) -> int:
        return self.wait(self.start(argv, log, max_file_bytes))


@pytest.fixture(scope="module")
def forker():
    zygote = Forker()
    yield zygote
    zygote.proc.stdin.close()
    zygote.proc.wait(30)


def test_case18_file_size_limit_without_root(shared, tmp_path, forker):
    """The same write failure where no tmpfs can be mounted: ``ulimit -f`` below the index's size."""
    out = tmp_path / "out"
    assert forker.run(build_args(shared / "spk", out), tmp_path / "first.log") == 0
    before = {name: (out / name).read_bytes() for name in files_in(out)}
    log = tmp_path / "limited.log"
    assert forker.run(build_args(shared / "spk", out, "--force"), log, max_file_bytes=2**20) == 1
    assert "could not be written (File too large); nothing was replaced" in log.read_text()
    assert {name: (out / name).read_bytes() for name in files_in(out)} == before


def test_case16_two_builds_into_one_folder(shared, tmp_path, forker):
    out = tmp_path / "out"
    first = forker.start(build_args(shared / "spk", out), tmp_path / "first.log")
    deadline = time.monotonic() + 60
    while f"pid {first} " not in _read(out / HOLDER_NAME) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert f"pid {first} " in _read(out / HOLDER_NAME), (tmp_path / "first.log").read_text()
    second = forker.start(build_args(shared / "spk", out), tmp_path / "second.log")
    refused = forker.start(build_args(shared / "spk", out, "--set", "safety.lock=refuse"), tmp_path / "third.log")
    assert forker.wait(refused) == 1
    third = (tmp_path / "third.log").read_text()
    assert f"{out}: another build (pid {first} on " in third and "safety.lock=refuse" in third
    assert forker.wait(first) == 0 and forker.wait(second) == 0
    first_log, second_log = (tmp_path / "first.log").read_text(), (tmp_path / "second.log").read_text()
    assert f"another build (pid {first} on " in second_log and "waiting for it to finish" in second_log
    assert "up to date" in second_log and "[train] start" not in second_log  # waited, then found it done
    assert "[write] done" in first_log
    name, data = index_of(out)
    assert faiss.read_index(str(out / name)).ntotal == 3000 and leftovers(out) == []


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def test_case19_sigkill_at_random_points(shared, tmp_path, forker):
    """Fifteen kills: ten at seeded times spread over a whole build, five a few seeded milliseconds into
    each logged stage (the write stage included). Every rerun writes the uninterrupted build's bytes."""
    assert forker.run(build_args(shared / "spk", tmp_path / "warm-up"), tmp_path / "warm-up.log") == 0
    started = time.monotonic()  # the second uninterrupted build: what a killed one would have taken
    assert forker.run(build_args(shared / "spk", tmp_path / "reference"), tmp_path / "reference.log") == 0
    duration = time.monotonic() - started
    expected = index_of(tmp_path / "reference")
    assert index_of(tmp_path / "warm-up") == expected
    rng = np.random.default_rng(19)
    points = [("", (i + rng.uniform()) * duration / 10) for i in range(10)]  # one in each tenth of the build
    points += [(f"[{name}] start", rng.uniform(0, 0.003)) for name in ("scan", "train", "add", "evaluate", "write")]
    states = []
    for i, (line, delay) in enumerate(points):
        out, log = tmp_path / f"killed{i}", tmp_path / f"killed{i}.log"
        pid = forker.start(build_args(shared / "spk", out), log)
        deadline = time.monotonic() + 60
        while line and line not in _read(log) and time.monotonic() < deadline:
            time.sleep(0.0005)
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        code = forker.wait(pid)
        stages = [text.split("[")[1].split("]")[0] for text in _read(log).splitlines() if "] start" in text]
        states.append((line or f"{delay:.2f} s", code, stages[-1] if stages else "startup", files_in(out)))
        for path in out.glob("*.index"):  # a final name always holds a complete index
            assert (path.name, path.read_bytes()) == expected, states
        assert forker.run(build_args(shared / "spk", out), log) == 0, _read(log)[-3000:]
        assert index_of(out) == expected, states
        assert leftovers(out) == [], states
    (tmp_path / "kills.json").write_text(json.dumps(states, indent=1))  # where each kill landed (docs/reliability.md)
    assert sum(code == -signal.SIGKILL for _, code, _, _ in states) >= 8, states  # most kills hit a running build


# --- memory guard -------------------------------------------------------------------------------------------

def _sparse_experiment(root: Path, name: str, rows: int, dim: int) -> Path:
    """An experiment whose one file declares ``rows`` x ``dim`` zeros without using disk (sparse)."""
    folder = root / name / f"3_feature{dim}"
    folder.mkdir(parents=True)
    np.lib.format.open_memmap(folder / "0.npy", "w+", np.float32, (rows, dim)).flush()
    return root / name


def test_memory_guard_refuses_beyond_a_dask_workers_limit(tmp_path, client):
    root = tmp_path / "logs"
    _sparse_experiment(root, "huge", 1_000_000, 768)  # 2.9 GB, uncompressed: k-means on every row, 4 GiB workers
    speaker(root, "small", 1000)
    config = fast(CLASSIC, "compress.enabled=false")
    report = run_batch(plan_jobs(root, config, tmp_path / "out"), config, client)
    records = {r.experiment: r.to_json() for r in report.records}
    error = records["huge"]["error"]
    assert records["huge"]["status"] == "failed" and error.startswith("StageMemoryError: huge: the plan would peak")
    assert "index of 1,000,000 x 768 vectors" in error and "Dask worker memory limit" in error
    assert records["small"]["status"] == "built"
    assert [f for f in files_in(tmp_path / "out" / "huge") if not f.endswith(".log")] == []  # but its log


def test_memory_guard_refuses_beyond_a_configured_limit(tmp_path, capsys):
    exp = _sparse_experiment(tmp_path / "logs", "big", 200_000, 256)
    limit = psutil.Process().memory_info().rss / 2**20 + 200
    assert main(build_args(exp, tmp_path / "out", "--set", "compress.enabled=false",
                           "--set", f"safety.memory_limit_mb={limit:.0f}")) == 1
    err = capsys.readouterr().err
    # the collection (195 MB, no bigger than a pass's chunks) is kept from the value check on; then 200,000
    # training rows and their shuffled copy, or the index of 200,000 rows, peak
    assert re.search(r"big: the plan would peak at about \S+ MB in the (train|add) stage \(195 MB kept", err), err
    assert "200,000 training rows" in err or "index of 200,000 x 256 vectors" in err
    assert f"safety.memory_limit_mb={limit:.0f}" in err
    assert files_in(tmp_path / "out") == []


def test_memory_guard_shrinks_chunks_to_fit(tmp_path):
    exp = speaker(tmp_path / "logs", "chunky", 100_000)  # 100 MB in two 64 MB chunks
    settings = [*FAST, "compress.row_threshold=1000", "compress.n_centroids=64", "compress.batch_rows=8192",
                "source.chunk_mb=64"]
    manifest = scan_manifest(resolve_experiment(exp))
    config = load_config(CONFIGS / f"{CLASSIC}.yaml", settings)
    whole, _, _ = make_plan(manifest, config, select_backend("cpu"), local=True, chunk_mb=64.0).peak()
    small, _, _ = make_plan(manifest, config, select_backend("cpu"), local=True, chunk_mb=1.0).peak()
    assert whole > small + 64 * 2**20  # the collection kept in memory (no bigger than 64 MB chunks hold) does not fit
    limit = (psutil.Process().memory_info().rss + (whole + small) / 2 / 0.9) / 2**20
    refuse = load_config(CONFIGS / f"{CLASSIC}.yaml", [*settings, f"safety.memory_limit_mb={limit:.0f}"])
    with pytest.raises(StageMemoryError, match=r"chunky: the (plan would peak at about \S+ MB in the )?compress stage"):
        build_experiment(exp, refuse, tmp_path / "refused")
    shrink = load_config(CONFIGS / f"{CLASSIC}.yaml",
                         [*settings, f"safety.memory_limit_mb={limit:.0f}", "safety.memory_guard=shrink"])
    result = build_experiment(exp, shrink, tmp_path / "shrunk")
    memory = result.record.memory
    assert result.status == "built" and memory.shrunk_from_chunk_mb == 64.0 and memory.chunk_mb < 64
    assert result.record.index.ntotal == 64 and files_in(tmp_path / "refused") == []


# --- the matrix ---------------------------------------------------------------------------------------------

REFERENCES = {  # cases (or parts of them) proved in full by tests elsewhere
    1: ["tests/data/test_sources.py::test_bad_file_is_named_with_its_problem"],
    8: ["tests/data/test_sources.py::test_float16_is_upcast_and_nan_rows_dropped"],
    9: ["tests/data/test_sources.py::test_all_nan_file_is_an_error",
        "tests/data/test_sources.py::test_load_group_drops_nonfinite_rows"],
    11: ["tests/stages/test_indexing.py::test_plan_lowers_what_the_data_cannot_support",
         "tests/batch/test_batch.py::test_failing_experiments_are_isolated_and_reported"],
    12: ["tests/data/test_layouts.py::test_missing_and_empty_folders"],
    15: ["tests/job/test_build.py::test_rerun_skips_and_changes_rebuild"],
    17: ["tests/job/test_build.py::test_trained_in_output_path_is_refused"],
    19: ["tests/batch/test_batch.py::test_sigkill_partway_then_rerun_resumes_with_identical_bytes"],
    20: ["tests/batch/test_batch.py::test_batch_survives_a_killed_worker",
         "tests/batch/test_batch.py::test_a_build_whose_worker_dies_fails_alone_and_a_rerun_builds_it"],
}


def test_matrix_is_complete():
    """docs/reliability.md numbers its cases 1, 2, 3, ... (20 crash and bad-input cases, then hostile inputs)
    and the memory guard, each with tests that exist."""
    doc = (REPO / "docs" / "reliability.md").read_text(encoding="utf-8")
    rows = [line for line in doc.splitlines() if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
    assert [int(line.split("|")[1]) for line in rows] == list(range(1, len(rows) + 1)) and len(rows) >= 42
    assert "memory guard" in doc.lower()
    here = {name for name in globals() if name.startswith("test_")}
    cited = {ref for refs in REFERENCES.values() for ref in refs}
    for line in rows:
        assert "test_" in line, line
    cited |= {f"{path}::{name}" if path else name
              for path, name in re.findall(r"`(?:(tests/[\w/]+\.py)::)?(test_\w+)(?:\[[^\]`]*\])?`", doc)}
    for ref in sorted(cited):
        path, _, name = ref.rpartition("::")
        name = name.split("[")[0]
        source = (REPO / path).read_text(encoding="utf-8") if path else ""
        assert name in here if not path else f"def {name}(" in source, f"{ref}: no such test"
