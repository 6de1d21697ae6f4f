#!/usr/bin/env python3
"""Run the gaitstream pipeline on live cameras or recorded footage.

  python run_pipeline.py --rtsp rtsp://camera/stream
  python run_pipeline.py --source footage/ --out results/ --no-display
  python run_pipeline.py --config configs/pipeline/multi_camera.yaml
  python run_pipeline.py --node deploy/node-a.yaml      # one host of a site (= gaitstream node deploy/node-a.yaml)

Exit codes: 0 everything processed (or stopped by the user), 1 some inputs failed or a stage gave up while
others were processed, 2 nothing could be done (bad input, bad config, missing weights).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

# FFmpeg's and OpenCV's own console chatter ("moov atom not found") would bury our one-line errors; the source
# stage reports every failure itself. Set before cv2 is imported; stage processes inherit it.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

from engines.errors import EngineError
from pipeline.config import ConfigError, dump_config, parse_override
from pipeline.errors import GaitstreamError
from pipeline.logs import setup_logging
from pipeline.supervisor import Supervisor
from stages import load_pipeline_config, stage_registry
from stages.source import expand_sources, probe_video

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "pipeline" / "default.yaml"
log = logging.getLogger("run_pipeline")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    inputs = parser.add_mutually_exclusive_group()
    inputs.add_argument("--source", nargs="+", metavar="PATH", help="video files, folders or glob patterns (batch)")
    inputs.add_argument("--rtsp", nargs="+", metavar="URL", help="RTSP (or HTTP) camera streams (live)")
    inputs.add_argument("--webcam", nargs="+", type=int, metavar="N", help="local cameras by index (live)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="pipeline YAML (default: %(default)s)")
    parser.add_argument("--node", type=Path, metavar="CONFIG",
                        help="run as one host of a site: a pipeline YAML with a node: section; its streams are this "
                             "host's cameras, or with node.leases the candidates it reads while it holds their lease")
    parser.add_argument("--out", type=Path, help="folder for annotated videos, events and silhouettes")
    parser.add_argument("--no-display", action="store_true", help="do not open the overlay window")
    parser.add_argument("--save-silhouettes", action="store_true", help="write each track's silhouettes (OpenGait pkl)")
    parser.add_argument("--gallery", help="gallery file or postgresql:// URL (default: config, $GAITSTREAM_GALLERY, "
                        "./gallery.sqlite)")
    parser.add_argument("--rotate", choices=["cw90", "ccw90", "180"], help="rotate every input (cameras on their side)")
    parser.add_argument("--events-endpoint", metavar="ADDR", help="publish events on this ZeroMQ PUB address")
    parser.add_argument("--metrics-port", type=int, metavar="PORT", help="serve Prometheus metrics on 127.0.0.1:PORT")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set stages.gait.window_frames=40 (repeatable)")
    parser.add_argument("--only", metavar="STAGES", help="run only these stages here (comma-separated; multi-host)")
    parser.add_argument("--print-config", action="store_true", help="print the merged, validated config and exit")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser.parse_args(argv)


def cli_overrides(args: argparse.Namespace) -> list[tuple[list[str], object]]:
    """Command-line flags as config overrides, only for the flags given: an absent flag leaves the config's value
    (paths made absolute: they are relative to where you typed them)."""
    overrides = [parse_override(text) for text in args.overrides]
    streams = None
    if args.source:
        streams = [s.model_dump(exclude_none=True) for s in expand_sources(args.source)]
    elif args.rtsp:
        streams = [{"uri": url} for url in args.rtsp]
    elif args.webcam:
        streams = [{"uri": f"webcam:{index}"} for index in args.webcam]
    if streams is not None:
        if args.rotate:
            streams = [{**s, "rotate": args.rotate} for s in streams]
        overrides.append((["streams"], streams))
    flags = {
        "stages.sink.out_dir": str(args.out.absolute()) if args.out else None,
        "stages.sink.display": False if args.no_display else None,
        "stages.sink.save_silhouettes": True if args.save_silhouettes else None,
        "stages.match.gallery": command_line_gallery(args.gallery),
        "stages.sink.events_endpoint": args.events_endpoint,
        "runtime.metrics_port": args.metrics_port,
        "runtime.log_level": args.log_level,
    }
    overrides += [(key.split("."), value) for key, value in flags.items() if value is not None]
    return overrides


def command_line_gallery(value: str | None) -> str | None:
    """A --gallery value for the config: a file relative to where it was typed, a database URL as it is."""
    from engines.gallery import is_postgres_url

    if value is None or is_postgres_url(value):
        return value
    return str(Path(value).expanduser().absolute())


def node_defaults(config) -> list[tuple[list[str], object]]:
    """A node's names and broker for its events, where the sink's own settings are left at their defaults."""
    from stages.sinks import SinkConfig

    node, sink, default = config.node, config.stages.sink, SinkConfig()
    values = {"site": node.site, "host": node.host, "nats_url": node.nats_url,
              "nats_credentials": str(node.nats_credentials) if node.nats_credentials else None,
              "nats_ca": str(node.nats_ca) if node.nats_ca else None}
    return [(["stages", "sink", key], value) for key, value in values.items()
            if value is not None and getattr(sink, key) == getattr(default, key)]


def load_node_config(path: Path, overrides: list[tuple[list[str], object]]):
    """A node's config: its sources live (it reads cameras), its events to its broker by default."""
    overrides = [(["stages", "source", "mode"], "live"), *overrides]
    config = load_pipeline_config(path, overrides)
    if config.node is None:
        raise ConfigError(f"{path}: --node needs a node: section (site, host, nats_url, leases)")
    if not config.streams:
        raise ConfigError(f"{path}: a node needs its cameras (or lease candidates) in streams:")
    return load_pipeline_config(path, [*node_defaults(config), *overrides])


