"""The multi-process pipeline against the same stages run one after the other in one process, on a recorded clip.

Both runs use the same config (the default: YOLO11n-seg int8 + ByteTrack, silhouettes, gait encoder, matcher,
annotated video and events written) and the same frames: the clip `--repeat` times, one after the other on the same
machine. The sequential run reads the copies one after the other, one frame at a time; the pipeline reads them as
concurrent streams (one source process each), as it would several cameras, so its heavy stages batch frames across
streams. Throughput counts processing only (first frame read to last frame out of the sink; model loading
excluded) for both. `stage_fps` is each stage's own compute time per frame in the sequential runs, i.e. the stage
alone, so the bottleneck is known. Latency is capture to event (the sink), per frame. `--runs` pairs of runs are
made and medians reported, since one run on a shared 2-core machine varies by several percent.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np

from pipeline.sequential import run_sequential
from pipeline.supervisor import Supervisor
from stages import load_pipeline_config, stage_registry

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CLIP = REPO.parent / "shared" / "assets" / "videos" / "aiog_outdoor_AB.mp4"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", type=Path, default=DEFAULT_CLIP, help="recorded clip (default: %(default)s)")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "pipeline" / "default.yaml")
    parser.add_argument("--repeat", type=int, default=2, help="the clip is processed this many times per run")
    parser.add_argument("--runs", type=int, default=3, help="pairs of runs (sequential, pipeline); medians reported")
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
        (["stages", "source", "fps_limit"], None),  # throughput over every frame; the rate cap is `streams`' business
        (["stages", "source", "parallel_inputs"], args.repeat),
        (["runtime", "progress"], False),
    ])


def _percentiles(latency: dict) -> dict:
    return {key: round(float(latency[key]), 1) for key in ("p50", "p95", "p99")} if latency else {}


def _one_run(args: argparse.Namespace, stages: dict) -> dict:
    """One sequential run, then one pipeline run, of the same frames."""
    with tempfile.TemporaryDirectory(prefix="gaitstream-bench-") as tmp:
        sequential = run_sequential(_config(args, Path(tmp) / "sequential"), stages)
        result = Supervisor(_config(args, Path(tmp) / "pipeline"), stages).run()
    if result.exit_code != 0:
        raise RuntimeError(f"the pipeline run failed: {result.errors}")
    streams = result.streams.values()
    # Concurrent streams: from the first frame read of any to the last frame out of the sink of all.
    pipeline_s = max(info["finished_at_s"] for info in streams) - min(info["opened_at_s"] for info in streams)
    pipeline_frames = sum(info["frames"] for info in streams)
    pipeline_fps = pipeline_frames / pipeline_s
    sequential_fps = sum(sequential.frames.values()) / sum(sequential.stage_seconds.values())
    return {"pipeline_fps": round(pipeline_fps, 2), "sequential_fps": round(sequential_fps, 2),
            "pipeline_vs_sequential": round(pipeline_fps / sequential_fps, 2),
            "frames": pipeline_frames,
            "_sequential": sequential, "_processes": result.to_json()["processes"]}


def run(args: argparse.Namespace) -> dict:
    """`--runs` pairs of runs; the headline numbers are medians (a shared machine is noisy), every run is listed."""
    stages = stage_registry()
    runs = []
    for index in range(args.runs):
        runs.append(_one_run(args, stages))
        log.info("run %d/%d: pipeline %.2f fps, sequential %.2f fps (%.2fx)", index + 1, args.runs,
                 runs[-1]["pipeline_fps"], runs[-1]["sequential_fps"], runs[-1]["pipeline_vs_sequential"])
    median = sorted(runs, key=lambda r: r["pipeline_vs_sequential"])[len(runs) // 2]
    stage_seconds: dict[str, float] = {}
    for r in runs:
        for name, seconds in r["_sequential"].stage_seconds.items():
            stage_seconds[name] = stage_seconds.get(name, 0.0) + seconds
    frames = sum(sum(r["_sequential"].frames.values()) for r in runs)
    stage_fps = {name: round(frames / seconds, 1) for name, seconds in stage_seconds.items() if seconds}
    slowest = min(stage_fps, key=stage_fps.get)
    pipeline_fps = float(np.median([r["pipeline_fps"] for r in runs]))
    processes = median["_processes"]
    return {
        "clip": str(args.source), "frames": median["frames"], "runs": args.runs,
        "pipeline_fps": round(pipeline_fps, 2),
        "sequential_fps": round(float(np.median([r["sequential_fps"] for r in runs])), 2),
        "stage_fps": stage_fps,
        "slowest_stage": slowest,
        "pipeline_vs_slowest_stage": round(pipeline_fps / stage_fps[slowest], 2),
        "pipeline_vs_sequential": median["pipeline_vs_sequential"],
        "per_run": [{k: v for k, v in r.items() if not k.startswith("_")} for r in runs],
        # The rest from the run with the median speed-up.
        "latency_ms": _percentiles(processes.get("sink", {}).get("latency_ms", {}).get("latency_since_capture", {})),
        "stage_latency_ms": {name: _percentiles(info.get("latency_ms", {}).get("process", {}))
                             for name, info in processes.items()},
        "processes": {name: {"cpu_s": round(info.get("cpu_s", 0.0), 1), "rss_mb": round(info.get("rss_mb", 0), 1)}
                      for name, info in processes.items()},
        "drops": {name: {k: v for k, v in info.get("counters", {}).items() if "drop" in k}
                  for name, info in processes.items()},
    }
