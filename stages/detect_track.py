"""detect_track: finds and tracks people in every frame; decides when a track has ended.

The computation lives in `engines.detect` (YOLO + ByteTrack/BoT-SORT, or background subtraction + its own
tracker); this stage batches frames from all streams into one detector call, stitches tracker fragments of one walk
into one track (`engines.detect.stitch`), keeps track ids unique per stream and never reused (across tracker resets
and its own restarts), and marks a track as ended once it has been unseen for `track_lifetime_s` of media time
(or when its stream ends). That one lifetime also sets how many frames the tracker keeps an unseen person's id
(with the rate each stream delivers, `FrameRecord.fps`) and how long a lost walk may still be stitched, so the
tracker, the stitcher and the track's end agree on when a walk is over.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, ValidationInfo, field_validator

from engines.detect import DEFAULT_TRACK_LIFETIME_S, DetectorSettings, MultiStreamTracker, StreamFrame, open_tracker
from engines.detect.stitch import TrackStitcher
from pipeline.config import StageConfig, resolve_config_path
from pipeline.messages import DataMessage, EndOfStream, FrameRecord, Tracks
from pipeline.stage import Stage

log = logging.getLogger(__name__)

# A restarted stage starts new trackers; offsetting their ids by incarnation keeps ids unique within a stream.
TRACK_ID_STRIDE = 1_000_000


class DetectTrackConfig(StageConfig):
    """Which detector, and when a track counts as ended. The detector's CPU threads are the stage's `threads`."""

    replaced_keys = {
        "detector.threads": "the detector runs with the stage's CPU threads: set stages.detect_track.threads",
        "track_end_after_s": "set stages.detect_track.track_lifetime_s (seconds), the one track lifetime",
        "detector.max_lost_frames": "set stages.detect_track.track_lifetime_s (seconds), the one track lifetime; "
        "the tracker's frames follow from it and the stream's frame rate",
    }

    detector: DetectorSettings = Field(default_factory=DetectorSettings)
    track_lifetime_s: float = Field(
        DEFAULT_TRACK_LIFETIME_S, gt=0, description="a person unseen this long (media time) has left: the track "
        "ends, the tracker drops the id (this many seconds of the stream's frames), and a lost walk can no longer "
        "be stitched")
    stitch_fragments: bool = Field(True, description="continue a lost walk when a new tracker id appears where "
                                   "and at the size it should be")

    @field_validator("detector")
    @classmethod
    def _resolve_weight_paths(cls, value: DetectorSettings, info: ValidationInfo) -> DetectorSettings:
        """Paths with a folder part resolve against the config file's folder; bare names stay official names."""
        resolved = [str(resolve_config_path(w, info)) if len(Path(w).parts) > 1 else str(w) for w in value.weights]
        return value.model_copy(update={"weights": resolved})


@dataclass
class _StreamTracks:
    """Per-stream state: when each live track was last seen (media seconds), and tracker ids -> track ids."""

    stitcher: TrackStitcher
    last_seen_s: dict[int, float] = field(default_factory=dict)


class DetectTrackStage(Stage[DetectTrackConfig]):
    name = "detect_track"
    Config: ClassVar[type[StageConfig]] = DetectTrackConfig

    def open(self) -> None:
        config = self.config
        self.tracker: MultiStreamTracker = self.open_tracker(config.detector)
        self.id_offset = self.context.incarnation * TRACK_ID_STRIDE
        self.streams: dict[str, _StreamTracks] = {}
        self.next_ids: dict[str, int] = {}  # survives a stream's end: ids are never reused within a stream
        self.context.metrics.set("detector_info", 1.0, backend=self.tracker.backend)

    def open_tracker(self, settings: DetectorSettings) -> MultiStreamTracker:
        """The detector + tracker this stage drives (a tool may substitute recorded detections)."""
        return open_tracker(settings, threads=self.config.threads, track_lifetime_s=self.config.track_lifetime_s)

    def process_batch(self, records: list[FrameRecord]) -> list[DataMessage]:
        detections = self.tracker.update([StreamFrame(r.stream_id, r.frame.pixels, r.fps) for r in records])
        return [self._annotate(record, found) for record, found in zip(records, detections)]

    def _stream(self, stream_id: str) -> _StreamTracks:
        config = self.config
        state = self.streams.get(stream_id)
        if state is None:
            gap = config.track_lifetime_s if config.stitch_fragments else 0.0
            first = self.next_ids.get(stream_id, self.id_offset + 1)
            state = self.streams[stream_id] = _StreamTracks(TrackStitcher(max_gap_s=gap, first_id=first))
        return state

    def _annotate(self, record: FrameRecord, found: Any) -> FrameRecord:
        config = self.config
        state = self._stream(record.stream_id)
        stitched_before = state.stitcher.stitched
        track_ids = state.stitcher.update(record.pts_s, found.track_ids, found.boxes_xyxy_px)
        self.next_ids[record.stream_id] = state.stitcher.next_id
        if state.stitcher.stitched > stitched_before:
            self.context.metrics.inc("tracks_stitched_total", state.stitcher.stitched - stitched_before)
        for track_id in track_ids.tolist():
            if track_id not in state.last_seen_s:
                log.info("track started stream=%s track=%d seq=%d", record.stream_id, track_id, record.seq)
                self.context.metrics.inc("tracks_started_total")
            state.last_seen_s[track_id] = record.pts_s
        ended = sorted(t for t, seen in state.last_seen_s.items() if record.pts_s - seen > config.track_lifetime_s)
        for track_id in ended:
            del state.last_seen_s[track_id]
            state.stitcher.forget(track_id)
            log.info("track ended stream=%s track=%d seq=%d", record.stream_id, track_id, record.seq)
        self.context.metrics.set_live_tracks(sum(len(s.last_seen_s) for s in self.streams.values()))
        return dataclasses.replace(
            record,
            tracks=Tracks(found.boxes_xyxy_px, track_ids.astype(np.int64), found.scores),
            label_map=found.label_map,
            ended_track_ids=np.asarray(ended, np.int64),
        )

    def on_end_of_stream(self, eos: EndOfStream) -> list[DataMessage]:
        state = self.streams.pop(eos.stream_id, None)
        self.tracker.end_stream(eos.stream_id)
        ended = sorted(state.last_seen_s) if state is not None else []
        return [dataclasses.replace(eos, ended_track_ids=np.asarray(ended, np.int64))]
