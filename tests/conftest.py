"""Shared fixtures: a real LocalCluster, synthetic experiments, RVC's faiss-1.7.3 check."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from rvc_index.tools import rvc_compat
from rvc_index.tools.synth import SpeakerSpec, write_speaker

REPO = Path(__file__).resolve().parent.parent
COMPAT_SCRIPT = REPO / "pipeline" / "tools" / "rvc_compat.py"


def pytest_collection_modifyitems(config, items):
    """Skip ``gpu`` tests unless CuPy sees a CUDA device."""
    from rvc_index.compute.backend import _cupy_with_device

    if _cupy_with_device() is not None:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU with CuPy")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def client():
    """A real two-worker ``distributed.LocalCluster`` client shared by the session."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      memory_limit="4GiB") as cluster, Client(cluster) as dask_client:
        yield dask_client


@pytest.fixture
def make_experiment(tmp_path):
    """``make_experiment(name, rows, dim=768, seed=0)`` -> the experiment folder (logs/<name>)."""

    def make(name: str, rows: int, dim: int = 768, seed: int = 0, root: Path | None = None) -> Path:
        root = root or tmp_path / "logs"
        write_speaker(root, SpeakerSpec(name, rows, dim), seed)
        return root / name

    return make


def compat_python() -> str:
    """The interpreter of the faiss-cpu 1.7.3 / numpy<2 environment (``make compat``)."""
    configured = os.environ.get("RVC_INDEX_COMPAT_PYTHON")
    path = configured or str(REPO / ".venv-compat" / "bin" / "python")
    if not Path(path).exists():
        if configured:  # `make test` (CI) names it: missing there is a failure, not a skip
            pytest.fail(f"no faiss-1.7.3 environment at {path}: run `make compat` (make test does)")
        pytest.skip(f"skipped: no compat env (faiss-cpu 1.7.3 at {path}; `make compat` builds it where pip can)")
    return path


@pytest.fixture
def rvc_check(tmp_path):
    """``rvc_check(index_path, queries, vectors=None, dim=None)``: RVC's retrieval under faiss 1.7.3
    (subprocess) and under the current faiss (in process); returns both results, asserting ok."""

    def check(index_path, queries, vectors=None, dim=None):
        qpath = tmp_path / "compat_queries.npy"
        np.save(qpath, np.ascontiguousarray(queries, dtype=np.float32))
        cmd = [compat_python(), str(COMPAT_SCRIPT), str(index_path), "--queries", str(qpath)]
        if vectors is not None:
            vpath = tmp_path / "compat_vectors.npy"
            np.save(vpath, np.ascontiguousarray(vectors, dtype=np.float32))
            cmd += ["--vectors", str(vpath)]
        if dim is not None:
            cmd += ["--dim", str(dim)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.stdout.strip(), f"faiss-1.7.3 check crashed: {proc.stderr[-2000:]}"
        old = json.loads(proc.stdout.strip().splitlines()[-1])
        assert old["faiss"].startswith("1.7.3"), old
        assert old["ok"], f"faiss 1.7.3: {old}"
        new = rvc_compat.rvc_retrieval_check(str(index_path), queries, vectors, dim)
        assert new["ok"], f"faiss {new['faiss']}: {new}"
        return old, new

    return check


def open_features(path: Path, chunk_mb: float = 0.5, client=None):
    """The FeatureSet of an experiment folder (its one ``3_feature<D>`` folder) or feature folder."""
    from rvc_index.data.feature_set import open_feature_set
    from rvc_index.data.sources import resolve_experiment, scan_manifest

    folders = sorted(path.glob("3_feature*"))
    experiment = resolve_experiment(folders[0] if folders else path)
    return open_feature_set(experiment, scan_manifest(experiment), chunk_mb, client=client)


@pytest.fixture
def feature_set():
    """``feature_set(path, chunk_mb=0.5, client=None)``: the FeatureSet of an experiment or feature folder."""
    return open_features
