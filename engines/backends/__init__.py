"""Inference backends for the gait encoder: torch, ONNX Runtime and TensorRT behind one `run` call.

Every backend takes the export wrapper's input, `(N, T, 64, 44) float32` silhouettes in [0, 255], and returns
`(N, P, C) float32` part embeddings; `engines/gait/encoder.py` picks one and hides which. Heavy packages (torch,
onnxruntime, tensorrt, pycuda) are imported only by the backend module that needs them, so a process running the
ONNX Runtime backend never loads torch.

Each artefact carries the identity of the weights it came from (`EncoderInfo.name`, "model@sha8" of the source
.pt), so an ONNX model or TensorRT engine built from some weights produces embeddings a gallery accepts as the
same encoder's. Must not import `pipeline` or `stages`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

BACKENDS = ("torch", "onnxruntime", "tensorrt")
INPUT_NAME = "silhouettes"
OUTPUT_NAME = "embeddings"
#: ONNX `metadata_props` keys (and the TensorRT engine's sidecar JSON keys) that record where an artefact came from.
META_NAME = "gaitstream.encoder_name"
META_PARTS = "gaitstream.parts"
META_PART_DIM = "gaitstream.part_dim"
META_SOURCE_SHA256 = "gaitstream.source_sha256"
META_WALK_DIRECTION = "gaitstream.walk_direction"
META_ACCEPT_DISTANCE = "gaitstream.accept_distance"
META_MARGIN_RATIO = "gaitstream.margin_ratio"
WALK_DIRECTIONS = ("right_to_left", "left_to_right")


@dataclass(frozen=True)
class EncoderInfo:
    """What a gallery and a matcher need to know about an encoder: its identity, embedding layout (P parts of C
    channels), the walking direction of its training data (`right_to_left`, `left_to_right`, or None when it saw
    both or nobody recorded it) and the open-set decision calibrated for it: the threshold and the margin ratio it
    was calibrated with (None when never calibrated)."""

    name: str
    parts: int
    part_dim: int
    source_sha256: str | None = None
    walk_direction: str | None = None
    accept_distance: float | None = None
    margin_ratio: float | None = None

    @classmethod
    def from_weights(cls, info: dict[str, Any], parts: int, part_dim: int) -> EncoderInfo:
        """From `load_gait_model`'s info dict: the weights' name and sha256, and their calibration metadata."""
        metadata = info.get("metadata") or {}
        direction = metadata.get("walk_direction")
        accept, margin = metadata.get("accept_distance"), metadata.get("margin_ratio")
        return cls(name=info["name"], parts=parts, part_dim=part_dim, source_sha256=info["sha256"],
                   walk_direction=direction if direction in WALK_DIRECTIONS else None,
                   accept_distance=float(accept) if accept is not None else None,
                   margin_ratio=float(margin) if margin is not None else None)

    def to_metadata(self) -> dict[str, str]:
        """String key/values for ONNX `metadata_props` and the engine sidecar."""
        meta = {META_NAME: self.name, META_PARTS: str(self.parts), META_PART_DIM: str(self.part_dim)}
        if self.source_sha256:
            meta[META_SOURCE_SHA256] = self.source_sha256
        if self.walk_direction:
            meta[META_WALK_DIRECTION] = self.walk_direction
        if self.accept_distance is not None:
            meta[META_ACCEPT_DISTANCE] = repr(self.accept_distance)
        if self.margin_ratio is not None:
            meta[META_MARGIN_RATIO] = repr(self.margin_ratio)
        return meta

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> EncoderInfo | None:
        """The info recorded by `to_metadata`, or None when the artefact was not written by gaitstream."""
        try:
            direction = meta.get(META_WALK_DIRECTION)
            accept, margin = meta.get(META_ACCEPT_DISTANCE), meta.get(META_MARGIN_RATIO)
            return cls(name=meta[META_NAME], parts=int(meta[META_PARTS]), part_dim=int(meta[META_PART_DIM]),
                       source_sha256=meta.get(META_SOURCE_SHA256),
                       walk_direction=direction if direction in WALK_DIRECTIONS else None,
                       accept_distance=float(accept) if accept is not None else None,
                       margin_ratio=float(margin) if margin is not None else None)
        except (KeyError, ValueError):
            return None


class InferenceBackend(Protocol):
    """One loaded network on one device."""

    name: str  # "torch" | "onnxruntime" | "tensorrt"
    device: str  # what it actually runs on, e.g. "cpu", "cuda:0"

    def run(self, silhouettes: NDArray[np.float32]) -> NDArray[np.float32]:
        """(N, T, 64, 44) float32 in [0, 255] -> (N, P, C) float32."""
        ...


def artefact_sha256(path: Path) -> str:
    """Hex sha256 of a file; its first 8 characters name an encoder, so galleries never mix weights."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
