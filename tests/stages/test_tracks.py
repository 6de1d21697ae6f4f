"""What tools read per track from the stages' output: silhouettes kept, masks rejected and why, and the enrolment
errors that say so."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import GaitstreamError
from pipeline.messages import Embeddings, EndOfStream, Frame, FrameRecord, Rejections, Silhouettes, Tracks
from stages.tracks import TrackCollector, choose_track


def record(seq: int, kept: list[int], rejected: list[tuple[int, str]]) -> FrameRecord:
    ids = sorted({*kept, *(track_id for track_id, _ in rejected)})
    return FrameRecord(
        "cam", seq, 0, 0, seq / 15, 15.0, Frame(120, 160, np.zeros((120, 160, 3), np.uint8)),
        tracks=Tracks(np.zeros((len(ids), 4), np.float32), np.asarray(ids, np.int64), np.ones(len(ids), np.float32)),
        silhouettes=Silhouettes(np.asarray(kept, np.int64), np.full((len(kept), 64, 44), 255, np.uint8)),
        rejections=Rejections(np.asarray([t for t, _ in rejected], np.int64), tuple(r for _, r in rejected)),
    )


def collected() -> TrackCollector:
    """Track 1 walks in cut off by the frame's edge, then too small; track 2 walks past whole and gets a window."""
    collector = TrackCollector()
    for seq in range(6):
        collector(record(seq, kept=[2] + ([1] if seq == 5 else []),
                         rejected=[(1, "truncated" if seq < 3 else "tiny")] if seq < 5 else []))
    collector(EndOfStream("cam", 0, 6, ended_track_ids=np.array([1, 2]),
                          embeddings=Embeddings(np.array([2]), np.ones((1, 8), np.float32), np.array([6]),
                                                np.array([True]), 2, "gaitbase@test")))
    return collector


def test_rejected_masks_are_counted_per_track_and_reason():
    tracks = {track.track_id: track for track in collected().in_order()}
    assert tracks[1].silhouettes == 1 and tracks[1].rejected == {"truncated": 3, "tiny": 2}
    assert tracks[2].silhouettes == 6 and tracks[2].rejected == {} and len(tracks[2].embeddings) == 1
    assert tracks[1].why_few() == "1 usable silhouettes; 5 masks rejected: truncated 3, tiny 2"


def test_enrolment_errors_say_why_a_track_gave_no_window():
    tracks = collected().in_order()
    with pytest.raises(GaitstreamError, match=r"track 1 gave no gait window \(1 usable silhouettes; 5 masks "
                                              r"rejected: truncated 3, tiny 2\)"):
        choose_track(tracks, 1, "walk.mp4")
    assert choose_track(tracks, None, "walk.mp4").track_id == 2
    nobody = [track for track in tracks if track.track_id == 1]
    with pytest.raises(GaitstreamError, match=r"nobody walked long enough in view to enrol \(1 tracks; the "
                                              r"longest, track 1: 1 usable silhouettes; 5 masks rejected"):
        choose_track(nobody, None, "walk.mp4")
