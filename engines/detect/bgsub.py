"""Background-subtraction backend: people are the moving blobs in front of a fixed camera.

This is how CASIA-B's own silhouettes were made, and it needs no weights. Per frame and stream:
1. OpenCV MOG2 / KNN on a downscaled frame (`work_scale`); shadow pixels (127) are dropped, only 255 counts.
2. Opening removes speckle (leaves, sensor noise); a closing taller than wide joins a person's limbs.
3. Connected components; fragments stacked vertically (head/torso split from legs by a similar-coloured
   background) are merged into one blob; blobs are kept when area, height and width/height look like a person.
4. `BlobTracker`: predicted-box IoU + centre distance, one Hungarian assignment (`lap.lapjv`); a blob gets an
   id only after `min_hits_frames` consecutive frames; a track ends after the track lifetime's worth of unseen
   frames (`lost_frames`, from the stream's frame rate).
The label map comes from the kept components, so segmentation needs no second model.
Must not import `pipeline` or `stages`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import lap
import numpy as np
from numpy.typing import NDArray

from engines.detect import DEFAULT_TRACK_LIFETIME_S, Detections, DetectorSettings, StreamFrame, lost_frames

log = logging.getLogger(__name__)

_INFEASIBLE = 1e6
_MAX_MATCH_COST = 2.0  # (1 - IoU) + distance / max distance, both at their worst feasible value
_MIN_HORIZONTAL_OVERLAP = 0.5  # of the narrower fragment, for two fragments to be one person


@dataclass(frozen=True)
class BlobParams:
    """`DetectorSettings`' bgsub values on the downscaled working grid (lengths × scale, areas × scale²)."""

    scale: float
    open_kernel: NDArray[np.uint8]
    close_kernel: NDArray[np.uint8]
    min_fragment_area: float
    merge_gap: float
    min_area: float
    min_height: float
    max_width_to_height: float

    @classmethod
    def from_settings(cls, settings: DetectorSettings) -> BlobParams:
        scale = settings.work_scale

        def odd(length_px: int) -> int:
            return max(1, round(length_px * scale)) | 1

        return cls(
            scale=scale,
            open_kernel=cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (odd(settings.open_kernel_px),) * 2),
            close_kernel=cv2.getStructuringElement(
                cv2.MORPH_ELLIPSE, (odd(settings.close_kernel_w_px), odd(settings.close_kernel_h_px))
            ),
            min_fragment_area=settings.min_fragment_area_px * scale**2,
            merge_gap=settings.merge_gap_px * scale,
            min_area=settings.min_area_px * scale**2,
            min_height=settings.min_height_px * scale,
            max_width_to_height=settings.max_width_to_height,
        )


@dataclass(frozen=True)
class Blobs:
    """People-sized foreground blobs of one frame, in the working grid.

    `components` maps each connected-component label to the blob it belongs to (0 = none), so the label map of
    any subset of blobs is one table lookup on `labels`.
    """

    boxes_xyxy: NDArray[np.float32]  # (m, 4) working-grid pixels
    labels: NDArray[np.int32]  # (h, w) connected-component label per pixel
    components: NDArray[np.int64]  # (n_components,) blob index + 1 per component label, 0 = dropped


def find_blobs(foreground: NDArray[np.uint8], params: BlobParams) -> Blobs:
    """Clean a 0/255 foreground mask, label its components and merge them into person-sized blobs."""
    mask = cv2.morphologyEx((foreground == 255).astype(np.uint8), cv2.MORPH_OPEN, params.open_kernel)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, params.close_kernel)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    fragments = [c for c in range(1, count) if stats[c, cv2.CC_STAT_AREA] >= params.min_fragment_area]
    groups = _merge_stacked([stats[c, :4].astype(np.float64) for c in fragments], params.merge_gap)

    components = np.zeros(count, np.int64)
    boxes = []
    for members in groups:
        member_stats = stats[[fragments[i] for i in members]]
        x1, y1 = member_stats[:, 0].min(), member_stats[:, 1].min()
        x2 = (member_stats[:, 0] + member_stats[:, 2]).max()
        y2 = (member_stats[:, 1] + member_stats[:, 3]).max()
        width, height = x2 - x1, y2 - y1
        if (
            member_stats[:, cv2.CC_STAT_AREA].sum() < params.min_area
            or height < params.min_height
            or width > params.max_width_to_height * height
        ):
            continue
        boxes.append((x1, y1, x2, y2))
        components[[fragments[i] for i in members]] = len(boxes)
    return Blobs(np.asarray(boxes, np.float32).reshape(-1, 4), labels, components)


