"""segment: turns each track's mask into an OpenGait silhouette (64×44 uint8), or says why it could not.

Masks come from `engines.segment` (the detector's own masks from YOLO-seg or background subtraction, a person
segmenter on each track's crop, or Segment Anything with box prompts); `engines.pretreat` crops, centres and
resizes them exactly as OpenGait's pretreatment does, so the encoder sees what it was trained on. Masks are first
cleaned of specks and checked against the tracker's box (`engines.segment.MaskQuality`). Rejections (tiny,
truncated at the frame edge, too wide, empty, sparse, fragmented, partial) are counted per reason and travel with
the frame.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
from pydantic import Field, ValidationInfo, field_validator

from engines.detect import Detections
from engines.segment import MaskQuality, Segmenter, SegmenterSettings, open_segmenter, pretreat_track_mask
from pipeline.config import StageConfig, resolve_config_path
from pipeline.messages import DataMessage, FrameRecord, Rejections, Silhouettes
from pipeline.stage import Stage


class SegmentConfig(StageConfig):
    """Where masks come from and which masks are good enough to become silhouettes. The segmenter's CPU threads are
    the stage's `threads`."""

    replaced_keys = {
        "segmenter.threads": "the segmenter runs with the stage's CPU threads: set stages.segment.threads",
    }

    segmenter: SegmenterSettings = Field(default_factory=SegmenterSettings)
    min_height_px: int = Field(48, ge=8, description="shortest person (mask rows, source pixels) worth using")
    border_margin_px: int = Field(2, ge=0, description="a mask this close to a frame edge is a person cut off")
    max_width_ratio: float = Field(1.0, gt=0, description="masks wider than tall times this are not one walker")
    min_fill_ratio: float = Field(0.15, ge=0, lt=1, description="a mask filling less of its box is a lost person")
    min_largest_share: float = Field(0.6, ge=0, le=1, description="a mask whose largest piece holds less is "
                                     "fragmented")
    min_height_ratio: float = Field(0.7, ge=0, le=1, description="a mask shorter than this share of its box "
                                    "covers only part of the person")
    thin_px: float = Field(0.0, ge=0, le=4, description="pull each silhouette's boundary in by this many pixels of "
                           "the 64-high network input: segmenters' masks are fatter than the training silhouettes")

    @field_validator("segmenter")
    @classmethod
    def _resolve_weight_paths(cls, value: SegmenterSettings, info: ValidationInfo) -> SegmenterSettings:
        updates = {name: resolve_config_path(getattr(value, name), info)
                   for name in ("humanseg_weights", "sam_weights") if getattr(value, name, None) is not None}
        return value.model_copy(update=updates)


class SegmentStage(Stage[SegmentConfig]):
    name = "segment"
    Config: ClassVar[type[StageConfig]] = SegmentConfig

    def open(self) -> None:
        config = self.config
        self.segmenter: Segmenter = open_segmenter(config.segmenter, threads=config.threads)
        self.quality = MaskQuality(min_fill_ratio=config.min_fill_ratio, min_largest_share=config.min_largest_share,
                                   min_height_ratio=config.min_height_ratio)

    def process(self, record: FrameRecord) -> list[DataMessage]:
        config = self.config
        tracks = record.tracks
        detections = Detections(tracks.boxes_xyxy_px, tracks.track_ids, tracks.scores, record.label_map)
        masks = self.segmenter.masks(record.frame.pixels, detections) if len(tracks) else []
        frame_hw = (record.frame.height_px, record.frame.width_px)
        kept_ids, images, rejected_ids, reasons = [], [], [], []
        for track_id, box, track_mask in zip(tracks.track_ids.tolist(), tracks.boxes_xyxy_px, masks):
            result = None if track_mask is None else pretreat_track_mask(
                track_mask, frame_hw, edge_tolerance_px=config.border_margin_px,
                min_height_px=config.min_height_px, max_width_ratio=config.max_width_ratio, box_xyxy_px=box,
                quality=self.quality, thin_px=config.thin_px)
            if isinstance(result, np.ndarray):
                kept_ids.append(track_id)
                images.append(result)
            else:
                reason = "no_mask" if result is None else result.reason
                rejected_ids.append(track_id)
                reasons.append(reason)
                self.context.metrics.inc("silhouettes_rejected_total", reason=reason)
        self.context.metrics.inc("silhouettes_total", len(images))
        silhouettes = Silhouettes(
            np.asarray(kept_ids, np.int64),
            np.stack(images) if images else np.zeros((0, 64, 44), np.uint8),
        )
        return [dataclasses.replace(record, label_map=None, silhouettes=silhouettes,
                                    rejections=Rejections(np.asarray(rejected_ids, np.int64), tuple(reasons)))]
