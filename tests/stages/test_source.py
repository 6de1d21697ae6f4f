"""The video source on a real clip: recorded files played at their native rate and on repeat."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import StreamSpec
from stages.source import SourceSettings, VideoSource

SHORT_CLIP_FRAMES = 83  # aiog_indoor_C_short.mp4, 30 fps


@pytest.fixture(scope="module")
def short_clip(videos: Path) -> Path:
    return videos / "aiog_indoor_C_short.mp4"


def open_source(clip: Path, *, realtime: bool, **settings: object) -> VideoSource:
    source = VideoSource(StreamSpec(uri=str(clip), id="c"), SourceSettings(**settings), live=False, realtime=realtime)
    source.open()
    return source


def test_a_looped_file_replays_from_the_start_and_keeps_counting(short_clip: Path):
    source = open_source(short_clip, realtime=False, loop=True)
    try:
        frames = [source.read() for _ in range(SHORT_CLIP_FRAMES + 5)]
    finally:
        source.close()
    assert all(frame is not None for frame in frames)
    assert [frame.index for frame in frames] == list(range(SHORT_CLIP_FRAMES + 5))
    assert frames[SHORT_CLIP_FRAMES].pts_s == pytest.approx(SHORT_CLIP_FRAMES / 30.0)
    assert np.array_equal(frames[SHORT_CLIP_FRAMES].pixels, frames[0].pixels), "the second pass starts at frame 0"


def test_a_file_ends_once_without_loop(short_clip: Path):
    source = open_source(short_clip, realtime=False)
    try:
        count = 0
        while source.read() is not None:
            count += 1
    finally:
        source.close()
    assert count == SHORT_CLIP_FRAMES


def test_a_file_played_as_a_live_stream_keeps_its_native_rate(short_clip: Path):
    source = open_source(short_clip, realtime=True)
    try:
        started = time.monotonic()
        for _ in range(31):
            assert source.read() is not None
        elapsed_s = time.monotonic() - started
    finally:
        source.close()
    assert 0.95 <= elapsed_s <= 1.5, f"30 frame intervals at 30 fps took {elapsed_s:.2f}s"


@pytest.mark.parametrize(("limit", "expected"), [(15.0, 42), (10.0, 28), (60.0, SHORT_CLIP_FRAMES)])
def test_fps_limit_delivers_evenly_spaced_frames_of_a_file(short_clip: Path, limit: float, expected: int):
    """A 30 fps file capped at 15 fps gives every other frame, in batch as live: accuracy can be measured at the
    rate a camera will run at."""
    source = open_source(short_clip, realtime=False, fps_limit=limit)
    try:
        frames = []
        while (frame := source.read()) is not None:
            frames.append(frame)
    finally:
        source.close()
    assert len(frames) == expected and source.fps == pytest.approx(min(limit, 30.0), abs=0.05)
    gaps = np.diff([frame.pts_s for frame in frames])
    assert gaps.min() >= 1 / limit - 1e-6 or limit >= 30
    assert frames[0].index == 0


@pytest.mark.parametrize("reported", [0.25, 2000.0])
def test_an_implausible_frame_rate_is_replaced_with_a_warning(tmp_path: Path, caplog, reported: float):
    """A rate no camera has is not trusted, and the operator is told which rate was assumed instead."""
    import cv2

    clip = tmp_path / "odd.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), reported, (64, 48))
    for value in range(5):
        writer.write(np.full((48, 64, 3), value * 40, np.uint8))
    writer.release()
    with caplog.at_level("WARNING", logger="stages.source"):
        source = open_source(clip, realtime=False)
    try:
        frames = [source.read() for _ in range(2)]
    finally:
        source.close()
    assert source.native_fps == source.fps == 25.0
    assert frames[1].pts_s == pytest.approx(1 / 25.0)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and f"reports {reported:g} frames per second" in warnings[0] \
        and "assuming 25" in warnings[0] and "stream=c" in warnings[0]
