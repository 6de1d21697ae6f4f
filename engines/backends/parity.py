"""Do two backends give the same embeddings? Compared on real CASIA-B windows at several batch sizes and lengths.

Used by `tools/export.py` after every export (and by the tests), because an exported graph can load and run yet
be wrong for lengths other than the traced one. Must not import `pipeline` or `stages`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from engines.data.sequences import open_dataset
from engines.gait.encoder import GaitEncoder

MIN_COSINE = 0.9999


@dataclass(frozen=True)
class ParityCase:
    """One (batch, frames) comparison: largest absolute difference and smallest per-sequence cosine similarity."""

    batch: int
    frames: int
    max_abs_diff: float
    min_cosine: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def real_windows(dataset_root: Path, batch: int, frames: int, subject: str = "075") -> NDArray[np.uint8]:
    """(batch, frames, 64, 44) uint8 windows from `batch` sequences of one subject spread over conditions and
    views; sequences shorter than `frames` are repeated from their start."""
    dataset = open_dataset(dataset_root, [subject])
    picks = np.linspace(0, len(dataset.keys) - 1, batch).round().astype(int)
    return np.stack([dataset.frames_at(int(i), np.arange(frames) % dataset.num_frames(int(i))) for i in picks])


def cosine_rows(a: NDArray[np.float32], b: NDArray[np.float32]) -> NDArray[np.float64]:
    """Cosine similarity of matching rows of two (N, ...) arrays, flattened per row."""
    a64, b64 = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return (a64 * b64).sum(1) / np.maximum(norms, 1e-12)


def compare_encoders(reference: GaitEncoder, candidate: GaitEncoder, dataset_root: Path,
                     batches: Sequence[int] = (1, 8), frames: Sequence[int] = (10, 30, 100)) -> list[ParityCase]:
    """Encode the same real windows with both encoders for every (batch, frames) pair."""
    cases = []
    largest = real_windows(dataset_root, max(batches), max(frames))
    for batch in batches:
        picks = np.linspace(0, len(largest) - 1, batch).round().astype(int)
        for length in frames:
            windows = largest[picks, :length]
            expected, got = reference.encode(windows), candidate.encode(windows)
            cases.append(ParityCase(batch, length, float(np.abs(expected - got).max()),
                                    float(cosine_rows(expected, got).min())))
    return cases
