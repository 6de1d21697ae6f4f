"""Per-process metrics, shipped to the supervisor in heartbeats and exposed there for Prometheus.

Each process keeps counters (frames in/out, drops and errors by reason), gauges (queue depth, live tracks) and
recent latency samples; `snapshot()` turns them into a plain dict for the heartbeat. The supervisor's
`MetricsBoard` keeps the newest snapshot per process, carries counters across restarts (a restarted process
starts from zero), and serves everything in Prometheus' text format. Must not import `stages` or `engines`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import numpy as np
import psutil

LATENCY_SAMPLES = 2048


def metric_key(name: str, labels: dict[str, str]) -> str:
    """Prometheus-style key: `name{a="x",b="y"}` with sorted labels, or just `name`."""
    if not labels:
        return name
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


def percentiles_ms(samples: Any) -> dict[str, float]:
    """p50/p95/p99/max and count of a sample of milliseconds; zeros when empty."""
    values = np.asarray(list(samples), dtype=np.float64)
    if values.size == 0:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0, "count": 0}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "max": float(values.max()),
            "count": int(values.size)}


class ProcessMetrics:
    """Counters, gauges and latency samples of one process; cheap to update on every message."""

    def __init__(self, process: str, clock: Any = time.monotonic) -> None:
        self.process = process
        self.clock = clock
        self.counters: dict[str, float] = {}
        self.gauges: dict[str, float] = {}
        self.latencies: dict[str, deque[float]] = {}
        self._started_s = clock()
        self._last_snapshot_s = self._started_s
        self._last_frames_out = 0.0
        self._psutil = psutil.Process()
        self._psutil.cpu_percent(None)

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        key = metric_key(name, labels)
        self.counters[key] = self.counters.get(key, 0) + value

    def set(self, name: str, value: float, **labels: str) -> None:
        self.gauges[metric_key(name, labels)] = value

    def observe_ms(self, name: str, value_ms: float) -> None:
        samples = self.latencies.get(name)
        if samples is None:
            samples = self.latencies[name] = deque(maxlen=LATENCY_SAMPLES)
        samples.append(value_ms)

    def snapshot(self) -> dict[str, Any]:
        """Plain-dict view for the heartbeat; fps is frames out since the previous snapshot per second."""
        now = self.clock()
        # Frames leaving the process; for a sink (nothing leaves), frames taken in.
        frames_out = self.counters.get("frames_out_total", self.counters.get("frames_in_total", 0.0))
        elapsed = max(now - self._last_snapshot_s, 1e-9)
        fps = (frames_out - self._last_frames_out) / elapsed
        self._last_snapshot_s, self._last_frames_out = now, frames_out
        memory = self._psutil.memory_info()
        cpu = self._psutil.cpu_times()
        return {
            "process": self.process,
            "uptime_s": now - self._started_s,
            "fps": fps,
            "counters": dict(self.counters),
            "gauges": dict(self.gauges),
            "latency_ms": {name: percentiles_ms(samples) for name, samples in self.latencies.items()},
            "cpu_percent": self._psutil.cpu_percent(None),
            "cpu_s": cpu.user + cpu.system,  # since the process started, all its threads
            "rss_mb": memory.rss / 2**20,
        }


class MetricsBoard:
    """The supervisor's view of every process: newest snapshot, counters carried over restarts, restarts."""

    def __init__(self) -> None:
        self.latest: dict[str, dict[str, Any]] = {}
        self.carried: dict[str, dict[str, float]] = {}
        self.restarts: dict[str, int] = {}

    def update(self, process: str, snapshot: dict[str, Any]) -> None:
        self.latest[process] = snapshot

    def restarted(self, process: str) -> None:
        """Fold the dead incarnation's counters into the carried totals and count the restart."""
        dead = self.latest.pop(process, None)
        if dead is not None:
            carried = self.carried.setdefault(process, {})
            for key, value in dead.get("counters", {}).items():
                carried[key] = carried.get(key, 0) + value
        self.restarts[process] = self.restarts.get(process, 0) + 1

    def counters(self, process: str) -> dict[str, float]:
        """Totals over every incarnation of the process."""
        totals = dict(self.carried.get(process, {}))
        for key, value in self.latest.get(process, {}).get("counters", {}).items():
            totals[key] = totals.get(key, 0) + value
        return totals

    def summary(self) -> dict[str, Any]:
        """JSON-ready totals per process (for run summaries and benchmarks)."""
        processes = sorted(set(self.latest) | set(self.carried) | set(self.restarts))
        out: dict[str, Any] = {}
        for name in processes:
            latest = self.latest.get(name, {})
            out[name] = {
                "counters": self.counters(name),
                "gauges": latest.get("gauges", {}),
                "latency_ms": latest.get("latency_ms", {}),
                "cpu_percent": latest.get("cpu_percent", 0.0),
                "cpu_s": latest.get("cpu_s", 0.0),
                "rss_mb": latest.get("rss_mb", 0.0),
                "fps": latest.get("fps", 0.0),
                "restarts": self.restarts.get(name, 0),
            }
        return out

    def prometheus_lines(self) -> Iterator[str]:
        """Prometheus text exposition of every process's metrics, labelled with `process`."""
        for name, data in self.summary().items():
            label = f'process="{name}"'
            yield f"gaitstream_restarts_total{{{label}}} {data['restarts']}"
            yield f"gaitstream_fps{{{label}}} {data['fps']:.3f}"
            yield f"gaitstream_cpu_percent{{{label}}} {data['cpu_percent']:.1f}"
            yield f"gaitstream_cpu_seconds_total{{{label}}} {data['cpu_s']:.2f}"
            yield f"gaitstream_rss_bytes{{{label}}} {int(data['rss_mb'] * 2**20)}"
            for kind in ("counters", "gauges"):
                for key, value in data[kind].items():
                    yield _with_label("gaitstream_" + key, label, value)
            for metric, stats in data["latency_ms"].items():
                for q in ("p50", "p95", "p99"):
                    quantile = {"p50": "0.5", "p95": "0.95", "p99": "0.99"}[q]
                    yield f'gaitstream_{metric}_ms{{{label},quantile="{quantile}"}} {stats[q]:.3f}'


def _with_label(key: str, label: str, value: float) -> str:
    if key.endswith("}"):
        return f"{key[:-1]},{label}}} {value}"
    return f"{key}{{{label}}} {value}"
