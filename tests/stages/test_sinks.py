"""The sink's outputs on a full disk (`/dev/full`: every write fails with ENOSPC), and its end-to-end latency."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.messages import EndOfStream
from pipeline.testing import make_context, make_record, run_stage
from stages.sinks import OutputError, SinkConfig, SinkStage

DEV_FULL = Path("/dev/full")


@pytest.fixture
def full_events_file(tmp_path: Path) -> Path:
    """An output folder whose events.jsonl for stream `cam` is on a full disk."""
    if not DEV_FULL.exists():
        pytest.skip("/dev/full is missing (not Linux?)")
    (tmp_path / "cam").mkdir()
    (tmp_path / "cam" / "events.jsonl").symlink_to(DEV_FULL)
    return tmp_path


def test_a_full_disk_is_one_clear_counted_error_naming_the_file(full_events_file: Path):
    config = SinkConfig(out_dir=full_events_file, write_video=False)
    context = make_context("sink")
    sink = SinkStage(config, context)
    sink.open()
    pixels = np.zeros((48, 64, 3), np.uint8)
    assert sink.process(make_record("cam", 0, pixels)) == []  # no tracks: nothing written yet
    with pytest.raises(OutputError) as raised:
        sink.on_end_of_stream(EndOfStream("cam", 0, 1))
    sink.close()  # the buffered line fails again on close: logged, not raised
    message = str(raised.value)
    assert message == f"cannot write {full_events_file / 'cam' / 'events.jsonl'}: No space left on device"
    assert context.metrics.counters['output_errors_total{reason="ENOSPC"}'] >= 1


def test_the_sink_measures_capture_to_output_latency():
    pixels = np.zeros((48, 64, 3), np.uint8)
    run = run_stage(SinkStage, [make_record("cam", i, pixels) for i in range(3)], SinkConfig(out_dir=None))
    assert run.metrics is not None
    assert len(run.metrics.latencies["latency_since_capture"]) == 3
    assert run.metrics.gauges["newest_frame_latency_ms"] >= 0


def test_a_track_whose_end_never_comes_is_finished_and_saved(tmp_path: Path):
    """An upstream restart can lose a track's end: the sink saves it after orphaned_track_timeout_s, holds nothing."""
    import dataclasses
    import pickle

    from pipeline.messages import Silhouettes, Tracks

    now = [0.0]
    context = make_context("sink", clock=lambda: now[0])
    sink = SinkStage(SinkConfig(out_dir=tmp_path, write_video=False, save_silhouettes=True, min_saved_silhouettes=2,
                                orphaned_track_timeout_s=5.0), context)
    sink.open()
    for seq in range(3):
        now[0] = float(seq)
        record = make_record("cam", seq, np.zeros((48, 64, 3), np.uint8))
        sink.process(dataclasses.replace(
            record, tracks=Tracks(np.asarray([[1, 1, 20, 40]], np.float32), np.asarray([7]), np.ones(1, np.float32)),
            silhouettes=Silhouettes(np.asarray([7]), np.full((1, 64, 44), 255, np.uint8))))
        sink.on_tick(now[0])
    sink.on_tick(6.0)  # seen last at 2 s: 4 s ago, not yet
    assert context.metrics.gauges["live_tracks"] == 1
    sink.on_tick(7.5)
    assert context.metrics.gauges["live_tracks"] == 0
    sink.close()
    with open(tmp_path / "cam" / "0007" / "000" / "000.pkl", "rb") as file:
        assert pickle.load(file).shape == (3, 64, 44)
