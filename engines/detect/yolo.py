"""YOLO backend: one Ultralytics model batches the frames of all streams; one ByteTrack / BoT-SORT per stream.

Ultralytics' own `model.track()` keeps its trackers inside the predictor and keys them by batch slot, so
streams would share or swap tracker state. Here the model only predicts (one batched call for every stream's
frame) and each stream's tracker (`BYTETracker` / `BOTSORT` built from Ultralytics' own YAML defaults) is
updated with that stream's boxes, exactly as `ultralytics/trackers/track.py::on_predict_postprocess_end` does.

Ultralytics is made offline before it is imported (`YOLO_OFFLINE`, `YOLO_AUTOINSTALL=false`): it must never
pip-install a runtime or download weights here. Must not import `pipeline` or `stages`.
"""

from __future__ import annotations

import ast
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from engines.detect import DEFAULT_TRACK_LIFETIME_S, Detections, DetectorSettings, StreamFrame, lost_frames
from engines.errors import BackendUnavailable, EngineError

log = logging.getLogger(__name__)

_PERSON_CLASS = 0  # COCO
_DEFAULT_IMGSZ_PX = 640


def _offline_ultralytics() -> Any:
    """Import Ultralytics with auto-install and online checks off; refuse if that did not take effect."""
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "false"
    import ultralytics
    from ultralytics.utils import LOGGER, checks

    if not log.isEnabledFor(logging.DEBUG):
        LOGGER.setLevel(logging.WARNING)  # "Loading ... for LiteRT inference" per model instance: our log says it

    if checks.AUTOINSTALL or checks.ONLINE:
        raise BackendUnavailable(
            "ultralytics was imported before engines.detect.yolo could switch off its run-time installs and "
            "downloads; set YOLO_OFFLINE=1 and YOLO_AUTOINSTALL=false in the environment of this process"
        )
    return ultralytics


def ultralytics_weights_dir() -> Path:
    """Ultralytics' own weights folder (its `weights_dir` setting), where it keeps weights fetched by name."""
    _offline_ultralytics()
    from ultralytics.utils import SETTINGS

    return Path(SETTINGS["weights_dir"])


@dataclass
class _StreamTracker:
    """One stream's tracker plus the id offset that keeps ids fresh after the stream ended and came back."""

    tracker: Any  # BYTETracker | BOTSORT
    id_offset: int
    last_id: int


