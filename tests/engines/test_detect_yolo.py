"""YOLO detector on real frames with Ultralytics' int8 exports: masks, per-stream ids, weights errors, offline."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engines.detect import Detections, DetectorSettings, MultiStreamTracker, StreamFrame, find_weights, open_tracker
from engines.errors import EngineError, WeightsNotFound

FPS = 30.0  # the shared clips' rate

@pytest.fixture(scope="module")
def seg_weights(models: Path) -> Path:
    return models / "yolo11n-seg_int8.tflite"


@pytest.fixture(scope="module")
def yolo_seg(seg_weights: Path) -> MultiStreamTracker:
    """One model for the whole module; every test uses its own stream ids, so tracker states never mix."""
    return open_tracker(DetectorSettings(backend="yolo", weights=[str(seg_weights)]))


def test_one_walker_with_a_mask_filling_his_box(
    yolo_seg: MultiStreamTracker, outdoor_walk_frames: dict[int, np.ndarray]
) -> None:
    assert yolo_seg.backend == "yolo"
    for index in (45, 55, 65):
        frame = outdoor_walk_frames[index]
        found: Detections = yolo_seg.update([StreamFrame(f"still-{index}", frame, FPS)])[0]
        assert len(found) == 1  # person A only; a new stream's first frame already reports the track
        assert found.label_map is not None and found.label_map.shape == frame.shape[:2]
        x1, y1, x2, y2 = found.boxes_xyxy_px[0]
        assert 250 <= y2 - y1 <= 450 and 0.2 <= (x2 - x1) / (y2 - y1) <= 0.8  # a standing adult, 1280 px frame
        assert found.scores[0] >= 0.5
        mask = found.label_map == 1
        inside = mask[int(y1) : int(np.ceil(y2)), int(x1) : int(np.ceil(x2))]
        assert inside.sum() / mask.sum() > 0.98  # the mask lies in its box
        assert 0.35 <= inside.mean() <= 0.9  # and covers most of it, as a walking body does
        rows = np.flatnonzero(inside.any(axis=1))
        assert (rows[-1] - rows[0] + 1) / inside.shape[0] > 0.9  # head to feet
        assert set(np.unique(found.label_map)) == {0, 1}


def test_a_walker_keeps_one_id(yolo_seg: MultiStreamTracker, outdoor_walk_frames: dict[int, np.ndarray]) -> None:
    ids = [yolo_seg.update([StreamFrame("walk", outdoor_walk_frames[i], FPS)])[0].track_ids.tolist()
           for i in range(40, 70)]
    assert ids == [[1]] * 30


def test_streams_have_separate_id_spaces(
    yolo_seg: MultiStreamTracker, outdoor_walk_frames: dict[int, np.ndarray]
) -> None:
    """Two streams in one batched call: each numbers its own walker from 1, and neither disturbs the other."""
    ids: dict[str, set[int]] = {"a": set(), "b": set()}
    boxes_b = []
    for offset in range(16):
        batch = [StreamFrame("a", outdoor_walk_frames[40 + offset], FPS),
                 StreamFrame("b", outdoor_walk_frames[124 + offset], FPS)]
        found_a, found_b = yolo_seg.update(batch)
        ids["a"].update(found_a.track_ids.tolist())
        ids["b"].update(found_b.track_ids.tolist())
        boxes_b.append(found_b.boxes_xyxy_px[0])
    assert ids == {"a": {1}, "b": {1}}
    # B walks right to left across the frame: his box moves steadily left, never jumping to A's position.
    centres_x = [(box[0] + box[2]) / 2 for box in boxes_b]
    assert all(later < earlier for earlier, later in zip(centres_x, centres_x[1:]))

    yolo_seg.end_stream("a")
    after_end = yolo_seg.update([StreamFrame("a", outdoor_walk_frames[45], FPS)])[0]
    assert after_end.track_ids.tolist() == [2]  # a restarted stream never reuses an id


def test_empty_batch_and_empty_frame(yolo_seg: MultiStreamTracker) -> None:
    assert yolo_seg.update([]) == []
    found = yolo_seg.update([StreamFrame("blank", np.zeros((1280, 720, 3), np.uint8), FPS)])[0]
    assert len(found) == 0
    assert found.label_map is not None and not found.label_map.any()


@pytest.mark.parametrize(
    ("weights_name", "task"),
    [("yolo11n_int8_320.onnx", "detect"), ("yolov8n-seg_int8_320.onnx", "segment")],
)
def test_onnx_320_exports_track_the_walker(
    models: Path, outdoor_walk_frames: dict[int, np.ndarray], weights_name: str, task: str
) -> None:
    """ONNX Runtime path at the export's own fixed 320x320: one id over 10 frames; masks only from -seg weights."""
    tracker = open_tracker(DetectorSettings(backend="yolo", weights=[str(models / weights_name)]))
    assert (tracker.task, tracker.imgsz_px) == (task, (320, 320))
    for index in range(40, 50):
        found = tracker.update([StreamFrame("cam", outdoor_walk_frames[index], FPS)])[0]
        assert found.track_ids.tolist() == [1]
        x1, y1, x2, y2 = found.boxes_xyxy_px[0]
        assert 250 <= y2 - y1 <= 450 and 0.2 <= (x2 - x1) / (y2 - y1) <= 0.8
        if task == "detect":
            assert found.label_map is None
        else:
            assert found.label_map is not None and (found.label_map == 1).sum() > 0.3 * (x2 - x1) * (y2 - y1)


