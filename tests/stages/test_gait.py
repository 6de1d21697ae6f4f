"""The gait stage on real CASIA-B silhouettes and the shipped encoder: windows, strides, final windows, and walks
turned to the encoder's walking direction."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from engines.pretreat import cut_sides, mirror_silhouettes
from pipeline.messages import EndOfStream, FrameRecord, Silhouettes, Tracks
from pipeline.testing import make_record, run_stage
from stages.gait import GaitConfig, GaitStage
from tests.conftest import REPO_ROOT

ENCODER = REPO_ROOT / "weights" / "meshgait_compact_casiab.onnx"


@pytest.fixture(scope="module")
def walk(casia_b: Path) -> np.ndarray:
    """40 frames of a real walk (CASIA-B 075 nm-01, side view), (T, 64, 44) uint8."""
    packed = np.load(casia_b / "sils-64x64-bin" / "075.npz")["nm-01_090"]
    return cut_sides(np.unpackbits(packed, axis=-1).astype(np.uint8) * 255)[:40]


def _records(stream: str, silhouettes: np.ndarray, step_px: float, track_id: int = 1) -> list[FrameRecord]:
    """One record per silhouette; the track's 100 px-tall box moves `step_px` to the right per frame."""
    records = []
    for seq, image in enumerate(silhouettes):
        x = 300.0 + step_px * seq
        record = make_record(stream, seq, np.zeros((8, 8, 3), np.uint8))
        records.append(dataclasses.replace(
            record,
            tracks=Tracks(np.asarray([[x, 100, x + 40, 200]], np.float32), np.asarray([track_id]),
                          np.ones(1, np.float32)),
            silhouettes=Silhouettes(np.asarray([track_id]), image[None])))
    return records


def _embeddings(outputs: list) -> list[tuple[int, np.ndarray, int, bool]]:
    return [(int(t), v, int(n), bool(f)) for m in outputs if m.embeddings is not None
            for t, v, n, f in zip(m.embeddings.track_ids, m.embeddings.vectors, m.embeddings.window_frames,
                                  m.embeddings.final)]


def test_windows_follow_window_stride_and_the_final_window(walk: np.ndarray):
    config = GaitConfig(encoder=ENCODER, window_frames=30, stride_frames=5, min_frames=5,
                        canonical_direction="none")
    records = _records("cam", walk, step_px=-3.0)
    ended = dataclasses.replace(records[-1], seq=40, silhouettes=None, tracks=Tracks(),
                                ended_track_ids=np.asarray([1]))
    out = _embeddings(run_stage(GaitStage, [*records, ended], config).outputs)
    # windows complete at frames 30, 35, 40 (30 + 5 new each), and a final one when the track ends
    assert [(n, final) for _, _, n, final in out] == [(30, False), (30, False), (30, False)]
    records_short = _records("cam", walk[:33], step_px=-3.0)
    ended = dataclasses.replace(records_short[-1], seq=33, silhouettes=None, tracks=Tracks(),
                                ended_track_ids=np.asarray([1]))
    out = _embeddings(run_stage(GaitStage, [*records_short, ended], config).outputs)
    assert [(n, final) for _, _, n, final in out] == [(30, False), (30, True)]  # 3 new silhouettes, then the end


def test_a_walk_the_other_way_is_mirrored_to_the_encoders_direction(walk: np.ndarray):
    """The same walk seen from the other side (mirrored pixels, box moving the other way) gives the same embedding."""
    config = GaitConfig(encoder=ENCODER, window_frames=30, stride_frames=30, canonical_direction="right_to_left")
    leftward = _embeddings(run_stage(GaitStage, _records("a", walk[:30], step_px=-4.0), config).outputs)
    rightward = _embeddings(run_stage(GaitStage, _records("b", mirror_silhouettes(walk[:30]), step_px=4.0),
                                      config).outputs)
    unturned = _embeddings(run_stage(
        GaitStage, _records("c", mirror_silhouettes(walk[:30]), step_px=4.0),
        config.model_copy(update={"canonical_direction": "none"})).outputs)
    assert len(leftward) == len(rightward) == len(unturned) == 1
    same = np.corrcoef(leftward[0][1], rightward[0][1])[0, 1]
    other = np.corrcoef(leftward[0][1], unturned[0][1])[0, 1]
    assert same > 0.999 > other


def test_a_walker_crossing_too_little_is_left_as_seen(walk: np.ndarray):
    """Frontal walks (little sideways travel) have no direction to turn to."""
    config = GaitConfig(encoder=ENCODER, window_frames=30, stride_frames=30, canonical_direction="right_to_left")
    still = _embeddings(run_stage(GaitStage, _records("a", walk[:30], step_px=1.0), config).outputs)
    plain = _embeddings(run_stage(GaitStage, _records("a", walk[:30], step_px=1.0),
                                  config.model_copy(update={"canonical_direction": "none"})).outputs)
    assert len(still) == len(plain) == 1 and np.allclose(still[0][1], plain[0][1])


def test_end_of_stream_flushes_the_remaining_tracks(walk: np.ndarray):
    config = GaitConfig(encoder=ENCODER, window_frames=30, stride_frames=15, min_frames=10)
    records = _records("cam", walk[:20], step_px=-3.0)
    outputs = run_stage(GaitStage, [*records, EndOfStream("cam", 0, 20)], config).outputs
    assert isinstance(outputs[-1], EndOfStream) and outputs[-1].embeddings is not None
    assert outputs[-1].embeddings.final.tolist() == [True] and outputs[-1].embeddings.window_frames.tolist() == [20]


def test_a_track_that_does_not_move_gets_no_gait_window(walk: np.ndarray):
    """A bench or a parked bicycle tracked as a person: no embedding, and the skip is counted."""
    config = GaitConfig(encoder=ENCODER, window_frames=30, stride_frames=15)
    run = run_stage(GaitStage, _records("cam", walk[:30], step_px=0.1), config)
    assert _embeddings(run.outputs) == []
    assert run.metrics is not None and run.metrics.counters['windows_skipped_total{reason="stationary"}'] == 1
