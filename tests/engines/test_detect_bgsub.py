"""Background-subtraction detector: blob logic on made-up masks, track lifecycle, and the real outdoor clip."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.detect import Detections, DetectorSettings, StreamFrame, open_tracker
from engines.detect.bgsub import BlobParams, BlobTracker, find_blobs
from engines.segment import LabelMapSegmenter, pretreat_track_mask

SETTINGS = DetectorSettings(backend="bgsub", work_scale=1.0)
FPS = 30.0  # the shared clips' rate


def _box(x1: float, y1: float, width: float = 60, height: float = 180) -> np.ndarray:
    return np.array([[x1, y1, x1 + width, y1 + height]], np.float32)


def test_fragments_of_one_person_merge_and_people_side_by_side_do_not() -> None:
    foreground = np.zeros((400, 600), np.uint8)
    foreground[100:200, 100:160] = 255  # torso
    foreground[215:300, 105:155] = 255  # legs, 15 px below: one person
    foreground[100:300, 400:460] = 255  # a second person, far to the right
    foreground[10:14, 300:304] = 255  # speckle
    blobs = find_blobs(foreground, BlobParams.from_settings(SETTINGS))
    boxes = sorted(blobs.boxes_xyxy.tolist())
    assert boxes == [[100, 100, 160, 300], [400, 100, 460, 300]]
    labels_of_first = set(np.unique(blobs.components[blobs.labels[100:300, 100:160]]))
    assert labels_of_first - {0} == {1} or labels_of_first - {0} == {2}


@pytest.mark.parametrize(
    ("block", "kept"),
    [
        ((slice(100, 300), slice(100, 160)), True),  # 200 x 60: a person
        ((slice(100, 160), slice(100, 300)), False),  # wider than tall: a car
        ((slice(100, 150), slice(100, 120)), False),  # 50 px high: below min_height_px
    ],
)
def test_blob_shape_filters(block: tuple[slice, slice], kept: bool) -> None:
    foreground = np.zeros((400, 600), np.uint8)
    foreground[block] = 255
    assert (len(find_blobs(foreground, BlobParams.from_settings(SETTINGS)).boxes_xyxy) == 1) is kept


def test_shadow_pixels_are_not_foreground() -> None:
    foreground = np.zeros((400, 600), np.uint8)
    foreground[100:300, 100:160] = 127  # MOG2/KNN mark shadows 127
    assert len(find_blobs(foreground, BlobParams.from_settings(SETTINGS)).boxes_xyxy) == 0


def test_track_is_born_after_min_hits_and_dies_after_max_lost() -> None:
    settings = SETTINGS.model_copy(update={"min_hits_frames": 3})
    tracker = BlobTracker(settings, max_lost_frames=2)
    assert tracker.update(_box(100, 100)) == []
    assert tracker.update(_box(110, 100)) == []
    assert tracker.update(_box(120, 100)) == [(0, 1)]  # third consecutive frame: id 1
    assert tracker.update(np.zeros((0, 4), np.float32)) == []  # lost 1
    assert tracker.update(np.zeros((0, 4), np.float32)) == []  # lost 2: still kept
    assert tracker.update(_box(150, 100)) == [(0, 1)]  # predicted at 10 px/frame: same walker, same id
    for _ in range(3):
        tracker.update(np.zeros((0, 4), np.float32))  # lost 3 > max_lost_frames: ended
    for _ in range(3):
        result = tracker.update(_box(400, 100))
    assert result == [(0, 2)]  # a new walker gets a new id; 1 is never reused


def test_noise_that_does_not_persist_never_gets_an_id() -> None:
    tracker = BlobTracker(SETTINGS.model_copy(update={"min_hits_frames": 3}), max_lost_frames=30)
    for x in (100, 400, 100, 400):  # alternating far-apart blobs never match twice in a row
        assert tracker.update(_box(x, 100)) == []
    assert tracker.last_id == 0


def test_two_walkers_keep_their_ids_when_listed_in_either_order() -> None:
    tracker = BlobTracker(SETTINGS.model_copy(update={"min_hits_frames": 1}), max_lost_frames=30)
    first = tracker.update(np.concatenate([_box(100, 100), _box(400, 100)]))
    assert first == [(0, 1), (1, 2)]
    swapped = tracker.update(np.concatenate([_box(405, 100), _box(105, 100)]))
    assert swapped == [(0, 2), (1, 1)]


def test_ended_stream_continues_its_ids() -> None:
    tracker = open_tracker(DetectorSettings(backend="bgsub", warmup_frames=0, min_hits_frames=1))
    blank = np.zeros((400, 300, 3), np.uint8)
    walker = blank.copy()
    walker[100:300, 120:180] = 255
    for frame in (blank, blank, walker):
        found = tracker.update([StreamFrame("cam", frame, FPS)])[0]
    assert found.track_ids.tolist() == [1]
    tracker.end_stream("cam")
    for frame in (blank, blank, walker):
        found = tracker.update([StreamFrame("cam", frame, FPS)])[0]
    assert found.track_ids.tolist() == [2]


def test_streams_keep_separate_background_models_and_ids() -> None:
    """Two cameras in one call: each numbers its own walker from 1, and neither sees the other's motion."""
    tracker = open_tracker(DetectorSettings(backend="bgsub", warmup_frames=2, min_hits_frames=2))
    blank = np.zeros((400, 600, 3), np.uint8)
    centres: dict[str, list[float]] = {"a": [], "b": []}
    for step in range(8):
        frame_a, frame_b = blank.copy(), blank.copy()
        frame_a[100:300, 50 + 20 * step : 110 + 20 * step] = 255  # walks right
        frame_b[120:320, 480 - 20 * step : 540 - 20 * step] = 255  # walks left, elsewhere in the frame
        found_a, found_b = tracker.update([StreamFrame("a", frame_a, FPS), StreamFrame("b", frame_b, FPS)])
        for name, found in (("a", found_a), ("b", found_b)):
            if step >= 3:  # two warm-up frames, then two hits
                assert found.track_ids.tolist() == [1], (name, step)
                centres[name].append(float(found.boxes_xyxy_px[0, [0, 2]].mean()))
    assert np.all(np.diff(centres["a"]) > 0) and np.all(np.diff(centres["b"]) < 0)


