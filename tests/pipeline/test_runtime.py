"""The runtime in real processes over real sockets: delivery, restarts, live drops, bad input, shutdown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import psutil
import zmq

from pipeline.config import StageConfig
from pipeline.fence import deadline_path, extend_deadline
from pipeline.runner import heap_trimmer, process_title
from pipeline.shm import shm_dir
from tests.conftest import REPO_ROOT, wait_for
from tests.pipeline.runtime_stages import graph_supervisor, read_lines, run_graph


def checksums(path: Path) -> list[int]:
    """Per-frame checksums computed straight from the file, independently of the pipeline."""
    capture = cv2.VideoCapture(str(path))
    sums = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        sums.append(int(np.asarray(frame[::16, ::16], np.int64).sum()))
    return sums


def child_named(name: str) -> psutil.Process | None:
    for child in psutil.Process().children(recursive=True):
        try:
            if child.name() == process_title(name):
                return child
        except psutil.NoSuchProcess:
            continue
    return None


def frames_of(lines: list[dict], stream: str) -> list[dict]:
    return [line for line in lines if line.get("stream") == stream and "seq" in line]


def copies(result) -> dict[str, int]:
    """The source's copies of frames into shared memory, by reason (none when every frame is decoded in place)."""
    counters = result.metrics["source-0"]["counters"]
    return {key: value for key, value in counters.items() if key.startswith("frames_copied_total")}


def test_batch_run_delivers_every_frame_once_in_order(tmp_path, outdoor_clip):
    out = tmp_path / "rec.jsonl"
    result = run_graph([{"uri": str(outdoor_clip), "id": "ab"}], {"stages.recorder.path": str(out)})
    lines = read_lines(out)
    frames = frames_of(lines, "ab")
    assert result.exit_code == 0
    assert [f["seq"] for f in frames] == list(range(211))
    assert [f["sum"] for f in frames] == checksums(outdoor_clip)
    assert lines[-1] == {"stream": "ab", "eos": 211, "reason": "end"}
    assert result.metrics["recorder"]["counters"]["frames_in_total"] == 211
    assert copies(result) == {}, "every frame is decoded straight into its shared-memory slot"


def test_inputs_of_different_sizes_each_get_a_ring_without_copies(tmp_path, outdoor_clip, videos):
    """720p, then 360x480, then 720p again from one source process: every frame still lands in place."""
    out = tmp_path / "rec.jsonl"
    pets = videos / "vtest_pets2009_480x360.avi"
    streams = [{"uri": str(outdoor_clip), "id": "a"}, {"uri": str(pets), "id": "pets"},
               {"uri": str(outdoor_clip), "id": "b"}]
    result = run_graph(streams, {"stages.recorder.path": str(out), "stages.source.fps_limit": 10})
    lines = read_lines(out)
    assert result.exit_code == 0
    assert {tuple(f["shape"]) for f in frames_of(lines, "pets")} == {(360, 480, 3)}
    assert [f["sum"] for f in frames_of(lines, "b")] == checksums(outdoor_clip)[::3]
    assert copies(result) == {}


def test_killed_stage_restarts_and_batch_mode_loses_nothing(tmp_path, outdoor_clip):
    out = tmp_path / "rec.jsonl"
    killed: list[int] = []

    def kill_relay_mid_run() -> None:
        wait_for(lambda: out.exists() and len(read_lines(out)) >= 40, 60, "40 frames through the graph")
        relay = wait_for(lambda: child_named("relay"), 10, "the relay process")
        killed.append(relay.pid)
        os.kill(relay.pid, signal.SIGKILL)

    thread = threading.Thread(target=kill_relay_mid_run)
    thread.start()
    result = run_graph(
        [{"uri": str(outdoor_clip), "id": "ab"}],
        {"stages.recorder.path": str(out), "stages.relay.delay_ms": 15, "runtime.restart_backoff_initial_s": 0.1},
    )
    thread.join()
    frames = frames_of(read_lines(out), "ab")
    assert killed, "the relay was never killed"
    assert result.exit_code == 0
    assert result.metrics["relay"]["restarts"] == 1
    assert [f["seq"] for f in frames] == list(range(211)), "a frame was lost or duplicated across the restart"
    assert [f["sum"] for f in frames] == checksums(outdoor_clip)


def test_live_mode_drops_oldest_frames_and_counts_each_drop(tmp_path, outdoor_clip):
    out = tmp_path / "rec.jsonl"
    result = run_graph(
        [{"uri": str(outdoor_clip), "id": "ab"}],
        {"stages.recorder.path": str(out), "stages.relay.delay_ms": 70, "stages.source.mode": "live",
         "stages.relay.window": 2},
    )
    frames = frames_of(read_lines(out), "ab")
    seqs = [f["seq"] for f in frames]
    drops = result.metrics["source-0"]["counters"].get('dropped_total{reason="live_queue_full"}', 0)
    assert result.exit_code == 0
    assert seqs == sorted(set(seqs)), "live frames must stay in order without duplicates"
    assert drops > 50, "a 70 ms stage behind a 30 fps source must shed frames"
    assert len(seqs) + drops == 211, "every frame is either delivered or counted as dropped"
    assert sum(b - a - 1 for a, b in zip(seqs, seqs[1:])) + seqs[0] + (210 - seqs[-1]) == drops
    assert copies(result) == {}, "waiting and dropped frames hold their own slots; none is copied"


