"""detect_track through the stage driver: a track ends after `track_lifetime_s` of media time whatever the stream's
frame rate, and a walker unseen for less keeps their track (tracker and stage agree on the lifetime)."""

from __future__ import annotations

import numpy as np
import pytest

from engines.detect import DetectorSettings
from pipeline.messages import EndOfStream, FrameRecord
from pipeline.testing import make_record, run_stage
from stages.detect_track import DetectTrackConfig, DetectTrackStage

WARMUP_FRAMES = 5
SPEED_PX_S = 100.0
WALKER = np.random.default_rng(0).integers(60, 256, (100, 40, 3), dtype=np.uint8)  # textured: moving pixels change


def _frames(fps: float, script: list[tuple[bool, float]]) -> list[FrameRecord]:
    """Background-subtraction footage at `fps`: a blank warm-up, then (visible?, seconds) spans of a 40x100 px
    walker moving right at `SPEED_PX_S` (unseen spans: walking behind something, the clock goes on)."""
    records, seq = [], 0
    blank = np.zeros((240, 480, 3), np.uint8)
    for visible, seconds in [(False, WARMUP_FRAMES / fps), *script]:
        for _ in range(round(seconds * fps)):
            pixels = blank.copy()
            if visible:
                x = int(20 + SPEED_PX_S * seq / fps)
                pixels[100:200, x:x + 40] = WALKER
            records.append(make_record("cam", seq, pixels, fps=fps))
            seq += 1
    return records


def _run(fps: float, script: list[tuple[bool, float]], lifetime_s: float = 1.0) -> list[FrameRecord]:
    detector = DetectorSettings(backend="bgsub", warmup_frames=WARMUP_FRAMES, work_scale=1.0, min_hits_frames=2)
    config = DetectTrackConfig(detector=detector, track_lifetime_s=lifetime_s)
    records = _frames(fps, script)
    run = run_stage(DetectTrackStage, [*records, EndOfStream("cam", 0, len(records))], config)
    return run.records()


@pytest.mark.parametrize("fps", [10.0, 30.0])
def test_a_track_ends_one_lifetime_after_it_was_last_seen(fps: float):
    out = _run(fps, [(True, 1.0), (False, 0.5), (True, 1.0), (False, 2.0)])
    seen = [r for r in out if len(r.tracks)]
    assert {int(t) for r in seen for t in r.tracks.track_ids} == {1}, "half a second unseen: still the same walk"
    ended = [r for r in out if len(r.ended_track_ids)]
    assert [r.ended_track_ids.tolist() for r in ended] == [[1]]
    gap_s = ended[0].pts_s - seen[-1].pts_s
    assert 1.0 < gap_s <= 1.0 + 1.0 / fps + 1e-9, f"ended {gap_s:.3f} s after last seen at {fps} fps"


@pytest.mark.parametrize("fps", [10.0, 30.0])
def test_a_walker_back_after_the_lifetime_is_a_new_track(fps: float):
    out = _run(fps, [(True, 1.0), (False, 1.5), (True, 1.0)])
    ids = [r.tracks.track_ids.tolist() for r in out if len(r.tracks)]
    assert ids[0] == [1] and ids[-1] == [2]
    assert [r.ended_track_ids.tolist() for r in out if len(r.ended_track_ids)] == [[1]]
