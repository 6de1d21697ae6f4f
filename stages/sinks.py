"""sink: everything that leaves the pipeline: overlay window, annotated video, events, silhouette sequences.

Per input stream (folder `OUT/<stream id>/`, the input's stem for files):
- `annotated.mp4`: every frame with the overlay, at the input's frame rate;
- `events.jsonl`: one JSON object per line, each with `type`, `stream`, `frame`, `t` (media seconds),
  `track_id` and `bbox` ([x1, y1, x2, y2] pixels, or null): `track` per tracked person per frame, `track_end`,
  `embedding`, `identity` (with `identity`, `score`, `candidates`), and `stream_end` (with `frames` delivered and
  `reason`); `frame` is always the index of a frame of the stream, never decreasing;
- with `save_silhouettes`, each track's silhouettes in OpenGait's layout `<stream>/<track>/000/000.pkl`, a
  pickled uint8 array (T, 64, 44), so the output can feed training.
The same events go out on a ZeroMQ PUB socket (topic = stream id) when `events_endpoint` is set, and to NATS
JetStream (`stages.nats_events`: subject `<prefix>.<site>.<host>.<stream>`, one id per event) when `nats_url` is.

An output that cannot be written (disk full, no permission) is counted (`output_errors_total` by errno) and stops
the run with one line naming the file: retrying or restarting the sink cannot make room on a disk.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar

import cv2
import numpy as np
from pydantic import Field

from pipeline.config import ConfigPath, StageConfig
from pipeline.errors import FatalError
from pipeline.messages import DataMessage, EndOfStream, FrameRecord, Identities, ReportEvent
from pipeline.stage import Stage
from pipeline.transport import EventPublisher
from stages.nats_events import NatsEventPublisher
from stages.overlay import draw_overlay

log = logging.getLogger(__name__)

MIN_FREE_BYTES = 16 * 2**20  # below this the annotated video counts as failed: OpenCV's writer drops frames silently


class OutputError(FatalError):
    """An output cannot be written (disk full, no permission, no display): the run stops with this message."""


class SinkConfig(StageConfig):
    """What to write and show."""

    replaced_keys = {"track_timeout_s": "set stages.sink.orphaned_track_timeout_s; when a track ends is "
                     "stages.detect_track.track_lifetime_s"}

    out_dir: ConfigPath | None = Field(None, description="folder for per-input outputs; none: nothing written")
    display: bool = Field(False, description="show the overlay in a window (needs a display)")
    write_video: bool = True
    write_events: bool = True
    save_silhouettes: bool = Field(False, description="write each track's silhouettes in OpenGait's pkl layout")
    min_saved_silhouettes: int = Field(
        15, ge=1, description="shorter tracks are not saved: too short for a gait window (usually a passing blob)"
    )
    events_endpoint: str | None = Field(None, description="bind a ZeroMQ PUB socket for events, e.g. tcp://127.0.0.1:5570")
    video_fourcc: str = Field("mp4v", min_length=4, max_length=4, description="codec of annotated.mp4")
    display_max_height_px: int = Field(900, ge=100, description="the window is scaled down to this height")
    inset_height_px: int = Field(128, ge=16, description="height of the silhouette insets in the overlay")
    orphaned_track_timeout_s: float = Field(
        30.0, gt=0, description="wall clock: finish a track unseen this long whose end never came (an upstream "
        "restart lost it); longer than stages.detect_track.track_lifetime_s, which ends tracks")
    nats_url: str | None = Field(None, description="publish events on NATS JetStream, e.g. nats://broker:4222 "
                                 "(a cluster: comma-separated); needs pip install .[cluster]")
    nats_subject_prefix: str = Field("gaitstream.events", pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$",
                                     description="events go to <prefix>.<site>.<host>.<stream>, stored in the "
                                     "JetStream stream <PREFIX> (dots as _) on <prefix>.>")
    site: str = Field("site", min_length=1, description="this site's name in event subjects and ids")
    host: str = Field(default_factory=socket.gethostname, min_length=1,
                      description="this machine's name in event subjects and ids (default: its hostname)")
    nats_queue_events: int = Field(10_000, ge=1, description="events held while the broker is slow or away; "
                                   "beyond it the oldest are dropped and counted")
    nats_credentials: ConfigPath | None = Field(None, description="NATS credentials (.creds) or nkey seed file")
    nats_ca: ConfigPath | None = Field(None, description="the CA (PEM) a tls:// broker's certificate must chain to "
                                       "(default: the system's CAs)")


def _box(record: FrameRecord, track_id: int) -> list[float] | None:
    rows = np.flatnonzero(record.tracks.track_ids == track_id)
    return [round(float(v), 1) for v in record.tracks.boxes_xyxy_px[rows[0]]] if rows.size else None


@dataclass
class _StreamOutputs:
    """Everything open for one stream; closed at its end of stream (or when the sink closes)."""

    folder: Path | None
    video: cv2.VideoWriter | None = None
    events: IO[str] | None = None
    labels: dict[int, tuple[str, float]] = field(default_factory=dict)
    latest_silhouette: dict[int, np.ndarray] = field(default_factory=dict)
    sequences: dict[int, list[np.ndarray]] = field(default_factory=dict)
    last_box: dict[int, list[float]] = field(default_factory=dict)
    last_seen_s: dict[int, float] = field(default_factory=dict)  # wall clock, for tracks whose end never comes
    frames_written: int = 0
    end_t: float = 0.0  # media time just after the last frame seen
    last_seq: int = -1  # index of the last frame seen: what end-of-stream events refer to
    event_origin: tuple[int, int | None] = (0, None)  # (epoch, frame; None: the end) the events now made come from
    events_from_origin: int = 0  # with the origin, names each event for NATS the same way when a frame is resent
    fps: float = 0.0
    last_frame_s: float = 0.0


class SinkStage(Stage[SinkConfig]):
    name = "sink"
    Config: ClassVar[type[StageConfig]] = SinkConfig

    def open(self) -> None:
        config = self.config
        self.streams: dict[str, _StreamOutputs] = {}
        self.publisher: EventPublisher | None = None
        self.nats: NatsEventPublisher | None = None
        if config.display and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
            raise OutputError("no display to show the overlay on (DISPLAY is not set); run with --no-display")
        if config.events_endpoint:
            self.publisher = self.context.open_publisher(config.events_endpoint)
        if config.out_dir is not None:
            try:
                config.out_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OutputError(f"cannot create output folder {config.out_dir}: {exc.strerror}") from exc
        if config.nats_url:
            self.nats = NatsEventPublisher(config.nats_url, site=config.site, host=config.host,
                                           run=self.context.run_dir.name, subject_prefix=config.nats_subject_prefix,
                                           queue_events=config.nats_queue_events, credentials=config.nats_credentials,
                                           ca=config.nats_ca)

    # --- per stream ----------------------------------------------------------------------------------------
    def _outputs(self, stream_id: str) -> _StreamOutputs:
        outputs = self.streams.get(stream_id)
        if outputs is None:
            config = self.config
            folder = config.out_dir / stream_id if config.out_dir is not None else None
            outputs = self.streams[stream_id] = _StreamOutputs(folder)
            if folder is not None:
                self._guard(folder, lambda: folder.mkdir(parents=True, exist_ok=True))
                if config.write_events:
                    mode = "a" if self.context.incarnation else "w"  # a restarted sink keeps what was written
                    outputs.events = self._guard(folder, lambda: open(folder / "events.jsonl", mode, buffering=1))
        return outputs

    def _guard(self, where: Path, action: Any) -> Any:
        """Run an output action; a full disk or a denied write becomes one clear, counted OutputError."""
        try:
            return action()
        except OSError as exc:
            raise self._output_error(where, exc.errno, exc.strerror or str(exc)) from exc

    def _output_error(self, where: Path, code: int | None, why: str) -> OutputError:
        self.context.metrics.inc("output_errors_total", reason=errno.errorcode.get(code or 0, "unknown"))
        return OutputError(f"cannot write {where}: {why}")

    def _emit(self, outputs: _StreamOutputs, event: dict[str, Any]) -> None:
        line = json.dumps(event, separators=(",", ":"))
        if outputs.events is not None:
            self._guard(outputs.folder / "events.jsonl", lambda: outputs.events.write(line + "\n"))
        if self.publisher is not None:
            self.publisher.publish(event["stream"], line.encode())
        if self.nats is not None:
            epoch, frame = outputs.event_origin
            self.nats.publish(event["stream"], epoch, frame, outputs.events_from_origin, line.encode())
        outputs.events_from_origin += 1
        self.context.metrics.inc("events_total", type=event["type"])

    def _event(self, kind: str, stream: str, frame: int, t: float, track_id: int | None,
               bbox: list[float] | None, **extra: Any) -> dict[str, Any]:
        return {"type": kind, "stream": stream, "frame": frame, "t": round(t, 4), "track_id": track_id,
                "bbox": bbox, **extra}

    # --- records ---------------------------------------------------------------------------------------------
    def process(self, record: FrameRecord) -> list[DataMessage]:
        config = self.config
        outputs = self._outputs(record.stream_id)
        outputs.end_t = record.pts_s + 1.0 / record.fps
        outputs.last_seq = max(outputs.last_seq, record.seq)
        self._record_events(outputs, record, record.seq, record.pts_s)
        if record.silhouettes is not None:
            for track_id, image in zip(record.silhouettes.track_ids.tolist(), record.silhouettes.images):
                outputs.latest_silhouette[track_id] = image
                if config.save_silhouettes:
                    outputs.sequences.setdefault(track_id, []).append(image.copy())
        now = time.monotonic()
        if outputs.last_frame_s:
            instant = 1.0 / max(now - outputs.last_frame_s, 1e-6)
            outputs.fps = instant if not outputs.fps else 0.9 * outputs.fps + 0.1 * instant
        outputs.last_frame_s = now
        if config.display or (config.write_video and outputs.folder is not None):
            latency_ms = (time.monotonic_ns() - record.capture_ns) / 1e6
            image = draw_overlay(record.frame.pixels, record, outputs.labels, outputs.latest_silhouette,
                                 fps=outputs.fps, latency_ms=latency_ms, inset_height_px=config.inset_height_px)
            if config.write_video and outputs.folder is not None:
                self._write_frame(outputs, record, image)
            if config.display:
                self._show(record.stream_id, image)
        for track_id in record.ended_track_ids.tolist():
            self._finish_track(record.stream_id, outputs, track_id)
        # Capture to outputs written: the pipeline's end-to-end latency (percentiles, and the newest frame's).
        done_ms = (time.monotonic_ns() - record.capture_ns) / 1e6
        self.context.metrics.observe_ms("latency_since_capture", done_ms)
        self.context.metrics.set("newest_frame_latency_ms", done_ms)
        return []

    def _record_events(self, outputs: _StreamOutputs, message: FrameRecord | EndOfStream, frame: int, t: float) -> None:
        stream = message.stream_id
        outputs.event_origin = (message.epoch, message.seq if isinstance(message, FrameRecord) else None)
        outputs.events_from_origin = 0
        if isinstance(message, FrameRecord):
            tracks = message.tracks
            for box, track_id, score in zip(tracks.boxes_xyxy_px, tracks.track_ids.tolist(), tracks.scores.tolist()):
                bbox = [round(float(v), 1) for v in box]
                outputs.last_box[track_id] = bbox
                outputs.last_seen_s[track_id] = self.context.clock()
                self._emit(outputs, self._event("track", stream, frame, t, track_id, bbox, score=round(score, 3)))
        if message.embeddings is not None:
            embeddings = message.embeddings
            for track_id, frames, final in zip(embeddings.track_ids.tolist(), embeddings.window_frames.tolist(),
                                               embeddings.final.tolist()):
                self._emit(outputs, self._event("embedding", stream, frame, t, track_id,
                                                outputs.last_box.get(track_id), window_frames=frames, final=final,
                                                encoder=embeddings.encoder))
        if message.identities is not None:
            self._identity_events(outputs, message.identities, stream, frame, t)
        for track_id in message.ended_track_ids.tolist():
            self._emit(outputs, self._event("track_end", stream, frame, t, track_id, outputs.last_box.get(track_id)))

    def _identity_events(self, outputs: _StreamOutputs, identities: Identities, stream: str, frame: int,
                         t: float) -> None:
        for i, track_id in enumerate(identities.track_ids.tolist()):
            name, score = identities.names[i], float(identities.scores[i])
            outputs.labels[track_id] = (name, score)
            if identities.decided[i]:
                candidates = [{"name": c.name, "distance": round(c.distance, 4)} for c in identities.candidates[i]]
                self._emit(outputs, self._event("identity", stream, frame, t, track_id,
                                                outputs.last_box.get(track_id), identity=name,
                                                score=round(score, 4), candidates=candidates))

    def _write_frame(self, outputs: _StreamOutputs, record: FrameRecord, image: np.ndarray) -> None:
        config = self.config
        path = outputs.folder / "annotated.mp4"
        if outputs.video is None:
            fourcc = cv2.VideoWriter_fourcc(*config.video_fourcc)
            writer = cv2.VideoWriter(str(path), fourcc, record.fps, (image.shape[1], image.shape[0]))
            if not writer.isOpened():
                if _disk_free_bytes(path.parent) < MIN_FREE_BYTES:
                    raise self._output_error(path, errno.ENOSPC, os.strerror(errno.ENOSPC))
                raise self._output_error(path, None, f"OpenCV cannot create it with the {config.video_fourcc} codec")
            outputs.video = writer
        outputs.video.write(image)
        outputs.frames_written += 1
        if outputs.frames_written % 50 == 0 and path.exists() and _disk_free_bytes(path.parent) < MIN_FREE_BYTES:
            raise self._output_error(path, errno.ENOSPC, os.strerror(errno.ENOSPC))

    def _show(self, stream_id: str, image: np.ndarray) -> None:
        config = self.config
        scale = min(1.0, config.display_max_height_px / image.shape[0])
        shown = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else image
        title = f"gaitstream: {stream_id}"
        cv2.imshow(title, shown)
        key = cv2.waitKey(1) & 0xFF
        if key in (ord("q"), 27):
            self.context.report(ReportEvent.STOP_REQUESTED, stream_id, "q pressed in the overlay window")

    def _finish_track(self, stream_id: str, outputs: _StreamOutputs, track_id: int) -> None:
        sequence = outputs.sequences.pop(track_id, None)
        outputs.latest_silhouette.pop(track_id, None)
        outputs.labels.pop(track_id, None)
        outputs.last_box.pop(track_id, None)
        outputs.last_seen_s.pop(track_id, None)
        if sequence and len(sequence) < self.config.min_saved_silhouettes:
            log.info("not saving short track stream=%s track=%d silhouettes=%d", stream_id, track_id, len(sequence))
            self.context.metrics.inc("short_tracks_not_saved_total")
            return
        if sequence and outputs.folder is not None:
            folder = outputs.folder / f"{track_id:04d}" / "000"

            def write() -> None:
                folder.mkdir(parents=True, exist_ok=True)
                with open(folder / "000.pkl", "wb") as file:
                    pickle.dump(np.stack(sequence).astype(np.uint8), file)

            self._guard(folder, write)
            log.info("saved %d silhouettes stream=%s track=%d", len(sequence), stream_id, track_id)

    def on_tick(self, now_s: float) -> None:
        """Finish tracks whose end never came (their silhouettes are still saved), and report the state held."""
        config = self.config
        for stream_id, outputs in self.streams.items():
            orphaned = [t for t, seen in outputs.last_seen_s.items() if now_s - seen > config.orphaned_track_timeout_s]
            for track_id in orphaned:
                self._finish_track(stream_id, outputs, track_id)
        self.context.metrics.set_live_tracks(sum(len(o.last_seen_s) for o in self.streams.values()))
        if self.nats is not None:
            self.nats.report(self.context.metrics)

    # --- end of stream ---------------------------------------------------------------------------------------
    def on_end_of_stream(self, eos: EndOfStream) -> list[DataMessage]:
        outputs = self._outputs(eos.stream_id)
        t, last = outputs.end_t, max(outputs.last_seq, 0)  # events of the end belong to the last frame
        self._record_events(outputs, eos, last, t)
        for track_id in [*eos.ended_track_ids.tolist(), *list(outputs.sequences)]:
            self._finish_track(eos.stream_id, outputs, track_id)
        self._emit(outputs, self._event("stream_end", eos.stream_id, last, t, None, None, frames=eos.frames,
                                        reason=eos.reason, detail=eos.detail))
        self._close_stream(eos.stream_id)
        return [eos]

    def _close_stream(self, stream_id: str) -> None:
        outputs = self.streams.pop(stream_id, None)
        if outputs is None:
            return
        if outputs.video is not None:
            outputs.video.release()
        if outputs.events is not None:  # closing flushes the last lines: it can find the disk full too
            self._guard(outputs.folder / "events.jsonl", outputs.events.close)
        if self.config.display:
            try:
                cv2.destroyWindow(f"gaitstream: {stream_id}")
            except cv2.error:
                pass

    def close(self) -> None:
        """Close what is open; a failure here is logged, not raised: after a failed write it is the same one."""
        for stream_id in list(getattr(self, "streams", {})):
            try:
                self._close_stream(stream_id)
            except OutputError as exc:
                log.warning("%s stream=%s", exc, stream_id)
        if getattr(self, "nats", None) is not None:
            self.nats.close()
            self.nats.report(self.context.metrics)


def _disk_free_bytes(folder: Path) -> int:
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize
