"""Open-set matching of gait embeddings against the gallery, and per-track temporal voting.

Distance: OpenGait compares part-based embeddings part by part; we L2-normalise each part and average the
per-part cosine distances, which is one matrix product over pre-normalised vectors (BLAS does it in well under a
millisecond for thousands of gallery embeddings). An identity's distance is that of its closest embedding. The
open-set decision accepts the closest identity only when its distance is at most `accept_distance`, a threshold
calibrated on CASIA-B genuine/impostor pairs at a chosen false-accept rate (`tools/eval.py --calibrate`);
otherwise the track is `unknown`. Must not import `pipeline` or `stages`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from engines.files import atomic_savez
from engines.gallery import GallerySnapshot

log = logging.getLogger(__name__)

UNKNOWN = "unknown"


def normalise_parts(vectors: NDArray[np.float32], parts: int) -> NDArray[np.float32]:
    """(N, D) -> (N, D) with each of the `parts` slices L2-normalised and scaled by 1/sqrt(parts), so the dot
    product of two rows is the mean per-part cosine similarity."""
    n, dim = vectors.shape
    # One copy, normalised in place: a 10,000 x 10 gallery is 800 MB, and each temporary of that size costs seconds.
    split = np.array(vectors, dtype=np.float32, copy=True).reshape(n, parts, dim // parts)
    scale = np.sqrt(np.einsum("npd,npd->np", split, split))
    np.maximum(scale, 1e-12, out=scale)
    scale *= np.float32(np.sqrt(parts))
    split /= scale[..., None]
    return split.reshape(n, dim)


@dataclass(frozen=True)
class Match:
    """One gallery identity considered for a query, with its part-averaged cosine distance in [0, 2]."""

    name: str
    distance: float


class GalleryIndex:
    """The gallery prepared for queries: part-normalised vectors grouped by identity.

    Small galleries are searched exactly. Beyond `exact_max_embeddings` a query first scores every identity's
    centroid in a random `coarse_dim`-D projection (Johnson-Lindenstrauss: dot products survive up to about
    1/sqrt(coarse_dim)), then searches the `candidates` best identities' embeddings exactly. For 10,000 identities x
    10 embeddings of 2048 floats that reads 10 MB per query instead of 800 MB (`tools/bench.py matcher`).
    """

    def __init__(self, snapshot: GallerySnapshot, *, centred: bool = False, exact_max_embeddings: int = 4096,
                 coarse_dim: int = 128, candidates: int = 48) -> None:
        self.names = snapshot.names
        self.parts = snapshot.parts
        self.encoder = snapshot.encoder
        owners = snapshot.owners
        grouped = bool(np.all(owners[:-1] <= owners[1:]))  # as the stores give them: no 800 MB reordering copy
        order = None if grouped else np.argsort(owners, kind="stable")
        self.owners = owners if order is None else owners[order]
        vectors = snapshot.vectors if order is None else snapshot.vectors[order]
        self.vectors = normalise_parts(vectors, snapshot.parts) if len(vectors) else vectors
        if centred and len(vectors):  # the gallery's own mean subtracted (`CameraMeans`: queries lose their camera's)
            self.vectors = normalise_parts(self.vectors - self.vectors.mean(0, keepdims=True), snapshot.parts)
        self.starts = np.searchsorted(self.owners, np.arange(len(self.names)))
        self.counts = np.diff(np.append(self.starts, len(self.owners)))
        self.candidates = candidates
        self.strategy = "exact" if len(self.vectors) <= exact_max_embeddings else "two-stage"
        if self.strategy == "two-stage":
            rng = np.random.default_rng(0)
            self.projection = (rng.standard_normal((self.vectors.shape[1], coarse_dim)) / np.sqrt(coarse_dim)
                               ).astype(np.float32)
            # Each identity's projected centroid, projecting first (linear, so the same): summing 128-D rows instead
            # of 2048-D ones is what keeps a 100,000-embedding rebuild under a second.
            projected = self.vectors @ self.projection
            self.coarse = np.ascontiguousarray(np.add.reduceat(projected, self.starts, axis=0) / self.counts[:, None],
                                               dtype=np.float32)

    def __len__(self) -> int:
        return len(self.names)

    def query(self, embeddings: NDArray[np.float32], top_k: int = 5,
              offset: NDArray[np.float32] | None = None) -> list[list[Match]]:
        """(Q, D) -> for each query, up to `top_k` identities by increasing distance. `offset` (D,) is subtracted
        from every query first: its camera's mean, for a centred index."""
        if not len(self.names):
            return [[] for _ in range(len(embeddings))]
        queries = np.asarray(embeddings, np.float32)
        queries = normalise_parts(queries if offset is None else queries - offset[None], self.parts)
        if self.strategy == "exact":
            best = np.maximum.reduceat(queries @ self.vectors.T, self.starts, axis=1)  # (Q, identities)
            return [self._top(np.arange(len(self.names)), row, top_k) for row in best]
        coarse = (queries @ self.projection) @ self.coarse.T  # (Q, identities)
        keep = min(self.candidates, len(self.names))
        shortlists = np.argpartition(-coarse, keep - 1, axis=1)[:, :keep]
        results = []
        for query, shortlist in zip(queries, shortlists):
            rows = np.concatenate([np.arange(self.starts[i], self.starts[i] + self.counts[i]) for i in shortlist])
            offsets = np.concatenate(([0], np.cumsum(self.counts[shortlist])[:-1]))
            best = np.maximum.reduceat(self.vectors[rows] @ query, offsets)
            results.append(self._top(shortlist, best, top_k))
        return results

    def _top(self, identities: NDArray[np.int64], similarity: NDArray[np.float32], top_k: int) -> list[Match]:
        order = np.argsort(-similarity)[:top_k]
        return [Match(self.names[identities[i]], float(1.0 - similarity[i])) for i in order]