class YoloTracker:
    """`MultiStreamTracker` over Ultralytics YOLO (.pt, .onnx, .tflite; detection or segmentation weights).

    Segmentation weights also give `Detections.label_map`, built from full-resolution masks (`retina_masks`).
    """

    backend = "yolo"

    def __init__(self, weights: Path, settings: DetectorSettings, threads: int = 1,
                 track_lifetime_s: float = DEFAULT_TRACK_LIFETIME_S) -> None:
        ultralytics = _offline_ultralytics()
        self._settings = settings
        self._threads = threads
        self._track_lifetime_s = track_lifetime_s
        self._weights = weights
        metadata = _read_metadata(weights)
        self.imgsz_px = _input_size_px(weights, metadata, settings.imgsz_px)
        self._tracker_args = _tracker_args(settings)
        self._predict_kwargs: dict[str, Any] = {
            "imgsz": self.imgsz_px,
            "conf": self._tracker_args.track_low_thresh,  # ByteTrack's second association needs the weak boxes
            "classes": [_PERSON_CLASS],
            "device": settings.device,
            "verbose": False,
            "retina_masks": True,
        }
        # Each worker is a whole model: Ultralytics predictors are not thread-safe, and LiteRT / ONNX Runtime /
        # torch release the GIL while they compute, so threads predicting different frames run in parallel.
        self._models = [self._load_model(ultralytics, metadata) for _ in range(settings.workers)]
        self._model = self._models[0]
        self._pool = ThreadPoolExecutor(settings.workers, "yolo") if settings.workers > 1 else None
        self.task: str = self._model.task
        names = self._model.predictor.model.names
        if names.get(_PERSON_CLASS) != "person":
            raise EngineError(
                f"{weights}: class {_PERSON_CLASS} is {names.get(_PERSON_CLASS)!r}, not 'person'; "
                "the yolo backend needs COCO-ordered weights"
            )
        self._streams: dict[str, _StreamTracker] = {}
        self._last_ids: dict[str, int] = {}  # survives end_stream so a restarted stream never reuses an id

    def _load_model(self, ultralytics: Any, metadata: dict[str, Any]) -> Any:
        model = ultralytics.YOLO(str(self._weights), task=metadata.get("task"))
        self._warm_up(model)
        self._pin_threads(model)
        self._warm_up(model)
        return model

    def update(self, frames: Sequence[StreamFrame]) -> list[Detections]:
        """Detect in all frames (split over the workers), then advance each stream's tracker in frame order."""
        if not frames:
            return []
        images = [frame.pixels for frame in frames]
        if self._pool is None or len(images) == 1:
            results = self._model.predict(images, **self._predict_kwargs)
        else:
            chunks = [c for c in np.array_split(np.arange(len(images)), len(self._models)) if len(c)]
            futures = [self._pool.submit(model.predict, [images[i] for i in chunk], **self._predict_kwargs)
                       for model, chunk in zip(self._models, chunks)]
            results = [result for future in futures for result in future.result()]
        return [self._track(StreamFrame(*frame), result) for frame, result in zip(frames, results, strict=True)]

    def end_stream(self, stream_id: str) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is not None:
            self._last_ids[stream_id] = stream.last_id

    def _track(self, frame: StreamFrame, result: Any) -> Detections:
        stream = self._streams.get(frame.stream_id)
        if stream is None:
            offset = self._last_ids.get(frame.stream_id, 0)
            tracker = new_stream_tracker(self._settings.tracker, self._tracker_args,
                                         lost_frames(self._track_lifetime_s, frame.fps))
            stream = self._streams[frame.stream_id] = _StreamTracker(tracker, id_offset=offset, last_id=offset)
        boxes = result.boxes.cpu().numpy()
        # Rows are [x1, y1, x2, y2, track_id, score, cls, idx]; idx indexes this frame's detections.
        rows = stream.tracker.update(boxes, frame.pixels)
        if len(rows) == 0:
            return Detections.empty(self._empty_label_map(frame.pixels))
        det_index, first = np.unique(rows[:, -1].astype(np.int64), return_index=True)
        track_ids = rows[first, 4].astype(np.int64) + stream.id_offset
        stream.last_id = max(stream.last_id, int(track_ids.max()))
        # Boxes are the detector's measurement, not the Kalman estimate: box and mask cover the same pixels.
        boxes_xyxy = boxes.xyxy[det_index].astype(np.float32)
        label_map = None
        if result.masks is not None:
            masks = result.masks.data.cpu().numpy()[det_index] > 0.5
            label_map = _paint_label_map(masks, boxes_xyxy)
        return Detections(boxes_xyxy, track_ids, boxes.conf[det_index].astype(np.float32), label_map)

    def _empty_label_map(self, frame: NDArray[np.uint8]) -> NDArray[np.uint8] | None:
        return np.zeros(frame.shape[:2], np.uint8) if self.task == "segment" else None

    def _warm_up(self, model: Any) -> None:
        """One predict on a blank frame: builds the predictor (loads the runtime); load errors surface now."""
        height, width = self.imgsz_px
        model.predict(np.zeros((height, width, 3), np.uint8), **self._predict_kwargs)

    def _pin_threads(self, model: Any) -> None:
        """Give every runtime exactly `threads` CPU threads, so a pipeline stage can be pinned.

        torch (pre/post-processing, .pt inference) and OpenCV take a process-wide setting. Ultralytics builds
        the LiteRT interpreter with its own thread count and the ONNX Runtime session with the library default
        (all cores) and offers no knob, so those two are rebuilt here with the same file and `threads`.
        """
        import cv2
        import torch
        from ultralytics.nn.backends.litert import LiteRTBackend
        from ultralytics.nn.backends.onnx import ONNXBackend

        threads = self._threads
        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)
        runtime = model.predictor.model.backend
        if isinstance(runtime, LiteRTBackend) and not runtime.intel:
            from ai_edge_litert.interpreter import Interpreter

            runtime.interpreter = Interpreter(str(self._weights), num_threads=threads)
            runtime.interpreter.allocate_tensors()
            runtime.input_details = runtime.interpreter.get_input_details()
            runtime.output_details = runtime.interpreter.get_output_details()
        elif isinstance(runtime, ONNXBackend) and runtime.session.get_providers() == ["CPUExecutionProvider"]:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            runtime.session = onnxruntime.InferenceSession(
                str(self._weights), options, providers=["CPUExecutionProvider"]
            )