def _merge_stacked(boxes_xywh: list[NDArray[np.float64]], max_gap: float) -> list[list[int]]:
    """Group fragments that overlap horizontally and are at most `max_gap` apart vertically, to a fixpoint."""
    groups = [[i] for i in range(len(boxes_xywh))]
    spans = [np.array([b[0], b[1], b[0] + b[2], b[1] + b[3]]) for b in boxes_xywh]
    merged = True
    while merged:
        merged = False
        for i in range(len(groups)):
            for j in range(i + 1, len(groups)):
                a, b = spans[i], spans[j]
                overlap_x = min(a[2], b[2]) - max(a[0], b[0])
                gap_y = max(a[1], b[1]) - min(a[3], b[3])
                if overlap_x >= _MIN_HORIZONTAL_OVERLAP * min(a[2] - a[0], b[2] - b[0]) and gap_y <= max_gap:
                    groups[i] += groups.pop(j)
                    spans[i] = np.concatenate([np.minimum(a[:2], b[:2]), np.maximum(a[2:], b[2:])])
                    spans.pop(j)
                    merged = True
                    break
            if merged:
                break
    return groups


@dataclass
class _BlobTrack:
    box_xyxy: NDArray[np.float64]
    velocity_xy: NDArray[np.float64] = field(default_factory=lambda: np.zeros(2))  # centre motion, px per frame
    hits: int = 1  # consecutive matched frames while tentative
    misses: int = 0  # consecutive unmatched frames
    track_id: int = 0  # 0 while tentative

    def predicted_box(self) -> NDArray[np.float64]:
        return self.box_xyxy + np.tile(self.velocity_xy * (self.misses + 1), 2)


class BlobTracker:
    """Ids for one stream's blobs: a tentative track must match `min_hits_frames` frames in a row for an id.

    Ids count up from `first_id` and are never reused. Matching cost is (1 - IoU of the constant-velocity
    prediction) + centre distance / `max_match_distance_px`; pairs farther apart than that distance never
    match.
    """

    def __init__(self, settings: DetectorSettings, max_lost_frames: int, first_id: int = 1) -> None:
        self._max_distance_px = settings.max_match_distance_px
        self._min_hits = settings.min_hits_frames
        self.max_lost_frames = max_lost_frames
        self._next_id = first_id
        self._tracks: list[_BlobTrack] = []

    @property
    def last_id(self) -> int:
        return self._next_id - 1

    def update(self, boxes_xyxy_px: NDArray[np.float32]) -> list[tuple[int, int]]:
        """Boxes (m, 4) of this frame -> (box index, track id) for each box of a confirmed track."""
        matches = self._assign(boxes_xyxy_px.astype(np.float64))
        matched_tracks = {t for t, _ in matches}
        confirmed: list[tuple[int, int]] = []
        for t, d in matches:
            track = self._tracks[t]
            box = boxes_xyxy_px[d].astype(np.float64)
            step = (_centre(box) - _centre(track.box_xyxy)) / (track.misses + 1)
            track.velocity_xy = 0.5 * track.velocity_xy + 0.5 * step
            track.box_xyxy, track.misses = box, 0
            if track.track_id == 0:
                track.hits += 1
                self._confirm_if_ready(track)
            if track.track_id:
                confirmed.append((d, track.track_id))
        survivors = [self._tracks[t] for t in sorted(matched_tracks)]
        for t, track in enumerate(self._tracks):
            if t in matched_tracks or track.track_id == 0:
                continue  # an unmatched tentative track was noise
            track.misses += 1
            if track.misses <= self.max_lost_frames:
                survivors.append(track)
            else:
                log.debug("track ended track_id=%d", track.track_id)
        matched_boxes = {d for _, d in matches}
        for d in range(len(boxes_xyxy_px)):
            if d in matched_boxes:
                continue
            track = _BlobTrack(boxes_xyxy_px[d].astype(np.float64))
            self._confirm_if_ready(track)
            if track.track_id:
                confirmed.append((d, track.track_id))
            survivors.append(track)
        self._tracks = survivors
        return sorted(confirmed)

    def _confirm_if_ready(self, track: _BlobTrack) -> None:
        if track.hits >= self._min_hits:
            track.track_id = self._next_id
            self._next_id += 1

    def _assign(self, boxes: NDArray[np.float64]) -> list[tuple[int, int]]:
        if not self._tracks or len(boxes) == 0:
            return []
        predicted = np.stack([t.predicted_box() for t in self._tracks])
        distance = np.linalg.norm(_centre(predicted)[:, None] - _centre(boxes)[None], axis=-1)
        cost = (1.0 - _iou(predicted, boxes)) + distance / self._max_distance_px
        cost[distance > self._max_distance_px] = _INFEASIBLE
        _, track_for_box, _ = lap.lapjv(cost, extend_cost=True, cost_limit=_MAX_MATCH_COST)
        return [(t, int(d)) for t, d in enumerate(track_for_box) if d >= 0]


