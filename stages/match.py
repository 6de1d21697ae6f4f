"""match: turns track embeddings into identities (a gallery name or `unknown`), from the whole walk seen so far.

Each new embedding window of a track joins the track's evidence (`engines.matching.TrackEvidence`: the
frame-weighted mean of all its windows), and the walk, not the window, gets the open-set decision against the
gallery: named only when close enough (`accept_distance`, by default the encoder's own calibrated threshold) and
clearly closer than the runner-up (`margin_ratio`), otherwise `unknown` with its candidates. Every frame carries
the current label of each of its tracks; frames on which a track got a new decision mark it `decided`, which is
when the sink writes an `identity` event with the top-k candidates. A gallery file is re-read when another process (an
enrolment) commits to it; a PostgreSQL gallery is followed by `engines.gallery_postgres.GalleryFollower`, whose
background thread hands over a new copy after each commit on any host (the stage only picks it up on a tick, never
waiting on the network). With `auto_enroll`, a track that ends as `unknown` is added to the gallery as an
anonymous identity, so the same stranger is recognised later and on other cameras.

A changed gallery is read and indexed on one background thread while matching goes on with the previous index
(`_IndexBuilds`): at 10,000 identities x 10 that takes seconds (`tools/bench.py matcher`), which on the stage's own
thread would stall every camera at each enrolment. Only the first load, at start, is waited for.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, ClassVar

import numpy as np
from pydantic import AfterValidator, Field, ValidationInfo, model_validator

from engines.gallery import Gallery, GallerySnapshot, gallery_location, open_gallery, resolve_gallery_path
from engines.matching import UNKNOWN, CameraMeans, GalleryIndex, Match, TrackEvidence, decide_identity
from pipeline.config import ConfigPath, StageConfig, StrictModel, resolve_config_path
from pipeline.messages import Candidate, DataMessage, Embeddings, EndOfStream, FrameRecord, Identities
from pipeline.stage import Stage

if TYPE_CHECKING:
    from engines.gallery_postgres import GalleryFollower

log = logging.getLogger(__name__)

#: How long `open` waits for a PostgreSQL gallery's first copy before starting with none.
FIRST_LOAD_TIMEOUT_S = 10.0


def _resolve_gallery(value: str | Path, info: ValidationInfo) -> str | Path:
    """A file resolves against the config's folder like any path; a postgresql:// URL stays as written."""
    location = gallery_location(value)
    return location if isinstance(location, str) else resolve_config_path(location, info)


GalleryLocation = Annotated[str | Path, AfterValidator(_resolve_gallery)]


class CentringConfig(StrictModel):
    """Per-camera centring (`engines.matching.CameraMeans`): off by default, see README "Real footage"."""

    enabled: bool = Field(False, description="subtract each camera's mean walk and the gallery's mean before "
                          "matching, once both are known (min_walks, min_identities); otherwise match as usual")
    min_walks: int = Field(20, ge=1, description="finished walks a camera must have shown before it is centred")
    min_identities: int = Field(10, ge=2, description="identities the gallery needs before its mean means anything")
    accept_distance: float | None = Field(
        None, gt=0, lt=2, description="threshold for centred distances (tools/matcher_rules.py: the CASIA-B 1 % "
        "false-accept threshold of the `scene` rule); required when enabled")
    cameras: dict[str, str] = Field(default_factory=dict, description="stream id -> camera, for streams that are "
                                    "recordings of one camera (default: every stream its own camera)")
    state_file: ConfigPath | None = Field(
        None, description="npz where each camera's walk statistics are kept across restarts (rewritten after every "
        "finished walk), so a restarted stage centres at once; null: learnt again after every start")

    @model_validator(mode="after")
    def _threshold_when_enabled(self) -> CentringConfig:
        if self.enabled and self.accept_distance is None:
            raise ValueError("centring.enabled needs centring.accept_distance, calibrated for centred distances "
                             "(tools/matcher_rules.py --casiab DUMP: the `scene` rule's CASIA-B threshold)")
        return self


