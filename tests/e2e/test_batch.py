"""The main job end to end: the default config on the shared outdoor clip, in real processes, on real weights."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.data.sequences import open_dataset
from tests.e2e.conftest import read_events, run_pipeline

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def outdoor_run(outdoor_clip: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("outdoor")
    done = run_pipeline("--source", str(outdoor_clip), "--out", str(out), "--no-display", "--save-silhouettes")
    return done, out / outdoor_clip.stem


def casia_b_walk(casia_b: Path) -> np.ndarray:
    """A real side-view walking sequence (CASIA-B subject 001, nm-01, 90 degrees) as a reference shape."""
    dataset = open_dataset(casia_b / "sils-64x64-bin", ["001"])
    index = next(i for i, k in enumerate(dataset.keys) if (k.condition, k.view) == ("nm-01", "090"))
    return dataset.frames(index) > 127


# The default config analyses at most 15 frames per second: 106 of this 30 fps clip's 211 frames (0, 2, ..., 210).
DELIVERED = 106


def test_exits_zero_and_reports_every_frame(outdoor_run):
    done, folder = outdoor_run
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"aiog_outdoor_AB: {DELIVERED} frames, ok" in done.stderr
    summary = json.loads((folder.parent / "summary.json").read_text())
    assert summary["exit_code"] == 0


def test_two_walkers_with_walking_silhouettes(outdoor_run, casia_b: Path):
    _, folder = outdoor_run
    tracks = sorted(p for p in folder.iterdir() if p.is_dir())
    assert len(tracks) == 2, f"expected the two walkers, got tracks {[p.name for p in tracks]}"
    reference = casia_b_walk(casia_b)
    for track in tracks:
        with open(track / "000" / "000.pkl", "rb") as file:
            silhouettes = pickle.load(file)
        assert silhouettes.dtype == np.uint8 and silhouettes.shape[1:] == (64, 44)
        assert len(silhouettes) >= 20, f"track {track.name}: {len(silhouettes)} silhouettes"
        masks = silhouettes > 127
        fill = masks.mean(axis=(1, 2))
        assert fill.min() > 0.1 and fill.max() < 0.5, f"track {track.name}: foreground fraction {fill}"
        # Each frame should match some phase of a real CASIA-B walk (measured: medians 0.72 and 0.63 here).
        best_iou = [max((m & r).sum() / (m | r).sum() for r in reference) for m in masks]
        assert np.median(best_iou) > 0.5, f"track {track.name}: median IoU with a real walk {np.median(best_iou)}"


def test_annotated_video_has_every_frame_analysed_at_the_rate_analysed(outdoor_run):
    _, folder = outdoor_run
    capture = cv2.VideoCapture(str(folder / "annotated.mp4"))
    decoded = 0
    while capture.read()[0]:
        decoded += 1
    assert decoded == DELIVERED  # the clip's 7 s, every frame analysed
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(15.0, abs=0.05)
    capture.release()


def test_every_frame_with_no_rate_limit(tmp_path: Path, videos: Path):
    done = run_pipeline("--source", str(videos / "aiog_indoor_C_short.mp4"), "--out", str(tmp_path), "--no-display",
                        "--set", "stages.source.fps_limit=null")
    assert done.returncode == 0 and "aiog_indoor_C_short: 83 frames, ok" in done.stderr, done.stderr[-3000:]
    capture = cv2.VideoCapture(str(tmp_path / "aiog_indoor_C_short" / "annotated.mp4"))
    assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == 83 and capture.get(cv2.CAP_PROP_FPS) == pytest.approx(30, abs=0.05)
    capture.release()


def test_events_name_stream_frame_time_track_and_box(outdoor_run):
    _, folder = outdoor_run
    events = read_events(folder / "events.jsonl")
    for event in events:
        assert {"type", "stream", "frame", "t", "track_id", "bbox"} <= event.keys(), event
        assert event["stream"] == "aiog_outdoor_AB"
    kinds = {event["type"] for event in events}
    assert {"track", "track_end", "stream_end"} <= kinds, kinds
    boxes = [e["bbox"] for e in events if e["type"] == "track"]
    assert boxes and all(len(box) == 4 and box[0] < box[2] and box[1] < box[3] for box in boxes)
    frames = [e["frame"] for e in events]
    assert frames == sorted(frames) and frames[-1] == 210 and events[-1]["type"] == "stream_end"


def test_event_frames_are_frame_indices_and_never_go_back(outdoor_run):
    """Frames 0-210: every event refers to one of them, in order; the end of the stream says how many there were."""
    _, folder = outdoor_run
    events = read_events(folder / "events.jsonl")
    frames = [e["frame"] for e in events]
    assert frames == sorted(frames) and frames[0] >= 0 and frames[-1] == 210
    end = events[-1]
    assert end["type"] == "stream_end" and end["frames"] == DELIVERED and end["reason"] == "end"
    track_ids = sorted({e["track_id"] for e in events if e["type"] == "track"})
    ended = [e["track_id"] for e in events if e["type"] == "track_end"]
    assert sorted(ended) == track_ids and len(set(ended)) == len(ended)  # each track ends once: ids never reused
