"""Person detection + tracking over many streams: the contract, the settings and the backend choice.

Two backends sit behind `MultiStreamTracker`:
- `yolo` (`engines.detect.yolo`): Ultralytics YOLO, detection or segmentation weights, with Ultralytics' ByteTrack /
  BoT-SORT; one model batches all streams, one tracker per stream.
- `bgsub` (`engines.detect.bgsub`): OpenCV background subtraction + connected components + an IoU/centroid tracker;
  needs no weights, suits the fixed cameras gait recognition usually sees.

Backend modules are imported only when chosen, so `bgsub` never loads torch or Ultralytics.
Must not import `pipeline` or `stages`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple, Protocol

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from engines.errors import WeightsNotFound

log = logging.getLogger(__name__)

SHARED_MODELS_HINT = "../shared/assets/models/ (e.g. yolo11n-seg_int8.tflite)"

DEFAULT_TRACK_LIFETIME_S = 1.0
"""How long a person may go unseen before their track ends: half a gait cycle's worth of occlusion and then some,
short enough that someone who left and came back is a new walk."""


def lost_frames(track_lifetime_s: float, fps: float) -> int:
    """A track lifetime in a stream's frames: what the trackers count (ByteTrack's `track_buffer`, bgsub's misses).

    Trackers count frames, people and the detect_track stage count seconds; deriving one from the other with the
    rate the stream delivers (not its native rate: `fps_limit` skips frames) keeps a tracker id alive exactly as long
    as the stage keeps the track.
    """
    return max(1, math.ceil(track_lifetime_s * fps - 1e-9))


@dataclass(frozen=True)
class Detections:
    """The people found in one frame of one stream, already tracked.

    Row k of every array is detection k; `label_map` pixel value k + 1 marks detection k's pixels (0 = background),
    so masks travel as one (H, W) uint8 plane instead of n full-size planes.
    """

    boxes_xyxy_px: NDArray[np.float32]  # (n, 4) in the frame's pixel grid
    track_ids: NDArray[np.int64]  # (n,) unique within the stream, never reused
    scores: NDArray[np.float32]  # (n,) detector confidence in [0, 1]; bgsub reports 1.0
    label_map: NDArray[np.uint8] | None  # (H, W); 0 = background, k = detection k-1; from YOLO-seg or bgsub

    def __post_init__(self) -> None:
        n = len(self.track_ids)
        checks = (
            ("boxes_xyxy_px", self.boxes_xyxy_px, (n, 4), np.float32),
            ("track_ids", self.track_ids, (n,), np.int64),
            ("scores", self.scores, (n,), np.float32),
        )
        for name, array, shape, dtype in checks:
            if array.shape != shape or array.dtype != dtype:
                raise ValueError(
                    f"Detections.{name}: expected {shape} {np.dtype(dtype)}, got {array.shape} {array.dtype}"
                )
        if self.label_map is not None and (self.label_map.ndim != 2 or self.label_map.dtype != np.uint8):
            raise ValueError(
                f"Detections.label_map: expected (H, W) uint8, got {self.label_map.shape} {self.label_map.dtype}"
            )
        if n > 255 and self.label_map is not None:
            raise ValueError(f"Detections.label_map holds at most 255 detections, got {n}")

    @classmethod
    def empty(cls, label_map: NDArray[np.uint8] | None = None) -> Detections:
        """No people in this frame (`label_map`, when given, is all zeros)."""
        return cls(
            boxes_xyxy_px=np.zeros((0, 4), np.float32),
            track_ids=np.zeros(0, np.int64),
            scores=np.zeros(0, np.float32),
            label_map=label_map,
        )

    def __len__(self) -> int:
        return len(self.track_ids)


class StreamFrame(NamedTuple):
    """One frame for a tracker: its stream, its pixels, and the rate that stream delivers frames at."""

    stream_id: str
    pixels: NDArray[np.uint8]  # BGR (H, W, 3)
    fps: float  # frames per second as delivered: turns the track lifetime into the tracker's frames


class MultiStreamTracker(Protocol):
    """Detects people and tracks them, one tracker state per stream; frames of one stream arrive in order.

    A stream's tracker keeps an unseen person's id for `lost_frames(track_lifetime_s, fps)` frames, with the rate
    of that stream's first frame.
    """

    backend: str  # "yolo" or "bgsub"

    def update(self, frames: Sequence[StreamFrame]) -> list[Detections]:
        """One `Detections` per frame, in the same order."""
        ...

    def end_stream(self, stream_id: str) -> None:
        """Forget that stream's tracker state; if it comes back, its ids go on after the last one issued."""
        ...


