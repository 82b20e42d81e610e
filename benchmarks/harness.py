"""The benchmark harness: synthetic or given collections with unseen utterances, processes measured by
the OS (wall time from launch to exit, peak RSS from ``wait4``), and the machine a run was on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
GENERATOR_VERSION = 1
SPEAKER = "bench"


@dataclass(frozen=True)
class Collection:
    feature_dir: Path  # indexed by every system
    heldout_dir: Path  # never indexed: the evaluation's queries
    rows: int
    dim: int


def generate(work: Path, rows: int, dim: int, heldout_rows: int = 2000, seed: int = 0,
             kind: str = "synth") -> Collection:
    """One speaker: exactly ``rows`` frames to index, then whole unseen utterances; ``kind`` ``synth``
    (``tools.synth``) or one of ``tools.speechlike``'s (``speech``: espeak-ng speech through a log-mel front end).

    Reused when ``work`` already holds the same collection (a marker records its parameters).
    """
    from rvc_index.data.layouts import feature_dir_name
    from rvc_index.runtime.outputs import write_atomic, write_json_atomic
    from rvc_index.tools import speechlike, synth
    from rvc_index.tools.synth import MAX_FRAMES, save_npy

    def utterances(n: int, d: int, seed_words: list[int]):
        return synth.utterances(n, d, seed_words) if kind == "synth" else speechlike.utterances(kind, n, d, seed_words)

    root = Path(work) / (f"n{rows}-d{dim}-s{seed}" if kind == "synth" else f"{kind}-n{rows}-d{dim}-s{seed}")
    feature_dir = root / "logs" / SPEAKER / feature_dir_name(dim)
    heldout_dir = root / "heldout" / feature_dir_name(dim)
    marker = root / "collection.json"
    params = {"rows": rows, "dim": dim, "heldout_rows": heldout_rows, "seed": seed, "version": GENERATOR_VERSION,
              **({"kind": kind} if kind != "synth" else {})}
    if marker.is_file() and json.loads(marker.read_text()) == params:
        return Collection(feature_dir, heldout_dir, rows, dim)
    for folder in (feature_dir, heldout_dir):
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.npy"):
            stale.unlink()
    written, held, i = 0, 0, 0
    for utterance in utterances(rows + heldout_rows + 2 * MAX_FRAMES, dim, [seed, dim, *SPEAKER.encode()]):
        if written < rows:
            part, folder = utterance[:rows - written], feature_dir  # the rest of a cut utterance is dropped
            written += len(part)
        elif held < heldout_rows:
            part, folder = utterance, heldout_dir
            held += len(part)
        else:
            break
        write_atomic(folder / f"{i:06d}.npy", lambda tmp, a=part: save_npy(tmp, a))
        i += 1
    write_json_atomic(marker, params)
    return Collection(feature_dir, heldout_dir, rows, dim)


def split_collection(feature_dir: Path, work: Path, fraction: float = 0.02, seed: int = 0) -> Collection:
    """A given collection: whole files held out (symlinked into their own folder), the rest indexed."""
    from rvc_index.data.layouts import feature_dir_name, resolve_experiment
    from rvc_index.data.sources import scan_manifest
    from rvc_index.evaluation.holdout import choose_files

    experiment = resolve_experiment(feature_dir)
    manifest = scan_manifest(experiment)
    held = set(choose_files([f.rows for f in manifest.files], fraction, 8, np.random.default_rng(seed)))
    root = Path(work) / f"given-{experiment.name}-s{seed}"
    indexed = root / "logs" / experiment.name / feature_dir_name(manifest.dim)
    heldout = root / "heldout" / feature_dir_name(manifest.dim)
    for folder in (indexed, heldout):
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.npy"):
            stale.unlink()
    for i, entry in enumerate(manifest.files):
        (heldout if i in held else indexed).joinpath(entry.name).symlink_to(manifest.path(entry.name).absolute())
    rows = sum(f.rows for i, f in enumerate(manifest.files) if i not in held)
    return Collection(indexed, heldout, rows, manifest.dim)


def warm_cache(folder: Path) -> int:
    """Read every file once so that no system pays for a cold disk cache; returns bytes read."""
    total = 0
    for path in sorted(folder.glob("*.npy")):
        total += len(path.read_bytes())
    return total


# Launches the command from a bare interpreter (python -S, ~9 MB): the kernel's peak RSS of a child
# starts from its parent's at fork, so forking straight from this (large) process would inflate it.
LAUNCHER = """
import json, os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    json.dump({"maxrss_kb": usage.ru_maxrss, "returncode": os.waitstatus_to_exitcode(status)}, out)
"""


def run_measured(cmd: Sequence[str], log_path: Path, timeout: float) -> dict[str, Any]:
    """Run ``cmd`` in a subprocess: wall seconds from launch to exit, and the peak RSS the kernel
    reports for it (``wait4``)."""
    measured = log_path.with_suffix(".rusage.json")
    measured.unlink(missing_ok=True)
    with open(log_path, "w") as log:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-S", "-c", LAUNCHER, str(measured), *cmd], stdout=log,
                                stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # the launcher and the command it runs
            proc.wait()
        seconds = time.perf_counter() - started
    usage = json.loads(measured.read_text()) if measured.is_file() else {"maxrss_kb": 0, "returncode": -9}
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(usage["maxrss_kb"] / 1024.0, 1),
            "returncode": usage["returncode"], "log": str(log_path)}


def machine() -> dict[str, Any]:
    import faiss
    import psutil

    return {"cpus": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "load_average": round(os.getloadavg()[0], 2), "faiss": faiss.__version__}
