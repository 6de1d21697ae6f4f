"""The multi-process pipeline against the same stages run one after the other in one process, on a recorded clip.

Both runs use the same config (the default: YOLO11n-seg int8 + ByteTrack, silhouettes, gait encoder, matcher,
annotated video and events written), the same clip, one after the other on the same machine. Throughput counts
processing only (first frame read to last frame out of the sink; model loading excluded) for both. `stage_fps` is
each stage's own compute time per frame in the sequential run, i.e. the stage alone, so the bottleneck is known.
Latency is capture to event (the sink), per frame, from the pipeline run.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from pipeline.sequential import run_sequential
from pipeline.supervisor import Supervisor
from stages import load_pipeline_config, stage_registry

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CLIP = REPO.parent / "shared" / "assets" / "videos" / "aiog_outdoor_AB.mp4"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", type=Path, default=DEFAULT_CLIP, help="recorded clip (default: %(default)s)")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "pipeline" / "default.yaml")
    parser.add_argument("--repeat", type=int, default=2, help="the clip is processed this many times per run")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")


def _config(args: argparse.Namespace, out: Path):
    from pipeline.config import parse_override

    streams = [{"uri": str(args.source.resolve()), "id": f"{args.source.stem}-{i}"} for i in range(args.repeat)]
    return load_pipeline_config(args.config, [
        *(parse_override(text) for text in args.overrides),
        (["streams"], streams),
        (["stages", "sink", "out_dir"], str(out)),
        (["stages", "sink", "display"], False),
        (["stages", "source", "mode"], "batch"),
        (["runtime", "progress"], False),
    ])


def _percentiles(latency: dict) -> dict:
    return {key: round(float(latency[key]), 1) for key in ("p50", "p95", "p99")} if latency else {}


def run(args: argparse.Namespace) -> dict:
    stages = stage_registry()
    with tempfile.TemporaryDirectory(prefix="gaitstream-bench-") as tmp:
        sequential = run_sequential(_config(args, Path(tmp) / "sequential"), stages)
        frames = sum(sequential.frames.values())
        processing_s = sum(sequential.stage_seconds.values())
        result = Supervisor(_config(args, Path(tmp) / "pipeline"), stages).run()
    if result.exit_code != 0:
        raise RuntimeError(f"the pipeline run failed: {result.errors}")
    pipeline_frames = sum(info["frames"] for info in result.streams.values())
    # Streams run one after the other through the same processes: their processing spans add up.
    pipeline_s = sum(info["processing_s"] for info in result.streams.values())
    stage_fps = {name: round(frames / seconds, 1) for name, seconds in sequential.stage_seconds.items() if seconds}
    slowest = min(stage_fps, key=stage_fps.get)
    pipeline_fps = pipeline_frames / pipeline_s
    sequential_fps = frames / processing_s
    processes = result.to_json()["processes"]
    return {
        "clip": str(args.source), "frames": pipeline_frames,
        "pipeline_fps": round(pipeline_fps, 2),
        "sequential_fps": round(sequential_fps, 2),
        "stage_fps": stage_fps,
        "slowest_stage": slowest,
        "pipeline_vs_slowest_stage": round(pipeline_fps / stage_fps[slowest], 2),
        "pipeline_vs_sequential": round(pipeline_fps / sequential_fps, 2),
        "latency_ms": _percentiles(processes.get("sink", {}).get("latency_ms", {}).get("latency_since_capture", {})),
        "stage_latency_ms": {name: _percentiles(info.get("latency_ms", {}).get("process", {}))
                             for name, info in processes.items()},
        "processes": {name: {"cpu_percent": info.get("cpu_percent"), "rss_mb": round(info.get("rss_mb", 0), 1)}
                      for name, info in processes.items()},
        "drops": {name: {k: v for k, v in info.get("counters", {}).items() if "drop" in k}
                  for name, info in processes.items()},
    }
