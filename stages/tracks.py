"""What the pipeline's output says about each track: frames, silhouettes, embeddings and its last identity.

Tools that run the stages in their own process (enrolment, the cross-scene evaluation) read the stages' output
through a `TrackCollector`, so they see the tracks exactly as a live run's sink would.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.errors import GaitstreamError
from pipeline.messages import Candidate, DataMessage, EndOfStream, FrameRecord


@dataclass
class TrackSummary:
    """What one track yielded: its frame range, silhouette count (and masks rejected, by reason), gait embeddings
    and latest identity."""

    track_id: int
    first_frame: int
    last_frame: int
    silhouettes: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # e.g. {"truncated": 36, "tiny": 16}
    embeddings: list[np.ndarray] = field(default_factory=list)
    identity: str | None = None  # the match stage's latest label (None when no match stage ran)
    score: float = 0.0
    candidates: tuple[Candidate, ...] = ()

    def why_few(self) -> str:
        """'9 usable silhouettes; 52 masks rejected: truncated 36, tiny 16': why a track gave no gait window, in the
        segment stage's reasons (`engines.pretreat`, `engines.segment`)."""
        text = f"{self.silhouettes} usable silhouettes"
        if self.rejected:
            reasons = sorted(self.rejected.items(), key=lambda item: (-item[1], item[0]))
            text += f"; {sum(self.rejected.values())} masks rejected: " + ", ".join(f"{r} {n}" for r, n in reasons)
        return text


@dataclass
class TrackCollector:
    """Gathers, from a stage chain's output, each track's frames, silhouettes, embeddings and identities."""

    tracks: dict[int, TrackSummary] = field(default_factory=dict)
    encoder: str | None = None
    parts: int = 1

    def __call__(self, message: DataMessage) -> None:
        if isinstance(message, FrameRecord):
            for track_id in message.tracks.track_ids.tolist():
                track = self.tracks.setdefault(track_id, TrackSummary(track_id, message.seq, message.seq))
                track.last_frame = message.seq
            if message.silhouettes is not None:
                for track_id in message.silhouettes.track_ids.tolist():
                    self._track(track_id, message.seq).silhouettes += 1
            if message.rejections is not None:
                for track_id, reason in zip(message.rejections.track_ids.tolist(), message.rejections.reasons):
                    rejected = self._track(track_id, message.seq).rejected
                    rejected[reason] = rejected.get(reason, 0) + 1
        if not isinstance(message, (FrameRecord, EndOfStream)):
            return
        if message.embeddings is not None:
            self.encoder, self.parts = message.embeddings.encoder, message.embeddings.parts
            for track_id, vector in zip(message.embeddings.track_ids.tolist(), message.embeddings.vectors):
                self._track(track_id).embeddings.append(np.asarray(vector, np.float32))
        if message.identities is not None:
            found = message.identities
            for track_id, name, score, candidates in zip(found.track_ids.tolist(), found.names,
                                                         found.scores.tolist(), found.candidates):
                track = self._track(track_id)
                track.identity, track.score, track.candidates = name, float(score), tuple(candidates)

    def _track(self, track_id: int, frame: int = -1) -> TrackSummary:
        return self.tracks.setdefault(track_id, TrackSummary(track_id, frame, frame))

    def in_order(self) -> list[TrackSummary]:
        """Tracks by first appearance."""
        return sorted(self.tracks.values(), key=lambda t: (t.first_frame, t.track_id))


def choose_track(tracks: list[TrackSummary], track_id: int | None, source: str) -> TrackSummary:
    """The requested track, or the only one with embeddings; an error that says what to do otherwise."""
    usable = [t for t in tracks if t.embeddings]
    if track_id is not None:
        found = next((t for t in tracks if t.track_id == track_id), None)
        if found is None:
            known = ", ".join(str(t.track_id) for t in tracks) or "none"
            raise GaitstreamError(f"{source}: no track {track_id} (tracks: {known}; see --list-tracks)")
        if not found.embeddings:
            raise GaitstreamError(f"{source}: track {track_id} gave no gait window ({found.why_few()})")
        return found
    if len(usable) == 1:
        return usable[0]
    if not usable:
        longest = max(tracks, key=lambda t: t.silhouettes + sum(t.rejected.values()), default=None)
        seen = "" if longest is None else f"; the longest, track {longest.track_id}: {longest.why_few()}"
        raise GaitstreamError(f"{source}: nobody walked long enough in view to enrol ({len(tracks)} tracks{seen})")
    listing = "; ".join(f"track {t.track_id} frames {t.first_frame}-{t.last_frame}" for t in usable)
    raise GaitstreamError(f"{source}: {len(usable)} people ({listing}); choose one with --track-id")


def assign_people(tracks: list[TrackSummary], people: tuple[str, ...]) -> dict[str, TrackSummary]:
    """Which track is which named person of a clip: the cross-scene benchmark's rule.

    Only tracks with at least one gait embedding count. With one person, theirs is the track with the most
    silhouettes; with several, tracks map to people in order of first appearance. People left without a track are
    absent from the result.
    """
    usable = [t for t in tracks if t.embeddings]
    if not usable:
        return {}
    if len(people) == 1:
        return {people[0]: max(usable, key=lambda t: (t.silhouettes, -t.first_frame))}
    ordered = sorted(usable, key=lambda t: (t.first_frame, t.track_id))
    return dict(zip(people, ordered))
