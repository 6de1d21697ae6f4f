"""Metrics as an operator sees them: the Prometheus exposition, the run summary's fps and the periodic log line."""

from __future__ import annotations

import logging
import socket
import urllib.request
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.config import RuntimeConfig
from pipeline.errors import ConfigError
from pipeline.metrics import BoardCollector, MetricsBoard, ProcessMetrics
from pipeline.supervisor import Supervisor, serve_metrics


class FakeClock:
    def __init__(self, now_s: float = 0.0) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


def two_process_board() -> MetricsBoard:
    """A board fed by real snapshots: `detect_track` (7 frames, yolo) and `gait` (5 frames, three latencies)."""
    board = MetricsBoard()
    detect = ProcessMetrics("detect_track")
    detect.inc("frames_in_total", 7)
    detect.inc("frames_out_total", 7)
    detect.inc("dropped_total", reason="live_queue_full")
    detect.set("detector_info", 1.0, backend="yolo")
    detect.set("live_tracks", 2)
    detect.observe_ms("process", 12.0)
    board.update("detect_track", detect.snapshot())
    gait = ProcessMetrics("gait")
    gait.inc("frames_in_total", 5)
    gait.inc("frames_out_total", 5)
    gait.inc("dropped_total", 2, reason="duplicate")
    gait.set("live_tracks", 1)
    for value_ms in (2.0, 30.0, 400.0):
        gait.observe_ms("process", value_ms)
    board.update("gait", gait.snapshot())
    return board


def scrape(board: MetricsBoard) -> dict[str, object]:
    registry = CollectorRegistry()
    registry.register(BoardCollector(board))
    families = list(text_string_to_metric_families(generate_latest(registry).decode()))
    names = [family.name for family in families]
    assert len(names) == len(set(names)), f"a metric split into several families: {names}"
    return {family.name: family for family in families}


def by_process(family, sample_name: str) -> dict[str, float]:
    return {s.labels["process"]: s.value for s in family.samples if s.name == sample_name}


def test_the_exposition_has_one_typed_family_per_metric_with_processes_as_labels():
    families = scrape(two_process_board())

    for family in families.values():
        assert family.documentation, family.name
        assert family.type in ("counter", "gauge", "histogram"), family.name
        assert all(s.labels["process"] in ("detect_track", "gait") for s in family.samples), family.name
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples), family.name
    frames_in = families["gaitstream_frames_in"]
    assert frames_in.type == "counter"
    assert by_process(frames_in, "gaitstream_frames_in_total") == {"detect_track": 7, "gait": 5}
    dropped = {(s.labels["process"], s.labels["reason"]): s.value for s in families["gaitstream_dropped"].samples}
    assert dropped == {("detect_track", "live_queue_full"): 1, ("gait", "duplicate"): 2}
    assert families["gaitstream_process_cpu_seconds"].type == "counter"
    memory = families["gaitstream_process_resident_memory_bytes"]
    assert memory.type == "gauge" and all(s.value > 2**20 for s in memory.samples)
    assert families["gaitstream_live_tracks"].type == "gauge"


def test_latencies_are_histograms_in_seconds():
    latency = scrape(two_process_board())["gaitstream_process_seconds"]

    assert latency.type == "histogram"
    kinds = ("bucket", "sum", "count")
    assert {s.name for s in latency.samples} == {f"gaitstream_process_seconds_{kind}" for kind in kinds}
    assert by_process(latency, "gaitstream_process_seconds_count") == {"detect_track": 1, "gait": 3}
    assert by_process(latency, "gaitstream_process_seconds_sum")["gait"] == pytest.approx(0.432)
    gait_buckets = {s.labels["le"]: s.value for s in latency.samples
                    if s.name.endswith("_bucket") and s.labels["process"] == "gait"}
    assert gait_buckets["0.001"] == 0 and gait_buckets["0.0025"] == 1  # 2 ms
    assert gait_buckets["0.025"] == 1 and gait_buckets["0.05"] == 2  # 30 ms
    assert gait_buckets["0.25"] == 2 and gait_buckets["0.5"] == 3 and gait_buckets["+Inf"] == 3  # 400 ms


def test_the_detector_backend_is_a_label_not_a_metric_name():
    families = scrape(two_process_board())

    info = families["gaitstream_detector_info"]
    assert [(s.labels["process"], s.labels["backend"], s.value) for s in info.samples] == [("detect_track", "yolo", 1)]
    assert not [s.name for f in families.values() for s in f.samples if "yolo" in s.name]


