"""One track lifetime in seconds: each tracker keeps an unseen person's id for that many seconds of its stream's
frames, whatever the stream's rate."""

from __future__ import annotations

import numpy as np
import pytest

from engines.detect import DetectorSettings, StreamFrame, lost_frames, open_tracker
from engines.detect.yolo import _tracker_args, new_stream_tracker


@pytest.mark.parametrize(("lifetime_s", "fps", "frames"), [
    (1.0, 10.0, 10), (1.0, 30.0, 30), (2.0, 12.5, 25),
    (1.0, 12.5, 13),  # rounded up: the tracker keeps the id at least as long as the stage keeps the track
    (0.01, 30.0, 1),  # a tracker always forgives the frame it missed
])
def test_lifetime_in_frames_follows_the_streams_rate(lifetime_s: float, fps: float, frames: int):
    assert lost_frames(lifetime_s, fps) == frames


@pytest.mark.parametrize("kind", ["bytetrack", "botsort"])
@pytest.mark.parametrize(("fps", "frames"), [(10.0, 20), (30.0, 60)])
def test_ultralytics_track_buffer_is_the_lifetime_at_the_streams_rate(kind: str, fps: float, frames: int):
    tracker = new_stream_tracker(kind, _tracker_args(DetectorSettings(tracker=kind)), lost_frames(2.0, fps))
    assert tracker.args.track_buffer == frames
    assert getattr(tracker, "max_frames_lost", getattr(tracker, "max_time_lost", None)) == frames


def test_bgsub_streams_at_different_rates_keep_ids_the_same_seconds():
    """A 10 fps and a 30 fps camera in one tracker: each stream's blob tracker counts its own frames."""
    tracker = open_tracker(DetectorSettings(backend="bgsub", warmup_frames=0), track_lifetime_s=2.0)
    frame = np.zeros((240, 320, 3), np.uint8)
    tracker.update([StreamFrame("slow", frame, 10.0), StreamFrame("fast", frame, 30.0)])
    assert {name: state.tracker.max_lost_frames for name, state in tracker._streams.items()} == \
        {"slow": 20, "fast": 60}
