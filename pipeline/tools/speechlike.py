"""Test collections whose structure is unlike ``tools.synth``: harder for k-means, closer to speech.

* ``speech``: real audio synthesised offline with espeak-ng (one voice per collection, speed and
  pitch varied per utterance), long near-silent pauses and some digital silence (exact duplicate
  frames), a log-mel front end at 50 frames/s (16 kHz, 25 ms window, 20 ms hop, 80 bands), 7
  frames of context and a fixed random two-layer projection (GELU) to D dims. Needs ``espeak-ng``
  on PATH (:func:`unavailable` says why not).
* ``manifold``: frames on a smooth 6-dimensional manifold (a slow latent trajectory through a fixed
  random nonlinear map into D dims) plus small noise: low intrinsic dimension, no clusters.
* ``zipf``: 20,000 tight clusters with Zipf-distributed sizes (exponent 1.1), frames held for a few
  frames each, and a silence cluster of exact duplicates holding about 20 % of the rows.

Every kind writes per-utterance ``.npy`` files (50-750 frames) in RVC's ``logs/<exp>/3_feature<D>``
layout, scaled like ``tools.synth`` (per-dimension spread about 0.4).
"""

from __future__ import annotations

import io
import shutil
import subprocess
import wave
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from rvc_index.data.layouts import feature_dir_name
from rvc_index.runtime.outputs import write_atomic
from rvc_index.tools.synth import save_npy, utterance_lengths

KINDS = ("speech", "manifold", "zipf")
MAP_SEED = 20260514  # fixed projections shared by every collection of a kind and width
SAMPLE_RATE, HOP, WINDOW, N_FFT, N_MELS, CONTEXT = 16_000, 320, 400, 512, 80, 3
WORDS = ("the a of to and in is it you that he was for on are with as his they be at one have this from "
         "or had by hot word but what some we can out other were all there when up use your how said an "
         "each she which do their time if will way about many then them write would like so these her long "
         "make thing see him two has look more day could go come did number sound no most people my over "
         "know water than call first who may down side been now find any new work part take get place made "
         "live where after back little only round man year came show every good me give our under name very "
         "through just form sentence great think say help low line differ turn cause much mean before move "
         "right boy old too same tell does set three want air well also play small end put home read hand "
         "port large spell add even land here must big high such follow act why ask men change went light "
         "kind off need house picture try us again animal point mother world near build self earth father").split()


def unavailable(kind: str) -> str | None:
    """Why ``kind`` cannot be generated on this machine, or None when it can."""
    if kind not in KINDS:
        return f"unknown collection kind {kind!r} (one of {', '.join(KINDS)})"
    if kind == "speech" and shutil.which("espeak-ng") is None:
        return "espeak-ng is not installed (apt-get install espeak-ng)"
    return None


def _scaled(frames: np.ndarray, dim: int, scale: float) -> np.ndarray:
    return (frames * np.float32(0.4 / scale)).astype(np.float32)


# --- speech: espeak-ng audio -> log-mel -> fixed random projection ---------------------------------

def synthesize(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """Float32 mono audio at 16 kHz of ``text`` spoken by espeak-ng."""
    wav = subprocess.run(["espeak-ng", "--stdout", "-v", voice, "-s", str(speed), "-p", str(pitch), text],
                         capture_output=True, check=True, timeout=120).stdout
    with wave.open(io.BytesIO(wav)) as handle:
        rate, raw = handle.getframerate(), handle.readframes(handle.getnframes())
    audio = np.frombuffer(raw, dtype=np.int16).astype(np.float32) / 32768.0
    from scipy.signal import resample_poly

    g = np.gcd(SAMPLE_RATE, rate)
    return resample_poly(audio, SAMPLE_RATE // g, rate // g).astype(np.float32)


def mel_filters() -> np.ndarray:
    """[N_MELS, N_FFT // 2 + 1] triangular mel filters (HTK mel scale, 0-8 kHz)."""
    def mel(f: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + f / 700.0)

    edges = 700.0 * (10 ** (np.linspace(0.0, mel(np.array(SAMPLE_RATE / 2)), N_MELS + 2) / 2595.0) - 1.0)
    freqs = np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    return np.maximum(0.0, np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid))).astype(np.float32)


