"""Round trips of every message kind through the wire codec, and rejection of malformed input."""

from __future__ import annotations

import time

import msgpack
import numpy as np
import pytest

from pipeline.errors import SchemaError, StaleFrame
from pipeline.messages import (
    SCHEMA_VERSION,
    Candidate,
    Embeddings,
    EndOfStream,
    Frame,
    FrameRecord,
    Heartbeat,
    Identities,
    Ready,
    Rejections,
    Report,
    Silhouettes,
    Stop,
    Tracks,
    decode,
    encode,
)
from pipeline.shm import FrameRing, RingReaders, remove_run_rings, ring_name


def wire(parts):
    """What the receiving side gets: plain bytes per part."""
    return [p if isinstance(p, bytes) else memoryview(p).tobytes() for p in parts]


@pytest.fixture
def frame_pixels(outdoor_frames):
    return outdoor_frames[0]


def full_record(pixels):
    height, width = pixels.shape[:2]
    return FrameRecord(
        "cam-1", 42, 7, time.monotonic_ns(), 1.4, 30.0, Frame(height, width, pixels),
        tracks=Tracks(np.array([[10, 20, 110, 320]], np.float32), np.array([5]), np.array([0.9], np.float32)),
        ended_track_ids=np.array([3]),
        label_map=np.zeros((height, width), np.uint8),
        silhouettes=Silhouettes(np.array([5]), np.full((1, 64, 44), 255, np.uint8)),
        rejections=Rejections(np.array([6]), ("truncated",)),
        embeddings=Embeddings(np.array([5]), np.ones((1, 256), np.float32), np.array([30]), np.array([False]),
                              16, "gaitbase@abc"),
        identities=Identities(np.array([5]), ("alice",), np.array([0.8], np.float32), np.array([True]),
                              ((Candidate("alice", 0.2), Candidate("bob", 0.6)),)),
        hops=(("detect_track", 123),),
    )


def assert_same(a, b):
    assert type(a) is type(b)
    for name in a.__slots__:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y)
        elif hasattr(x, "__slots__"):
            assert_same(x, y)
        else:
            assert x == y, name


@pytest.mark.parametrize("encoding", ["raw", "shm"])
def test_frame_record_round_trip_inline(frame_pixels, encoding):
    record = full_record(frame_pixels)
    assert_same(decode(wire(encode(record, frame_encoding=encoding))), record)


def test_jpeg_frames_decode_close_to_the_original(frame_pixels):
    decoded = decode(wire(encode(full_record(frame_pixels), frame_encoding="jpeg")))
    error = np.abs(decoded.frame.pixels.astype(np.int16) - frame_pixels.astype(np.int16)).mean()
    assert decoded.frame.pixels.shape == frame_pixels.shape
    assert error < 4.0


@pytest.mark.parametrize(
    "message",
    [
        EndOfStream("s", 0, 211, "error", "truncated file", "/x.mp4", np.array([1, 2])),
        Ready("gait", 123, 2),
        Heartbeat("gait", {"fps": 3.5, "counters": {"frames_in_total": 10}, "acked_seq": {"s": 4}}),
        Report("source-0", "input_failed", "s", "cannot read", {"uri": "/x"}),
        Stop("signal"),
    ],
)
def test_other_kinds_round_trip(message):
    decoded = decode(wire(encode(message)))
    if isinstance(message, EndOfStream):  # holds an array: compare field by field
        assert_same(decoded, message)
    else:
        assert decoded == message


def test_shared_memory_frames_travel_by_reference(frame_pixels):
    name = ring_name("msgtest", "s", "0", "1")
    ring = FrameRing(name, 2, *frame_pixels.shape)
    try:
        generation = ring.write(1, frame_pixels)
        record = FrameRecord("s", 0, 0, 0, 0.0, 30.0, Frame(*frame_pixels.shape[:2], ring.view(1), name, 1, generation))
        parts = encode(record)
        assert sum(len(p) if isinstance(p, bytes) else p.nbytes for p in parts) < 2048  # no pixels inline
        readers = RingReaders()
        decoded = decode(wire(parts), resolve_frame=readers.resolve)
        np.testing.assert_array_equal(decoded.frame.pixels, frame_pixels)
        assert not decoded.frame.pixels.flags.writeable
        ring.write(1, frame_pixels)  # the slot is reused: the old reference is now stale
        with pytest.raises(StaleFrame, match="reused"):
            decode(wire(parts), resolve_frame=readers.resolve)
        readers.close()
    finally:
        ring.close()
        remove_run_rings("msgtest")


@pytest.mark.parametrize(
    "parts, match",
    [
        ([b"t"], "at least 2 parts"),
        ([b"t", b"\xc1\xff garbage"], "not valid msgpack"),
        ([b"t", msgpack.packb({"v": SCHEMA_VERSION + 1, "kind": "stop", "body": {}})], "schema version"),
        ([b"t", msgpack.packb({"v": SCHEMA_VERSION, "kind": "nope", "body": {}})], "unknown message kind"),
        ([b"t", msgpack.packb({"v": SCHEMA_VERSION, "kind": "ready", "body": {"process": "x"}})], "malformed ready"),
        # an array reference past the buffers sent (a truncated message)
        ([b"t", msgpack.packb({"v": SCHEMA_VERSION, "kind": "end_of_stream", "body": {
            "stream_id": "s", "epoch": 0, "frames": 1, "ended_track_ids": {"__a": 3, "d": "<i8", "s": [1]}}})],
         "malformed end_of_stream"),
    ],
)
def test_malformed_messages_raise_schema_error(parts, match):
    with pytest.raises(SchemaError, match=match):
        decode(parts)


def test_schema_checks_name_field_and_shapes():
    with pytest.raises(SchemaError, match=r"Tracks.boxes_xyxy_px: expected \(n, 4\) float32, got \(3, 5\) float64"):
        Tracks(np.zeros((3, 5)), np.arange(3), np.zeros(3, np.float32))
    with pytest.raises(SchemaError, match="differ in length"):
        Tracks(np.zeros((2, 4), np.float32), np.arange(3), np.zeros(3, np.float32))


def test_reports_are_typed_events_and_unknown_ones_are_refused():
    from pipeline.messages import ReportEvent

    decoded = decode(encode(Report("sink", ReportEvent.STREAM_FINISHED, "cam", "", {"frames": 3})))
    assert decoded.event is ReportEvent.STREAM_FINISHED
    with pytest.raises(SchemaError, match="unknown event 'stream_finsihed'"):
        decode(encode(Report("sink", ReportEvent.DRAINED))[:1] + [msgpack.packb(
            {"v": SCHEMA_VERSION, "kind": "report", "body": {"process": "sink", "event": "stream_finsihed"}})])
