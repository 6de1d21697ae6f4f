"""OpenGait pretreatment: CASIA-B's own silhouettes survive it unchanged; each rejection reason on a made-up mask."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.pretreat import SIL_HEIGHT, SIL_WIDTH, Rejection, cut_sides, pretreat_silhouette


def _casia_sequence(casia_b: Path, subject: str, key: str) -> np.ndarray:
    """(T, 64, 64) uint8 in {0, 255}, unpacked as the shared assets' README says."""
    packed = np.load(casia_b / "sils-64x64-bin" / f"{subject}.npz")[key]
    return np.unpackbits(packed, axis=-1).astype(np.uint8) * 255


def _walker(height_px: int = 200, width_px: int = 80, frame_hw: tuple[int, int] = (300, 200)) -> np.ndarray:
    """A person-like mask: an ellipse for the body and two legs, centred in a frame of `frame_hw`."""
    mask = np.zeros(frame_hw, np.uint8)
    top = (frame_hw[0] - height_px) // 2
    centre = frame_hw[1] // 2
    yy, xx = np.mgrid[: frame_hw[0], : frame_hw[1]]
    body = ((yy - (top + height_px * 0.3)) / (height_px * 0.3)) ** 2 + ((xx - centre) / (width_px / 2)) ** 2 <= 1
    legs = (yy >= top + height_px * 0.55) & (yy < top + height_px) & (np.abs(np.abs(xx - centre) - 12) < 8)
    mask[body | legs] = 255
    return mask


@pytest.mark.parametrize("key", ["nm-01_090", "nm-01_000", "bg-01_036", "cl-01_180"])
def test_casia_b_silhouettes_are_a_fixpoint(casia_b: Path, key: str) -> None:
    """Already-pretreated data must come out as OpenGait's load-time cut of itself (>99 % of pixels)."""
    sequence = _casia_sequence(casia_b, "075", key)
    results = [pretreat_silhouette(frame) for frame in sequence]
    assert not [r for r in results if isinstance(r, Rejection)]
    produced = np.stack(results)
    expected = cut_sides(sequence)
    assert produced.shape == expected.shape == (len(sequence), SIL_HEIGHT, SIL_WIDTH)
    assert produced.dtype == np.uint8
    assert set(np.unique(produced)) <= {0, 255}
    assert (produced == expected).mean() > 0.99


def test_walker_is_centred_scaled_and_binary() -> None:
    silhouette = pretreat_silhouette(_walker())
    assert isinstance(silhouette, np.ndarray)
    assert silhouette.shape == (SIL_HEIGHT, SIL_WIDTH)
    assert set(np.unique(silhouette)) == {0, 255}
    rows = np.flatnonzero(silhouette.any(axis=1))
    assert (rows[0], rows[-1]) == (0, SIL_HEIGHT - 1)  # cropped to the mask's rows, then 64 high
    columns = np.flatnonzero(silhouette.sum(axis=0))
    centre_of_mass = (silhouette.sum(axis=0) * np.arange(SIL_WIDTH)).sum() / silhouette.sum()
    assert abs(centre_of_mass - SIL_WIDTH / 2) <= 1.0  # symmetric walker sits in the middle
    assert columns[0] > 0 and columns[-1] < SIL_WIDTH - 1  # 80 px wide / 200 high -> about 26 of 44 columns


@pytest.mark.parametrize(
    ("mask", "flags", "reason"),
    [
        (np.zeros((100, 50), np.uint8), {}, "empty"),
        (_walker(height_px=40, width_px=20, frame_hw=(60, 60)), {}, "tiny"),
        (_walker(), {"touches_top": True}, "truncated"),
        (_walker(), {"touches_bottom": True}, "truncated"),
        (_walker(), {"touches_left": True}, "truncated"),
        (_walker(), {"touches_right": True}, "truncated"),
        (np.full((60, 150), 255, np.uint8), {}, "wide"),
    ],
    ids=["empty", "tiny", "cut-top", "cut-bottom", "cut-left", "cut-right", "wide"],
)
def test_rejections_say_why(mask: np.ndarray, flags: dict[str, bool], reason: str) -> None:
    result = pretreat_silhouette(mask, **flags)
    assert isinstance(result, Rejection)
    assert result.reason == reason
    assert result.detail


def test_truncation_names_the_side() -> None:
    result = pretreat_silhouette(_walker(), touches_left=True)
    assert isinstance(result, Rejection)
    assert "left" in result.detail


def test_tiny_threshold_is_in_source_pixels() -> None:
    mask = _walker(height_px=60, width_px=30, frame_hw=(100, 100))
    assert isinstance(pretreat_silhouette(mask, min_height_px=60), np.ndarray)
    assert isinstance(pretreat_silhouette(mask, min_height_px=61), Rejection)


def test_mirroring_a_silhouette_equals_pretreating_the_mirrored_mask() -> None:
    """A walk turned the other way must look to the network as if the person had walked that way."""
    from engines.pretreat import mirror_silhouettes

    mask = _walker()
    mask[120:160, 60:100] = 255  # an arm forward: the walker is not symmetric
    direct = pretreat_silhouette(mask)
    turned = pretreat_silhouette(np.ascontiguousarray(mask[:, ::-1]))
    assert isinstance(direct, np.ndarray) and isinstance(turned, np.ndarray)
    assert not np.array_equal(direct, turned)
    assert np.array_equal(mirror_silhouettes(direct), turned)
    assert np.array_equal(mirror_silhouettes(direct[None]), turned[None])


def test_thinning_pulls_the_boundary_in_by_subpixel_steps() -> None:
    """`thin_px` removes a thin shell in fractions of a 64-px pixel; 0 is the plain pretreatment, bit for bit."""
    mask = _walker()
    plain = pretreat_silhouette(mask)
    assert np.array_equal(pretreat_silhouette(mask, thin_px=0.0), plain)
    fills = []
    for thin_px in (0.0, 0.25, 0.5, 1.0):
        silhouette = pretreat_silhouette(mask, thin_px=thin_px)
        assert isinstance(silhouette, np.ndarray) and silhouette.shape == (SIL_HEIGHT, SIL_WIDTH)
        assert set(np.unique(silhouette)) <= {0, 255}
        fills.append((silhouette > 0).mean())
    assert fills == sorted(fills, reverse=True) and len(set(fills)) == len(fills)
    assert fills[0] - fills[1] < 0.03  # a quarter pixel is a small step, not a whole eroded layer
    thinned = pretreat_silhouette(mask, thin_px=0.5)
    assert isinstance(thinned, np.ndarray)
    grown = cv2.dilate(plain, np.ones((3, 3), np.uint8))  # re-centring may move it by up to a column
    assert not (thinned > 0)[grown == 0].any()  # thinning only removes the boundary, it does not reshape the body