def test_summary_fps_is_frames_over_the_time_frames_were_passing():
    clock = FakeClock()
    board = MetricsBoard()
    metrics = ProcessMetrics("sink", clock=clock)
    clock.now_s = 1.0
    metrics.inc("frames_in_total", 4)
    clock.now_s = 2.0
    board.update("sink", metrics.snapshot())  # a heartbeat mid-run
    clock.now_s = 3.0
    metrics.inc("frames_in_total", 4)
    clock.now_s = 3.5
    metrics.inc("frames_in_total", 2)
    clock.now_s = 10.0  # the last heartbeat comes long after the last frame
    board.update("sink", metrics.snapshot())

    summary = board.summary()["sink"]
    assert summary["active_s"] == pytest.approx(2.5)
    assert summary["fps"] == pytest.approx(10 / 2.5)
    assert summary["latency_ms"] == {}


def test_summary_fps_spans_restarts():
    clock = FakeClock()
    board = MetricsBoard()
    first = ProcessMetrics("relay", clock=clock)
    for now_s in (1.0, 2.0, 3.0):
        clock.now_s = now_s
        first.inc("frames_in_total", 3)
        first.inc("frames_out_total", 3)
    board.update("relay", first.snapshot())
    board.restarted("relay")
    second = ProcessMetrics("relay", clock=clock)
    for now_s in (10.0, 11.0):
        clock.now_s = now_s
        second.inc("frames_out_total", 3)
    board.update("relay", second.snapshot())

    summary = board.summary()["relay"]
    assert summary["counters"]["frames_out_total"] == 15
    assert summary["fps"] == pytest.approx(15 / 3.0)


def test_the_log_line_fps_is_over_the_interval_since_the_previous_line(tmp_path, monkeypatch, caplog):
    clock = FakeClock(100.0)
    monkeypatch.setattr("pipeline.supervisor.time", SimpleNamespace(monotonic=clock))
    supervisor = Supervisor(SimpleNamespace(runtime=RuntimeConfig(run_dir=tmp_path, metrics_log_interval_s=10),
                                            graph=["sink"]), {})
    metrics = ProcessMetrics("sink", clock=clock)
    caplog.set_level(logging.DEBUG, logger="pipeline.supervisor")
    supervisor._log_metrics()  # the start of supervision: nothing running yet
    for now_s, frames in ((110.0, 50), (120.0, 30)):
        clock.now_s = now_s - 1.0
        metrics.inc("frames_in_total", frames)
        clock.now_s = now_s - 0.5
        supervisor.board.update("sink", metrics.snapshot())
        clock.now_s = now_s
        supervisor.board.update("sink", metrics.snapshot())  # nothing passed in the last heartbeat interval
        supervisor._log_metrics()

    per_process = [r for r in caplog.records if r.getMessage().startswith("metrics process=sink")]
    assert [r.getMessage().split()[2] for r in per_process] == ["fps=5.0", "fps=3.0"]
    run_lines = [r for r in caplog.records if r.getMessage().startswith("metrics fps=")]
    assert [r.getMessage().split()[1] for r in run_lines] == ["fps=5.0", "fps=3.0"]
    # one INFO line per interval for the whole run; the per-process detail only at DEBUG
    assert all(r.levelno == logging.INFO for r in run_lines) and all(r.levelno == logging.DEBUG for r in per_process)


def test_the_metrics_server_serves_the_registry():
    registry = CollectorRegistry()
    registry.register(BoardCollector(two_process_board()))
    server = serve_metrics(registry, 0)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    frames_out = families["gaitstream_frames_out"]
    assert frames_out.type == "counter"
    assert by_process(frames_out, "gaitstream_frames_out_total") == {"detect_track": 7, "gait": 5}


def test_a_metrics_port_in_use_is_a_config_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"^--metrics-port {port}: cannot serve metrics there \(.+\)$"):
            serve_metrics(CollectorRegistry(), port)


def test_per_track_state_counts_each_time_it_empties():
    metrics = ProcessMetrics("gait")
    for count in (0, 1, 2, 0, 0, 1, 0):
        metrics.set_live_tracks(count)
    assert metrics.gauges["live_tracks"] == 0 and metrics.counters["live_tracks_emptied_total"] == 2
