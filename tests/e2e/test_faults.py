"""Faults the pipeline must survive or report clearly, end to end: here, a disk that fills up under the outputs.

The other faults have their tests beside the code they exercise: RTSP server killed and restarted and a stage killed
with SIGKILL in a live run (`test_live.py`); SIGKILL in batch and live mode, malformed and truncated messages on a
socket (`tests/pipeline/test_runtime.py`); a corrupt file in a batch folder (`test_bad_input.py`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.conftest import run_pipeline
from tests.e2e.test_bad_input import assert_one_clear_error

pytestmark = pytest.mark.slow

DEV_FULL = Path("/dev/full")  # every write fails with ENOSPC, as on a full disk; no root or tmpfs needed


def test_disk_full_under_the_outputs_stops_the_run_with_one_clear_error(tmp_path: Path, videos: Path):
    if not DEV_FULL.exists():
        pytest.skip("/dev/full is missing (not Linux?)")
    out = tmp_path / "out"
    events = out / "aiog_indoor_C_short" / "events.jsonl"
    events.parent.mkdir(parents=True)
    events.symlink_to(DEV_FULL)
    done = run_pipeline("--source", str(videos / "aiog_indoor_C_short.mp4"), "--out", str(out), "--no-display",
                        timeout_s=180)
    assert_one_clear_error(done, f"cannot write {events}: No space left on device")
    sink = json.loads((out / "summary.json").read_text())["processes"]["sink"]
    assert sink["counters"].get('output_errors_total{reason="ENOSPC"}', 0) >= 1, sink["counters"]
    assert sink["restarts"] == 0, "restarting cannot make room on a disk"


@pytest.mark.parametrize("signals", [1, 2])
def test_interrupting_a_run_reports_what_was_done_and_leaves_a_playable_video(tmp_path: Path, videos: Path,
                                                                               signals: int):
    """Ctrl-C (and a second one, as `timeout` sends): the frames processed are reported, nothing is restarted
    during shutdown, and the annotated video is finalised."""
    import signal
    import subprocess
    import time

    from tests.conftest import wait_for
    from tests.e2e.conftest import pipeline_command

    out = tmp_path / "out"
    process = subprocess.Popen(pipeline_command("--source", str(videos / "aiog_outdoor_AB.mp4"), "--out", str(out),
                                                "--no-display"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    video = out / "aiog_outdoor_AB" / "annotated.mp4"
    wait_for(lambda: video.is_file() and video.stat().st_size > 50_000, 180, "the annotated video to grow")
    for _ in range(signals):
        process.send_signal(signal.SIGINT)
        time.sleep(0.3)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr[-3000:]
    assert "restarting" not in stderr
    line = next(line for line in stderr.splitlines() if line.startswith("aiog_outdoor_AB:"))
    frames = int(line.split(":")[1].split()[0])
    assert 0 < frames < 211, line
    probe = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_entries", "stream=nb_read_frames",
                            "-of", "csv=p=0", str(video)], capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0 and int(probe.stdout.strip()) > 0, probe.stderr
