"""OpenGait's silhouette pretreatment, shared by the segment stage and the dataset readers.

Pipeline masks and dataset silhouettes must look alike to the network, so both go through this module: crop to the
mask's rows, resize to 64 high keeping the aspect ratio, centre on the horizontal centre of mass, pad to 64×64
(OpenGait `datasets/pretreatment.py`), then cut 10 columns from each side (OpenGait's `BaseSilCuttingTransform`)
to get the network input of 64×44.

Must not import `pipeline` or `stages`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from numpy.typing import NDArray

SIL_HEIGHT = 64
SIL_PADDED_WIDTH = 64
SIL_WIDTH = 44
_SIDE_CUT = (SIL_PADDED_WIDTH - SIL_WIDTH) // 2

RejectReason = Literal["empty", "tiny", "truncated", "wide", "sparse", "fragmented", "partial"]
REJECT_REASONS: tuple[RejectReason, ...] = ("empty", "tiny", "truncated", "wide", "sparse", "fragmented", "partial")


@dataclass(frozen=True)
class Rejection:
    """Why a mask was not turned into a silhouette; the segment stage counts these per reason."""

    reason: RejectReason
    detail: str


def cut_sides(silhouettes_64x64: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """(..., 64, 64) -> (..., 64, 44): OpenGait's load-time cut of 10 columns on each side."""
    return np.ascontiguousarray(silhouettes_64x64[..., _SIDE_CUT : SIL_PADDED_WIDTH - _SIDE_CUT])


@dataclass(frozen=True)
class PretreatTransform:
    """Where source-mask pixel (u = column, v = row) lands in the 64x64 padded silhouette (pixel centres on integers).

    `col = u * col_scale - col_offset`, `row = (v - row0) * row_scale`: exact for the crop, the cubic resize (which
    maps destination pixel x to source (x + 0.5) / scale - 0.5) and the centring; subtract 10 from `col` for the
    64x44 network frame. The two scales differ slightly because the resized width is rounded down to whole pixels.
    """

    row0: float
    row_scale: float
    col_scale: float
    col_offset: float


@dataclass(frozen=True)
class PaddedSilhouette:
    """OpenGait's pretreated 64x64 silhouette, before the load-time cut, and how the source mask maps into it."""

    silhouette: NDArray[np.uint8]  # (64, 64) in {0, 255}
    transform: PretreatTransform


def pretreat_padded(
    mask: NDArray[np.bool_] | NDArray[np.uint8],
    *,
    touches_top: bool = False,
    touches_bottom: bool = False,
    touches_left: bool = False,
    touches_right: bool = False,
    min_height_px: int = 48,
    max_width_ratio: float = 1.0,
    thin_px: float = 0.0,
) -> PaddedSilhouette | Rejection:
    """`pretreat_silhouette` without the final cut: the 64x64 silhouette (as OpenGait stores it) and its transform.

    For data generated with known geometry (the synthetic 3D dataset), which needs both the stored 64x64 layout and
    where each projected point ends up. Arguments and rejections as `pretreat_silhouette`.
    """
    binary = np.asarray(mask) > 0
    rows = np.flatnonzero(binary.any(axis=1))
    if rows.size == 0:
        return Rejection("empty", "mask has no foreground pixels")
    height_px = int(rows[-1] - rows[0] + 1)
    if height_px < min_height_px:
        return Rejection("tiny", f"mask is {height_px} px high, below min_height_px={min_height_px}")
    edges = {"top": touches_top, "bottom": touches_bottom, "left": touches_left, "right": touches_right}
    if any(edges.values()):
        side = next(name for name, touches in edges.items() if touches)
        return Rejection("truncated", f"person cut off at the {side} of the frame")
    cropped = binary[rows[0] : rows[-1] + 1].astype(np.uint8) * 255
    cols = np.flatnonzero(cropped.any(axis=0))
    width_px = int(cols[-1] - cols[0] + 1)
    if width_px > max_width_ratio * height_px:
        return Rejection("wide", f"mask is {width_px}x{height_px} px, wider than max_width_ratio={max_width_ratio}")

    new_width = max(1, int(cropped.shape[1] * SIL_HEIGHT / cropped.shape[0]))
    if thin_px > 0:
        resized = _resize_thinned(cropped, new_width, thin_px)
    else:
        resized = cv2.resize(cropped, (new_width, SIL_HEIGHT), interpolation=cv2.INTER_CUBIC)
        resized = np.where(resized > 127, 255, 0).astype(np.uint8)
    column_mass = resized.sum(axis=0, dtype=np.int64).cumsum()
    if column_mass[-1] == 0:
        return Rejection("empty", "mask vanished when resized to 64 px high")
    x_center = int(np.searchsorted(column_mass, column_mass[-1] / 2, side="right"))

    half = SIL_PADDED_WIDTH // 2
    padded = np.zeros((SIL_HEIGHT, new_width + 2 * half), np.uint8)
    padded[:, half : half + new_width] = resized
    left = x_center  # x_center - half, shifted by the left padding of `half`
    row_scale = SIL_HEIGHT / cropped.shape[0]
    col_scale = new_width / cropped.shape[1]
    transform = PretreatTransform(
        row0=float(rows[0]) - 0.5 + 0.5 / row_scale,
        row_scale=row_scale,
        col_scale=col_scale,
        col_offset=left - half + 0.5 - 0.5 * col_scale,
    )
    return PaddedSilhouette(np.ascontiguousarray(padded[:, left : left + SIL_PADDED_WIDTH]), transform)


