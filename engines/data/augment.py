"""Silhouette-sequence augmentations after OpenGait's `data/transform.py` (GaitBase's data-augmented configs).

Each transform fires with its own probability and, as in OpenGait (`per_frame=False`), applies the same parameters to
every frame of a sequence so the gait itself is not distorted. The geometric ones (rotation, affine, perspective)
are composed into one homography and warped in a single OpenCV call over all T frames (about 0.2 ms per 30-frame
sequence). Randomness comes only from the `numpy.random.Generator` passed in, which makes training resumable
bit-exactly.

Must not import `pipeline` or `stages`.
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field


class AugmentConfig(BaseModel):
    """Probabilities and ranges of the sequence-level augmentations; all zero disables augmentation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rotate_prob: float = Field(0.0, ge=0, le=1, description="OpenGait RandomRotate")
    rotate_degrees: float = Field(10.0, ge=0, le=90, description="max |angle| of RandomRotate, degrees")
    affine_prob: float = Field(0.0, ge=0, le=1, description="OpenGait RandomAffine: rotation, shift, scale, shear")
    perspective_prob: float = Field(0.0, ge=0, le=1, description="OpenGait RandomPerspective")
    perspective_px: float = Field(4.0, ge=0, le=20, description="max corner displacement of RandomPerspective, px")
    flip_prob: float = Field(0.0, ge=0, le=1, description="OpenGait RandomHorizontalFlip")
    erasing_prob: float = Field(0.0, ge=0, le=1, description="OpenGait RandomErasing (one box, all frames)")


def _rotation(rng: np.random.Generator, degrees: float, center: tuple[float, float]) -> NDArray[np.float64]:
    matrix = np.eye(3)
    matrix[:2] = cv2.getRotationMatrix2D(center, float(rng.uniform(-degrees, degrees)), 1.0)
    return matrix


def _affine(rng: np.random.Generator, center: tuple[float, float], width: int, height: int) -> NDArray[np.float64]:
    """Rotation up to 10 degrees, shift up to 5 %, scale 0.9-1.1 and shear up to 0.1, about the centre."""
    matrix = np.eye(3)
    matrix[:2] = cv2.getRotationMatrix2D(center, float(rng.uniform(-10, 10)), float(rng.uniform(0.9, 1.1)))
    shear = np.eye(3)
    shear[0, 1] = rng.uniform(-0.1, 0.1)
    shear[0, 2] = -shear[0, 1] * center[1]
    shift = np.eye(3)
    shift[0, 2] = rng.uniform(-0.05, 0.05) * width
    shift[1, 2] = rng.uniform(-0.05, 0.05) * height
    return shift @ shear @ matrix


def _perspective(rng: np.random.Generator, max_px: float, width: int, height: int) -> NDArray[np.float64]:
    corners = np.float32([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]])
    moved = corners + rng.uniform(-max_px, max_px, size=corners.shape).astype(np.float32)
    return cv2.getPerspectiveTransform(corners, moved).astype(np.float64)


def augment_sequence(
    frames: NDArray[np.uint8], config: AugmentConfig, rng: np.random.Generator
) -> NDArray[np.uint8]:
    """(T, H, W) uint8 silhouettes -> augmented (T, H, W) uint8 (a new array; the input is not modified)."""
    _, height, width = frames.shape
    center = ((width - 1) / 2.0, (height - 1) / 2.0)
    homography = np.eye(3)
    if rng.random() < config.rotate_prob:
        homography = _rotation(rng, config.rotate_degrees, center) @ homography
    if rng.random() < config.affine_prob:
        homography = _affine(rng, center, width, height) @ homography
    if rng.random() < config.perspective_prob:
        homography = _perspective(rng, config.perspective_px, width, height) @ homography
    out = frames
    if not np.array_equal(homography, np.eye(3)):
        warped = cv2.warpPerspective(
            np.ascontiguousarray(frames.transpose(1, 2, 0)), homography, (width, height), flags=cv2.INTER_LINEAR
        )
        out = warped.reshape(height, width, -1).transpose(2, 0, 1)
    if rng.random() < config.flip_prob:
        out = out[:, :, ::-1]
    if rng.random() < config.erasing_prob:
        out = out.copy()
        area = rng.uniform(0.05, 0.2) * height * width
        aspect = rng.uniform(0.3, 1 / 0.3)
        box_h = int(min(height, round(np.sqrt(area * aspect))))
        box_w = int(min(width, round(np.sqrt(area / aspect))))
        top = int(rng.integers(0, height - box_h + 1))
        left = int(rng.integers(0, width - box_w + 1))
        out[:, top : top + box_h, left : left + box_w] = 0
    return np.ascontiguousarray(out)
