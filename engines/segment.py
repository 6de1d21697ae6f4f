"""Per-track person masks: from the detector's label map, PP-HumanSeg on each crop, or Segment Anything.

- `label_map`: the masks YOLO-seg or background subtraction already made (`Detections.label_map`); free.
- `humanseg`: PP-HumanSeg v1 lite (ONNX, Apache-2.0), the segmenter All-in-One-Gait used, run by ONNX Runtime on
  every track's crop, all crops of a frame in one batch. A crop is letterboxed (scaled to fit, padded) into the
  square network input instead of being stretched, so a walker keeps the body proportions the network learned.
- `sam`: Segment Anything with the tracker's box as prompt; weights by path only.
- `auto`: `label_map` whenever the detections carry one, otherwise `humanseg`.
`pretreat_track_mask` turns a `TrackMask` into the network's 64×44 silhouette or a rejection, with the frame
borders taken into account. Must not import `pipeline` or `stages`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import cv2
import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from engines.detect import Detections
from engines.errors import BackendUnavailable, CheckpointError, EngineError, WeightsNotFound
from engines.pretreat import Rejection, pretreat_silhouette

log = logging.getLogger(__name__)

_HUMANSEG_HINT = "../shared/assets/models/pp_humanseg_v1_lite_192.onnx"
_SAM_HINT = (
    "SAM checkpoints (sam_vit_b_01ec64.pth etc.) come from github.com/facebookresearch/segment-anything; "
    "download one on a connected machine and give its path"
)
_SAM_PATCH_KEY = "image_encoder.patch_embed.proj.weight"  # (embedding width, 3, 16, 16) in every SAM checkpoint
_SAM_EMBED_DIMS = {"vit_b": 768, "vit_l": 1024, "vit_h": 1280}


@dataclass(frozen=True)
class TrackMask:
    """One track's person mask and the frame region it covers."""

    mask: NDArray[np.bool_]  # (h, w) person mask inside the box crop
    box_xyxy_px: tuple[int, int, int, int]  # integer crop box in the frame the mask covers; x2, y2 exclusive


class Segmenter(Protocol):
    """Turns a frame's tracked boxes into person masks, one per detection (None where the box is off-frame)."""

    name: str  # "label_map" | "humanseg" | "sam" | "auto"

    def masks(self, frame_bgr: NDArray[np.uint8], detections: Detections) -> list[TrackMask | None]: ...


