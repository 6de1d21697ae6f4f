"""Silhouette-sequence augmentations: OpenGait's `data/transform.py` (GaitBase's data-augmented configs), plus the
degradations that make CASIA-B's lab silhouettes look like the ones a pipeline cuts out of real footage.

Each transform fires with its own probability and, as in OpenGait (`per_frame=False`), applies the same parameters to
every frame of a sequence so the gait itself is not distorted. The real-footage degradations, each with its reason:
- `flip`: people walk both ways past real cameras; CASIA-B's walk one way per view (`pretreat.mirror_silhouettes`,
  which keeps the pretreatment's centring).
- `low_res`: a person 30-60 px tall (a far or low-resolution camera) loses the leg gaps and limb outlines; the
  sequence is shrunk to such a height and scaled back up as pretreatment does.
- `morph`: instance-segmentation masks are fatter and smoother than background subtraction's (merged legs and arms,
  filled gaps); dilation, erosion or blur-then-threshold of 1-2 px.
- `truncate`: masks that miss the feet or the head; pretreatment then stretches the rest to 64 rows.
- `holes`: fragments and holes where the mask lost the person (per frame, unlike `erasing`).
Frame-rate jitter is not needed: training draws frames unordered and GaitBase pools over time.
The geometric transforms (rotation, affine, perspective) are composed into one homography and warped in a single
OpenCV call over all T frames (about 0.2 ms per 30-frame sequence). Randomness comes only from the
`numpy.random.Generator` passed in, which makes training resumable bit-exactly.

Must not import `pipeline` or `stages`.
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from engines.pretreat import Rejection, mirror_silhouettes, pretreat_padded


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
    low_res_prob: float = Field(0.0, ge=0, le=1, description="shrink to a small person height and back")
    low_res_height_px: tuple[int, int] = Field((24, 56), description="person heights drawn for low_res, px")
    morph_prob: float = Field(0.0, ge=0, le=1, description="dilate, erode or blur-threshold the masks")
    truncate_prob: float = Field(0.0, ge=0, le=1, description="cut 5-15 % of the rows at the feet or head")
    holes_prob: float = Field(0.0, ge=0, le=1, description="small holes in random frames")


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
    return augment_sequence_flipped(frames, config, rng)[0]


def augment_sequence_flipped(
    frames: NDArray[np.uint8], config: AugmentConfig, rng: np.random.Generator
) -> tuple[NDArray[np.uint8], bool]:
    """`augment_sequence`, and whether the walk was mirrored (so 3D targets can be mirrored with it)."""
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
    flipped = rng.random() < config.flip_prob
    if flipped:
        out = mirror_silhouettes(out)
    if rng.random() < config.truncate_prob:
        out = _truncate(out, rng)
    if rng.random() < config.low_res_prob:
        out = _low_res(out, int(rng.integers(config.low_res_height_px[0], config.low_res_height_px[1] + 1)))
    if rng.random() < config.morph_prob:
        out = _morph(out, rng)
    if rng.random() < config.holes_prob:
        out = _holes(out, rng)
    if rng.random() < config.erasing_prob:
        out = out.copy()
        area = rng.uniform(0.05, 0.2) * height * width
        aspect = rng.uniform(0.3, 1 / 0.3)
        box_h = int(min(height, round(np.sqrt(area * aspect))))
        box_w = int(min(width, round(np.sqrt(area / aspect))))
        top = int(rng.integers(0, height - box_h + 1))
        left = int(rng.integers(0, width - box_w + 1))
        out[:, top : top + box_h, left : left + box_w] = 0
    return np.ascontiguousarray(out), bool(flipped)


def _as_frames_last(frames: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """(T, H, W) -> (H, W, T) contiguous: OpenCV filters every frame in one call when frames are channels."""
    return np.ascontiguousarray(frames.transpose(1, 2, 0))


def _from_frames_last(image: NDArray[np.uint8], frames: int) -> NDArray[np.uint8]:
    return np.ascontiguousarray(image.reshape(image.shape[0], image.shape[1], frames).transpose(2, 0, 1))


def _binary(frames: NDArray[np.uint8]) -> NDArray[np.uint8]:
    return np.where(frames > 127, 255, 0).astype(np.uint8)


def _resize_frames(frames: NDArray[np.uint8], width: int, height: int, interpolation: int) -> NDArray[np.uint8]:
    return np.stack([cv2.resize(frame, (width, height), interpolation=interpolation) for frame in frames])


def _low_res(frames: NDArray[np.uint8], height_px: int) -> NDArray[np.uint8]:
    """The walker as a `height_px`-tall mask (area-averaged, thresholded as a segmenter would), scaled back up."""
    _, height, width = frames.shape
    small_w = max(2, round(width * height_px / height))
    small = _binary(_resize_frames(frames, small_w, height_px, cv2.INTER_AREA))
    return _binary(_resize_frames(small, width, height, cv2.INTER_CUBIC))


def _morph(frames: NDArray[np.uint8], rng: np.random.Generator) -> NDArray[np.uint8]:
    """Dilation (most often: instance masks run fat), erosion, or a blur then a threshold that fills limb gaps."""
    kind = rng.choice(["dilate", "dilate", "erode", "blur"])
    if kind == "blur":
        sigma = float(rng.uniform(0.8, 1.6))
        blurred = _from_frames_last(cv2.GaussianBlur(_as_frames_last(frames), (0, 0), sigma), len(frames))
        return np.where(blurred > rng.uniform(90, 150), 255, 0).astype(np.uint8)
    size = int(rng.integers(2, 4))  # a 2 or 3 px structuring element at 64 px height
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    operation = cv2.dilate if kind == "dilate" else cv2.erode
    return np.stack([operation(frame, kernel) for frame in frames])


def _truncate(frames: NDArray[np.uint8], rng: np.random.Generator) -> NDArray[np.uint8]:
    """Lose 5-15 % of the person's rows at the feet (more often) or the head, then pretreat again, as the
    pipeline would: the remaining rows are stretched to the full height."""
    share = float(rng.uniform(0.05, 0.15))
    feet = rng.random() < 0.7
    out = np.zeros_like(frames)
    for i, frame in enumerate(frames):
        rows = np.flatnonzero(frame.any(axis=1))
        if rows.size < 8:
            out[i] = frame
            continue
        cut = max(1, round(share * rows.size))
        kept = frame.copy()
        if feet:
            kept[rows[-1] - cut + 1:] = 0
        else:
            kept[: rows[0] + cut] = 0
        padded = np.zeros((frame.shape[0], frame.shape[1] + 20), np.uint8)
        padded[:, 10:-10] = kept
        result = pretreat_padded(padded, min_height_px=1, max_width_ratio=10.0)
        out[i] = frame if isinstance(result, Rejection) else result.silhouette[:, 10:10 + frame.shape[1]]
    return out


def _holes(frames: NDArray[np.uint8], rng: np.random.Generator) -> NDArray[np.uint8]:
    """Zero a small ellipse on the person in a third of the frames: masks that lose a piece now and then."""
    out = frames.copy()
    for i in np.flatnonzero(rng.random(len(frames)) < 1 / 3):
        rows, cols = np.nonzero(frames[i])
        if not len(rows):
            continue
        pick = int(rng.integers(len(rows)))
        axes = (int(rng.integers(2, 6)), int(rng.integers(2, 8)))
        cv2.ellipse(out[i], (int(cols[pick]), int(rows[pick])), axes, 0.0, 0.0, 360.0, 0, -1)
    return out
