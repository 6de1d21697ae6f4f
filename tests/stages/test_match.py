"""The match stage on a real gallery file: walks named from all their windows, a margin over the runner-up,
unknown for strangers, forgotten after a timeout, and strangers auto-enrolled."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from engines.gallery import GalleryStore
from pipeline.messages import Embeddings, EndOfStream, Tracks
from pipeline.testing import make_context, make_record, run_stage
from stages.match import MatchConfig, MatchStage, _IndexBuilds

PARTS, DIM, ENCODER = 4, 32, "enc@1"


def person(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=DIM).astype(np.float32)


def noisy(base: np.ndarray, seed: int, scale: float = 0.3) -> np.ndarray:
    return (base + scale * np.random.default_rng(seed).normal(size=DIM)).astype(np.float32)


@pytest.fixture
def gallery(tmp_path: Path) -> Path:
    path = tmp_path / "gallery.sqlite"
    store = GalleryStore(path)
    for name, seed in (("alice", 1), ("bob", 2)):
        store.add(name, np.stack([noisy(person(seed), 100 + i, 0.1) for i in range(3)]), encoder=ENCODER,
                  parts=PARTS)
    store.close()
    return path


def window_records(track_windows: list[tuple[int, np.ndarray]], stream: str = "cam", start: int = 0,
                   margin_ratio: float | None = None) -> list:
    """One record per window: the track is on the frame and its window completed there; the encoder's calibrated
    decision is accept_distance 0.5 with `margin_ratio`."""
    records = []
    for i, (track_id, vector) in enumerate(track_windows):
        record = make_record(stream, start + i, np.zeros((8, 8, 3), np.uint8))
        records.append(dataclasses.replace(
            record,
            tracks=Tracks(np.asarray([[0, 0, 10, 20]], np.float32), np.asarray([track_id]), np.ones(1, np.float32)),
            embeddings=Embeddings(np.asarray([track_id]), vector[None], np.asarray([30]), np.asarray([False]),
                                  PARTS, ENCODER, accept_distance=0.5, margin_ratio=margin_ratio)))
    return records


def labels(outputs: list) -> dict[int, list[str]]:
    named: dict[int, list[str]] = {}
    for message in outputs:
        if message.identities is not None:
            for track_id, name, decided in zip(message.identities.track_ids.tolist(), message.identities.names,
                                               message.identities.decided.tolist()):
                if decided:
                    named.setdefault(track_id, []).append(name)
    return named


def test_a_walk_is_named_from_all_its_windows(gallery: Path):
    """Two of alice's three windows are poor; the walk's mean still names her, and keeps naming her."""
    windows = [noisy(person(1), 7, 1.2), noisy(person(1), 8, 0.2), noisy(person(1), 9, 1.2)]
    run = run_stage(MatchStage, window_records([(5, w) for w in windows]), MatchConfig(gallery=gallery))
    assert labels(run.outputs)[5][-1] == "alice"
    candidates = next(m for m in reversed(run.outputs) if m.identities is not None).identities.candidates[0]
    assert [c.name for c in candidates[:2]] == ["alice", "bob"]


def test_a_stranger_is_unknown_and_a_walk_between_two_people_needs_a_margin(gallery: Path):
    stranger = run_stage(MatchStage, window_records([(6, person(3))]), MatchConfig(gallery=gallery))
    assert labels(stranger.outputs)[6] == ["unknown"]
    between = window_records([(7, (person(1) + person(2)) / 2)])
    no_margin = MatchConfig(gallery=gallery, accept_distance=1.5, margin_ratio=1.0)
    run = run_stage(MatchStage, between, no_margin)
    first, second = next(m for m in run.outputs if m.identities is not None).identities.candidates[0][:2]
    ratio = first.distance / second.distance
    assert labels(run.outputs)[7] == [first.name] and ratio > 0.8  # about as close to both
    below = no_margin.model_copy(update={"margin_ratio": ratio - 0.01})
    assert labels(run_stage(MatchStage, between, below).outputs)[7] == ["unknown"]
    # margin_ratio null: the ratio the encoder's threshold was calibrated with, carried by its embeddings
    from_encoder = no_margin.model_copy(update={"margin_ratio": None})
    for encoder_ratio, expected in ((1.0, first.name), (ratio - 0.01, "unknown")):
        calibrated = window_records([(7, (person(1) + person(2)) / 2)], margin_ratio=encoder_ratio)
        assert labels(run_stage(MatchStage, calibrated, from_encoder).outputs)[7] == [expected]


def test_the_encoders_threshold_applies_unless_the_config_sets_one(gallery: Path):
    window = noisy(person(1), 11, 0.6)  # alice, at a distance between 0.1 and 0.5
    assert labels(run_stage(MatchStage, window_records([(8, window)]), MatchConfig(gallery=gallery)).outputs)[8] \
        == ["alice"]
    strict = MatchConfig(gallery=gallery, accept_distance=0.05)
    assert labels(run_stage(MatchStage, window_records([(8, window)]), strict).outputs)[8] == ["unknown"]


def test_a_silent_track_is_forgotten_and_a_stranger_auto_enrolled(gallery: Path):
    now = [0.0]
    config = MatchConfig(gallery=gallery, orphaned_track_timeout_s=5.0, auto_enroll=True, auto_enroll_min_windows=2)
    stranger = [(9, noisy(person(4), 20 + i, 0.1)) for i in range(2)]
    forgotten = window_records([(10, person(1))], start=10)
    ended = dataclasses.replace(window_records([(9, person(4))], start=3)[0], embeddings=None, tracks=Tracks(),
                                ended_track_ids=np.asarray([9]))

    def clock() -> float:
        now[0] += 1.0
        return now[0]

    run = run_stage(MatchStage, [*forgotten, *window_records(stranger, start=1), ended,
                                 EndOfStream("cam", 0, 20)], config, clock=clock)
    assert run.metrics is not None and run.metrics.gauges["live_tracks"] == 0
    store = GalleryStore(gallery, create=False)
    try:
        anonymous = [i for i in store.identities() if i.anonymous]
    finally:
        store.close()
    assert [(i.name, i.embeddings) for i in anonymous] == [("anon-0001", 2)]


def test_a_camera_is_matched_centred_once_it_has_seen_enough_walks(gallery: Path):
    """The hall's camera adds one large offset to every walk. Raw, alice there is nobody; after two finished walks
    the camera's mean is known, and her next walk, centred like the gallery, is hers."""
    offset = 6.0 * person(9)
    seen = [(1, noisy(person(1), 30, 0.1) + offset), (2, noisy(person(2), 31, 0.1) + offset)]
    ends = [dataclasses.replace(window_records([(t, v)], stream="hall-cam", start=10 + t)[0], embeddings=None,
                                tracks=Tracks(), ended_track_ids=np.asarray([t])) for t, v in seen]
    later = window_records([(3, noisy(person(1), 32, 0.1) + offset)], stream="hall-cam", start=20)
    records = [*window_records(seen, stream="hall-cam"), *ends, *later]
    raw = labels(run_stage(MatchStage, records, MatchConfig(gallery=gallery)).outputs)
    assert raw[3] != ["alice"]
    centring = {"enabled": True, "min_walks": 2, "min_identities": 2, "accept_distance": 0.4,
                "cameras": {"hall-cam": "hall"}}
    centred = labels(run_stage(MatchStage, records, MatchConfig(gallery=gallery, centring=centring)).outputs)
    assert centred[3] == ["alice"]
    assert centred[1] == raw[1]  # walks before the camera was known are matched as usual


