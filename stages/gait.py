"""gait: keeps a window of silhouettes per track and turns full windows into gait embeddings.

Every `stride_frames` new silhouettes, once a track has `window_frames` of them, its latest window is encoded;
when a track ends, one final window (at least `min_frames`) is encoded too. A window whose walker crosses the
image the other way than the encoder's training data walked is mirrored first (`canonical_direction`): the
direction comes from the track's boxes, and frontal walks, which cross little, are left as they are. A window over
which the track did not move like a walker (`min_motion`: a bench, a parked bicycle, someone standing) is not
encoded: it holds no gait, and its embedding would only draw matches. Windows that
become ready in the same batch of frames, from any tracks and streams, go through the encoder in one call (grouped
by length), which is where a GPU earns its keep. Buffers are keyed by (stream, track) and deleted at track end, at
end of stream, or, when that end was lost (an upstream stage restarted), `orphaned_track_timeout_s` of wall-clock
time after the track was last seen.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import Field, model_validator

from engines.pretreat import mirror_silhouettes
from pipeline.config import ConfigPath, StageConfig
from pipeline.messages import DataMessage, Embeddings, EndOfStream, FrameRecord
from pipeline.stage import Stage

if TYPE_CHECKING:
    from engines.gait.encoder import GaitEncoder

log = logging.getLogger(__name__)


class GaitConfig(StageConfig):
    """Which encoder, and how silhouettes are grouped into windows."""

    replaced_keys = {"track_timeout_s": "set stages.gait.orphaned_track_timeout_s; when a track ends is "
                     "stages.detect_track.track_lifetime_s"}

    encoder: ConfigPath | None = Field(None, description="encoder weights (.pt, .onnx, .engine); none: no embeddings")
    backend: Literal["auto", "torch", "onnxruntime", "tensorrt"] = "auto"
    device: str = Field("cpu", description="'cpu' or 'cuda[:N]'")
    window_frames: int = Field(30, ge=1, description="silhouettes per embedding window (about one gait cycle)")
    stride_frames: int = Field(15, ge=1, description="new silhouettes between two embeddings of a track")
    min_frames: int = Field(15, ge=1, description="fewest silhouettes for the final embedding of a track")
    orphaned_track_timeout_s: float = Field(
        30.0, gt=0, description="wall clock: forget a track unseen this long whose end never came (an upstream "
        "restart lost it); longer than stages.detect_track.track_lifetime_s, which ends tracks")
    canonical_direction: Literal["auto", "none", "right_to_left", "left_to_right"] = Field(
        "auto", description="mirror walks so everyone crosses the image this way; auto: the encoder's training "
        "direction (weights metadata `walk_direction`), none when unknown")
    min_lateral_travel: float = Field(
        0.3, ge=0, description="sideways travel over a window, in person heights, that decides its direction")
    min_motion: float = Field(
        0.15, ge=0, description="a window is encoded only if the track moved this much over it: travel of the "
        "box's foot point in person heights plus the change of its log height (walking towards the camera)")

    @model_validator(mode="after")
    def _min_within_window(self) -> GaitConfig:
        if self.min_frames > self.window_frames:
            raise ValueError(f"min_frames ({self.min_frames}) must not exceed window_frames ({self.window_frames})")
        return self


Direction = Literal["right_to_left", "left_to_right"]


class SilhouetteBuffer:
    """The latest `window_frames` silhouettes of one track with their boxes' centre and height, and how many
    arrived since its last embedding."""

    def __init__(self, window_frames: int, now_s: float) -> None:
        self.frames: deque[NDArray[np.uint8]] = deque(maxlen=window_frames)
        self.centres_x: deque[float] = deque(maxlen=window_frames)
        self.feet_y: deque[float] = deque(maxlen=window_frames)
        self.heights: deque[float] = deque(maxlen=window_frames)
        self.new_since_embedding = 0
        self.last_seen_s = now_s
        self.direction: Direction | None = None  # the last window's that was clear

    def push(self, silhouette: NDArray[np.uint8], box_xyxy_px: NDArray[np.float32], now_s: float) -> None:
        self.frames.append(silhouette)
        self.centres_x.append(float(box_xyxy_px[0] + box_xyxy_px[2]) / 2)
        self.feet_y.append(float(box_xyxy_px[3]))
        self.heights.append(max(1.0, float(box_xyxy_px[3] - box_xyxy_px[1])))
        self.new_since_embedding += 1
        self.last_seen_s = now_s

    def walking_direction(self, min_travel: float) -> Direction | None:
        """Which way the walker crosses the image over the buffered frames (least-squares fit of the box centres),
        when they travel at least `min_travel` person heights sideways; else the last clear direction."""
        if len(self.centres_x) >= 2:
            slope = np.polyfit(np.arange(len(self.centres_x)), np.asarray(self.centres_x), 1)[0]
            travel = slope * (len(self.centres_x) - 1) / max(1.0, float(np.median(self.heights)))
            if abs(travel) >= min_travel:
                self.direction = "left_to_right" if travel > 0 else "right_to_left"
        return self.direction

    def motion(self) -> float:
        """How far the track moved over the buffered frames, in person heights: the foot point's travel plus the
        change of the log box height (which grows or shrinks as someone walks towards or away from the camera).
        Ends are averaged over a few frames so that box jitter does not count."""
        ends = max(1, len(self.heights) // 5)
        height = float(np.median(self.heights))
        feet = np.column_stack([self.centres_x, self.feet_y])
        travel = float(np.linalg.norm(feet[-ends:].mean(0) - feet[:ends].mean(0))) / height
        heights = np.log(np.asarray(self.heights))
        return travel + abs(float(heights[-ends:].mean() - heights[:ends].mean()))

    def take_window(self) -> NDArray[np.uint8]:
        """(T, 64, 44) copy of the buffered silhouettes; resets the count since the last embedding."""
        self.new_since_embedding = 0
        return np.stack(self.frames)


@dataclasses.dataclass
class _Window:
    index: int  # position of the message it is attached to in the batch
    track_id: int
    silhouettes: NDArray[np.uint8]
    final: bool


class GaitStage(Stage[GaitConfig]):
    name = "gait"
    Config: ClassVar[type[StageConfig]] = GaitConfig

    def open(self) -> None:
        config = self.config
        self.buffers: dict[tuple[str, int], SilhouetteBuffer] = {}
        self.encoder: GaitEncoder | None = None
        self.canonical: Direction | None = None
        if config.encoder is None:
            log.warning("no gait encoder configured (stages.gait.encoder): tracks get no embeddings")
            return
        from engines.gait.encoder import open_encoder  # torch / onnxruntime: only in this stage's process

        self.encoder = open_encoder(Path(config.encoder), backend=config.backend, device=config.device,
                                    threads=config.threads)
        if config.canonical_direction == "auto":
            self.canonical = self.encoder.walk_direction
        elif config.canonical_direction != "none":
            self.canonical = config.canonical_direction
        log.info("gait encoder %s backend=%s dim=%d parts=%d; walks mirrored to %s", self.encoder.name,
                 self.encoder.backend, self.encoder.embedding_dim, self.encoder.parts,
                 (self.canonical or "none").replace("_", " "))

    # --- windows -----------------------------------------------------------------------------------------------
    def _collect(self, index: int, message: FrameRecord | EndOfStream, now_s: float) -> list[_Window]:
        config = self.config
        windows = []
        stream = message.stream_id
        if isinstance(message, FrameRecord) and message.silhouettes is not None:
            rows = {t: i for i, t in enumerate(message.tracks.track_ids.tolist())}
            for track_id in rows:  # seen, with or without a silhouette: not orphaned
                if (buffer := self.buffers.get((stream, track_id))) is not None:
                    buffer.last_seen_s = now_s
            for track_id, image in zip(message.silhouettes.track_ids.tolist(), message.silhouettes.images):
                buffer = self.buffers.get((stream, track_id))
                if buffer is None:
                    buffer = self.buffers[(stream, track_id)] = SilhouetteBuffer(config.window_frames, now_s)
                buffer.push(image, message.tracks.boxes_xyxy_px[rows[track_id]], now_s)
                due = len(buffer.frames) == config.window_frames and buffer.new_since_embedding >= config.stride_frames
                if due and (window := self._window(buffer)) is not None:
                    windows.append(_Window(index, track_id, window, final=False))
        for track_id in message.ended_track_ids.tolist():
            buffer = self.buffers.pop((stream, track_id), None)
            if buffer is None or not buffer.new_since_embedding or len(buffer.frames) < config.min_frames:
                continue
            if (window := self._window(buffer)) is not None:
                windows.append(_Window(index, track_id, window, final=True))
        return windows

    def _window(self, buffer: SilhouetteBuffer) -> NDArray[np.uint8] | None:
        """The buffer's window, turned to the canonical walking direction when the walker goes the other way; None
        when the track did not move like a walker."""
        config = self.config
        if buffer.motion() < config.min_motion:
            buffer.new_since_embedding = 0
            self.context.metrics.inc("windows_skipped_total", reason="stationary")
            return None
        direction = buffer.walking_direction(config.min_lateral_travel)
        window = buffer.take_window()
        if self.canonical is not None and direction is not None and direction != self.canonical:
            self.context.metrics.inc("windows_mirrored_total")
            return mirror_silhouettes(window)
        return window

    def _encode(self, windows: list[_Window]) -> NDArray[np.float32]:
        """One encoder call per window length (tracks ending early have shorter windows)."""
        assert self.encoder is not None
        vectors = np.zeros((len(windows), self.encoder.embedding_dim), np.float32)
        for length in sorted({len(w.silhouettes) for w in windows}):
            rows = [i for i, w in enumerate(windows) if len(w.silhouettes) == length]
            started = time.perf_counter()
            vectors[rows] = self.encoder.encode(np.stack([windows[i].silhouettes for i in rows]))
            self.context.metrics.observe_ms("encode", (time.perf_counter() - started) * 1e3)
        self.context.metrics.inc("windows_encoded_total", len(windows))
        return vectors

    def _attach(self, messages: list[Any], windows: list[_Window]) -> list[Any]:
        if not windows or self.encoder is None:
            return messages
        vectors = self._encode(windows)
        out = list(messages)
        for index in sorted({w.index for w in windows}):
            rows = [i for i, w in enumerate(windows) if w.index == index]
            out[index] = dataclasses.replace(out[index], embeddings=Embeddings(
                track_ids=np.asarray([windows[i].track_id for i in rows], np.int64),
                vectors=vectors[rows],
                window_frames=np.asarray([len(windows[i].silhouettes) for i in rows], np.int64),
                final=np.asarray([windows[i].final for i in rows], np.bool_),
                parts=self.encoder.parts,
                encoder=self.encoder.name,
                accept_distance=self.encoder.accept_distance,
                margin_ratio=self.encoder.margin_ratio,
            ))
        return out

    # --- stage contract ----------------------------------------------------------------------------------------
    def process_batch(self, records: list[FrameRecord]) -> list[DataMessage]:
        now_s = self.context.clock()
        windows = [w for i, record in enumerate(records) for w in self._collect(i, record, now_s)]
        self.context.metrics.set_live_tracks(len(self.buffers))
        return self._attach(records, windows)

    def on_end_of_stream(self, eos: EndOfStream) -> list[DataMessage]:
        remaining = sorted(t for s, t in self.buffers if s == eos.stream_id)
        ended = np.union1d(eos.ended_track_ids, np.asarray(remaining, np.int64))
        eos = dataclasses.replace(eos, ended_track_ids=ended)
        windows = self._collect(0, eos, self.context.clock())
        self.context.metrics.set_live_tracks(len(self.buffers))
        return self._attach([eos], windows)

    def on_tick(self, now_s: float) -> None:
        config = self.config
        stale = [key for key, b in self.buffers.items() if now_s - b.last_seen_s > config.orphaned_track_timeout_s]
        for key in stale:
            del self.buffers[key]
            log.info("forgot orphaned track stream=%s track=%d (unseen %.0f s, its end never came)", *key,
                     config.orphaned_track_timeout_s)
        self.context.metrics.set_live_tracks(len(self.buffers))
