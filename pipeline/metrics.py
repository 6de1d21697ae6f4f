"""Per-process metrics, shipped to the supervisor in heartbeats and exposed there for Prometheus.

Each process keeps counters (frames in/out, drops and errors by reason), gauges (queue depth, live tracks) and
latencies (recent samples for percentiles, and cumulative histograms for Prometheus); `snapshot()` turns them into
a plain dict for the heartbeat. The supervisor's `MetricsBoard` keeps the newest snapshot per process and carries
counters across restarts (a restarted process starts from zero); `BoardCollector` turns the board into Prometheus
metric families when scraped. Must not import `stages` or `engines`.
"""

from __future__ import annotations

import re
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import numpy as np
import psutil
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

LATENCY_SAMPLES = 2048
# Upper bounds (seconds) of the latency histogram buckets: 1 ms .. 10 s, roughly x2.5 apart.
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FRAME_COUNTERS = ("frames_out_total", "frames_in_total")
PROMETHEUS_PREFIX = "gaitstream"

_LABEL = re.compile(r'(\w+)="([^"]*)"')


def metric_key(name: str, labels: dict[str, str]) -> str:
    """Prometheus-style key: `name{a="x",b="y"}` with sorted labels, or just `name`."""
    if not labels:
        return name
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


def split_key(key: str) -> tuple[str, dict[str, str]]:
    """The name and labels back from a `metric_key`."""
    name, _, inner = key.partition("{")
    return name, dict(_LABEL.findall(inner))


def frames_passed(counters: dict[str, float]) -> float:
    """Frames leaving the process; for a sink (nothing leaves), frames taken in."""
    return counters.get("frames_out_total", counters.get("frames_in_total", 0.0))


def percentiles_ms(samples: Any) -> dict[str, float]:
    """p50/p95/p99/max and count of a sample of milliseconds; zeros when empty."""
    values = np.asarray(list(samples), dtype=np.float64)
    if values.size == 0:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0, "count": 0}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "max": float(values.max()),
            "count": int(values.size)}


@dataclass
class LatencyHistogram:
    """Every observation since the process started, in `LATENCY_BUCKETS_S`: Prometheus computes rates and quantiles
    over any window from these cumulative counts, which the recent samples cannot give."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))  # last: above 10 s
    sum_s: float = 0.0

    def observe(self, value_s: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS_S, value_s)] += 1
        self.sum_s += value_s

    def to_dict(self) -> dict[str, Any]:
        """Cumulative count per bucket bound (Prometheus' `le`), total count and sum."""
        cumulative = list(accumulate(self.counts))
        return {"buckets": cumulative[:-1], "count": cumulative[-1], "sum_s": self.sum_s}


class ProcessMetrics:
    """Counters, gauges and latencies of one process; cheap to update on every message."""

    def __init__(self, process: str, clock: Any = time.monotonic) -> None:
        self.process = process
        self.clock = clock
        self.counters: dict[str, float] = {}
        self.gauges: dict[str, float] = {}
        self.latencies: dict[str, deque[float]] = {}
        self.histograms: dict[str, LatencyHistogram] = {}
        self._started_s = clock()
        self._first_frame_s: float | None = None
        self._last_frame_s: float | None = None
        self._psutil = psutil.Process()
        self._psutil.cpu_percent(None)

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        key = metric_key(name, labels)
        self.counters[key] = self.counters.get(key, 0) + value
        if key in FRAME_COUNTERS:  # frames moving: the span fps is measured over
            self._last_frame_s = self.clock()
            if self._first_frame_s is None:
                self._first_frame_s = self._last_frame_s

    def set(self, name: str, value: float, **labels: str) -> None:
        self.gauges[metric_key(name, labels)] = value

    def set_live_tracks(self, count: int) -> None:
        """Per-track state held by the stage (`live_tracks`), and each time it empties (`live_tracks_emptied_total`):
        a stage whose state never returns to zero between walks is leaking it."""
        if count == 0 and self.gauges.get("live_tracks", 0) > 0:
            self.inc("live_tracks_emptied_total")
        self.set("live_tracks", count)

    def observe_ms(self, name: str, value_ms: float) -> None:
        samples = self.latencies.get(name)
        if samples is None:
            samples = self.latencies[name] = deque(maxlen=LATENCY_SAMPLES)
            self.histograms[name] = LatencyHistogram()
        samples.append(value_ms)
        self.histograms[name].observe(value_ms / 1e3)

    @property
    def active_s(self) -> float:
        """Seconds from the first to the newest frame counted: the time the process was passing frames."""
        if self._first_frame_s is None or self._last_frame_s is None:
            return 0.0
        return self._last_frame_s - self._first_frame_s

    def snapshot(self) -> dict[str, Any]:
        """Plain-dict view for the heartbeat (msgpack: string keys, lists, numbers)."""
        now = self.clock()
        memory = self._psutil.memory_info()
        cpu = self._psutil.cpu_times()
        return {
            "process": self.process,
            "uptime_s": now - self._started_s,
            "active_s": self.active_s,
            "counters": dict(self.counters),
            "gauges": dict(self.gauges),
            "latency_ms": {name: percentiles_ms(samples) for name, samples in self.latencies.items()},
            "latency_histograms": {name: histogram.to_dict() for name, histogram in self.histograms.items()},
            "cpu_percent": self._psutil.cpu_percent(None),  # since the previous snapshot
            "cpu_s": cpu.user + cpu.system,  # since the process started, all its threads
            "rss_mb": memory.rss / 2**20,
        }


class MetricsBoard:
    """The supervisor's view of every process: newest snapshot, counters carried over restarts, restarts."""

    def __init__(self) -> None:
        self.latest: dict[str, dict[str, Any]] = {}
        self.carried: dict[str, dict[str, float]] = {}
        self.carried_active_s: dict[str, float] = {}
        self.restarts: dict[str, int] = {}

    def update(self, process: str, snapshot: dict[str, Any]) -> None:
        self.latest[process] = snapshot

    def restarted(self, process: str) -> None:
        """Fold the dead incarnation's counters and active time into the carried totals and count the restart."""
        dead = self.latest.pop(process, None)
        if dead is not None:
            carried = self.carried.setdefault(process, {})
            for key, value in dead.get("counters", {}).items():
                carried[key] = carried.get(key, 0) + value
            self.carried_active_s[process] = self.carried_active_s.get(process, 0.0) + dead.get("active_s", 0.0)
        self.restarts[process] = self.restarts.get(process, 0) + 1

    def processes(self) -> list[str]:
        """Every process seen, alive or waiting for a restart."""
        return sorted(set(self.latest) | set(self.carried) | set(self.restarts))

    def counters(self, process: str) -> dict[str, float]:
        """Totals over every incarnation of the process."""
        totals = dict(self.carried.get(process, {}))
        for key, value in self.latest.get(process, {}).get("counters", {}).items():
            totals[key] = totals.get(key, 0) + value
        return totals

    def summary(self) -> dict[str, Any]:
        """JSON-ready totals per process (for run summaries and benchmarks); fps over the time frames were passing."""
        out: dict[str, Any] = {}
        for name in self.processes():
            latest = self.latest.get(name, {})
            counters = self.counters(name)
            active_s = self.carried_active_s.get(name, 0.0) + latest.get("active_s", 0.0)
            out[name] = {
                "counters": counters,
                "gauges": latest.get("gauges", {}),
                "latency_ms": latest.get("latency_ms", {}),
                "cpu_percent": latest.get("cpu_percent", 0.0),
                "cpu_s": latest.get("cpu_s", 0.0),
                "rss_mb": latest.get("rss_mb", 0.0),
                "active_s": active_s,
                "fps": frames_passed(counters) / active_s if active_s > 0 else 0.0,
                "restarts": self.restarts.get(name, 0),
            }
        return out


class BoardCollector(Collector):
    """Builds Prometheus families from the board when scraped: each family once, every process a `process` label
    value, counters as `_total` counters summed over restarts, latencies as histograms in seconds."""

    def __init__(self, board: MetricsBoard, prefix: str = PROMETHEUS_PREFIX) -> None:
        self.board = board
        self.prefix = prefix

    def collect(self) -> Iterator[Metric]:
        latest = dict(self.board.latest)  # the supervisor replaces entries while the HTTP thread scrapes
        restarts = CounterMetricFamily(f"{self.prefix}_restarts", "Restarts of the process by the supervisor.",
                                       labels=["process"])
        cpu = CounterMetricFamily(f"{self.prefix}_process_cpu_seconds",
                                  "User and system CPU time of the process's current incarnation, in seconds.",
                                  labels=["process"])
        memory = GaugeMetricFamily(f"{self.prefix}_process_resident_memory_bytes",
                                   "Resident memory of the process, in bytes.", labels=["process"])
        counters: dict[str, list[tuple[dict[str, str], float]]] = {}
        gauges: dict[str, list[tuple[dict[str, str], float]]] = {}
        histograms: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for process in self.board.processes():
            restarts.add_metric([process], self.board.restarts.get(process, 0))
            for key, value in self.board.counters(process).items():
                name, labels = split_key(key)
                counters.setdefault(name, []).append(({**labels, "process": process}, value))
            snapshot = latest.get(process)
            if snapshot is None:  # restarted, no heartbeat from the new incarnation yet
                continue
            cpu.add_metric([process], snapshot["cpu_s"])
            memory.add_metric([process], snapshot["rss_mb"] * 2**20)
            for key, value in snapshot["gauges"].items():
                name, labels = split_key(key)
                gauges.setdefault(name, []).append(({**labels, "process": process}, value))
            for name, histogram in snapshot["latency_histograms"].items():
                histograms.setdefault(name, []).append((process, histogram))
        yield from (restarts, cpu, memory)
        for name, rows in sorted(counters.items()):
            yield _family(CounterMetricFamily, f"{self.prefix}_{name}", f"Count of {name}, summed over restarts.",
                          rows)
        for name, rows in sorted(gauges.items()):
            yield _family(GaugeMetricFamily, f"{self.prefix}_{name}", f"Newest value of {name}.", rows)
        for name, per_process in sorted(histograms.items()):
            family = HistogramMetricFamily(f"{self.prefix}_{name}_seconds",
                                           f"Latency '{name}' of the process's current incarnation, in seconds.",
                                           labels=["process"])
            for process, histogram in per_process:
                buckets = [(floatToGoString(bound), count)
                           for bound, count in zip(LATENCY_BUCKETS_S, histogram["buckets"])]
                family.add_metric([process], [*buckets, ("+Inf", histogram["count"])], histogram["sum_s"])
            yield family


def _family(kind: type[CounterMetricFamily] | type[GaugeMetricFamily], name: str, documentation: str,
            rows: list[tuple[dict[str, str], float]]) -> Metric:
    """One family from samples whose label names may differ: a label a sample lacks is empty, as Prometheus reads
    a missing label."""
    label_names = sorted({label for labels, _ in rows for label in labels})
    family = kind(name, documentation, labels=label_names)
    for labels, value in rows:
        family.add_metric([labels.get(label, "") for label in label_names], value)
    return family
