"""How many live streams the pipeline keeps up with: N cameras at native frame rate, N = 1, 2, 3, ...

Each camera is the recorded clip played as a live stream (`stages.source.mode: live`, `loop: true`: paced at
the clip's native frame rate, on repeat, one source process per stream, oldest frames dropped when the chain is
behind). For each N the real multi-process pipeline runs (default config, outputs written, no display) until every
stream has opened, `--warmup-s` more, then `--seconds` measured, and is stopped as Ctrl-C would. Per N:

- per stream: frames delivered into the chain per second against the target rate (`fps_ratio`; the native rate, or
  `stages.source.fps_limit` when set lower), frames dropped by the live queue, from the source process's counters
  over the measured window;
- capture-to-sink latency (ms, capture to outputs written): the sink's newest-frame latency, sampled every
  heartbeat (`--sample-s`) over the window, all streams pooled; p50/p95/p99/max;
- queue depth: the most messages any process held unacknowledged on its output edge (bounded by the edge window
  plus one input batch);
- growth: median latency in the last third of the window against the first third; it grows when the increase
  exceeds `--max-latency-growth` of the first third and `GROWTH_FLOOR_MS`.

N is real-time when every stream delivers at least `--min-fps-ratio` of the native rate, latency does not grow, and
no stage restarted. `max_realtime_streams` is the largest such N; the sweep stops at the first N that is not.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import parse_override
from pipeline.metrics import percentiles_ms
from pipeline.supervisor import RunResult, Supervisor
from stages import load_pipeline_config, stage_registry
from stages.source import probe_video

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CLIP = REPO.parent / "shared" / "assets" / "videos" / "aiog_outdoor_AB.mp4"
DEFAULT_CONFIG = REPO / "configs" / "pipeline" / "default.yaml"
GROWTH_FLOOR_MS = 100.0  # latency changes smaller than this are jitter, not growth


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", type=Path, default=DEFAULT_CLIP, help="clip every camera plays (%(default)s)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per N")
    parser.add_argument("--warmup-s", type=float, default=5.0, help="seconds after every stream opened, not measured")
    parser.add_argument("--max-streams", type=int, default=8, help="largest N tried")
    parser.add_argument("--min-fps-ratio", type=float, default=0.9, help="delivered / native fps to count as real time")
    parser.add_argument("--max-latency-growth", type=float, default=0.5,
                        help="last-third median latency may exceed the first third's by this fraction")
    parser.add_argument("--sample-s", type=float, default=0.25, help="heartbeat and sampling interval (seconds)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")


@dataclass(frozen=True)
class Sample:
    """The supervisor's view at one moment: per process, totals over restarts and the newest heartbeat."""

    t_s: float  # since the measured window opened
    counters: dict[str, dict[str, float]]
    heartbeats: dict[str, dict[str, Any]]


def run_for(
    config: Any, *, streams: int, warmup_s: float, seconds: float, sample_s: float,
    on_sample: Callable[[Sample], None] | None = None,
) -> tuple[RunResult, list[Sample]]:
    """Run the pipeline until `streams` streams opened, `warmup_s` more, then sample it every `sample_s` for
    `seconds` (`on_sample` sees each sample as it is taken); then stop it as Ctrl-C would. The supervisor runs here
    (it owns the signal handlers); a thread samples its metrics board. Fewer samples come back when the run ends
    early (a stage failed)."""
    supervisor = Supervisor(config, stage_registry())
    samples: list[Sample] = []
    finished = threading.Event()

    def sample(t_s: float) -> Sample:
        board = supervisor.board
        latest = dict(board.latest)  # the supervisor replaces entries; a copy is a consistent view
        return Sample(t_s, {name: board.counters(name) for name in latest}, latest)

    def measure() -> None:
        while len(supervisor.streams) < streams:
            if finished.wait(0.1):
                return
        if finished.wait(warmup_s):
            return
        started = time.monotonic()
        while True:
            now = time.monotonic() - started
            samples.append(sample(now))
            if on_sample is not None:
                on_sample(samples[-1])
            if now >= seconds or finished.wait(min(sample_s, seconds - now)):
                break
        supervisor.stop()

    thread = threading.Thread(target=measure, name="bench-sampler", daemon=True)
    thread.start()
    try:
        result = supervisor.run()
    finally:
        finished.set()
        thread.join()
    return result, samples


def looped_config(args: argparse.Namespace, streams: list[dict[str, str]], out: Path, mode: str,
                  *extra: tuple[list[str], Any]) -> Any:
    """The pipeline config with `streams` looped in `mode`, one source process each, outputs in `out`."""
    return load_pipeline_config(args.config, [
        *(parse_override(text) for text in args.overrides),
        (["streams"], streams),
        (["stages", "source", "mode"], mode),
        (["stages", "source", "loop"], True),
        (["stages", "source", "parallel_inputs"], len(streams)),
        (["stages", "sink", "out_dir"], str(out)),
        (["stages", "sink", "display"], False),
        (["runtime", "progress"], False),
        *extra,
    ])


def _drops(counters: dict[str, float]) -> float:
    return sum(value for key, value in counters.items() if key.startswith("dropped_total"))