def test_killed_stage_in_live_mode_loses_only_the_outage_and_counts_it(tmp_path, outdoor_clip):
    out = tmp_path / "rec.jsonl"
    outage: list[float] = []

    def kill_relay_and_time_the_outage() -> None:
        wait_for(lambda: out.exists() and len(read_lines(out)) >= 40, 60, "40 frames through the graph")
        relay = wait_for(lambda: child_named("relay"), 10, "the relay process")
        seen = len(read_lines(out))
        killed_at = time.monotonic()
        os.kill(relay.pid, signal.SIGKILL)
        # Up to a window of frames the dead relay had already forwarded may still arrive; more came through its
        # successor.
        in_flight = StageConfig().window
        wait_for(lambda: len(read_lines(out)) > seen + in_flight, 60, "frames after the restart")
        outage.append(time.monotonic() - killed_at)

    thread = threading.Thread(target=kill_relay_and_time_the_outage)
    thread.start()
    result = run_graph(
        [{"uri": str(outdoor_clip), "id": "ab"}],
        {"stages.recorder.path": str(out), "stages.source.mode": "live", "runtime.restart_backoff_initial_s": 0.1},
    )
    thread.join()
    seqs = [f["seq"] for f in frames_of(read_lines(out), "ab")]
    drops = result.metrics["source-0"]["counters"].get('dropped_total{reason="live_queue_full"}', 0)
    assert outage, "the relay was never killed"
    assert result.exit_code == 0
    assert result.metrics["relay"]["restarts"] == 1
    assert seqs == sorted(set(seqs)), "live frames must stay in order without duplicates"
    assert len(seqs) + drops == 211, "every frame is either delivered or counted as dropped"
    assert drops >= 1, "a live source cannot wait for a dead stage"
    largest_gap = max(b - a - 1 for a, b in zip(seqs, seqs[1:]))
    assert largest_gap <= 30 * outage[0] + 10, f"lost {largest_gap} frames in a {outage[0]:.1f}s outage at 30 fps"


def test_malformed_messages_on_a_socket_are_dropped_and_counted(tmp_path, outdoor_clip):
    out = tmp_path / "rec.jsonl"
    endpoint = f"ipc://{tmp_path}/relay.sock"
    context = zmq.Context()
    intruder = context.socket(zmq.DEALER)
    intruder.connect(endpoint)

    def inject() -> None:
        wait_for(lambda: out.exists() and len(read_lines(out)) >= 20, 60, "frames flowing")
        intruder.send_multipart([b"garbage"])                                   # not an envelope
        intruder.send_multipart([b"D", (1).to_bytes(8, "little"), b"t", b"\x00\xff"])  # bad header
        intruder.send_multipart([b"D", (2).to_bytes(8, "little"), b"t"])        # truncated

    thread = threading.Thread(target=inject)
    thread.start()
    result = run_graph(
        [{"uri": str(outdoor_clip), "id": "ab"}],
        {"stages.recorder.path": str(out), "stages.relay.input_endpoint": endpoint, "stages.relay.delay_ms": 5},
    )
    thread.join()
    intruder.close(0)
    context.term()
    counters = result.metrics["relay"]["counters"]
    assert result.exit_code == 0
    assert result.metrics["relay"]["restarts"] == 0
    assert counters.get('dropped_total{reason="malformed_envelope"}', 0) == 1
    assert counters.get('dropped_total{reason="malformed"}', 0) == 2  # bad header; truncated message
    assert [f["seq"] for f in frames_of(read_lines(out), "ab")] == list(range(211))


def test_sigterm_stops_everything_cleanly(tmp_path, outdoor_clip):
    out = tmp_path / "rec.jsonl"
    arguments = {"streams": [{"uri": str(outdoor_clip), "id": "ab"}],
                 "overrides": {"stages.recorder.path": str(out), "stages.source.mode": "live"}}
    before = set(p.name for p in shm_dir().glob("gaitstream-*"))
    process = subprocess.Popen([sys.executable, "-m", "tests.pipeline.runtime_stages", json.dumps(arguments)],
                               cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: out.exists() and len(read_lines(out)) >= 10, 60, "frames flowing")
    children = psutil.Process(process.pid).children(recursive=True)
    assert len(children) >= 3  # source, relay, recorder (+ spawn's resource tracker)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr[-2000:]
    gone, alive = psutil.wait_procs(children, timeout=5)
    assert not alive, f"orphans left: {alive}"
    assert set(p.name for p in shm_dir().glob("gaitstream-*")) <= before, "shared memory leaked"
    assert json.loads(stdout.strip().splitlines()[-1])["reason"] == "signal"