def decide_identity(matches: list[Match], accept_distance: float,
                    margin_ratio: float = 1.0) -> tuple[str, float]:
    """Open-set decision: (name or 'unknown', confidence in [0, 1]).

    The closest identity is named only when its distance is at most `accept_distance` and, when there is a second
    identity, at most `margin_ratio` times the second's distance: a probe about as close to two people is not
    confidently either, and a ratio keeps that meaning in a scene where every distance shrinks or grows (real
    footage moves the whole distribution; CASIA-B's calibration does not transfer). Confidence is how far inside
    the acceptance radius the best match lies (1 at distance 0, 0 at the threshold); for 'unknown' how far
    outside it lies, capped at 1 (0 when only the margin failed).
    """
    if not matches:
        return UNKNOWN, 1.0
    best = matches[0]
    if best.distance > accept_distance:
        return UNKNOWN, float(np.clip((best.distance - accept_distance) / accept_distance, 0.0, 1.0))
    if len(matches) > 1 and best.distance > margin_ratio * matches[1].distance:
        return UNKNOWN, 0.0
    return best.name, float(np.clip(1.0 - best.distance / accept_distance, 0.0, 1.0))


class CameraMeans:
    """Each camera's mean walk embedding, learned from the walks it has seen: what per-camera centring subtracts.

    A camera's footage shifts every embedding it yields by a common offset (its height, distance, lighting, mask
    quality), which shrinks the distances between different people (`tools/matcher_rules.py`: on USF a threshold
    calibrated on CASIA-B accepts 92 % of impostors). Subtracting the camera's mean walk (and the gallery's mean
    from the gallery) removes the offset, as camera-wise normalisation in cross-domain re-identification does. The
    mean is only used once the camera has seen `min_walks` walks: before that it is the mean of a few people, not of
    the camera, and centring by it would name strangers. Sums, so the state is one vector per camera.

    The sums belong to one encoder (another maps walks elsewhere): walks of a new encoder start them again. With
    `path` they are kept in that npz, rewritten after every walk, so a restarted match stage centres at once
    instead of matching raw until each camera has shown `min_walks` walks again.
    """

    def __init__(self, min_walks: int, path: Path | None = None) -> None:
        self.min_walks = min_walks
        self.path = path
        self.encoder: str | None = None
        self.sums: dict[str, NDArray[np.float64]] = {}
        self.counts: dict[str, int] = {}
        self.save_failed = False
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)  # a wrong folder fails at start, not at the first walk
            if path.exists():
                self._load(path)

    def _load(self, path: Path) -> None:
        try:
            with np.load(path, allow_pickle=False) as state:
                encoder, cameras = str(state["encoder"]), state["cameras"].astype(str).tolist()
                sums, counts = state["sums"].astype(np.float64), state["counts"].astype(np.int64).tolist()
            if len(cameras) != len(sums) or len(cameras) != len(counts):
                raise ValueError("cameras, sums and counts differ in length")
        except (OSError, KeyError, ValueError) as exc:
            log.warning("camera statistics %s unreadable (%s): every camera learns its mean again", path, exc)
            return
        self.encoder = encoder
        self.sums, self.counts = dict(zip(cameras, sums)), dict(zip(cameras, counts))
        log.info("camera statistics %s: encoder %s, %s", path, encoder,
                 ", ".join(f"{c} {n} walks" for c, n in self.counts.items()) or "no camera yet")

    def _save(self) -> None:
        if self.path is None:
            return
        cameras = sorted(self.sums)  # called after a walk is added: never empty
        try:
            atomic_savez(self.path, {"encoder": np.asarray(self.encoder), "cameras": np.asarray(cameras, dtype=str),
                                     "sums": np.stack([self.sums[c] for c in cameras]),
                                     "counts": np.asarray([self.counts[c] for c in cameras], np.int64)})
        except OSError as exc:  # matching goes on; only a restart would relearn
            if not self.save_failed:
                log.warning("cannot keep camera statistics in %s (%s): they will be relearnt after a restart",
                            self.path, exc)
            self.save_failed = True
        else:
            self.save_failed = False

    def add(self, camera: str, walk: NDArray[np.float32], encoder: str) -> bool:
        """Count one finished walk (`TrackEvidence.embedding()`) of `encoder`; True when the camera has just become
        usable."""
        vector = np.asarray(walk, np.float64)
        if encoder != self.encoder or any(len(s) != len(vector) for s in self.sums.values()):
            if self.sums:
                log.warning("camera statistics were learnt for encoder %s, walks now come from %s: every camera "
                            "learns its mean again", self.encoder, encoder)
            self.encoder, self.sums, self.counts = encoder, {}, {}
        self.sums[camera] = self.sums.get(camera, 0.0) + vector
        self.counts[camera] = self.counts.get(camera, 0) + 1
        self._save()
        return self.counts[camera] == self.min_walks

    def mean(self, camera: str, encoder: str) -> NDArray[np.float32] | None:
        """The camera's mean walk of `encoder`, or None while it has seen fewer than `min_walks` of its walks."""
        count = self.counts.get(camera, 0) if encoder == self.encoder else 0
        return None if count < self.min_walks else (self.sums[camera] / count).astype(np.float32)