def _sink_latencies(samples: list[Sample]) -> list[tuple[float, float]]:
    """(t_s, newest-frame latency ms) from each distinct sink heartbeat."""
    seen: set[float] = set()
    series = []
    for sample in samples:
        heartbeat = sample.heartbeats.get("sink", {})
        latency = heartbeat.get("gauges", {}).get("newest_frame_latency_ms")
        if latency is not None and heartbeat["uptime_s"] not in seen:
            seen.add(heartbeat["uptime_s"])
            series.append((sample.t_s, float(latency)))
    return series


def measure_n(args: argparse.Namespace, n: int, native_fps: float, out: Path) -> dict[str, Any]:
    streams = [{"uri": str(args.source.resolve()), "id": f"cam{i}"} for i in range(n)]
    config = looped_config(args, streams, out / f"n{n}", "live", (["runtime", "heartbeat_interval_s"], args.sample_s))
    result, samples = run_for(config, streams=n, warmup_s=args.warmup_s, seconds=args.seconds,
                              sample_s=args.sample_s)
    if len(samples) < 2:
        raise RuntimeError(f"the pipeline with {n} streams ended before it could be measured: {result.errors}")
    first, last = samples[0], samples[-1]
    elapsed_s = last.t_s - first.t_s
    per_stream = []
    for i in range(n):
        name = f"source-{i}"
        before, after = first.counters.get(name, {}), last.counters.get(name, {})
        delivered = after.get("frames_out_total", 0) - before.get("frames_out_total", 0)
        dropped = _drops(after) - _drops(before)
        per_stream.append({"stream": f"cam{i}", "delivered_fps": round(delivered / elapsed_s, 2),
                           "fps_ratio": round(delivered / elapsed_s / native_fps, 3), "dropped": int(dropped),
                           "captured_fps": round((delivered + dropped) / elapsed_s, 2)})
    series = _sink_latencies(samples)
    latencies = [value for _, value in series]
    thirds = elapsed_s / 3
    early = [value for t_s, value in series if t_s <= first.t_s + thirds] or [0.0]
    late = [value for t_s, value in series if t_s >= last.t_s - thirds] or [0.0]
    early_ms, late_ms = statistics.median(early), statistics.median(late)
    growing = late_ms - early_ms > max(args.max_latency_growth * early_ms, GROWTH_FLOOR_MS)
    backlog = {name: max(s.heartbeats.get(name, {}).get("gauges", {}).get("backlog", 0) for s in samples)
               for name in last.heartbeats}
    restarts = {name: info["restarts"] for name, info in result.metrics.items() if info["restarts"]}
    keeps_up = all(stream["fps_ratio"] >= args.min_fps_ratio for stream in per_stream)
    entry = {
        "streams": n,
        "measured_s": round(elapsed_s, 1),
        "per_stream": per_stream,
        "min_fps_ratio": min(stream["fps_ratio"] for stream in per_stream),
        "dropped": sum(stream["dropped"] for stream in per_stream),
        "latency_ms": {key: round(value, 1) for key, value in percentiles_ms(latencies).items()},
        "latency_first_third_ms": round(early_ms, 1),
        "latency_last_third_ms": round(late_ms, 1),
        "latency_growing": growing,
        "max_queue_depth": max(backlog.values(), default=0),
        "max_backlog": backlog,
        "restarts": restarts,
        "exit_code": result.exit_code,
        "cpu_percent": {name: round(statistics.mean(s.heartbeats[name]["cpu_percent"] for s in samples
                                                    if name in s.heartbeats)) for name in last.heartbeats},
        "realtime": keeps_up and not growing and not restarts and result.exit_code == 0,
    }
    log.info("%d stream(s): min fps ratio %.2f, latency p50 %.0f ms (first third %.0f, last %.0f), realtime=%s",
             n, entry["min_fps_ratio"], entry["latency_ms"]["p50"], early_ms, late_ms, entry["realtime"])
    return entry


def run(args: argparse.Namespace) -> dict:
    _, native_fps = probe_video(str(args.source))
    probe_config = looped_config(args, [{"uri": str(args.source), "id": "cam0"}], Path("."), "live")
    fps_limit = probe_config.stages.source.fps_limit
    target_fps = min(native_fps, fps_limit or native_fps)  # a camera capped by stages.source.fps_limit
    per_n = []
    with tempfile.TemporaryDirectory(prefix="gaitstream-bench-streams-") as tmp:
        for n in range(1, args.max_streams + 1):
            per_n.append(measure_n(args, n, target_fps, Path(tmp)))
            if not per_n[-1]["realtime"]:
                break
    realtime = [entry["streams"] for entry in per_n if entry["realtime"]]
    return {
        "clip": str(args.source), "native_fps": round(native_fps, 2), "target_fps": round(target_fps, 2),
        "mode": "live: the clip looped at its native rate, one source process per stream",
        "seconds_per_n": args.seconds, "warmup_s": args.warmup_s, "min_fps_ratio": args.min_fps_ratio,
        "per_n": per_n,
        "max_realtime_streams": max(realtime, default=0),
    }