def log_mel(audio: np.ndarray) -> np.ndarray:
    """[T, N_MELS] log-mel frames at 50 frames/s (T = len(audio) // HOP)."""
    n = len(audio) // HOP
    padded = np.pad(audio, (WINDOW // 2, WINDOW // 2 + HOP))
    idx = np.arange(n)[:, None] * HOP + np.arange(WINDOW)[None, :]
    spectrum = np.abs(np.fft.rfft(padded[idx] * np.hanning(WINDOW).astype(np.float32), N_FFT)) ** 2
    return np.log(spectrum.astype(np.float32) @ mel_filters().T + 1e-6)


def _projection(dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng([MAP_SEED, dim])
    inputs = N_MELS * (2 * CONTEXT + 1)
    w1 = rng.standard_normal((inputs, 1024)).astype(np.float32) / np.float32(np.sqrt(inputs) * 4.0)
    b1 = rng.standard_normal(1024).astype(np.float32) * 0.5
    w2 = rng.standard_normal((1024, dim)).astype(np.float32) / np.float32(np.sqrt(1024))
    return w1, b1, w2


def project(mels: np.ndarray, dim: int) -> np.ndarray:
    """[T, dim] features of [T, N_MELS] log-mel frames: 7 frames of context, GELU layer, projection."""
    padded = np.pad(mels, ((CONTEXT, CONTEXT), (0, 0)), mode="edge")
    stacked = np.concatenate([padded[i:i + len(mels)] for i in range(2 * CONTEXT + 1)], axis=1)
    w1, b1, w2 = _projection(dim)
    hidden = stacked @ w1 + b1
    hidden = 0.5 * hidden * (1.0 + np.tanh(0.7978845 * (hidden + 0.044715 * hidden**3)))
    return _scaled(hidden @ w2, dim, 0.9)


def speech_mels(n_rows: int, seed: int | Sequence[int]) -> Iterator[np.ndarray]:
    """Log-mel utterances [T, N_MELS] totalling ``n_rows`` frames: speech between long pauses."""
    rng = np.random.default_rng(seed)
    voice = str(rng.choice(["en-us", "en-gb", "en-gb-scotland", "en-us+f3", "en-us+m3", "en+f2"]))
    base_speed, base_pitch = int(rng.integers(130, 190)), int(rng.integers(25, 75))
    for frames in utterance_lengths(n_rows, rng):
        pieces, have = [], 0
        while have < frames:
            if rng.random() < 0.35:  # a pause: room noise, or digital silence (exact duplicate frames)
                pause = int(rng.integers(10, 100)) * HOP
                level = 0.0 if rng.random() < 0.3 else float(10 ** rng.uniform(-4.5, -3.0))
                pieces.append(rng.standard_normal(pause).astype(np.float32) * np.float32(level))
            else:
                text = " ".join(rng.choice(WORDS, size=int(rng.integers(3, 12))))
                speed = int(np.clip(base_speed + rng.integers(-25, 26), 80, 260))
                pitch = int(np.clip(base_pitch + rng.integers(-10, 11), 0, 99))
                pieces.append(synthesize(text, voice, speed, pitch))
            have += len(pieces[-1]) // HOP
        yield log_mel(np.concatenate(pieces))[:frames]


# --- manifold: a slow 6-d latent trajectory through a fixed nonlinear map --------------------------

def manifold_frames(frames: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """[frames, dim]: a smooth walk on a 6-d latent manifold, mapped nonlinearly into ``dim`` dims."""
    latent_dim, hidden = 6, 256
    state = np.zeros(latent_dim, np.float32)
    velocity = rng.standard_normal(latent_dim).astype(np.float32) * 0.1
    latent = np.empty((frames, latent_dim), np.float32)
    for i in range(frames):  # a damped random walk: neighbouring frames are close
        velocity = 0.9 * velocity + 0.05 * rng.standard_normal(latent_dim).astype(np.float32)
        state = np.clip(state + velocity, -3.0, 3.0)
        latent[i] = state
    maps = np.random.default_rng([MAP_SEED, dim, 2])
    w1 = maps.standard_normal((latent_dim, hidden)).astype(np.float32)
    b1 = maps.uniform(-np.pi, np.pi, hidden).astype(np.float32)
    w2 = maps.standard_normal((hidden, dim)).astype(np.float32) / np.float32(np.sqrt(hidden))
    out = np.sin(latent @ w1 * 0.7 + b1) @ w2
    return _scaled(out + rng.standard_normal((frames, dim)).astype(np.float32) * 0.03, dim, 0.71)


# --- zipf: many small tight clusters, and silence as exact duplicates ------------------------------

def _zipf_centres(dim: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([MAP_SEED, dim, 3])
    n_clusters = 20_000
    centres = rng.standard_normal((n_clusters, 48)) @ rng.standard_normal((48, dim)) / np.sqrt(48)
    weights = 1.0 / np.arange(1, n_clusters + 1) ** 1.1
    return centres.astype(np.float32), weights / weights.sum()


def zipf_frames(frames: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """[frames, dim]: runs of 1-8 frames near Zipf-drawn cluster centres; 20 % exact-duplicate silence."""
    centres, weights = _zipf_centres(dim)
    out = np.empty((frames, dim), np.float32)
    silence = np.full(dim, 0.05, np.float32)
    t = 0
    while t < frames:
        run = min(frames - t, int(rng.integers(1, 9)))
        if rng.random() < 0.2:
            out[t:t + run] = silence
        else:
            centre = centres[int(rng.choice(len(weights), p=weights))]
            out[t:t + run] = centre + rng.standard_normal((run, dim)).astype(np.float32) * 0.15
        t += run
    return _scaled(out, dim, 1.0)


def utterances(kind: str, n_rows: int, dim: int, seed: int | Sequence[int]) -> Iterator[np.ndarray]:
    """Float32 utterances [T, dim] of ``kind`` totalling exactly ``n_rows`` frames."""
    reason = unavailable(kind)
    if reason:
        raise RuntimeError(reason)
    if kind == "speech":
        for mels in speech_mels(n_rows, seed):
            yield project(mels, dim)
        return
    rng = np.random.default_rng(seed)
    make: Callable[[int, int, np.random.Generator], np.ndarray] = manifold_frames if kind == "manifold" else zipf_frames
    for frames in utterance_lengths(n_rows, rng):
        yield make(frames, dim, rng)


def write_collection(root: Path, kind: str, name: str, rows: int, dim: int = 768, seed: int = 0) -> Path:
    """Write ``root/<name>/3_feature<D>/<i>.npy`` utterances of ``kind``; returns the feature folder."""
    folder = Path(root) / name / feature_dir_name(dim)
    folder.mkdir(parents=True, exist_ok=True)
    for i, utterance in enumerate(utterances(kind, rows, dim, [seed, *name.encode()])):
        write_atomic(folder / f"{i:05d}.npy", lambda tmp, u=utterance: save_npy(tmp, u))
    return folder


def sample_frames(kind: str, n_rows: int, dim: int, seed: int = 0) -> np.ndarray:
    """[n_rows, dim] frames of ``kind`` in memory (for tests and benchmarks)."""
    return np.concatenate(list(utterances(kind, n_rows, dim, [seed, dim])))