class SegmenterSettings(BaseModel):
    """How the segment stage makes person masks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["auto", "label_map", "humanseg", "sam"] = Field(
        "auto", description="auto: the detector's label map when present, else humanseg"
    )
    humanseg_weights: Path | None = Field(None, description=f"PP-HumanSeg v1 lite ONNX, e.g. {_HUMANSEG_HINT}")
    humanseg_input_hw_px: tuple[int, int] = Field(
        (256, 128),
        description="network input (height, width) a crop is letterboxed into; upright 2:1 suits walkers "
        "better than the 192x192 the network was deployed at (the weights take any size)",
    )
    sam_weights: Path | None = Field(None, description="Segment Anything checkpoint (.pth)")
    sam_model_type: Literal["vit_h", "vit_l", "vit_b"] = Field("vit_b", description="must match sam_weights")
    device: str = Field("cpu", description="'cpu' or 'cuda[:N]'")
    box_margin_ratio: float = Field(
        0.1, ge=0, description="each box side grows by this fraction of the box size: context for the network"
    )
    mask_threshold: float = Field(0.5, gt=0, lt=1, description="person probability above which a pixel is person")


def crop_box(
    box_xyxy_px: NDArray[np.float32], frame_hw: tuple[int, int], margin_ratio: float
) -> tuple[int, int, int, int] | None:
    """Float box -> integer crop (x1, y1, x2, y2) grown by `margin_ratio` of its size, clipped to the frame.

    None when nothing of the box lies inside the frame.
    """
    x1, y1, x2, y2 = (float(v) for v in box_xyxy_px)
    margin_x, margin_y = (x2 - x1) * margin_ratio, (y2 - y1) * margin_ratio
    height, width = frame_hw
    left, top = max(0, math.floor(x1 - margin_x)), max(0, math.floor(y1 - margin_y))
    right, bottom = min(width, math.ceil(x2 + margin_x)), min(height, math.ceil(y2 + margin_y))
    if right <= left or bottom <= top:
        return None
    return left, top, right, bottom


@dataclass(frozen=True)
class MaskQuality:
    """What a person mask must be like to become a silhouette, beyond pretreatment's own checks.

    Each limit names a way real masks go wrong (`tools/eval_wild.py` measured them on KTH and the shared clips):
    near-empty masks of a person the segmenter lost (`sparse`: fill of the tracker's box), masks in pieces whose
    stray blobs would set the crop's rows and with them the scale (`fragmented`: share of the largest piece; pieces
    under `min_piece_share` of the mask are dropped first), and masks covering only part of the tracked person
    (`partial`: mask height over box height).
    """

    min_fill_ratio: float = 0.15
    min_largest_share: float = 0.6
    min_piece_share: float = 0.02
    min_height_ratio: float = 0.7


def clean_person_mask(mask: NDArray[np.bool_], box_xyxy_px: NDArray[np.float32] | None,
                      quality: MaskQuality) -> NDArray[np.bool_] | Rejection:
    """The mask without specks, or why it cannot stand for the tracked person (see `MaskQuality`)."""
    binary = np.asarray(mask, np.uint8)
    total = int(binary.sum())
    if total == 0:
        return Rejection("empty", "mask has no foreground pixels")
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    if areas.max() < quality.min_largest_share * total:
        return Rejection("fragmented", f"largest piece holds {areas.max() / total:.0%} of the mask")
    keep = np.flatnonzero(areas >= quality.min_piece_share * total) + 1
    cleaned = np.isin(labels, keep) if len(keep) < count - 1 else binary.astype(bool)
    if box_xyxy_px is not None:
        box_w = float(box_xyxy_px[2] - box_xyxy_px[0])
        box_h = float(box_xyxy_px[3] - box_xyxy_px[1])
        fill = int(cleaned.sum()) / max(1.0, box_w * box_h)
        if fill < quality.min_fill_ratio:
            return Rejection("sparse", f"mask fills {fill:.0%} of the person's box")
        rows = np.flatnonzero(cleaned.any(axis=1))
        if box_h > 0 and (rows[-1] - rows[0] + 1) < quality.min_height_ratio * box_h:
            return Rejection("partial", f"mask covers {(rows[-1] - rows[0] + 1) / box_h:.0%} of the box height")
    return cleaned


def pretreat_track_mask(
    track: TrackMask,
    frame_hw: tuple[int, int],
    *,
    edge_tolerance_px: int = 2,
    min_height_px: int = 48,
    max_width_ratio: float = 1.0,
    box_xyxy_px: NDArray[np.float32] | None = None,
    quality: MaskQuality | None = None,
    thin_px: float = 0.0,
) -> NDArray[np.uint8] | Rejection:
    """A track's mask -> (64, 44) uint8 silhouette, or why not.

    With `quality`, the mask is first cleaned and checked against the tracker's `box_xyxy_px` (`clean_person_mask`).
    A mask that comes within `edge_tolerance_px` of a frame border belongs to a person cut off by it: network
    masks often stop a pixel or two short of the border they were cut at.
    """
    mask = np.asarray(track.mask, bool)
    if quality is not None:
        cleaned = clean_person_mask(mask, box_xyxy_px, quality)
        if isinstance(cleaned, Rejection):
            return cleaned
        mask = cleaned
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return pretreat_silhouette(mask, min_height_px=min_height_px, max_width_ratio=max_width_ratio)
    x1, y1, _, _ = track.box_xyxy_px
    height, width = frame_hw
    return pretreat_silhouette(
        mask,
        touches_top=y1 + rows[0] <= edge_tolerance_px,
        touches_bottom=y1 + rows[-1] >= height - 1 - edge_tolerance_px,
        touches_left=x1 + cols[0] <= edge_tolerance_px,
        touches_right=x1 + cols[-1] >= width - 1 - edge_tolerance_px,
        min_height_px=min_height_px,
        max_width_ratio=max_width_ratio,
        thin_px=thin_px,
    )


class LabelMapSegmenter:
    """Masks the detector already made: detection k is where `label_map == k + 1`, cut to its crop box."""

    name = "label_map"

    def __init__(self, box_margin_ratio: float) -> None:
        self._margin = box_margin_ratio

    def masks(self, frame_bgr: NDArray[np.uint8], detections: Detections) -> list[TrackMask | None]:
        if detections.label_map is None:
            raise EngineError(
                "segmenter.method=label_map but the detections carry no label_map (the detector has no masks, "
                "e.g. YOLO detection weights); use segmenter.method humanseg or auto"
            )
        frame_hw = frame_bgr.shape[:2]
        out: list[TrackMask | None] = []
        for k, box in enumerate(detections.boxes_xyxy_px):
            crop = crop_box(box, frame_hw, self._margin)
            if crop is None:
                out.append(None)
                continue
            x1, y1, x2, y2 = crop
            out.append(TrackMask(detections.label_map[y1:y2, x1:x2] == k + 1, crop))
        return out


class HumanSegSegmenter:
    """PP-HumanSeg v1 lite on each track's crop, all crops of a frame in one ONNX Runtime call.

    Network I/O (see the shared assets' MANIFEST): input `x` float32 (N, 3, H, W) RGB, (pixel / 255 - 0.5) / 0.5;
    output (N, 2, H, W) softmax over {background, person}.
    """

    name = "humanseg"

    def __init__(self, weights: Path, settings: SegmenterSettings, threads: int = 1) -> None:
        import onnxruntime

        if not weights.is_file():
            raise WeightsNotFound(f"segmenter.humanseg_weights: {weights} does not exist; use {_HUMANSEG_HINT}")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if settings.device.startswith("cuda"):
            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                raise BackendUnavailable(
                    f"segmenter.device={settings.device} but this onnxruntime has no CUDAExecutionProvider "
                    f"(has {onnxruntime.get_available_providers()}); install onnxruntime-gpu or use device cpu"
                )
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        try:
            self._session = onnxruntime.InferenceSession(str(weights), options, providers=providers)
        except Exception as error:  # ONNX Runtime raises its own exception types for unreadable models
            raise CheckpointError(f"{weights}: not a loadable ONNX model ({error})") from error
        self._input_name = self._session.get_inputs()[0].name
        self._input_hw = settings.humanseg_input_hw_px
        self._margin = settings.box_margin_ratio
        self._threshold = settings.mask_threshold

    def masks(self, frame_bgr: NDArray[np.uint8], detections: Detections) -> list[TrackMask | None]:
        crops = [crop_box(box, frame_bgr.shape[:2], self._margin) for box in detections.boxes_xyxy_px]
        present = [(k, crop) for k, crop in enumerate(crops) if crop is not None]
        out: list[TrackMask | None] = [None] * len(crops)
        if not present:
            return out
        batch, placements = zip(
            *(self._letterbox(frame_bgr[y1:y2, x1:x2]) for _, (x1, y1, x2, y2) in present), strict=True
        )
        person = self._session.run(None, {self._input_name: np.stack(batch)})[0][:, 1]
        for (k, crop), probability, (top, left, inner_h, inner_w) in zip(present, person, placements, strict=True):
            x1, y1, x2, y2 = crop
            inner = probability[top : top + inner_h, left : left + inner_w]
            resized = cv2.resize(inner, (x2 - x1, y2 - y1), interpolation=cv2.INTER_LINEAR)
            out[k] = TrackMask(resized > self._threshold, crop)
        return out

    def _letterbox(self, crop_bgr: NDArray[np.uint8]) -> tuple[NDArray[np.float32], tuple[int, int, int, int]]:
        """(h, w, 3) BGR crop -> (3, H, W) network input and where the crop sits in it (top, left, h, w).

        The pad value is mid-grey, which the normalisation maps to 0, the least informative input.
        """
        height, width = crop_bgr.shape[:2]
        input_h, input_w = self._input_hw
        scale = min(input_h / height, input_w / width)
        inner_h, inner_w = max(1, round(height * scale)), max(1, round(width * scale))
        top, left = (input_h - inner_h) // 2, (input_w - inner_w) // 2
        canvas = np.full((input_h, input_w, 3), 127.5, np.float32)
        resized = cv2.resize(crop_bgr, (inner_w, inner_h), interpolation=cv2.INTER_AREA)
        canvas[top : top + inner_h, left : left + inner_w] = resized[..., ::-1]
        return (canvas.transpose(2, 0, 1) / 127.5 - 1.0).astype(np.float32), (top, left, inner_h, inner_w)


class SamSegmenter:
    """Segment Anything with box prompts: one image embedding per frame, every track's box decoded in one batch.

    The prompt is the tracker's box itself; the returned mask covers that box grown by `box_margin_ratio`, like
    the other segmenters, so limbs reaching past a tight box are kept.
    """

    name = "sam"

    def __init__(self, model: Any, settings: SegmenterSettings) -> None:
        from segment_anything import SamPredictor

        self._predictor = SamPredictor(model)
        self._margin = settings.box_margin_ratio
        self._threshold = settings.mask_threshold

    @classmethod
    def from_weights(cls, settings: SegmenterSettings, threads: int = 1) -> SamSegmenter:
        """Load `sam_weights` (an official SAM `.pth` state dict) into a `sam_model_type` network on `device`.

        The file is read and its model type checked before the network is built, so a wrong or damaged file
        fails in milliseconds with what it holds, not after allocating a ViT of hundreds of megabytes.
        """
        import torch
        from segment_anything import sam_model_registry

        weights = settings.sam_weights
        if weights is None or not weights.is_file():
            where = "segmenter.sam_weights is not set" if weights is None else f"{weights} does not exist"
            raise WeightsNotFound(f"segmenter.method=sam but {where}; {_SAM_HINT}")
        torch.set_num_threads(threads)
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises many types for a damaged or non-torch file
            raise CheckpointError(
                f"{weights}: not a readable SAM checkpoint ({type(error).__name__}: {error})"
            ) from error
        patch_weight = state.get(_SAM_PATCH_KEY) if isinstance(state, dict) else None
        if patch_weight is None:
            raise CheckpointError(f"{weights}: not a SAM checkpoint (a state dict with {_SAM_PATCH_KEY} expected)")
        held = next((kind for kind, dim in _SAM_EMBED_DIMS.items() if dim == patch_weight.shape[0]), "unknown")
        if held != settings.sam_model_type:
            raise CheckpointError(
                f"{weights}: holds a SAM of embedding width {patch_weight.shape[0]} ({held}) but "
                f"segmenter.sam_model_type={settings.sam_model_type}; set it to match the checkpoint"
            )
        model = sam_model_registry[settings.sam_model_type]()
        try:
            model.load_state_dict(state)
        except RuntimeError as error:  # missing or mis-shaped keys
            raise CheckpointError(f"{weights}: not a complete {held} SAM checkpoint ({error})") from error
        return cls(model.to(settings.device).eval(), settings)

    def masks(self, frame_bgr: NDArray[np.uint8], detections: Detections) -> list[TrackMask | None]:
        import torch

        frame_hw = frame_bgr.shape[:2]
        crops = [crop_box(box, frame_hw, self._margin) for box in detections.boxes_xyxy_px]
        present = [k for k, crop in enumerate(crops) if crop is not None]
        out: list[TrackMask | None] = [None] * len(crops)
        if not present:
            return out
        self._predictor.set_image(frame_bgr, image_format="BGR")
        boxes = torch.as_tensor(detections.boxes_xyxy_px[present], device=self._predictor.device)
        logits, _, _ = self._predictor.predict_torch(
            point_coords=None,
            point_labels=None,
            boxes=self._predictor.transform.apply_boxes_torch(boxes, frame_hw),
            multimask_output=False,
            return_logits=True,
        )
        person = (torch.sigmoid(logits[:, 0]) > self._threshold).cpu().numpy()
        for k, mask in zip(present, person, strict=True):
            x1, y1, x2, y2 = crops[k]
            out[k] = TrackMask(mask[y1:y2, x1:x2], crops[k])
        return out


class AutoSegmenter:
    """The detector's label map when a frame has one (free), else HumanSeg; decided per frame.

    The segment stage cannot know at start-up whether the detector (another process) makes masks, so the choice
    is made on each frame's detections.
    """

    name = "auto"

    def __init__(self, label_map: LabelMapSegmenter, fallback: HumanSegSegmenter | None, missing: str) -> None:
        self._label_map = label_map
        self._fallback = fallback
        self._missing = missing

    def masks(self, frame_bgr: NDArray[np.uint8], detections: Detections) -> list[TrackMask | None]:
        if detections.label_map is not None:
            return self._label_map.masks(frame_bgr, detections)
        if self._fallback is None:
            raise WeightsNotFound(f"detections carry no label_map and {self._missing}; set it to {_HUMANSEG_HINT}")
        return self._fallback.masks(frame_bgr, detections)


def open_segmenter(settings: SegmenterSettings, threads: int = 1) -> Segmenter:
    """Build the configured segmenter with `threads` CPU threads (the stage's budget, not a segmenter setting);
    missing weights for an explicit method raise `WeightsNotFound`."""
    label_map = LabelMapSegmenter(settings.box_margin_ratio)
    if settings.method == "label_map":
        log.info("segmenter: label_map (masks from the detector)")
        return label_map
    if settings.method == "sam":
        segmenter = SamSegmenter.from_weights(settings, threads)
        log.info(
            "segmenter: sam %s weights=%s device=%s",
            settings.sam_model_type,
            settings.sam_weights,
            settings.device,
        )
        return segmenter
    weights = settings.humanseg_weights
    if settings.method == "humanseg":
        if weights is None:
            raise WeightsNotFound(
                f"segmenter.method=humanseg but segmenter.humanseg_weights is not set; use {_HUMANSEG_HINT}"
            )
        log.info("segmenter: humanseg weights=%s threads=%d", weights, threads)
        return HumanSegSegmenter(weights, settings, threads)
    if weights is not None and weights.is_file():
        log.info("segmenter: auto: label_map when the detections carry one, else humanseg (weights=%s)", weights)
        return AutoSegmenter(label_map, HumanSegSegmenter(weights, settings, threads), missing="")
    missing = "segmenter.humanseg_weights is not set" if weights is None else f"{weights} does not exist"
    log.info("segmenter: auto: label_map only (%s); frames without a label map will fail", missing)
    return AutoSegmenter(label_map, None, missing)