def test_fixed_size_export_rejects_another_size(models: Path) -> None:
    weights = models / "yolo11n_int8_320.onnx"
    with pytest.raises(EngineError, match=r"imgsz_px=640 .* fixed 320x320"):
        open_tracker(DetectorSettings(backend="yolo", weights=[str(weights)], imgsz_px=640))


def test_explicit_yolo_without_weights_says_where_it_looked(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "yolo11n-seg.tflite"
    with pytest.raises(WeightsNotFound) as raised:
        open_tracker(DetectorSettings(backend="yolo", weights=[str(missing), "no-such-model.pt"]))
    message = str(raised.value)
    assert str(missing) in message
    assert "no-such-model.pt" in message
    assert "shared/assets/models" in message


def test_auto_falls_back_to_bgsub_and_says_why(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    missing = tmp_path / "yolo11n.pt"
    with caplog.at_level(logging.INFO, logger="engines.detect"):
        tracker = open_tracker(DetectorSettings(weights=[str(missing)]))
    assert tracker.backend == "bgsub"
    lines = [r.getMessage() for r in caplog.records if r.name == "engines.detect"]
    assert len(lines) == 1
    assert "not found" in lines[0] and str(missing) in lines[0] and "bgsub" in lines[0]


def test_auto_picks_yolo_when_weights_exist_and_says_so(
    tmp_path: Path, models: Path, caplog: pytest.LogCaptureFixture
) -> None:
    weights = models / "yolo11n_int8_320.onnx"
    with caplog.at_level(logging.INFO, logger="engines.detect"):
        tracker = open_tracker(DetectorSettings(weights=[str(tmp_path / "absent.pt"), str(weights)]))
    assert tracker.backend == "yolo"
    lines = [r.getMessage() for r in caplog.records if r.name == "engines.detect"]
    assert len(lines) == 1
    assert "yolo (auto: weights found)" in lines[0] and str(weights) in lines[0]


def test_auto_picks_the_first_existing_candidate(tmp_path: Path, seg_weights: Path) -> None:
    search = find_weights([str(tmp_path / "absent.tflite"), str(seg_weights)])
    assert search.found == seg_weights
    assert search.looked_in == (tmp_path / "absent.tflite", seg_weights)


_OFFLINE_PROBE = """
import socket, subprocess, sys

def refuse_network(*args, **kwargs):
    raise RuntimeError(f"network use: {args!r}")

spawn = subprocess.Popen.__init__

def refuse_installers(self, command, *args, **kwargs):
    if any(word in str(command) for word in ("pip", "uv", "install")):
        raise RuntimeError(f"installer run: {command!r}")
    spawn(self, command, *args, **kwargs)

socket.socket.connect = socket.getaddrinfo = socket.create_connection = refuse_network
subprocess.Popen.__init__ = refuse_installers
from engines.detect import DetectorSettings, open_tracker

tracker = open_tracker(DetectorSettings(backend="yolo", weights=[sys.argv[1]]))
from ultralytics.utils import checks  # imported by the tracker, offline

assert tracker.backend == "yolo" and checks.AUTOINSTALL is False and checks.ONLINE is False
"""


def test_yolo_opens_in_a_fresh_process_without_network_or_pip(models: Path) -> None:
    """Ultralytics checks connectivity at import and pip-installs missing runtimes; neither may happen here."""
    weights = models / "yolo11n_int8.tflite"
    result = subprocess.run(
        [sys.executable, "-c", _OFFLINE_PROBE, str(weights)],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
