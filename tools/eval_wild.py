"""Cross-scene benchmark: enrol and identify real people through the pipeline's own stages, clip by clip.

    python tools/eval_wild.py --manifest ../shared/assets/datasets/kth-walking/manifest.csv --json runs/wild/kth.json
    python tools/eval_wild.py --manifest ../shared/assets/videos/manifest.csv --set stages.match.margin_ratio=1

Every clip of the manifest (`clip,role,scene,people`, see `engines.wild`) runs through the configured stages in
batch (lossless) mode. A fresh gallery is enrolled from the gallery clips exactly as `tools/enroll.py` enrols (every
gait window of the person's track), then every probe clip goes on through the match stage as in a live run; a
track's final label and candidates are its answer. Tracks map to people by order of first appearance among tracks
with at least one gait window (single-person clips: the track with the most silhouettes).

Reported per scene and overall: Rank-1/Rank-5 of the enrolled probe people (from their track's final candidates),
final outcomes (right / wrong / unknown; for people not enrolled: unknown / false accept), per-window Rank-1,
genuine and impostor distances at track and window level, and the threshold that would give --far false accepts
on this data. The detector's output is cached per clip content and detector settings under --cache (the detector is
~90 % of the cost; everything after it, detect_track's own logic included, runs again), so a rerun with another
encoder, segmenter or matcher setting takes a minute, an interrupted run resumes, and a copied clip still hits.
Exit codes: 0 done, 2 bad input.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

from tqdm import tqdm  # noqa: E402

from engines.detect import Detections  # noqa: E402
from engines.errors import EngineError  # noqa: E402
from engines.gallery import GalleryStore  # noqa: E402
from engines.matching import GalleryIndex  # noqa: E402
from engines.reports import write_report  # noqa: E402
from engines.wild import ManifestClip, ProbeAnswer, WalkDump, format_scores, read_manifest, score_by_scene  # noqa: E402
from pipeline.config import parse_override  # noqa: E402
from pipeline.errors import GaitstreamError  # noqa: E402
from pipeline.messages import DataMessage, EndOfStream  # noqa: E402
from pipeline.sequential import StageChain, read_stream, stage_context  # noqa: E402
from stages import load_pipeline_config, stage_registry  # noqa: E402
from stages.detect_track import DetectTrackStage  # noqa: E402
from stages.tracks import TrackCollector, assign_people  # noqa: E402

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pipeline" / "default.yaml"
DEFAULT_CACHE = Path(__file__).resolve().parents[1] / "runs" / "eval_wild_cache"
CACHE_VERSION = 2  # bump when the detector's output for the same settings changes
log = logging.getLogger("eval_wild")


class DetectionCache:
    """The detector's own output per clip (boxes, tracker ids, scores, label maps), keyed by clip and detector
    settings. What detect_track does with it (stitching, track ends) runs again on every replay, so changing that
    logic needs no new detections. One compressed npz per clip, written atomically."""

    def __init__(self, folder: Path | None, config: Any) -> None:
        self.folder = folder
        settings = {"source": config.stages.source.model_dump(mode="json"),
                    "detector": config.stages.detect_track.detector.model_dump(mode="json"),
                    "threads": config.stages.detect_track.threads,
                    "track_lifetime_s": config.stages.detect_track.track_lifetime_s, "version": CACHE_VERSION}
        self._settings = json.dumps(settings, sort_keys=True)

    def path(self, clip: Path) -> Path | None:
        """Keyed by the clip's bytes, not its path or time stamp: a copied, moved or re-checked-out clip still hits
        (hashing reads the file once, a small fraction of what detecting it costs)."""
        if self.folder is None:
            return None
        digest = hashlib.sha256(self._settings.encode())
        with clip.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        return self.folder / f"{clip.stem}-{digest.hexdigest()[:16]}.npz"

    @staticmethod
    def save(path: Path, frames: list[Detections]) -> None:
        arrays = {
            "counts": np.asarray([len(d) for d in frames], np.int64),
            "boxes": np.concatenate([d.boxes_xyxy_px for d in frames] or [np.zeros((0, 4))]).astype(np.float32),
            "ids": np.concatenate([d.track_ids for d in frames] or [np.zeros(0)]).astype(np.int64),
            "scores": np.concatenate([d.scores for d in frames] or [np.zeros(0)]).astype(np.float32),
        }
        if frames and all(d.label_map is not None for d in frames):
            arrays["label_maps"] = np.stack([d.label_map for d in frames])  # type: ignore[misc]
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
            np.savez_compressed(handle, **arrays)
        os.replace(handle.name, path)

    @staticmethod
    def load(path: Path) -> list[Detections]:
        with np.load(path) as data:
            starts = np.concatenate([[0], np.cumsum(data["counts"])])
            maps = data["label_maps"] if "label_maps" in data.files else None
            return [Detections(data["boxes"][a:b], data["ids"][a:b], data["scores"][a:b],
                               None if maps is None else maps[i])
                    for i, (a, b) in enumerate(zip(starts[:-1], starts[1:]))]


class CachingTracker:
    """A `MultiStreamTracker` that replays a clip's cached detections, or runs the real detector (opened on first
    need) and records them for next time; `begin` names the clip of a stream before its first frame."""

    def __init__(self, open_real: Callable[[], Any], cache: DetectionCache) -> None:
        self.open_real = open_real
        self.cache = cache
        self.real: Any = None
        self.backend = "cached"
        self.replay: dict[str, list[Detections]] = {}
        self.recording: dict[str, tuple[Path | None, list[Detections]]] = {}

    def begin(self, stream_id: str, clip: Path) -> None:
        path = self.cache.path(clip)
        if path is not None and path.is_file():
            self.replay[stream_id] = DetectionCache.load(path)[::-1]  # popped from the end
        else:
            self.recording[stream_id] = (path, [])

    def update(self, frames: Any) -> list[Detections]:
        out: list[Detections | None] = [None] * len(frames)
        live = [i for i, frame in enumerate(frames) if frame.stream_id not in self.replay]
        for i, frame in enumerate(frames):
            if frame.stream_id in self.replay:
                out[i] = self.replay[frame.stream_id].pop()
        if live:
            if self.real is None:
                self.real = self.open_real()
            for i, found in zip(live, self.real.update([frames[i] for i in live])):
                out[i] = found
                self.recording[frames[i].stream_id][1].append(found)
        return out  # type: ignore[return-value]

    def end_stream(self, stream_id: str) -> None:
        self.replay.pop(stream_id, None)
        path, recorded = self.recording.pop(stream_id, (None, []))
        if self.real is not None:
            self.real.end_stream(stream_id)
        if path is not None:
            DetectionCache.save(path, recorded)


class CachedDetectTrack(DetectTrackStage):
    """detect_track exactly as the pipeline runs it, over a `CachingTracker`."""

    cache: DetectionCache

    def open_tracker(self, settings: Any) -> Any:
        return CachingTracker(lambda: DetectTrackStage.open_tracker(self, settings), self.cache)


class WildRun:
    """The stages opened once for the whole manifest, and the per-clip plumbing between them."""

    def __init__(self, config: Any, cache: DetectionCache, chunk: int) -> None:
        registry = stage_registry()
        CachedDetectTrack.cache = cache
        self.registry = {**registry, "detect_track": CachedDetectTrack}
        self.config = config
        self.chunk = chunk
        self.source = registry["source"](config.stages.source, stage_context("source"))
        self.stack = contextlib.ExitStack()

    def __enter__(self) -> WildRun:
        self.embed = self.stack.enter_context(StageChain(self.config, self.registry,
                                                         ["detect_track", "segment", "gait"]))
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stack.close()

    def open_matcher(self) -> StageChain:
        return self.stack.enter_context(StageChain(self.config, self.registry, ["match"]))

    def open_sink(self) -> StageChain:
        """The sink as configured (for --save-silhouettes: each track's silhouettes as the pipeline saves them)."""
        return self.stack.enter_context(StageChain(self.config, self.registry, ["sink"]))

    def run_clip(self, clip: ManifestClip, chain: list[StageChain],
                 sinks: Sequence[StageChain] = ()) -> TrackCollector:
        """Every frame of `clip` through the chains (lossless batch mode), `chunk` frames at a time; their output is
        collected per track and also handed to `sinks`."""
        spec = next(s for s in self.config.streams if Path(s.uri) == clip.path)
        self.embed.stages[0].tracker.begin(spec.id, clip.path)  # type: ignore[attr-defined]
        collector = TrackCollector()
        pending: list[DataMessage] = []
        for message in read_stream(self.source, spec):
            pending.append(message)
            if len(pending) < self.chunk and not isinstance(message, EndOfStream):
                continue
            messages, pending = pending, []
            for stages in chain:
                messages = stages.push(messages)
            for output in messages:
                collector(output)
            for sink in sinks:
                sink.push(messages)
        return collector


def load_config(args: argparse.Namespace, clips: list[ManifestClip], gallery: Path, identities: int) -> Any:
    """The pipeline config with the user's overrides, every clip a stream, a fresh gallery, full candidate lists."""
    overrides = [parse_override(text) for text in args.overrides]
    streams = [{"uri": str(c.path), "id": f"{c.path.stem}-{i}"} for i, c in enumerate(clips)]
    config = load_pipeline_config(args.config, [*overrides, (["streams"], streams)])
    # A scene is one camera: its clips share the per-camera statistics of stages.match.centring.
    cameras = {spec["id"]: clip.scene for spec, clip in zip(streams, clips)}
    centring = config.stages.match.centring.model_copy(update={"cameras": cameras})
    match = config.stages.match.model_copy(update={"gallery": gallery, "top_k": max(5, identities),
                                                   "auto_enroll": False, "centring": centring})
    source = config.stages.source.model_copy(update={"mode": "batch", "loop": False})
    sink = config.stages.sink.model_copy(update={
        "out_dir": args.save_silhouettes, "save_silhouettes": True, "write_video": False, "write_events": False,
        "display": False, "events_endpoint": None})
    stages = config.stages.model_copy(update={"match": match, "source": source, "sink": sink})
    return config.model_copy(update={"stages": stages})


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    clips = read_manifest(args.manifest)
    gallery_clips = [c for c in clips if c.role == "gallery"]
    probe_clips = [c for c in clips if c.role == "probe"]
    if not gallery_clips or not probe_clips:
        raise GaitstreamError(f"{args.manifest}: needs both gallery and probe clips")
    names = sorted({p for c in gallery_clips for p in c.people})
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gaitstream-wild-") as tmp:
        gallery_path = Path(tmp) / "gallery.sqlite"
        config = load_config(args, clips, gallery_path, len(names))
        if config.stages.gait.encoder is None:
            raise GaitstreamError("stages.gait.encoder is not set: the benchmark needs a gait encoder")
        cache = DetectionCache(None if args.no_cache else args.cache, config)
        enrolled: dict[str, int] = {}
        clip_reports: list[dict[str, Any]] = []
        answers: list[ProbeAnswer] = []
        walks = WalkDump()
        quiet = args.no_progress or not sys.stderr.isatty()
        with WildRun(config, cache, args.chunk) as run, \
                tqdm(total=len(clips), unit="clip", disable=quiet, dynamic_ncols=True) as bar:
            saving = [run.open_sink()] if args.save_silhouettes else []
            store = GalleryStore(gallery_path)
            try:
                for clip in gallery_clips:
                    bar.set_postfix_str(f"enrol {clip.path.name}")
                    collector = run.run_clip(clip, [run.embed], saving)
                    assigned = assign_people(collector.in_order(), clip.people)
                    for person, track in assigned.items():
                        assert collector.encoder is not None
                        walks.add(track.embeddings, "gallery", clip.path.name, clip.scene, person, enrolled=True)
                        enrolled[person] = enrolled.get(person, 0) + store.add(
                            person, np.stack(track.embeddings), encoder=collector.encoder, parts=collector.parts,
                            source=str(clip.path), stream=clip.path.stem, track_id=track.track_id,
                            frames=track.silhouettes)
                    clip_reports.append(_clip_report(clip, collector, assigned))
                    bar.update(1)
                snapshot = store.snapshot()
            finally:
                store.close()
            if not enrolled:
                raise GaitstreamError("no gallery clip yielded a track long enough to enrol anyone")
            index = GalleryIndex(snapshot)
            accept_distance, margin_ratio = effective_decision(config, run)
            matcher = run.open_matcher()
            for clip in probe_clips:
                bar.set_postfix_str(f"probe {clip.path.name}")
                collector = run.run_clip(clip, [run.embed, matcher], saving)
                assigned = assign_people(collector.in_order(), clip.people)
                for person in clip.people:
                    track = assigned.get(person)
                    answer = ProbeAnswer(str(clip.path.name), clip.scene, person, person in enrolled,
                                         None if track is None else (track.identity or "unknown"))
                    if track is not None:
                        walks.add(track.embeddings, "probe", clip.path.name, clip.scene, person,
                                  enrolled=person in enrolled)
                        answer.candidates = [(c.name, round(c.distance, 4)) for c in track.candidates]
                        matches = index.query(np.stack(track.embeddings), len(index))
                        answer.windows = [{m.name: round(m.distance, 4) for m in row} for row in matches]
                    answers.append(answer)
                clip_reports.append(_clip_report(clip, collector, assigned))
                bar.update(1)
    if args.dump_embeddings is not None:
        walks.save(args.dump_embeddings, encoder=snapshot.encoder, parts=snapshot.parts)
    scores = score_by_scene(answers, args.far)
    return {
        "manifest": str(args.manifest),
        "config": str(args.config),
        "overrides": list(args.overrides),
        "encoder": snapshot.encoder,
        "accept_distance": accept_distance,
        "margin_ratio": margin_ratio,
        "enrolled": {name: enrolled.get(name, 0) for name in names},
        "seconds": round(time.perf_counter() - started, 1),
        **scores,
        "probes": [dataclasses.asdict(a) | {"outcome": a.outcome} for a in answers],
        "clips": clip_reports,
    }


def effective_decision(config: Any, run: WildRun) -> tuple[float, float]:
    """The threshold and margin ratio the match stage decides with on this run's encoder."""
    from stages.match import resolve_decision

    encoder = run.embed.stages[run.embed.graph.index("gait")].encoder  # type: ignore[attr-defined]
    return resolve_decision(config.stages.match, encoder.accept_distance, encoder.margin_ratio)


def _clip_report(clip: ManifestClip, collector: TrackCollector, assigned: dict[str, Any]) -> dict[str, Any]:
    return {
        "clip": clip.path.name, "role": clip.role, "scene": clip.scene, "people": list(clip.people),
        "tracks": [{"track_id": t.track_id, "frames": [t.first_frame, t.last_frame], "silhouettes": t.silhouettes,
                    "rejected": t.rejected, "windows": len(t.embeddings), "identity": t.identity}
                   for t in collector.in_order()],
        "assigned": {person: track.track_id for person, track in assigned.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, required=True, help="CSV: clip,role,scene,people")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="pipeline YAML (default: %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a pipeline config value (repeatable)")
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--far", type=float, default=0.01, help="false-accept rate of the reported threshold")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="detection cache folder (%(default)s)")
    parser.add_argument("--no-cache", action="store_true", help="run the detector on every clip, store nothing")
    parser.add_argument("--chunk", type=int, default=4, help="frames handed to the detector at once (its workers)")
    parser.add_argument("--save-silhouettes", type=Path, metavar="DIR",
                        help="also write every track's silhouettes as the pipeline saves them (DIR/<clip>/<track>)")
    parser.add_argument("--dump-embeddings", type=Path, metavar="NPZ",
                        help="also write every window embedding of every assigned walk, labelled (walk, role, clip, "
                        "scene, person, enrolled), for offline analysis")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    args = parser.parse_args(argv)
    if not 0 < args.far < 1:
        parser.error("--far must lie in (0, 1)")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the detector's banners must not mix with the table
            report = evaluate(args)
    except (GaitstreamError, EngineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.manifest}: encoder {report['encoder']}, accept_distance {report['accept_distance']:.3f}, "
          f"margin_ratio {report['margin_ratio']}, {report['seconds']:.0f} s")
    print(format_scores(report))
    if args.json is not None:
        write_report(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
