"""Enrol a person into the gallery from a video or a live stream: the pipeline's own stages find, track and encode
them, and the chosen track's gait embeddings are stored under NAME.

    python tools/enroll.py --source walk.mp4 --list-tracks               # TRACK_ID FIRST_FRAME LAST_FRAME N_SILHOUETTES
    python tools/enroll.py --name alice --source walk.mp4                 # the only person in the video
    python tools/enroll.py --name bob --source two_people.mp4 --track-id 2
    python tools/enroll.py --name carol --source rtsp://cam/stream --max-seconds 20 --track-id 1
    python tools/enroll.py --source group.mp4 --name dan --track-id 1 --name eve --track-id 4   # several in one pass

The gallery is `--gallery PATH` (or a postgresql:// URL), else the config's `stages.match.gallery`, else
$GAITSTREAM_GALLERY, else ./gallery.sqlite: the same gallery run_pipeline.py reads. Several people are enrolled
from one pass over the video with `--name`/`--track-id` pairs (a live walk is not repeated, and each pass over a file
costs the detector's time again). Exit codes: 0 everyone enrolled (or listed), 1 some of them, 2 nobody.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

from engines.errors import EngineError  # noqa: E402
from engines.gallery import open_gallery, resolve_gallery_path  # noqa: E402
from pipeline.errors import GaitstreamError  # noqa: E402
from pipeline.sequential import run_sequential  # noqa: E402
from stages import load_pipeline_config, stage_registry  # noqa: E402
from stages.tracks import TrackCollector, choose_track  # noqa: E402

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pipeline" / "default.yaml"
ENROL_GRAPH = ["detect_track", "segment", "gait"]


def enrolment_config(config_path: Path, source: str, *, rotate: str | None, overrides: list[str]) -> Any:
    """The pipeline config for detect_track → segment → gait on `source`."""
    from pipeline.config import parse_override

    stream = {"uri": source, **({"rotate": rotate} if rotate else {})}
    config = load_pipeline_config(config_path, [
        *(parse_override(text) for text in overrides),
        (["streams"], [stream]),
        (["graph"], ENROL_GRAPH),
    ])
    if config.stages.gait.encoder is None:
        raise GaitstreamError(f"{config_path}: stages.gait.encoder is not set; enrolment needs a gait encoder")
    return config


def check_gallery(config: Any, gallery_path: Path | str, names: list[str]) -> None:
    """Everything that could refuse the enrolment, checked before the first frame (a live walk is not repeated)."""
    from engines.gait.encoder import open_encoder

    gait = config.stages.gait
    encoder = open_encoder(Path(gait.encoder), backend=gait.backend, device=gait.device, threads=gait.threads)
    gallery = open_gallery(gallery_path)
    try:
        for name in names:
            gallery.check_can_add(name, encoder.name)
    finally:
        gallery.close()


def enrolment_pairs(names: list[str], track_ids: list[int]) -> list[tuple[str, int | None]]:
    """(name, track id) for each person to enrol; one name without --track-id means the video's only walker."""
    if not track_ids and len(names) == 1:
        return [(names[0], None)]
    if len(track_ids) != len(names):
        raise GaitstreamError(f"{len(names)} --name and {len(track_ids)} --track-id: give one track id per name "
                              f"(in the same order) to enrol several people from one video")
    for kind, values in (("name", names), ("track id", track_ids)):
        repeated = sorted({str(v) for v in values if values.count(v) > 1})
        if repeated:
            raise GaitstreamError(f"{kind} given twice: {', '.join(repeated)}")
    return list(zip(names, track_ids, strict=True))


def collect_tracks(config: Any, *, max_seconds: float | None, progress: bool) -> TrackCollector:
    """Run detect_track → segment → gait in this process; every track's summary."""
    collector = TrackCollector()
    run_sequential(config, stage_registry(), on_output=collector, max_seconds=max_seconds, progress=progress)
    return collector


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, help="video file, or rtsp:// / http(s):// URL, or webcam:N")
    parser.add_argument("--name", action="append", default=[],
                        help="identity to add the embeddings to (created if new); repeat with --track-id for several")
    parser.add_argument("--track-id", type=int, action="append", default=[],
                        help="which track to enrol when the video holds several people (one per --name, in order)")
    parser.add_argument("--list-tracks", action="store_true", help="print the tracks found and exit")
    parser.add_argument("--gallery", help="gallery file or postgresql:// URL (default: config, "
                        "$GAITSTREAM_GALLERY, ./gallery.sqlite)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="pipeline YAML (default: %(default)s)")
    parser.add_argument("--rotate", choices=["cw90", "ccw90", "180"], help="rotate the input (camera on its side)")
    parser.add_argument("--max-seconds", type=float, help="stop after this much video (needed for live streams)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a pipeline config value (repeatable)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    args = parser.parse_args(argv)
    if not args.list_tracks and not args.name:
        parser.error("give --name NAME to enrol, or --list-tracks to see who is in the video")
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    live = "://" in args.source or args.source.startswith("webcam:")
    if live and args.max_seconds is None:
        parser.error("a live stream never ends by itself: give --max-seconds")
    enrolled = 0
    try:
        pairs = [] if args.list_tracks else enrolment_pairs(args.name, args.track_id)
        config = enrolment_config(args.config, args.source, rotate=args.rotate, overrides=args.overrides)
        gallery_path = resolve_gallery_path(args.gallery or config.stages.match.gallery)
        with contextlib.redirect_stdout(sys.stderr):  # libraries' chatter must not mix with the track listing
            if not args.list_tracks:
                check_gallery(config, gallery_path, [name for name, _ in pairs])
            collector = collect_tracks(config, max_seconds=args.max_seconds,
                                       progress=not args.quiet and sys.stderr.isatty())
        tracks = collector.in_order()
        if args.list_tracks:
            for track in tracks:
                print(f"{track.track_id} {track.first_frame} {track.last_frame} {track.silhouettes}")
            return 0
        gallery = open_gallery(gallery_path)
        shown = gallery.path  # a URL without its password
        try:
            for name, track_id in pairs:
                try:  # one person's missing track must not cost the others their (perhaps unrepeatable) walk
                    track = choose_track(tracks, track_id, args.source)
                except GaitstreamError as exc:
                    print(f"error: {name} not enrolled: {exc}", file=sys.stderr)
                    continue
                added = gallery.add(name, np.stack(track.embeddings), encoder=collector.encoder,
                                    parts=collector.parts, source=args.source, stream=config.streams[0].id,
                                    track_id=track.track_id, frames=track.silhouettes)
                enrolled += 1
                print(f"enrolled {name}: {added} embeddings from track {track.track_id} (frames {track.first_frame}-"
                      f"{track.last_frame}, {track.silhouettes} silhouettes) of {args.source} into {shown}")
        finally:
            gallery.close()
    except (GaitstreamError, EngineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1 if enrolled else 2
    return 0 if enrolled == len(pairs) else 1 if enrolled else 2


if __name__ == "__main__":
    sys.exit(main())