class TrackEvidence:
    """Everything a track's walk has shown so far, as one embedding: the frame-weighted mean of its windows.

    Each window is part-normalised before it is averaged, so every window counts by its length alone, not by the
    size of its activations. Matching the walk instead of voting over isolated 30-frame windows uses all the
    evidence at once: a track is named from the whole walk, and a window of bad masks moves the mean a little
    instead of casting a vote. The mean is a sum, so the state is one vector per track whatever its length.
    """

    def __init__(self, parts: int, now_s: float) -> None:
        self.parts = parts
        self.total: NDArray[np.float64] | None = None
        self.frames = 0
        self.windows = 0
        self.last_seen_s = now_s

    def add(self, vector: NDArray[np.float32], frames: int, now_s: float) -> None:
        normalised = normalise_parts(np.asarray(vector, np.float32)[None], self.parts)[0].astype(np.float64)
        weighted = normalised * max(1, frames)
        self.total = weighted if self.total is None else self.total + weighted
        self.frames += max(1, frames)
        self.windows += 1
        self.last_seen_s = now_s

    def embedding(self) -> NDArray[np.float32]:
        """The walk's embedding, (D,) float32 (part-normalised by the matcher like any query)."""
        if self.total is None:
            raise ValueError("no window added yet")
        return (self.total / self.frames).astype(np.float32)