_THIN_SUPERSAMPLE = 4


def _resize_thinned(cropped: NDArray[np.uint8], new_width: int, thin_px: float) -> NDArray[np.uint8]:
    """The cropped mask resized to 64 high with its boundary pulled in by `thin_px` pixels of the 64-high image.

    Eroding at 64 px can only remove whole pixel layers (a quarter of a walker's area each), so the mask is eroded
    by a disk at four times the network's scale (a Euclidean distance transform) and then area-averaged down.
    """
    scale = _THIN_SUPERSAMPLE
    big = cv2.resize(cropped, (new_width * scale, SIL_HEIGHT * scale), interpolation=cv2.INTER_CUBIC) > 127
    big = np.pad(big, scale).astype(np.uint8)  # the crop's top and bottom rows are the body's edge too
    inside = cv2.distanceTransform(big, cv2.DIST_L2, cv2.DIST_MASK_PRECISE) > thin_px * scale
    small = cv2.resize(inside[scale:-scale, scale:-scale].astype(np.float32), (new_width, SIL_HEIGHT),
                       interpolation=cv2.INTER_AREA)
    return np.where(small > 0.5, 255, 0).astype(np.uint8)


def pretreat_silhouette(
    mask: NDArray[np.bool_] | NDArray[np.uint8],
    *,
    touches_top: bool = False,
    touches_bottom: bool = False,
    touches_left: bool = False,
    touches_right: bool = False,
    min_height_px: int = 48,
    max_width_ratio: float = 1.0,
    thin_px: float = 0.0,
) -> NDArray[np.uint8] | Rejection:
    """One person mask (h, w), any resolution -> (64, 44) uint8 in {0, 255}, or the reason it was rejected.

    `touches_top` / `touches_bottom` / `touches_left` / `touches_right` say whether the mask reaches that frame
    border, where the person is cut off and the silhouette would lie about the gait (a walker entering or leaving
    at the side is as truncated as one cut at the top or bottom). `min_height_px` is the smallest mask height (in
    source pixels) worth upscaling to 64. `max_width_ratio` rejects blobs wider than tall (merged people, cars).
    The result is re-binarised after the resize because the CASIA-B training silhouettes are binary. `thin_px`
    pulls the boundary in by that many pixels of the 64-high silhouette (fractions too): segmentation networks'
    masks spill past the body, so they are fatter than the training silhouettes.
    """
    result = pretreat_padded(mask, touches_top=touches_top, touches_bottom=touches_bottom,
                             touches_left=touches_left, touches_right=touches_right, min_height_px=min_height_px,
                             max_width_ratio=max_width_ratio, thin_px=thin_px)
    return result if isinstance(result, Rejection) else cut_sides(result.silhouette)


def mirror_silhouettes(silhouettes: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """(..., 64, 44) -> the same walkers mirrored left-right, still centred as `pretreat_silhouette` centres them.

    Pretreatment puts the horizontal centre of mass on column 22 of 44; a plain flip would move it to column 21,
    so the flipped image is shifted one column right. Walking direction is a nuisance for gait recognition (a
    network trained on people walking one way embeds the other way poorly), and this is how a walk is turned.
    """
    flipped = silhouettes[..., ::-1]
    out = np.zeros_like(silhouettes)
    out[..., 1:] = flipped[..., :-1]
    return out
