"""Live streams end to end: a real RTSP server on loopback, reconnection, one process per stage, restarts."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

from pipeline.runner import process_title
from stages import DEFAULT_GRAPH
from tests.conftest import REPO_ROOT, wait_for
from tests.e2e.conftest import RtspServer, pipeline_command, read_events
from tests.pipeline.runtime_stages import read_lines, run_graph

pytestmark = pytest.mark.slow


class LiveRun:
    """`run_pipeline.py --rtsp URL` as a child process, its events file, and its stage processes."""

    def __init__(self, server: RtspServer, out: Path) -> None:
        self.log_path = out / "pipeline.log"
        self.events_path = out / f"127.0.0.1_{server.port}_live" / "events.jsonl"
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(pipeline_command("--rtsp", server.url, "--out", str(out), "--no-display"),
                                            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)

    def track_events(self) -> int:
        return sum(event["type"] == "track" for event in read_events(self.events_path))

    def stages(self) -> dict[str, int]:
        """Process title -> pid of every process of the run."""
        children = psutil.Process(self.process.pid).children(recursive=True)
        return {child.name(): child.pid for child in children if child.is_running()}

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> int:
        """Ctrl-C, as a user would; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(60)
        finally:
            if self.process.poll() is None:
                self.process.kill()


@pytest.fixture
def live_run(rtsp_server: RtspServer, tmp_path: Path):
    run = LiveRun(rtsp_server, tmp_path)
    yield run
    run.stop()


def test_rtsp_stream_produces_events_and_reconnects(rtsp_server: RtspServer, live_run: LiveRun):
    wait_for(lambda: live_run.track_events() >= 20, 120, "track events from the RTSP stream")
    rtsp_server.stop()
    wait_for(lambda: "stream lost; reconnecting" in live_run.log(), 30, "the source to notice the lost stream")
    time.sleep(2)  # a real outage, spanning reconnect attempts
    before = live_run.track_events()
    rtsp_server.start()
    wait_for(lambda: "stream restored" in live_run.log(), 60, "the source to reconnect")
    wait_for(lambda: live_run.track_events() >= before + 20, 90, "track events after the reconnect")
    assert live_run.process.poll() is None, live_run.log()[-3000:]
    assert live_run.stop() == 0, live_run.log()[-3000:]
    assert "Traceback" not in live_run.log()


def test_every_stage_is_a_process_and_a_killed_one_is_restarted(live_run: LiveRun):
    wanted = {process_title(name) for name in DEFAULT_GRAPH} | {process_title("source-0")}
    stages = wait_for(lambda: (s := live_run.stages()) and wanted <= s.keys() and s, 60, f"processes {wanted}")
    assert len({stages[title] for title in wanted}) == len(wanted)
    wait_for(lambda: live_run.track_events() >= 10, 120, "track events")

    victim = process_title("segment")
    psutil.Process(stages[victim]).kill()
    restarted = wait_for(lambda: (s := live_run.stages()).get(victim) not in (None, stages[victim]) and s, 60,
                         "the supervisor to restart the killed stage")
    for title in wanted - {victim}:
        assert restarted[title] == stages[title], f"{title} should have kept running"
    before = live_run.track_events()
    wait_for(lambda: live_run.track_events() >= before + 20, 90, "track events after the restart")
    assert live_run.stop() == 0, live_run.log()[-3000:]
    log = live_run.log()
    assert "restarting" in log.lower(), log[-3000:]


def test_a_camera_back_at_another_resolution_gets_a_new_ring_after_one_copy(rtsp_server: RtspServer, videos: Path,
                                                                              tmp_path: Path):
    """The frame after the reconnect was decoded before its size was known, so it is copied once into a ring of the
    new size (counted); every later frame is decoded straight into that ring."""
    out = tmp_path / "rec.jsonl"
    landscape = (720, 1280, 3)

    def shapes() -> list[tuple[int, ...]]:
        return [tuple(line["shape"]) for line in read_lines(out) if "seq" in line] if out.exists() else []

    def swap_camera() -> None:
        wait_for(lambda: len(shapes()) >= 20, 90, "frames from the first camera")
        rtsp_server.stop()
        rtsp_server.clip = videos / "aiog_rotated_sideways.mp4"
        rtsp_server.start()
        wait_for(lambda: shapes().count(landscape) >= 20, 90, "frames from the camera at its new resolution")
        rtsp_server.stop()

    thread = threading.Thread(target=swap_camera)
    thread.start()
    result = run_graph([{"uri": rtsp_server.url, "id": "cam"}],
                       {"stages.recorder.path": str(out), "stages.source.max_outage_s": 3,
                        "stages.source.reconnect_backoff_initial_s": 0.2, "stages.source.fps_limit": None})
    thread.join()
    seen = shapes()
    counters = result.metrics["source-0"]["counters"]
    assert seen[0] == (1280, 720, 3) and seen[-1] == landscape
    assert set(seen[seen.index(landscape):]) == {landscape}
    assert {k: v for k, v in counters.items() if k.startswith("frames_copied_total")} == {
        'frames_copied_total{reason="size_changed"}': 1}
