"""Drawing the live overlay: boxes, track ids, identity labels with confidence, silhouette insets, fps, latency.

Pure functions over numpy images, shared by the overlay window and the annotated video so both show the same.
"""

from __future__ import annotations

from collections.abc import Mapping

import cv2
import numpy as np
from numpy.typing import NDArray

from pipeline.messages import FrameRecord

UNKNOWN = "unknown"
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def track_colour(track_id: int) -> tuple[int, int, int]:
    """A stable, well-separated BGR colour per track id (golden-ratio hue steps)."""
    hue = int((track_id * 0.618033988749895 % 1.0) * 179)
    bgr = cv2.cvtColor(np.uint8([[[hue, 200, 255]]]), cv2.COLOR_HSV2BGR)[0, 0]
    return int(bgr[0]), int(bgr[1]), int(bgr[2])


def _label(image: NDArray[np.uint8], text: str, origin: tuple[int, int], colour: tuple[int, int, int],
           scale: float) -> None:
    thickness = max(1, int(round(scale * 2)))
    (width, height), baseline = cv2.getTextSize(text, _FONT, scale, thickness)
    x, y = origin
    y = max(y, height + baseline + 2)
    cv2.rectangle(image, (x, y - height - baseline - 2), (x + width + 4, y + 2), colour, -1)
    cv2.putText(image, text, (x + 2, y - baseline), _FONT, scale, (0, 0, 0), thickness, cv2.LINE_AA)


def draw_overlay(
    frame: NDArray[np.uint8],
    record: FrameRecord,
    labels: Mapping[int, tuple[str, float]],
    silhouettes: Mapping[int, NDArray[np.uint8]],
    *,
    fps: float,
    latency_ms: float,
    inset_height_px: int = 128,
) -> NDArray[np.uint8]:
    """A copy of `frame` with the record's tracks drawn on it.

    `labels` maps track id -> (identity name or 'unknown', confidence in [0, 1]); `silhouettes` maps track id ->
    its latest (64, 44) silhouette, shown as insets along the top edge.
    """
    image = frame.copy()
    scale = max(0.5, image.shape[0] / 1400)
    thickness = max(2, int(round(scale * 3)))
    tracks = record.tracks
    for box, track_id in zip(tracks.boxes_xyxy_px, tracks.track_ids.tolist()):
        colour = track_colour(track_id)
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(image, (x1, y1), (x2, y2), colour, thickness)
        name, score = labels.get(track_id, ("", 0.0))
        text = f"#{track_id}" + (f" {name} {score:.2f}" if name and name != UNKNOWN else f" {name}" if name else "")
        _label(image, text, (x1, y1 - 4), colour, scale)

    x = 8
    for track_id, silhouette in list(silhouettes.items())[-6:]:
        inset = cv2.resize(silhouette, (inset_height_px * 44 // 64, inset_height_px), interpolation=cv2.INTER_NEAREST)
        inset = cv2.cvtColor(inset, cv2.COLOR_GRAY2BGR)
        y = int(40 * scale) + 8
        if y + inset.shape[0] <= image.shape[0] and x + inset.shape[1] <= image.shape[1]:
            image[y : y + inset.shape[0], x : x + inset.shape[1]] = inset
            cv2.rectangle(image, (x, y), (x + inset.shape[1], y + inset.shape[0]), track_colour(track_id), 2)
            x += inset.shape[1] + 8

    status = f"{record.stream_id}  frame {record.seq}  {fps:.1f} fps  latency {latency_ms:.0f} ms"
    _label(image, status, (8, int(36 * scale)), (255, 255, 255), scale * 0.8)
    return image
