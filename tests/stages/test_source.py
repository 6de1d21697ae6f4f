"""The video source on a real clip: recorded files played at their native rate and on repeat."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import cv2
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


def decoded(clip: Path) -> list[np.ndarray]:
    """Every frame of a clip as OpenCV decodes it, independently of the source."""
    capture = cv2.VideoCapture(str(clip), cv2.CAP_FFMPEG)
    frames = []
    while (frame := capture.read()[1]) is not None:
        frames.append(frame)
    capture.release()
    return frames


@pytest.mark.parametrize(("rotate", "fps_limit"), [("none", None), ("none", 10.0), ("cw90", None)])
def test_frames_are_decoded_straight_into_the_callers_buffer(short_clip: Path, rotate: str,
                                                             fps_limit: float | None):
    """What the source runner relies on to never copy a frame: `read(into=slot)` leaves the pixels in the slot,
    for skipped frames too (grabbed, never written) and for a rotated camera (rotated into the slot)."""
    expected = decoded(short_clip)
    source = VideoSource(StreamSpec(uri=str(short_clip), id="c", rotate=rotate), SourceSettings(fps_limit=fps_limit),
                         live=False, realtime=False)
    source.open()
    try:
        assert source.frame_shape is not None
        buffers = [np.zeros(source.frame_shape, np.uint8) for _ in range(2)]
        frames = []
        while (frame := source.read(into=buffers[len(frames) % 2])) is not None:
            assert frame.pixels is buffers[len(frames) % 2]
            want = expected[frame.index]
            assert np.array_equal(frame.pixels, cv2.rotate(want, cv2.ROTATE_90_CLOCKWISE) if rotate == "cw90" else want)
            frames.append(frame.index)
    finally:
        source.close()
    assert frames == list(range(0, SHORT_CLIP_FRAMES, 3 if fps_limit else 1))


def test_a_stream_back_at_another_size_is_read_into_a_new_array_and_its_new_shape_announced(
        videos: Path, tmp_path: Path):
    """A camera reconnected at another resolution: the frame cannot go into a buffer of the old size, so it comes
    in a new array, and `frame_shape` tells the caller the size to use from then on."""
    camera = tmp_path / "camera.mp4"
    shutil.copy(videos / "aiog_indoor_C_short.mp4", camera)
    source = VideoSource(StreamSpec(uri=str(camera), id="cam"),
                         SourceSettings(reconnect_backoff_initial_s=0.05), live=True, realtime=False)
    source.open()
    try:
        first_shape = source.frame_shape
        buffer = np.zeros(first_shape, np.uint8)
        assert source.read(into=buffer).pixels is buffer
        os.replace(shutil.copy(videos / "vtest_pets2009_480x360.avi", tmp_path / "pets.avi"), camera)
        for _ in range(SHORT_CLIP_FRAMES - 1):  # the rest of the first camera's stream, then the reconnect
            assert source.read(into=buffer).pixels is buffer
        frame = source.read(into=buffer)
    finally:
        source.close()
    assert first_shape == (1280, 720, 3)
    assert frame.pixels.shape == (360, 480, 3) and frame.pixels is not buffer
    assert np.array_equal(frame.pixels, decoded(videos / "vtest_pets2009_480x360.avi")[0])
    assert source.frame_shape == (360, 480, 3)
