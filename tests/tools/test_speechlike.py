"""Test collections unlike tools.synth (tools/speechlike.py), and the compress stage against RVC's
sklearn call on each: mean squared distance no worse (small K, quick)."""

import os

import numpy as np
import pytest
from rvc_index.compute.backend import select_backend
from rvc_index.compute.minibatch import inertia
from rvc_index.config.loading import load_config
from rvc_index.data.feature_set import open_feature_set
from rvc_index.data.layouts import resolve_experiment
from rvc_index.data.sources import scan_manifest
from rvc_index.runtime.stream import iter_blocks
from rvc_index.stages.compress import plan_kmeans
from rvc_index.tools import speechlike
from sklearn.cluster import MiniBatchKMeans
from stage_runs import planned_kmeans

CPU = select_backend("cpu")


def needs(kind):
    reason = speechlike.unavailable(kind)
    if reason:
        pytest.skip(reason)


@pytest.mark.parametrize("kind", speechlike.KINDS)
def test_collections_are_per_utterance_files_in_rvcs_layout(kind, tmp_path):
    needs(kind)
    folder = speechlike.write_collection(tmp_path, kind, "spk", 1500, 256)
    assert folder == tmp_path / "spk" / "3_feature256"
    arrays = [np.load(p) for p in sorted(folder.glob("*.npy"))]
    assert sum(a.shape[0] for a in arrays) == 1500 and len(arrays) >= 2
    assert all(a.dtype == np.float32 and a.shape[1] == 256 and np.isfinite(a).all() for a in arrays)
    x = np.concatenate(arrays)
    assert 0.2 < x.std(axis=0).mean() < 0.6  # HuBERT-like spread, as tools.synth


def test_speech_features_come_from_audio_at_50_frames_per_second():
    needs("speech")
    audio = speechlike.synthesize("hello world", "en-us", 160, 50)
    mels = speechlike.log_mel(audio)
    assert mels.shape == (len(audio) // 320, 80)  # 20 ms hop at 16 kHz
    assert 0.5 < len(audio) / 16_000 < 3.0
    loud = mels.mean(axis=1)
    assert loud.max() - loud.min() > 5.0  # speech and pauses, not noise


def test_zipf_and_speech_hold_exact_duplicates():
    x = speechlike.sample_frames("zipf", 4000, 64, seed=1)
    unique = np.unique(x, axis=0).shape[0]
    assert unique < 0.9 * len(x)  # digital silence: one repeated frame


@pytest.mark.parametrize("kind", ["speech", "manifold", "zipf", "synth"])
def test_compress_msd_is_no_worse_than_rvcs_sklearn_call(kind, tmp_path, make_experiment):
    if kind == "synth":
        path = make_experiment("s", 12_000, 64) / "3_feature64"
    else:
        needs(kind)
        path = speechlike.write_collection(tmp_path, kind, "s", 12_000, 64)
    experiment = resolve_experiment(path)
    features = open_feature_set(experiment, scan_manifest(experiment), 1.0)
    rows = np.concatenate(list(iter_blocks(features.array)))
    k = 400
    config = load_config("rvc-classic", ["compress.row_threshold=100", f"compress.n_centroids={k}"]).compress
    assert plan_kmeans(len(rows), k, config, CPU).two_level
    ours = planned_kmeans(features, k, config, CPU, seed=0).centres
    shuffled = rows[np.random.default_rng(0).permutation(len(rows))]
    theirs = MiniBatchKMeans(n_clusters=k, batch_size=256 * (os.cpu_count() or 1), compute_labels=False,
                             init="random", random_state=0).fit(shuffled).cluster_centers_
    assert inertia(CPU, [rows], ours) <= inertia(CPU, [rows], theirs)