def _centre(boxes_xyxy: NDArray[np.float64]) -> NDArray[np.float64]:
    return (boxes_xyxy[..., :2] + boxes_xyxy[..., 2:]) / 2


def _iou(a: NDArray[np.float64], b: NDArray[np.float64]) -> NDArray[np.float64]:
    """(p, 4) × (q, 4) xyxy boxes -> (p, q) intersection over union."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    intersection = np.prod(np.clip(bottom_right - top_left, 0, None), axis=-1)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=-1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=-1)
    return intersection / np.maximum(area_a[:, None] + area_b[None] - intersection, 1e-9)


@dataclass
class _StreamState:
    subtractor: cv2.BackgroundSubtractor
    tracker: BlobTracker
    frames_seen: int = 0


class BgsubTracker:
    """`MultiStreamTracker` by background subtraction: a background model and a `BlobTracker` per stream."""

    backend = "bgsub"

    def __init__(self, settings: DetectorSettings, threads: int = 1,
                 track_lifetime_s: float = DEFAULT_TRACK_LIFETIME_S) -> None:
        self._settings = settings
        self._track_lifetime_s = track_lifetime_s
        self._params = BlobParams.from_settings(settings)
        self._streams: dict[str, _StreamState] = {}
        self._last_ids: dict[str, int] = {}  # survives end_stream so a restarted stream never reuses an id
        cv2.setNumThreads(threads)

    def update(self, frames: Sequence[StreamFrame]) -> list[Detections]:
        """Each frame updates its own stream's background model and tracker, in order."""
        return [self._update_stream(StreamFrame(*frame)) for frame in frames]

    def end_stream(self, stream_id: str) -> None:
        state = self._streams.pop(stream_id, None)
        if state is not None:
            self._last_ids[stream_id] = state.tracker.last_id

    def _update_stream(self, stream_frame: StreamFrame) -> Detections:
        stream_id, frame = stream_frame.stream_id, stream_frame.pixels
        state = self._streams.get(stream_id)
        if state is None:
            state = _StreamState(
                self._new_subtractor(),
                BlobTracker(self._settings, lost_frames(self._track_lifetime_s, stream_frame.fps),
                            first_id=self._last_ids.get(stream_id, 0) + 1),
            )
            self._streams[stream_id] = state
        height, width = frame.shape[:2]
        scale = self._params.scale
        small = frame if scale == 1 else cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        foreground = state.subtractor.apply(small)
        state.frames_seen += 1
        if state.frames_seen <= self._settings.warmup_frames:
            return Detections.empty(np.zeros((height, width), np.uint8))
        blobs = find_blobs(foreground, self._params)
        boxes_px = blobs.boxes_xyxy / np.float32(scale)
        tracked = state.tracker.update(boxes_px)
        if not tracked:
            return Detections.empty(np.zeros((height, width), np.uint8))
        blob_index = np.array([d for d, _ in tracked])
        # Relabel blob b+1 -> its detection k+1, everything else -> 0, then upscale the working-grid map.
        detection_of_blob = np.zeros(len(blobs.boxes_xyxy) + 1, np.uint8)
        detection_of_blob[blob_index + 1] = np.arange(1, len(tracked) + 1)
        small_map = detection_of_blob[blobs.components][blobs.labels]
        label_map = cv2.resize(small_map, (width, height), interpolation=cv2.INTER_NEAREST)
        return Detections(
            boxes_xyxy_px=np.clip(boxes_px[blob_index], 0, [width, height, width, height]).astype(np.float32),
            track_ids=np.array([i for _, i in tracked], np.int64),
            scores=np.ones(len(tracked), np.float32),
            label_map=label_map,
        )

    def _new_subtractor(self) -> cv2.BackgroundSubtractor:
        s = self._settings
        if s.method == "mog2":
            return cv2.createBackgroundSubtractorMOG2(
                history=s.history_frames, varThreshold=s.var_threshold or 16.0, detectShadows=True
            )
        return cv2.createBackgroundSubtractorKNN(
            history=s.history_frames, dist2Threshold=s.var_threshold or 400.0, detectShadows=True
        )
