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