def _paint_label_map(masks: NDArray[np.bool_], boxes_xyxy: NDArray[np.float32]) -> NDArray[np.uint8]:
    """(n, H, W) masks -> (H, W) uint8 with k + 1 on detection k's pixels.

    Where people overlap, the one whose box reaches lower in the frame is nearer a ground-level camera and
    occludes the other, so masks are painted in order of increasing box bottom.
    """
    label_map = np.zeros(masks.shape[1:], np.uint8)
    for k in np.argsort(boxes_xyxy[:, 3], kind="stable"):
        label_map[masks[k]] = k + 1
    return label_map


def _read_metadata(weights: Path) -> dict[str, Any]:
    """Ultralytics' export metadata (task, imgsz, export args); empty for .pt and third-party exports."""
    if weights.suffix == ".pt":
        return {}
    from ultralytics.nn.backends.base import BaseBackend

    return {key: _literal(value) for key, value in BaseBackend.read_metadata(weights).items()}


def _literal(value: Any) -> Any:
    """ONNX metadata stores Python literals as strings ("[320, 320]"); parse them without evaluating code."""
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def _input_size_px(weights: Path, metadata: dict[str, Any], requested: int | None) -> tuple[int, int]:
    """(h, w) the model runs at: the export's fixed size, unless another size was asked of a dynamic model.

    Exported graphs (.tflite, static .onnx) accept only the size they were exported for, so asking for another
    one is an error here rather than a shape mismatch deep inside the runtime.
    """
    exported = metadata.get("imgsz")
    exported_hw = None if exported is None else tuple(int(v) for v in np.broadcast_to(exported, 2))
    args = metadata.get("args") if isinstance(metadata.get("args"), dict) else {}
    fixed = exported_hw is not None and not args.get("dynamic") and weights.suffix != ".pt"
    if fixed and requested is not None and (requested, requested) != exported_hw:
        raise EngineError(
            f"detector.imgsz_px={requested} but {weights.name} was exported for a fixed {exported_hw[0]}x"
            f"{exported_hw[1]} input; set detector.imgsz_px to {exported_hw[0]} or leave it unset"
        )
    if requested is not None:
        return (requested, requested)
    return exported_hw or (_DEFAULT_IMGSZ_PX, _DEFAULT_IMGSZ_PX)


def new_stream_tracker(kind: str, args: Any, lost_frames: int) -> Any:
    """A ByteTrack / BoT-SORT for one stream that keeps an unseen person's id `lost_frames` frames (`track_buffer`)."""
    _offline_ultralytics()
    from ultralytics.trackers.bot_sort import BOTSORT
    from ultralytics.trackers.byte_tracker import BYTETracker
    from ultralytics.utils import IterableSimpleNamespace

    stream_args = IterableSimpleNamespace(**{**vars(args), "track_buffer": lost_frames})
    return (BOTSORT if kind == "botsort" else BYTETracker)(args=stream_args)


def _tracker_args(settings: DetectorSettings) -> Any:
    """Ultralytics' tracker defaults from its own YAML, with confidence from our settings (the track buffer is set
    per stream, from its frame rate: `new_stream_tracker`).

    As in Ultralytics' `model.track()` (which predicts at conf 0.1), the model reports boxes down to
    `track_low_thresh`: ByteTrack starts and first-matches tracks only with boxes of at least `conf`, and uses the
    weaker ones in a second association that keeps a walker's track through a partly occluded frame.
    """
    _offline_ultralytics()
    from ultralytics.utils import YAML, IterableSimpleNamespace
    from ultralytics.utils.checks import check_yaml

    args = YAML.load(check_yaml(f"{settings.tracker}.yaml"))
    args["track_high_thresh"] = args["new_track_thresh"] = settings.conf
    args["track_low_thresh"] = min(args["track_low_thresh"], settings.conf)
    if settings.tracker == "botsort":
        args["with_reid"] = False  # ReID would load a second network; appearance is not needed for walkers
    return IterableSimpleNamespace(**args)