class DetectorSettings(BaseModel):
    """How detect_track finds and tracks people. Pixel values are in the source frame's pixel grid."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["auto", "yolo", "bgsub"] = Field(
        "auto", description="auto: yolo when a weights candidate exists locally, else bgsub (logged once)"
    )
    weights: list[str | Path] = Field(
        default_factory=lambda: ["yolo11n-seg.pt", "yolo11n.pt"],
        description="YOLO weights candidates, first existing wins: paths (.pt/.onnx/.tflite; relative ones "
        "are resolved by the caller) or official names, looked up in the working directory and Ultralytics' "
        "weights folder; nothing is ever downloaded",
    )
    tracker: Literal["bytetrack", "botsort"] = Field("bytetrack", description="Ultralytics tracker for yolo")
    imgsz_px: int | None = Field(
        None, gt=0, description="YOLO input size; default: the size the weights were exported for (else 640)"
    )
    conf: float = Field(
        0.25,
        gt=0,
        lt=1,
        description="yolo: confidence a box needs to start or first-match a track (ByteTrack's "
        "track_high_thresh); weaker boxes down to 0.1 only keep existing tracks alive",
    )
    device: str = Field("cpu", description="'cpu', 'cuda', 'cuda:0' (YOLO .pt/.onnx only)")
    workers: int = Field(
        1,
        ge=1,
        le=16,
        description="yolo: model instances predicting side by side over the frames the stage holds (each with "
        "the stage's `threads`); tracking stays in frame order. Frames in flight are what a pipeline has over a loop",
    )

    method: Literal["mog2", "knn"] = Field("knn", description="bgsub: OpenCV background model")
    history_frames: int = Field(500, ge=1, description="bgsub: frames the background model remembers")
    warmup_frames: int = Field(
        10,
        ge=0,
        description="bgsub: a stream's first frames only train the background model (it starts as all foreground)",
    )
    var_threshold: float | None = Field(
        None, gt=0, description="bgsub: MOG2 varThreshold or KNN dist2Threshold; default OpenCV's (16 / 400)"
    )
    work_scale: float = Field(
        0.5,
        gt=0,
        le=1,
        description="bgsub: frames are downscaled by this factor first (0.5 = quarter of the cost)",
    )
    open_kernel_px: int = Field(5, ge=1, description="bgsub: morphological opening (removes speckle), square side")
    close_kernel_w_px: int = Field(15, ge=1, description="bgsub: morphological closing (fills holes), width")
    close_kernel_h_px: int = Field(31, ge=1, description="bgsub: closing height; taller than wide joins limbs")
    min_fragment_area_px: int = Field(
        300, ge=1, description="bgsub: smaller foreground components are noise, not part of a person (px^2)"
    )
    merge_gap_px: int = Field(
        60, ge=0, description="bgsub: fragments stacked with at most this vertical gap join into one person"
    )
    min_area_px: int = Field(3000, ge=1, description="bgsub: smallest person blob, square pixels")
    min_height_px: int = Field(80, ge=1, description="bgsub: shortest person blob")
    max_width_to_height: float = Field(1.2, gt=0, description="bgsub: wider blobs are groups or vehicles, dropped")
    max_match_distance_px: float = Field(
        150.0,
        gt=0,
        description="bgsub: a blob farther than this from a track's predicted centre never joins it",
    )
    min_hits_frames: int = Field(3, ge=1, description="bgsub: consecutive frames a blob must persist to get an id")


@dataclass(frozen=True)
class WeightsSearch:
    """Where the YOLO weights were looked for and what was found (None when nothing was)."""

    found: Path | None
    looked_in: tuple[Path, ...]


def find_weights(candidates: Sequence[str | Path]) -> WeightsSearch:
    """First candidate that exists locally; names (no folder part) are looked up as Ultralytics would.

    A bare name is tried in the working directory, then in Ultralytics' weights folder; that folder is asked
    of Ultralytics only when a name is not in the working directory, because importing it costs seconds.
    """
    looked: list[Path] = []
    for candidate in candidates:
        for place in _places(Path(candidate).expanduser()):
            looked.append(place)
            if place.is_file():
                return WeightsSearch(place.absolute(), tuple(looked))
    return WeightsSearch(None, tuple(looked))


def _places(path: Path) -> Iterator[Path]:
    if path.is_absolute() or len(path.parts) > 1:
        yield path
        return
    yield Path.cwd() / path
    yield _ultralytics_weights_dir() / path


def _ultralytics_weights_dir() -> Path:
    from engines.detect.yolo import ultralytics_weights_dir

    return ultralytics_weights_dir()


def open_tracker(config: DetectorSettings, threads: int = 1,
                 track_lifetime_s: float = DEFAULT_TRACK_LIFETIME_S) -> MultiStreamTracker:
    """Build the configured backend with `threads` CPU threads per model instance (torch, LiteRT/XNNPACK, ONNX
    Runtime, OpenCV) and ids kept `track_lifetime_s` seconds for an unseen person; both are the detect_track stage's
    settings, not the detector's. `auto` logs one line saying which backend it chose and why.

    Raises `WeightsNotFound` for an explicit `yolo` without local weights, naming every place looked in.
    """
    if config.backend == "bgsub":
        return _open_bgsub(config, threads, track_lifetime_s, reason="configured")
    search = find_weights(config.weights)
    if search.found is None:
        looked = ", ".join(str(p) for p in search.looked_in) or "no candidates configured"
        if config.backend == "yolo":
            raise WeightsNotFound(
                f"detector.backend=yolo but no weights found (looked in: {looked}). Official names such as "
                "yolo11n-seg.pt are fetched by Ultralytics on a connected machine; this project never "
                "downloads at run time, so list a local file in detector.weights, e.g. from "
                f"{SHARED_MODELS_HINT}"
            )
        return _open_bgsub(config, threads, track_lifetime_s, reason=f"yolo weights not found (looked in: {looked})")
    from engines.detect.yolo import YoloTracker

    tracker = YoloTracker(search.found, config, threads, track_lifetime_s)
    log.info(
        "detector: yolo (%s) weights=%s task=%s imgsz=%s tracker=%s threads=%d",
        "configured" if config.backend == "yolo" else "auto: weights found",
        search.found,
        tracker.task,
        tracker.imgsz_px,
        config.tracker,
        threads,
    )
    return tracker


def _open_bgsub(config: DetectorSettings, threads: int, track_lifetime_s: float, *,
                reason: str) -> MultiStreamTracker:
    from engines.detect.bgsub import BgsubTracker

    log.info("detector: %s; using bgsub (%s, work_scale=%.2f)", reason, config.method, config.work_scale)
    return BgsubTracker(config, threads, track_lifetime_s)