def test_a_restarted_stage_centres_at_once_from_its_state_file(gallery: Path, tmp_path: Path):
    """The hall's statistics kept in a state file: after a restart alice's first walk there is already hers."""
    offset = 6.0 * person(9)
    seen = [(1, noisy(person(1), 30, 0.1) + offset), (2, noisy(person(2), 31, 0.1) + offset)]
    ends = [dataclasses.replace(window_records([(t, v)], stream="hall-cam", start=10 + t)[0], embeddings=None,
                                tracks=Tracks(), ended_track_ids=np.asarray([t])) for t, v in seen]
    centring = {"enabled": True, "min_walks": 2, "min_identities": 2, "accept_distance": 0.4,
                "state_file": tmp_path / "cameras.npz"}
    config = MatchConfig(gallery=gallery, centring=centring)
    run_stage(MatchStage, [*window_records(seen, stream="hall-cam"), *ends], config)
    later = window_records([(3, noisy(person(1), 32, 0.1) + offset)], stream="hall-cam")
    assert labels(run_stage(MatchStage, later, config).outputs)[3] == ["alice"]
    fresh = MatchConfig(gallery=gallery, centring={**centring, "state_file": None})
    assert labels(run_stage(MatchStage, later, fresh).outputs)[3] != ["alice"]


def test_centring_needs_its_own_threshold():
    with pytest.raises(ValueError, match="centring.accept_distance"):
        MatchConfig(centring={"enabled": True})


def test_a_changed_gallery_is_indexed_in_the_background_while_matching_goes_on(gallery: Path,
                                                                             monkeypatch: pytest.MonkeyPatch):
    """At 10,000 identities a new index takes seconds; the stage must keep naming people with the old one
    meanwhile, and take up the new one on a later tick."""
    stage = MatchStage(MatchConfig(gallery=gallery, reload_interval_s=0.01), make_context("match"))
    stage.open()  # the first load is waited for
    try:
        assert list(stage.index.names) == ["alice", "bob"]
        release = threading.Event()
        read = _IndexBuilds.read_snapshot
        monkeypatch.setattr(_IndexBuilds, "read_snapshot", lambda builds: release.wait(10) and read(builds))
        store = GalleryStore(gallery, create=False)  # another process enrols carol
        store.add("carol", np.stack([noisy(person(3), 300 + i, 0.1) for i in range(3)]), encoder=ENCODER,
                  parts=PARTS)
        store.close()
        stage.on_tick(1.0)  # sees the change, starts the build, returns at once
        assert stage.builds.pending_version is not None
        carol = window_records([(7, noisy(person(3), 400 + i, 0.1)) for i in range(2)])
        alice = window_records([(8, noisy(person(1), 500, 0.1))], start=5)
        before = labels([*stage.process(carol[0]), *stage.process(alice[0])])
        assert before == {7: ["unknown"], 8: ["alice"]}  # the old index still answers
        release.set()
        deadline = time.monotonic() + 10
        while stage.builds.pending_version is not None and time.monotonic() < deadline:
            time.sleep(0.01)
            stage.on_tick(2.0)
        assert list(stage.index.names) == ["alice", "bob", "carol"]
        assert labels(stage.process(carol[1])) == {7: ["carol"]}
    finally:
        stage.close()
