"""Per-track masks on real frames: the detector's label map, PP-HumanSeg on real crops, SAM with box prompts."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from segment_anything import SamPredictor
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from engines.detect import Detections, DetectorSettings, StreamFrame, open_tracker
from engines.errors import CheckpointError, WeightsNotFound
from engines.pretreat import SIL_HEIGHT, SIL_WIDTH, Rejection
from engines.segment import (
    LabelMapSegmenter,
    SamSegmenter,
    SegmenterSettings,
    TrackMask,
    open_segmenter,
    pretreat_track_mask,
)

FRAMES = (50, 60, 132)  # person A twice, person B once; each fully in view


@pytest.fixture(scope="module")
def humanseg_weights(models: Path) -> Path:
    return models / "pp_humanseg_v1_lite_192.onnx"


@pytest.fixture(scope="module")
def yolo_detections(models: Path, outdoor_walk_frames: dict[int, np.ndarray]) -> dict[int, Detections]:
    """YOLO11n-seg detections (with its label map) of the one walker in each of `FRAMES`."""
    tracker = open_tracker(DetectorSettings(backend="yolo", weights=[str(models / "yolo11n-seg_int8.tflite")]))
    found = {index: tracker.update([StreamFrame(f"frame-{index}", outdoor_walk_frames[index], 30.0)])[0]
             for index in FRAMES}
    assert all(len(d) == 1 and d.label_map is not None for d in found.values())
    return found


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def _check_track_mask(track: TrackMask | None, frame: np.ndarray) -> TrackMask:
    assert track is not None
    x1, y1, x2, y2 = track.box_xyxy_px
    assert 0 <= x1 < x2 <= frame.shape[1] and 0 <= y1 < y2 <= frame.shape[0]
    assert track.mask.dtype == np.bool_ and track.mask.shape == (y2 - y1, x2 - x1)
    return track


def test_label_map_masks_become_silhouettes(
    yolo_detections: dict[int, Detections], outdoor_walk_frames: dict[int, np.ndarray]
) -> None:
    segmenter = LabelMapSegmenter(box_margin_ratio=0.1)
    for index, found in yolo_detections.items():
        frame = outdoor_walk_frames[index]
        track = _check_track_mask(segmenter.masks(frame, found)[0], frame)
        x1, y1, x2, y2 = track.box_xyxy_px
        assert track.mask.sum() == (found.label_map == 1).sum()  # the whole mask lies inside the grown box
        silhouette = pretreat_track_mask(track, frame.shape[:2])
        assert isinstance(silhouette, np.ndarray), silhouette
        assert silhouette.shape == (SIL_HEIGHT, SIL_WIDTH) and silhouette.dtype == np.uint8


def test_humanseg_gives_a_person_shaped_mask_on_a_real_crop(
    humanseg_weights: Path, yolo_detections: dict[int, Detections], outdoor_walk_frames: dict[int, np.ndarray]
) -> None:
    """PP-HumanSeg and YOLO-seg are independent networks; on a walker in full view they must agree closely."""
    segmenter = open_segmenter(SegmenterSettings(method="humanseg", humanseg_weights=humanseg_weights))
    reference = LabelMapSegmenter(box_margin_ratio=0.1)
    for index, found in yolo_detections.items():
        frame = outdoor_walk_frames[index]
        track = _check_track_mask(segmenter.masks(frame, found)[0], frame)
        expected = reference.masks(frame, found)[0]
        assert expected is not None and expected.box_xyxy_px == track.box_xyxy_px
        assert _iou(track.mask, expected.mask) > 0.6  # measured 0.68-0.82 on frames 45-65 and 128-136
        count, _, stats, _ = cv2.connectedComponentsWithStats(track.mask.astype(np.uint8))
        assert stats[1:count, cv2.CC_STAT_AREA].max() > 0.95 * track.mask.sum()  # one body, not scattered blobs
        rows = np.flatnonzero(track.mask.any(axis=1))
        box_height = found.boxes_xyxy_px[0, 3] - found.boxes_xyxy_px[0, 1]
        assert (rows[-1] - rows[0] + 1) > 0.9 * box_height  # head to feet
        assert 0.15 < track.mask.mean() < 0.6  # a walker fills part of his grown box, not all of it
        silhouette = pretreat_track_mask(track, frame.shape[:2])
        reference_silhouette = pretreat_track_mask(expected, frame.shape[:2])
        assert isinstance(silhouette, np.ndarray) and isinstance(reference_silhouette, np.ndarray)
        assert _iou(silhouette > 0, reference_silhouette > 0) > 0.55  # measured 0.63-0.82


def test_humanseg_batches_crops_and_skips_boxes_off_the_frame(
    humanseg_weights: Path, yolo_detections: dict[int, Detections], outdoor_walk_frames: dict[int, np.ndarray]
) -> None:
    segmenter = open_segmenter(SegmenterSettings(method="humanseg", humanseg_weights=humanseg_weights))
    frame = outdoor_walk_frames[FRAMES[0]]
    alone = yolo_detections[FRAMES[0]]
    off_frame = np.array([[-400, 100, -200, 500]], np.float32)
    both = Detections(
        np.concatenate([alone.boxes_xyxy_px, off_frame, alone.boxes_xyxy_px]),
        np.array([1, 2, 3], np.int64),
        np.ones(3, np.float32),
        None,
    )
    single = segmenter.masks(frame, alone)[0]
    first, missing, third = segmenter.masks(frame, both)
    assert missing is None
    assert single is not None and first is not None and third is not None
    assert _iou(first.mask, single.mask) > 0.99 and _iou(third.mask, single.mask) > 0.99  # batching changes nothing


def test_auto_uses_the_label_map_when_there_is_one_else_humanseg(
    humanseg_weights: Path,
    yolo_detections: dict[int, Detections],
    outdoor_walk_frames: dict[int, np.ndarray],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="engines.segment"):
        segmenter = open_segmenter(SegmenterSettings(humanseg_weights=humanseg_weights))
    assert segmenter.name == "auto"
    assert any("label_map" in r.getMessage() and "humanseg" in r.getMessage() for r in caplog.records)
    frame = outdoor_walk_frames[FRAMES[0]]
    found = yolo_detections[FRAMES[0]]
    from_label_map = segmenter.masks(frame, found)[0]
    from_network = segmenter.masks(frame, Detections(found.boxes_xyxy_px, found.track_ids, found.scores, None))[0]
    assert from_label_map is not None and from_network is not None
    assert from_label_map.mask.sum() == (found.label_map == 1).sum()
    assert 0.6 < _iou(from_label_map.mask, from_network.mask) < 1.0  # the same walker, by another network


def test_missing_humanseg_weights_say_where_to_find_them(
    tmp_path: Path, yolo_detections: dict[int, Detections], outdoor_walk_frames: dict[int, np.ndarray]
) -> None:
    with pytest.raises(WeightsNotFound, match="humanseg_weights is not set.*pp_humanseg_v1_lite_192.onnx"):
        open_segmenter(SegmenterSettings(method="humanseg"))
    with pytest.raises(WeightsNotFound, match="does not exist"):
        open_segmenter(SegmenterSettings(method="humanseg", humanseg_weights=tmp_path / "absent.onnx"))
    segmenter = open_segmenter(SegmenterSettings(humanseg_weights=tmp_path / "absent.onnx"))  # auto: label map only
    frame = outdoor_walk_frames[FRAMES[0]]
    found = yolo_detections[FRAMES[0]]
    assert segmenter.masks(frame, found)[0] is not None
    with pytest.raises(WeightsNotFound, match="no label_map.*absent.onnx does not exist"):
        segmenter.masks(frame, Detections(found.boxes_xyxy_px, found.track_ids, found.scores, None))


def test_damaged_humanseg_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    damaged = tmp_path / "humanseg.onnx"
    damaged.write_bytes(b"not an onnx model")
    with pytest.raises(CheckpointError, match="not a loadable ONNX model"):
        open_segmenter(SegmenterSettings(method="humanseg", humanseg_weights=damaged))


def test_real_mask_cut_by_the_frame_edge_or_too_small_is_rejected(
    yolo_detections: dict[int, Detections], outdoor_walk_frames: dict[int, np.ndarray]
) -> None:
    frame = outdoor_walk_frames[FRAMES[0]]
    track = LabelMapSegmenter(box_margin_ratio=0.1).masks(frame, yolo_detections[FRAMES[0]])[0]
    assert track is not None
    x1, y1, _, _ = track.box_xyxy_px
    rows = np.flatnonzero(track.mask.any(axis=1))
    cols = np.flatnonzero(track.mask.any(axis=0))
    # The same mask in a frame that ends one pixel below / right of it: the walker is cut off there.
    for frame_hw, side in (
        ((y1 + rows[-1] + 1, frame.shape[1]), "bottom"),
        ((frame.shape[0], x1 + cols[-1] + 2), "right"),
    ):
        rejection = pretreat_track_mask(track, frame_hw)
        assert isinstance(rejection, Rejection) and rejection.reason == "truncated" and side in rejection.detail
    at_left = TrackMask(track.mask[:, cols[0] :], (0, y1, 0, 0))  # mask starts at the frame's left column
    rejection = pretreat_track_mask(at_left, frame.shape[:2])
    assert isinstance(rejection, Rejection) and rejection.reason == "truncated" and "left" in rejection.detail

    small = cv2.resize(track.mask.astype(np.uint8), None, fx=0.1, fy=0.1, interpolation=cv2.INTER_AREA) > 0
    rejection = pretreat_track_mask(TrackMask(small, (100, 100, 0, 0)), frame.shape[:2])
    assert isinstance(rejection, Rejection) and rejection.reason == "tiny"


def _tiny_sam() -> torch.nn.Module:
    """A randomly initialised SAM, a few hundred kB, built with segment_anything's own classes.

    No SAM weights can be had here; this exercises the real predictor (resize, prompt encoding, mask decoding,
    upscaling to the frame) at a 128 px input with 32-channel embeddings instead of 1024 px and 256.
    """
    torch.manual_seed(0)
    image_size, patch, dim = 128, 16, 32
    model = Sam(
        image_encoder=ImageEncoderViT(
            img_size=image_size,
            patch_size=patch,
            embed_dim=dim,
            depth=2,
            num_heads=2,
            mlp_ratio=2,
            out_chans=dim,
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=4,
            global_attn_indexes=(1,),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim,
            image_embedding_size=(image_size // patch, image_size // patch),
            input_image_size=(image_size, image_size),
            mask_in_chans=4,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2),
            transformer_dim=dim,
            iou_head_depth=2,
            iou_head_hidden_dim=32,
        ),
    )
    return model.eval()


def test_sam_decodes_every_box_of_a_frame(
    yolo_detections: dict[int, Detections], outdoor_walk_frames: dict[int, np.ndarray]
) -> None:
    frame = outdoor_walk_frames[FRAMES[0]]
    found = yolo_detections[FRAMES[0]]
    second = found.boxes_xyxy_px + np.float32([-200, 0, -200, 0])  # a second box left of the walker
    off_frame = np.array([[-400, 100, -200, 500]], np.float32)
    boxes = np.concatenate([found.boxes_xyxy_px, off_frame, second])
    detections = Detections(boxes, np.array([1, 2, 3], np.int64), np.ones(3, np.float32), None)
    model = _tiny_sam()
    segmenter = SamSegmenter(model, SegmenterSettings(method="sam"))
    assert segmenter.name == "sam"
    first, missing, third = segmenter.masks(frame, detections)
    assert missing is None
    # Each box, decoded alone by segment_anything's own single-prompt path, gives the same mask as in the batch.
    predictor = SamPredictor(model)
    predictor.set_image(frame, image_format="BGR")
    for track, box in ((first, boxes[0]), (third, boxes[2])):
        track = _check_track_mask(track, frame)
        x1, y1, x2, y2 = track.box_xyxy_px
        assert x1 <= box[0] and y1 <= box[1] and x2 >= box[2] and y2 >= box[3]  # the grown box covers the prompt
        alone = predictor.predict(box=box, multimask_output=False)[0][0]
        assert (alone[y1:y2, x1:x2] == track.mask).mean() > 0.999
    assert first is not None and third is not None and not np.array_equal(first.mask, third.mask)
    assert segmenter.masks(frame, Detections.empty()) == []


def test_sam_without_weights_says_so(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFound, match="sam_weights is not set.*segment-anything"):
        open_segmenter(SegmenterSettings(method="sam"))
    with pytest.raises(WeightsNotFound, match="sam_vit_b.pth does not exist"):
        open_segmenter(SegmenterSettings(method="sam", sam_weights=tmp_path / "sam_vit_b.pth"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a torch file", "not a readable SAM checkpoint"),
        ({"mask_decoder.weight": torch.zeros(1)}, "not a SAM checkpoint"),
        (
            {"image_encoder.patch_embed.proj.weight": torch.zeros(1024, 3, 1, 1)},
            r"embedding width 1024 \(vit_l\).*sam_model_type=vit_b",
        ),
    ],
    ids=["damaged", "other-model", "other-size"],
)
def test_sam_refuses_a_wrong_checkpoint_before_building_the_network(
    tmp_path: Path, content: bytes | dict[str, torch.Tensor], message: str
) -> None:
    weights = tmp_path / "sam_vit_b.pth"
    if isinstance(content, bytes):
        weights.write_bytes(content)
    else:
        torch.save(content, weights)
    with pytest.raises(CheckpointError, match=message):
        open_segmenter(SegmenterSettings(method="sam", sam_weights=weights, sam_model_type="vit_b"))


def test_mask_quality_rejects_lost_fragmented_and_partial_people():
    """Specks are dropped; near-empty, fragmented and short masks are rejected with their reason."""
    from engines.segment import MaskQuality, clean_person_mask

    quality = MaskQuality()
    box = np.asarray([0, 0, 40, 100], np.float32)
    person = np.zeros((100, 40), bool)
    person[2:98, 12:28] = True
    specked = person.copy()
    specked[0, 0] = True
    cleaned = clean_person_mask(specked, box, quality)
    assert isinstance(cleaned, np.ndarray) and np.array_equal(cleaned, person)
    sparse = np.zeros_like(person)
    sparse[10:90, 19:21] = True
    assert clean_person_mask(sparse, box, quality).reason == "sparse"
    halves = np.zeros_like(person)
    halves[0:45, 5:35] = True
    halves[55:100, 5:35] = True
    assert clean_person_mask(halves, box, quality).reason == "fragmented"
    legs_only = np.zeros_like(person)
    legs_only[50:100, 5:35] = True
    assert clean_person_mask(legs_only, box, quality).reason == "partial"