def run_node_config(config):
    """Run a node until stopped, holding leases on its cameras when it has `node.leases`."""
    from pipeline.node import run_node

    leases = None
    if config.node.leases is not None:
        from engines.leases import CameraLeases, lease_bucket

        settings = config.node.leases
        leases = CameraLeases(config.node.nats_url, host=config.node.host, bucket=lease_bucket(config.node.site),
                              cameras=[stream.id for stream in config.streams], ttl_s=settings.ttl_s,
                              renew_interval_s=settings.renew_interval_s, max_cameras=settings.max_cameras,
                              credentials=config.node.nats_credentials, ca=config.node.nats_ca)
    return run_node(config, stage_registry(), leases)


def drop_unreadable(config):
    """Probe recorded files up front: unreadable ones are reported and skipped; none readable is an error."""
    from stages.source import VideoSourceStage

    kept, skipped = [], {}
    for stream in config.streams:
        if VideoSourceStage.is_live(stream):
            kept.append(stream)
            continue
        try:
            probe_video(stream.uri)
            kept.append(stream)
        except GaitstreamError as exc:
            skipped[stream.uri] = str(exc)
    if not kept:
        detail = next(iter(skipped.values())) if len(skipped) == 1 else f"none of {len(skipped)} inputs is readable"
        raise GaitstreamError(detail)
    for why in skipped.values():
        print(f"skipped: {why}", file=sys.stderr)
    return config.model_copy(update={"streams": kept}), skipped


def print_summary(result, out: Path | None) -> None:
    for stream, info in sorted(result.streams.items()):
        state = "ok" if info.get("end_reason") == "end" else info.get("end_reason") or info.get("lost") or "incomplete"
        detail = f" ({info['detail']})" if info.get("detail") and state != "ok" else ""
        print(f"{stream}: {info.get('frames', 0)} frames, {state}{detail}", file=sys.stderr)
    for uri, why in result.skipped.items():  # when nothing could be done, the reason is the error
        print(f"error: {why}" if result.exit_code == 2 else f"skipped {uri}: {why}", file=sys.stderr)
    for error in result.errors:
        print(f"error: {error}", file=sys.stderr)
    if (hint := rotation_hint(result.metrics)) is not None:
        print(f"hint: {hint}", file=sys.stderr)
    if out is not None:
        print(f"outputs in {out}", file=sys.stderr)


def rotation_hint(metrics: dict) -> str | None:
    """A camera on its side shows people lying down: their masks are wider than tall and are all rejected."""
    counters = metrics.get("segment", {}).get("counters", {})
    wide = int(counters.get('silhouettes_rejected_total{reason="wide"}', 0))
    kept = int(counters.get("silhouettes_total", 0))
    if wide >= 10 and wide > 2 * kept:
        return (f"{wide} person masks were wider than tall and only {kept} became silhouettes: if the camera is on "
                f"its side, run again with --rotate cw90 (or ccw90)")
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging("supervisor", args.log_level or "INFO")
    stages = stage_registry()
    try:
        if args.node is not None:
            if args.only:
                raise ConfigError("--node runs the whole pipeline of this host: no --only with it")
            config = load_node_config(args.node, cli_overrides(args))
            if args.print_config:
                print(dump_config(config), end="")
                return 0
            result = run_node_config(config)
            print_summary(result, None)
            return result.exit_code
        config = load_pipeline_config(args.config, cli_overrides(args))
        if args.print_config:
            print(dump_config(config), end="")
            return 0
        if not config.streams:
            raise ConfigError("nothing to read: give --source, --rtsp or --webcam, or streams: in the config")
        config, skipped = drop_unreadable(config)
        only = set(args.only.split(",")) if args.only else None
        result = Supervisor(config, stages, only=only).run()
    except (GaitstreamError, EngineError) as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 2
    result.skipped.update(skipped)
    if result.exit_code == 0 and skipped:
        result.exit_code = 1
    out = config.stages.sink.out_dir
    if out is not None:
        try:
            out.mkdir(parents=True, exist_ok=True)  # a run that failed early has not made it yet
            (out / "summary.json").write_text(json.dumps(result.to_json(), indent=2, default=str))
        except OSError as exc:
            print(f"error: cannot write {out / 'summary.json'}: {exc.strerror or exc}", file=sys.stderr)
            result.exit_code = result.exit_code or 2
    made = out is not None and out.is_dir() and any(p.name != "summary.json" for p in out.iterdir())
    print_summary(result, out if made else None)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
