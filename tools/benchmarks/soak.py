"""Memory over a long run: every process's RSS while the pipeline plays a clip on repeat for `--minutes`.

The clip loops as a live camera by default (`--mode live`: native frame rate, oldest frames dropped when behind,
as deployed); `--mode batch` feeds it as fast as the pipeline takes it (more frames per minute, nothing dropped).
The real multi-process pipeline runs with the default config (outputs written to a temporary folder, no display)
until it is stopped after `--minutes`. Every `--sample-s` the RSS of each stage process (from its heartbeat) and of
the supervisor (this process) is recorded. Per process: RSS once warmed up (the first sample after `--warmup-s`,
at most a third of the run), at the end, the peak, and the growth in percent from warmed-up to end; for stages that
hold per-track state, the most tracks held and how often that state emptied during the window
(`live_tracks_emptied_total`: between walks it must return to zero, or the stage is keeping state it should drop).
The run is `steady` when no process grew more than `--max-growth-percent`, none was restarted (a restart would hide
a leak) and every stage's per-track state emptied.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path
from typing import Any

import psutil

from benchmarks.streams import DEFAULT_CLIP, DEFAULT_CONFIG, Sample, looped_config, run_for

log = logging.getLogger(__name__)

SUPERVISOR = "supervisor"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", type=Path, default=DEFAULT_CLIP, help="clip played on repeat (%(default)s)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the run after start-up")
    parser.add_argument("--mode", choices=["live", "batch"], default="live", help="how the looped clip is fed")
    parser.add_argument("--warmup-s", type=float, default=60.0,
                        help="RSS growth is measured from this many seconds in (at most a third of the run)")
    parser.add_argument("--sample-s", type=float, default=5.0, help="RSS sampling interval (seconds)")
    parser.add_argument("--max-growth-percent", type=float, default=5.0, help="largest growth still steady")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")


def _rss_series(samples: list[Sample], supervisor_mb: list[float]) -> dict[str, list[tuple[float, float]]]:
    """Process -> [(t_s, RSS MiB)], one point per sample in which the process had a heartbeat."""
    series: dict[str, list[tuple[float, float]]] = {}
    for sample, own_mb in zip(samples, supervisor_mb):
        for name, heartbeat in sample.heartbeats.items():
            series.setdefault(name, []).append((sample.t_s, float(heartbeat["rss_mb"])))
        series.setdefault(SUPERVISOR, []).append((sample.t_s, own_mb))
    return series


def _increase(first: Sample, last: Sample, process: str, counter: str) -> float:
    """How much a process's counters named `counter` (any labels) grew from `first` to `last`."""
    def total(sample: Sample) -> float:
        counters = sample.counters.get(process, {})
        return sum(value for key, value in counters.items() if key.split("{")[0] == counter)

    return total(last) - total(first)


def run(args: argparse.Namespace) -> dict[str, Any]:
    seconds = args.minutes * 60
    warmup_s = min(args.warmup_s, seconds / 3)
    supervisor_mb: list[float] = []
    me = psutil.Process()

    def sample_supervisor(_: Sample) -> None:
        supervisor_mb.append(me.memory_info().rss / 2**20)

    with tempfile.TemporaryDirectory(prefix="gaitstream-bench-soak-") as tmp:
        config = looped_config(args, [{"uri": str(args.source.resolve()), "id": "soak"}], Path(tmp), args.mode)
        result, samples = run_for(config, streams=1, warmup_s=0.0, seconds=seconds, sample_s=args.sample_s,
                                  on_sample=sample_supervisor)
    if len(samples) < 3:
        raise RuntimeError(f"the soak run ended before it could be measured: {result.errors}")
    processes = {}
    for name, points in sorted(_rss_series(samples, supervisor_mb).items()):
        warm = next((mb for t_s, mb in points if t_s >= warmup_s), points[-1][1])
        end = points[-1][1]
        processes[name] = {
            "rss_mb_warm": round(warm, 1), "rss_mb_end": round(end, 1),
            "rss_mb_peak": round(max(mb for _, mb in points), 1),
            "growth_percent": round((end - warm) / warm * 100, 2),
            "restarts": result.metrics.get(name, {}).get("restarts", 0),
            "rss_mb_series": [[round(t_s), round(mb, 1)] for t_s, mb in points],
        }
        if any("live_tracks" in s.heartbeats.get(name, {}).get("gauges", {}) for s in samples):
            processes[name]["live_tracks_max"] = max(
                s.heartbeats.get(name, {}).get("gauges", {}).get("live_tracks", 0) for s in samples)
            processes[name]["live_tracks_emptied"] = int(_increase(samples[0], samples[-1], name,
                                                                   "live_tracks_emptied_total"))
    max_growth = max(info["growth_percent"] for info in processes.values())
    restarted = any(info["restarts"] for info in processes.values())
    state_emptied = all(info.get("live_tracks_emptied", 1) > 0 for info in processes.values())
    first, last = samples[0], samples[-1]
    elapsed_s = last.t_s - first.t_s
    frames = _increase(first, last, "sink", "frames_in_total")
    dropped = _increase(first, last, "source-0", "dropped_total")
    log.info("soak: %.0f s, %d frames, largest RSS growth %.1f%%", elapsed_s, frames, max_growth)
    return {
        "clip": str(args.source), "mode": args.mode, "minutes": args.minutes, "warmup_s": warmup_s,
        "sample_s": args.sample_s, "measured_s": round(elapsed_s, 1),
        "frames": int(frames), "fps": round(frames / elapsed_s, 2), "dropped": int(dropped),
        "exit_code": result.exit_code,
        "processes": processes,
        "max_growth_percent": max_growth,
        "state_emptied": state_emptied,
        "steady": max_growth <= args.max_growth_percent and not restarted and result.exit_code == 0 and state_emptied,
    }
