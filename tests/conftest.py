"""Shared fixtures: a real LocalCluster, synthetic experiments, every consumer's calls under every faiss they pin."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from rvc_index.inspection import consumers
from rvc_index.tools.synth import SpeakerSpec, write_speaker

REPO = Path(__file__).resolve().parent.parent
CONSUMERS_SCRIPT = REPO / "pipeline" / "inspection" / "consumers.py"
# The faiss releases the consumers pin (docs/consumers.md): RVC 20240604 and w-okada 1.7.3 (numpy < 2),
# Applio 1.14.3; each in an environment of its own (`make compat`), named by `make test` (CI) through these variables.
FAISS_ENVS = {"1.7.3": ("RVC_INDEX_COMPAT_PYTHON", ".venv-compat"),
              "1.14.3": ("RVC_INDEX_APPLIO_PYTHON", ".venv-applio")}


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


def faiss_python(version: str) -> str:
    """The interpreter of the environment holding faiss-cpu ``version`` (``make compat``)."""
    variable, folder = FAISS_ENVS[version]
    configured = os.environ.get(variable)
    path = configured or str(REPO / folder / "bin" / "python")
    if not Path(path).exists():
        if configured:  # `make test` (CI) names it: missing there is a failure, not a skip
            pytest.fail(f"no faiss-{version} environment at {path}: run `make compat` (make test does)")
        pytest.skip(f"skipped: no faiss-{version} environment at {path} (`make compat` builds it where pip can)")
    return path


def replay_everywhere(index_path, queries, vectors=None, dim=None, workdir: Path | None = None) -> dict[str, dict]:
    """Every consumer's calls on ``index_path`` under each pinned faiss (subprocesses) and the current one (in
    process): ``{faiss version: replay result}``; fails naming the consumer, the faiss and the problem."""
    workdir = Path(workdir or ".")
    qpath = workdir / "consumer_queries.npy"
    np.save(qpath, np.ascontiguousarray(queries, dtype=np.float32))
    args = [str(index_path), "--queries", str(qpath)]
    if vectors is not None:
        vpath = workdir / "consumer_vectors.npy"
        np.save(vpath, np.ascontiguousarray(vectors, dtype=np.float32))
        args += ["--vectors", str(vpath)]
    if dim is not None:
        args += ["--dim", str(dim)]
    results = {}
    for version in FAISS_ENVS:
        proc = subprocess.run([faiss_python(version), str(CONSUMERS_SCRIPT), *args], capture_output=True, text=True,
                              timeout=600)
        assert proc.stdout.strip(), f"faiss-{version} replay crashed: {proc.stderr[-2000:]}"
        results[version] = json.loads(proc.stdout.strip().splitlines()[-1])
        assert results[version]["faiss"].startswith(version), results[version]
    current = consumers.replay(str(index_path), queries, vectors, dim)
    results[current["faiss"]] = current
    broken = [f"faiss {v}: {name}: {c['problem']}" for v, r in results.items()
              for name, c in r["consumers"].items() if not c["ok"]]
    broken += [f"faiss {v}: {check} failed" for v, r in results.items() for check, ok in r["checks"].items() if not ok]
    assert not broken, "; ".join(broken)
    return results


@pytest.fixture
def consumer_check(tmp_path):
    """``consumer_check(index_path, queries, vectors=None, dim=None)``: every consumer of the contract keeps
    retrieval on, under faiss 1.7.3, 1.14.3 and the current one; returns ``{faiss version: result}``."""

    def check(index_path, queries, vectors=None, dim=None):
        return replay_everywhere(index_path, queries, vectors, dim, tmp_path)

    return check


def open_features(path: Path, chunk_mb: float = 0.5, client=None):
    """The FeatureSet of an experiment folder (its one ``3_feature<D>`` folder) or feature folder."""
    from rvc_index.data.feature_set import open_feature_set
    from rvc_index.data.layouts import resolve_experiment
    from rvc_index.data.sources import scan_manifest

    folders = sorted(path.glob("3_feature*"))
    experiment = resolve_experiment(folders[0] if folders else path)
    from rvc_index.runtime.run import HOST_RUN

    return open_feature_set(experiment, scan_manifest(experiment), chunk_mb,
                            run=HOST_RUN if client is None else dataclasses.replace(HOST_RUN, client=client))


@pytest.fixture
def feature_set():
    """``feature_set(path, chunk_mb=0.5, client=None)``: the FeatureSet of an experiment or feature folder."""
    return open_features