def _run_bgsub(clip: Path) -> tuple[dict[int, int], dict[int, int], int]:
    """Whole clip through the default bgsub detector: frames per track id, accepted silhouettes per id."""
    tracker = open_tracker(DetectorSettings(backend="bgsub"))
    segmenter = LabelMapSegmenter(box_margin_ratio=0.1)
    capture = cv2.VideoCapture(str(clip))
    frames_per_id: dict[int, int] = {}
    silhouettes_per_id: dict[int, int] = {}
    frame_count = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frame_count += 1
        found: Detections = tracker.update([StreamFrame("outdoor", frame, FPS)])[0]
        assert found.label_map is not None and found.label_map.shape == frame.shape[:2]
        for track_id, track_mask in zip(found.track_ids.tolist(), segmenter.masks(frame, found), strict=True):
            frames_per_id[track_id] = frames_per_id.get(track_id, 0) + 1
            assert track_mask is not None
            if isinstance(pretreat_track_mask(track_mask, frame.shape[:2]), np.ndarray):
                silhouettes_per_id[track_id] = silhouettes_per_id.get(track_id, 0) + 1
    capture.release()
    return frames_per_id, silhouettes_per_id, frame_count


def test_outdoor_clip_gives_two_walkers_with_good_silhouettes(
    outdoor_clip: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """aiog_outdoor_AB.mp4: A walks past, then B; each must be one long track of usable silhouettes."""
    with caplog.at_level(logging.INFO, logger="engines.detect"):
        frames_per_id, silhouettes_per_id, frame_count = _run_bgsub(outdoor_clip)
    assert frame_count == 211
    long_tracks = {i: n for i, n in frames_per_id.items() if n >= 40}
    assert len(long_tracks) == 2, frames_per_id
    for track_id in long_tracks:
        assert silhouettes_per_id.get(track_id, 0) >= 40, (frames_per_id, silhouettes_per_id)
    assert sum(n for i, n in frames_per_id.items() if i not in long_tracks) <= 10  # little else
    assert [r.getMessage() for r in caplog.records if "bgsub" in r.getMessage()]
