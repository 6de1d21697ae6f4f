"""Batch and frame sampling for training and testing, after OpenGait's `TripletSampler` and `CollateFn`.

Training batches are P identities x K sequences (the triplet loss needs positives and negatives in every batch),
each sequence cut to a fixed number of frames drawn at random ("fixed_unordered"). Temporal max pooling is
order-invariant, so ordered vs unordered frames make no difference to GaitBase; a fixed length lets a batch be one
dense `(N, T, 64, 44)` tensor with no sequence packing, which keeps the convolutions uniform and the step time
predictable. Testing uses all frames of a sequence ("all_ordered"), optionally capped for quick monitoring.

Every draw takes an explicit `numpy.random.Generator`; the trainer derives it from (seed, step), so a resumed run
sees exactly the batches an uninterrupted run would.

Must not import `pipeline` or `stages`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from engines.errors import DatasetError


class PKBatchSampler:
    """Draws P identities without replacement and K sequences of each (with replacement if it has fewer)."""

    def __init__(self, labels: Sequence[int], p: int, k: int) -> None:
        by_label: dict[int, list[int]] = defaultdict(list)
        for index, label in enumerate(labels):
            by_label[int(label)].append(index)
        if len(by_label) < p:
            raise DatasetError(f"P x K sampling needs at least P={p} identities, the training set has {len(by_label)}")
        self.p, self.k = p, k
        self._labels = sorted(by_label)
        self._indices = {label: np.asarray(by_label[label], dtype=np.int64) for label in self._labels}

    def sample(self, rng: np.random.Generator) -> NDArray[np.int64]:
        """Dataset indices of one batch, (P * K,) grouped by identity."""
        chosen = rng.choice(len(self._labels), size=self.p, replace=False)
        batch = []
        for label_index in chosen:
            pool = self._indices[self._labels[int(label_index)]]
            batch.append(rng.choice(pool, size=self.k, replace=len(pool) < self.k))
        return np.concatenate(batch)


def fixed_frame_indices(num_frames: int, frames: int, rng: np.random.Generator) -> NDArray[np.int64]:
    """OpenGait "fixed_unordered": `frames` random frame indices; short sequences are tiled first, then drawn from."""
    pool = np.arange(num_frames, dtype=np.int64)
    if num_frames < frames:
        pool = np.tile(pool, -(-frames // num_frames))
    return rng.choice(pool, size=frames, replace=False)


def all_frame_indices(num_frames: int, max_frames: int | None) -> NDArray[np.int64]:
    """All frames in order, or the first `max_frames` (a cheap deterministic cap for monitoring evaluations)."""
    stop = num_frames if max_frames is None else min(num_frames, max_frames)
    return np.arange(stop, dtype=np.int64)
