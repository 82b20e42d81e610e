"""Synthetic RVC feature collections: several speakers, utterances of 50-750 frames.

Frames behave like HuBERT features: they sit near a shared inventory of phone-like prototypes in
a low-rank subspace (so they cluster), each speaker shifts and colours that inventory, phones
last several frames with smooth transitions, and an AR(1) drift correlates neighbouring frames.
Per-dimension spread is about 0.4, so a frame's norm is about ``0.4 * sqrt(D)``.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rvc_index.data.layouts import feature_dir_name
from rvc_index.errors import RvcIndexError
from rvc_index.runtime.outputs import write_atomic

N_PHONES = 48
RANK = 64
MIN_FRAMES, MAX_FRAMES = 50, 750
INVENTORY_SEED = 20260401  # the phone inventory is shared by every speaker of every collection


class SynthError(RvcIndexError, ValueError):
    """Arguments no synthetic collection can be written from (the message names the option)."""


def _count(value: object, least: int, what: str) -> int:
    """``value`` as an int of at least ``least``, else SynthError saying ``what`` it is."""
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise SynthError(f"{what} {value!r}: a whole number is needed") from None
    if number < least:
        raise SynthError(f"{what} {number}: at least {least}" + (
            f" (the frames' phone space spans {RANK} dimensions)" if least == RANK else ""))
    return number


@dataclass(frozen=True)
class SpeakerSpec:
    name: str
    rows: int
    dim: int = 768

    def __post_init__(self) -> None:
        _count(self.rows, 1, f"{self.name}: rows")
        _count(self.dim, RANK, f"{self.name}: dim")


def speaker_specs(speakers: int, rows: int, dim: int) -> list[SpeakerSpec]:
    """``synth``'s speakers (``speaker00``, ...), checked before anything is written: the message names the option."""
    count = _count(speakers, 1, "--speakers")
    rows, dim = _count(rows, 1, "--rows"), _count(dim, RANK, "--dim")
    return [SpeakerSpec(f"speaker{i:02d}", rows, dim) for i in range(count)]


def _inventory(dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(orthonormal basis [RANK, D], phone prototypes [N_PHONES, RANK]) shared by all speakers."""
    rng = np.random.default_rng([INVENTORY_SEED, dim])
    basis, _ = np.linalg.qr(rng.standard_normal((dim, RANK)))
    prototypes = rng.standard_normal((N_PHONES, RANK)) * 2.4
    return basis.T.astype(np.float32), prototypes.astype(np.float32)


def utterance_lengths(n_rows: int, rng: np.random.Generator) -> Iterator[int]:
    """Frames per utterance (``MIN_FRAMES`` to ``MAX_FRAMES``, drawn from ``rng``) until ``n_rows`` are given."""
    remaining = n_rows
    while remaining > 0:
        frames = min(remaining, int(rng.integers(MIN_FRAMES, MAX_FRAMES + 1)))
        remaining -= frames
        yield frames


def utterances(n_rows: int, dim: int, seed: int | Sequence[int]) -> Iterator[np.ndarray]:
    """Float32 utterances [T, dim] totalling exactly ``n_rows`` frames (last one may be short)."""
    rng = np.random.default_rng(seed)
    basis, prototypes = _inventory(dim)
    speaker_shift = rng.standard_normal(RANK).astype(np.float32) * 0.8
    speaker_scale = np.exp(rng.standard_normal(RANK) * 0.15).astype(np.float32)
    phones = (prototypes + speaker_shift) * speaker_scale
    transitions = rng.dirichlet(np.full(N_PHONES, 0.3), size=N_PHONES)
    noise_scale = np.float32(0.4 * 0.3)
    for frames in utterance_lengths(n_rows, rng):
        labels = np.empty(frames, np.int64)
        phone, t = int(rng.integers(N_PHONES)), 0
        while t < frames:
            duration = int(rng.integers(3, 16))
            labels[t:t + duration] = phone
            t += duration
            phone = int(rng.choice(N_PHONES, p=transitions[phone]))
        targets = phones[labels]
        kernel = np.ones(3, np.float32) / 3.0  # coarticulation: smooth the phone targets
        padded = np.concatenate([targets[:1], targets, targets[-1:]])
        smooth = sum(kernel[j] * padded[j:j + frames] for j in range(3))
        drift = np.empty((frames, RANK), np.float32)
        state = rng.standard_normal(RANK).astype(np.float32)
        innovations = rng.standard_normal((frames, RANK)).astype(np.float32)
        for i in range(frames):  # AR(1), rho 0.9, unit stationary variance
            state = 0.9 * state + 0.4359 * innovations[i]
            drift[i] = state
        coords = smooth + 0.6 * drift
        frame_noise = rng.standard_normal((frames, dim)).astype(np.float32) * noise_scale
        yield ((coords @ basis) * np.float32(0.4 * np.sqrt(dim / RANK) / 2.5) + frame_noise).astype(np.float32)


def write_speaker(root: Path, spec: SpeakerSpec, seed: int = 0) -> Path:
    """Write ``root/<name>/3_feature<D>/<i>.npy`` files; returns the feature folder."""
    folder = Path(root) / spec.name / feature_dir_name(spec.dim)
    folder.mkdir(parents=True, exist_ok=True)
    speaker_seed = [seed, spec.dim, *spec.name.encode()]
    for i, utterance in enumerate(utterances(spec.rows, spec.dim, speaker_seed)):
        write_atomic(folder / f"{i:05d}.npy", lambda tmp, u=utterance: save_npy(tmp, u))
    return folder


def save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` to exactly ``path`` (np.save would append .npy to a temporary name)."""
    with open(path, "wb") as handle:
        np.save(handle, array)


def generate_collection(root: Path, specs: Sequence[SpeakerSpec], seed: int = 0) -> list[Path]:
    """Write every speaker under ``root`` (RVC's ``logs/`` layout); returns the feature folders."""
    return [write_speaker(Path(root), spec, seed) for spec in specs]


def sample_frames(n_rows: int, dim: int, seed: int = 0) -> np.ndarray:
    """[n_rows, dim] frames of one synthetic speaker, in memory (for tests and benchmarks)."""
    return np.concatenate(list(utterances(n_rows, dim, [seed, dim])))


# The demo's speakers (name, rows, width): `rvc-index demo` and the expansion benchmark use them.
DEMO_SPEAKERS = (("alto", 12_000, 768), ("bass", 30_000, 768), ("tenor", 60_000, 768), ("v1voice", 20_000, 256))


def write_demo(root: Path, seed: int = 0) -> Path:
    """The demo's speakers under ``root`` (RVC's ``logs/`` layout), each written unless it is there; ``root``."""
    for name, n_rows, dim in DEMO_SPEAKERS:
        if not (Path(root) / name).is_dir():
            write_speaker(Path(root), SpeakerSpec(name, n_rows, dim), seed)
    return Path(root)