def test_heap_trim_returns_fragmented_free_memory_to_the_os():
    """What each stage does every `runtime.heap_trim_interval_s`: freed chunks pinned between live ones go to the OS."""
    trim = heap_trimmer()
    process = psutil.Process()
    chunks = [bytearray(64 * 1024) for _ in range(3000)]  # ~190 MB below glibc's mmap threshold: heap memory
    keep = chunks[::100]  # live chunks spread over the heap stop it from shrinking by itself
    del chunks
    before = process.memory_info().rss
    trim()
    after = process.memory_info().rss
    assert len(keep) == 30
    assert before - after > 100 * 2**20, f"RSS {before / 2**20:.0f} MB -> {after / 2**20:.0f} MB after the trim"


def run_while(supervisor, drive) -> object:
    """Run the supervisor while `drive()` acts on it from another thread, then stop it; a failed assertion in
    `drive` is raised here."""
    failures: list[AssertionError] = []

    def body() -> None:
        try:
            drive()
        except AssertionError as exc:
            failures.append(exc)
        finally:
            supervisor.stop()

    driver = threading.Thread(target=body)
    driver.start()
    result = supervisor.run()
    driver.join()
    if failures:
        raise failures[0]
    return result


def test_sources_on_demand_run_only_while_asked(tmp_path, outdoor_clip, caplog):
    """A node's supervisor: no camera is read until started; a stopped one ends at once and never restarts; a
    camera started again is read by a fresh process."""
    out = tmp_path / "rec.jsonl"
    streams = [{"uri": str(outdoor_clip), "id": "door"}, {"uri": str(outdoor_clip), "id": "hall"}]
    supervisor = graph_supervisor(streams, {"stages.recorder.path": str(out), "stages.source.mode": "live",
                                            "stages.source.loop": True}, sources_on_demand=True, host="node-a")
    seen: dict[str, object] = {}

    def drive() -> None:
        wait_for(lambda: out.exists(), 60, "the recorder to open")
        time.sleep(1.0)
        seen["before_start"] = len(read_lines(out))
        supervisor.start_source("door")
        wait_for(lambda: len(frames_of(read_lines(out), "door")) >= 10, 30, "frames of the started camera")
        supervisor.stop_source("door", within_s=2.0)
        wait_for(lambda: any(line.get("reason") == "stopped" for line in read_lines(out)), 10,
                 "the stopped camera's end of stream")
        time.sleep(1.0)  # longer than a restart back-off: a released source must stay stopped
        seen["after_stop"] = len(frames_of(read_lines(out), "door"))
        time.sleep(0.5)
        seen["later"] = len(frames_of(read_lines(out), "door"))
        supervisor.start_source("door")
        wait_for(lambda: len({f["epoch"] for f in frames_of(read_lines(out), "door")}) == 2, 30,
                 "frames of the camera started again")

    with caplog.at_level("INFO", logger="pipeline.supervisor"):
        result = run_while(supervisor, drive)
    assert seen["before_start"] == 0
    assert seen["after_stop"] == seen["later"]
    assert not frames_of(read_lines(out), "hall")
    assert result.exit_code == 0
    opened = [r.message for r in caplog.records if r.message.startswith("source started camera=door host=node-a")]
    closed = [r.message for r in caplog.records if r.message.startswith("source stopped camera=door host=node-a")]
    assert len(opened) == 2 and len(closed) == 1


def test_a_leased_camera_s_source_stops_reading_at_its_deadline_on_its_own(tmp_path, outdoor_clip):
    """A node frozen after its last renewal sends no stop: the source process stops at the deadline the node wrote
    (`pipeline.fence`) by itself, and stays stopped. Before: it read on until the node stopped it."""
    out = tmp_path / "rec.jsonl"
    supervisor = graph_supervisor([{"uri": str(outdoor_clip), "id": "door"}],
                                  {"stages.recorder.path": str(out), "stages.source.mode": "live",
                                   "stages.source.loop": True},
                                  sources_on_demand=True, read_deadlines=True, host="node-a")
    seen: dict[str, object] = {}

    def drive() -> None:
        wait_for(lambda: out.exists(), 60, "the recorder to open")
        deadline_s = time.monotonic() + 3.0
        extend_deadline(deadline_path(supervisor.run_dir, "door"), deadline_s)  # the last renewal
        supervisor.start_source("door")
        wait_for(lambda: len(frames_of(read_lines(out), "door")) >= 5, 30, "frames before the deadline")
        wait_for(lambda: any(line.get("reason") == "stopped" for line in read_lines(out)), 10,
                 "the source's own stop at its deadline")
        seen["late_s"] = time.monotonic() - deadline_s
        frames = len(frames_of(read_lines(out), "door"))
        time.sleep(1.5)  # longer than a restart back-off: nothing reads the camera again
        seen["frames_after"] = len(frames_of(read_lines(out), "door")) - frames

    result = run_while(supervisor, drive)
    assert 0 <= seen["late_s"] < 1.0
    assert seen["frames_after"] == 0
    assert result.exit_code == 0