class MatchConfig(StageConfig):
    """The gallery and the open-set decision."""

    replaced_keys = {"track_timeout_s": "set stages.match.orphaned_track_timeout_s; when a track ends is "
                     "stages.detect_track.track_lifetime_s"}

    gallery: GalleryLocation | None = Field(
        None, description="SQLite file (or sqlite:///path) or postgresql:// URL; default $GAITSTREAM_GALLERY or "
        "./gallery.sqlite")
    accept_distance: float | None = Field(
        None, gt=0, lt=2, description="largest part-averaged cosine distance accepted as a match; null: the "
        "threshold calibrated for the encoder (its weights' metadata, written by tools/calibrate.py)")
    margin_ratio: float | None = Field(
        None, gt=0, le=1, description="name the closest identity only if its distance is at most this times the "
        "runner-up's (1: no margin); null: the ratio the encoder's threshold was calibrated with (its weights' "
        "metadata), else 0.8")
    top_k: int = Field(3, ge=1, description="candidates reported with each decision")
    orphaned_track_timeout_s: float = Field(
        30.0, gt=0, description="wall clock: forget the evidence of a track unseen this long whose end never came "
        "(an upstream restart lost it); longer than stages.detect_track.track_lifetime_s, which ends tracks")
    reload_interval_s: float = Field(2.0, gt=0, description="how often to look for changes to a gallery file "
                                     "(a PostgreSQL gallery's arrive as they commit)")
    auto_enroll: bool = Field(False, description="add tracks that end unknown as anonymous identities")
    auto_enroll_min_windows: int = Field(2, ge=1, description="windows an unknown track needs to be auto-enrolled")
    centring: CentringConfig = Field(default_factory=CentringConfig)


#: Used when neither the config nor the encoder's weights give a threshold: the compact CASIA-B encoders' 1 % FAR.
FALLBACK_ACCEPT_DISTANCE = 0.34
#: Used when neither gives a margin ratio: the largest that names at most 10 % of strangers in 10-person galleries of
#: CASIA-B and USF with the default encoder (README, "Strangers in bigger galleries").
FALLBACK_MARGIN_RATIO = 0.8


def resolve_decision(config: MatchConfig, accept_distance: float | None,
                     margin_ratio: float | None) -> tuple[float, float]:
    """The threshold and margin ratio a match is decided with: the config's, else those calibrated for the encoder
    (its weights' metadata: a threshold chosen for one ratio names more strangers with a looser one), else the
    fallbacks."""
    accept = config.accept_distance if config.accept_distance is not None else accept_distance
    margin = config.margin_ratio if config.margin_ratio is not None else margin_ratio
    return (FALLBACK_ACCEPT_DISTANCE if accept is None else accept,
            FALLBACK_MARGIN_RATIO if margin is None else margin)


@dataclasses.dataclass
class _TrackState:
    evidence: TrackEvidence
    label: tuple[str, float] = (UNKNOWN, 0.0)
    candidates: tuple[Candidate, ...] = ()
    vectors: list[np.ndarray] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class _BuiltIndex:
    version: int
    index: GalleryIndex
    centred_index: GalleryIndex | None
    anonymous: int
    seconds: float


class _IndexBuilds:
    """Gallery copies read and indexed on one background thread, one build at a time.

    A SQLite connection may only be used by the thread that opened it, so the builder reads through a connection of
    its own, opened on its thread at its first read.
    """

    def __init__(self, gallery_path: Path | str) -> None:
        self._gallery_path = gallery_path
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="match-index")
        self._reader: Gallery | None = None
        self._pending: Future[_BuiltIndex] | None = None
        self.pending_version: int | None = None

    def read_snapshot(self) -> GallerySnapshot:
        """The gallery as it is now (on the builder thread)."""
        if self._reader is None:
            self._reader = open_gallery(self._gallery_path, create=False)
        return self._reader.snapshot()

    def submit(self, version: int, read: Callable[[], GallerySnapshot], centred: Callable[[int], bool]) -> None:
        """Build the index of `version`: `read()` gives its snapshot; `centred(identities)` whether a centred
        index is wanted too."""

        def build() -> _BuiltIndex:
            started = time.perf_counter()
            snapshot = read()
            index = GalleryIndex(snapshot)
            centred_index = GalleryIndex(snapshot, centred=True) if centred(len(snapshot.names)) else None
            return _BuiltIndex(version, index, centred_index, snapshot.anonymous, time.perf_counter() - started)

        self.pending_version = version
        self._pending = self._pool.submit(build)

    def take(self, wait: bool = False) -> _BuiltIndex | None:
        """The finished build, once (None while it runs, unless `wait`); a failed build raises here."""
        if self._pending is None or not (wait or self._pending.done()):
            return None
        future, self._pending, self.pending_version = self._pending, None, None
        return future.result()

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
        if self._reader is not None:  # closed on its own thread
            self._pool.submit(self._reader.close).result()
        self._pool.shutdown(wait=True)


class MatchStage(Stage):
    name = "match"
    Config: ClassVar[type[StageConfig]] = MatchConfig

    def open(self) -> None:
        config: MatchConfig = self.config  # type: ignore[assignment]
        self.gallery_path = resolve_gallery_path(config.gallery)
        self.store: Gallery | None = None
        self.follower: GalleryFollower | None = None
        self.index: GalleryIndex | None = None
        self.centred_index: GalleryIndex | None = None
        self.camera_means = CameraMeans(config.centring.min_walks,
                                        config.centring.state_file if config.centring.enabled else None)
        self.version = -1
        self.builds = _IndexBuilds(self.gallery_path)
        self.rebuild_wanted = False
        self.next_reload_s = 0.0
        self.tracks: dict[tuple[str, int], _TrackState] = {}
        self.anonymous_count = 0
        self.last_encoder: tuple[str, int] | None = None  # (name, parts) of the embeddings seen, for auto-enrol
        self.warned_uncalibrated = False
        if isinstance(self.gallery_path, str):
            self.store = open_gallery(self.gallery_path)  # the schema, and a clear error for a bad URL, now
            from engines.gallery_postgres import GalleryFollower  # the extra is there: open_gallery needed it

            self.follower = GalleryFollower(self.gallery_path)
            if not self.follower.wait_until_loaded(FIRST_LOAD_TIMEOUT_S):
                log.warning("gallery %s not loaded after %.0f s: every track is unknown until it is",
                            self.store.path, FIRST_LOAD_TIMEOUT_S)
        self._reload(force=True, wait=True)

    # --- gallery -------------------------------------------------------------------------------------------------
    def _reload(self, force: bool = False, wait: bool = False) -> None:
        """Start indexing the gallery if it changed (`force`: even if not); `wait` for that index (at start)."""
        if self.follower is not None:
            # An unchanged copy is not rebuilt even when forced: an auto-enrolment joins the index (and the
            # anonymous count) when the follower has it, not before.
            latest = self.follower.latest()
            if latest is not None and latest[0] not in (self.version, self.builds.pending_version):
                version, snapshot = latest
                self._build(version, lambda: snapshot, wait)
            return
        if self.store is None:
            if not self.gallery_path.is_file() and not self.config.auto_enroll:  # type: ignore[attr-defined]
                if force:
                    log.warning("no gallery at %s: every track is unknown until someone is enrolled",
                                self.gallery_path)
                return
            self.store = open_gallery(self.gallery_path)
        # A connection's data_version does not move with its own commits (an auto-enrolment), hence `force`; a
        # change that came while a build ran is built after it.
        force, self.rebuild_wanted = force or self.rebuild_wanted, False
        version = self.store.data_version()
        if version == self.version and not force:
            return
        self._build(version, self.builds.read_snapshot, wait)

    def _build(self, version: int, read: Callable[[], GallerySnapshot], wait: bool) -> None:
        if self.builds.pending_version is not None:
            if not wait:
                self.rebuild_wanted = True  # one build at a time; this one follows it
                return
            self._take_built(wait=True)
        centring = self.config.centring  # type: ignore[attr-defined]
        self.builds.submit(version, read, lambda identities: centring.enabled and
                           identities >= centring.min_identities)
        if wait:
            self._take_built(wait=True)

    def _take_built(self, wait: bool = False) -> None:
        """Match with a finished build from now on."""
        built = self.builds.take(wait)
        if built is None:
            return
        self.version = built.version
        self.index = built.index
        self.centred_index = built.centred_index
        self.anonymous_count = max(self.anonymous_count, built.anonymous)  # auto-enrolments not yet indexed count
        self.context.metrics.set("gallery_identities", len(self.index))
        self.context.metrics.set("gallery_index_build_seconds", round(built.seconds, 3))
        shown = self.store.path if self.store is not None else self.gallery_path
        # One line per copy taken up, with its version: when a change reached this stage (another host's enrolment).
        if not len(self.index):
            log.warning("gallery %s version %d: 0 identities, every track is unknown until someone is enrolled "
                        "(tools/enroll.py)", shown, built.version)
        else:
            log.info("gallery %s version %d: %d identities, %d embeddings, encoder %s (indexed in %.2f s)", shown,
                     built.version, len(self.index), len(self.index.vectors), self.index.encoder, built.seconds)

    def on_tick(self, now_s: float) -> None:
        config: MatchConfig = self.config  # type: ignore[assignment]
        self._take_built()
        if self.follower is not None or now_s >= self.next_reload_s:  # a follower's copy costs nothing to check
            self.next_reload_s = now_s + config.reload_interval_s
            self._reload()
        stale = [key for key, t in self.tracks.items()
                 if now_s - t.evidence.last_seen_s > config.orphaned_track_timeout_s]
        for key in stale:
            del self.tracks[key]
        self.context.metrics.set_live_tracks(len(self.tracks))

    # --- decisions ---------------------------------------------------------------------------------------------
    def _can_match(self, embeddings: Embeddings) -> bool:
        if self.index is None or not len(self.index):
            return False
        if self.index.encoder != embeddings.encoder:
            self.context.metrics.inc("dropped_total", len(embeddings.track_ids), reason="encoder_mismatch")
            log.warning("gallery encoder %s differs from the pipeline's %s: cannot match (re-enrol)",
                        self.index.encoder, embeddings.encoder)
            return False
        return True

    def _decision(self, embeddings: Embeddings) -> tuple[float, float]:
        """`resolve_decision` for this encoder, warning once when neither config nor weights give a threshold."""
        config: MatchConfig = self.config  # type: ignore[assignment]
        if config.accept_distance is None and embeddings.accept_distance is None and not self.warned_uncalibrated:
            self.warned_uncalibrated = True
            log.warning("encoder %s carries no calibrated accept_distance and stages.match.accept_distance is not "
                        "set: using %.2f (calibrate: tools/calibrate.py, README \"Calibrating on your cameras\")",
                        embeddings.encoder, FALLBACK_ACCEPT_DISTANCE)
        return resolve_decision(config, embeddings.accept_distance, embeddings.margin_ratio)

    def _decide(self, stream_id: str, embeddings: Embeddings | None, now_s: float) -> set[int]:
        """Add each new window to its track's evidence and decide the walk; returns the track ids decided now."""
        config: MatchConfig = self.config  # type: ignore[assignment]
        if embeddings is None or not len(embeddings.track_ids):
            return set()
        can_match = self._can_match(embeddings)
        accept, margin = self._decision(embeddings)
        offset = (self.camera_means.mean(self._camera(stream_id), embeddings.encoder)
                  if self.centred_index is not None else None)
        if offset is not None:
            accept = config.centring.accept_distance  # type: ignore[assignment]
        decided = set()
        for track_id, vector, frames in zip(embeddings.track_ids.tolist(), embeddings.vectors,
                                            embeddings.window_frames.tolist()):
            state = self.tracks.get((stream_id, track_id))
            if state is None:
                state = self.tracks[(stream_id, track_id)] = _TrackState(TrackEvidence(embeddings.parts, now_s))
            state.evidence.add(vector, frames, now_s)
            state.vectors.append(np.asarray(vector, np.float32))
            matches: list[Match] = []
            if can_match:
                assert self.index is not None
                index = self.index if offset is None else self.centred_index
                matches = index.query(state.evidence.embedding()[None], max(config.top_k, 2), offset)[0]  # type: ignore[union-attr]
            name, confidence = decide_identity(matches, accept, margin)
            if name != state.label[0]:
                log.info("identity stream=%s track=%d identity=%s confidence=%.2f windows=%d", stream_id, track_id,
                         name, confidence, state.evidence.windows)
            state.label = (name, confidence)
            state.candidates = tuple(Candidate(m.name, m.distance) for m in matches[:config.top_k])
            decided.add(track_id)
            self.context.metrics.inc("decisions_total", outcome="unknown" if name == UNKNOWN else "match")
        return decided

    def _identities(self, stream_id: str, track_ids: list[int], decided: set[int]) -> Identities:
        known = [t for t in track_ids if (stream_id, t) in self.tracks]
        states = [self.tracks[(stream_id, t)] for t in known]
        return Identities(
            track_ids=np.asarray(known, np.int64),
            names=tuple(s.label[0] for s in states),
            scores=np.asarray([s.label[1] for s in states], np.float32),
            decided=np.asarray([t in decided for t in known], np.bool_),
            candidates=tuple(s.candidates for s in states),
        )

    def _camera(self, stream_id: str) -> str:
        return self.config.centring.cameras.get(stream_id, stream_id)  # type: ignore[attr-defined]

    def _end_tracks(self, stream_id: str, track_ids: list[int]) -> None:
        config: MatchConfig = self.config  # type: ignore[assignment]
        for track_id in track_ids:
            state = self.tracks.pop((stream_id, track_id), None)
            if state is not None and config.centring.enabled and state.evidence.windows and self.last_encoder:
                camera = self._camera(stream_id)
                if self.camera_means.add(camera, state.evidence.embedding(), self.last_encoder[0]):
                    log.info("camera %s: %d walks seen, matching centred from now on%s", camera,
                             config.centring.min_walks, "" if self.centred_index is not None else
                             f" once the gallery has {config.centring.min_identities} identities")
            if state is None or not config.auto_enroll or state.label[0] != UNKNOWN:
                continue
            if len(state.vectors) >= config.auto_enroll_min_windows and self.last_encoder is not None:
                self._auto_enroll(stream_id, track_id, state, *self.last_encoder)

    def _auto_enroll(self, stream_id: str, track_id: int, state: _TrackState, encoder: str, parts: int) -> None:
        if self.store is None:
            self.store = open_gallery(self.gallery_path)
        self.anonymous_count += 1
        name = f"anon-{self.anonymous_count:04d}"
        self.store.add(name, np.stack(state.vectors), encoder=encoder, parts=parts, source="auto-enrol",
                       stream=stream_id, track_id=track_id, frames=len(state.vectors), anonymous=True)
        log.info("auto-enrolled stream=%s track=%d as %s", stream_id, track_id, name)
        self._reload(force=True)

    # --- stage contract ------------------------------------------------------------------------------------------
    def process(self, record: FrameRecord) -> list[DataMessage]:
        now_s = self.context.clock()
        if record.embeddings is not None:
            self.last_encoder = (record.embeddings.encoder, record.embeddings.parts)
        decided = self._decide(record.stream_id, record.embeddings, now_s)
        for track_id in record.tracks.track_ids.tolist():  # seen, with or without a new window: not orphaned
            if (state := self.tracks.get((record.stream_id, track_id))) is not None:
                state.evidence.last_seen_s = now_s
        track_ids = sorted(set(record.tracks.track_ids.tolist()) | decided)
        identities = self._identities(record.stream_id, track_ids, decided)
        self._end_tracks(record.stream_id, record.ended_track_ids.tolist())
        self.context.metrics.set_live_tracks(len(self.tracks))
        return [dataclasses.replace(record, identities=identities)]

    def on_end_of_stream(self, eos: EndOfStream) -> list[DataMessage]:
        if eos.embeddings is not None:
            self.last_encoder = (eos.embeddings.encoder, eos.embeddings.parts)
        decided = self._decide(eos.stream_id, eos.embeddings, self.context.clock())
        ending = sorted(set(eos.ended_track_ids.tolist()) | {t for s, t in self.tracks if s == eos.stream_id})
        identities = self._identities(eos.stream_id, ending, decided)
        self._end_tracks(eos.stream_id, ending)
        self.context.metrics.set_live_tracks(len(self.tracks))
        return [dataclasses.replace(eos, identities=identities)]

    def close(self) -> None:
        if getattr(self, "builds", None) is not None:
            self.builds.close()
        if getattr(self, "follower", None) is not None:
            self.follower.close()
        if getattr(self, "store", None) is not None:
            self.store.close()
