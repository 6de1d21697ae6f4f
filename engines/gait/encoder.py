"""The gait encoder the pipeline and the tools use: silhouette windows in, flat part-major embeddings out.

`open_encoder` takes a .pt (weights or training checkpoint), .onnx or .engine file and a backend ("auto", "torch",
"onnxruntime", "tensorrt"); the returned `GaitEncoder` hides which backend runs. "auto" takes the fastest that can
run here: TensorRT for a .engine (given, or beside the file with the same stem) when tensorrt, pycuda and a GPU are
present; else ONNX Runtime for a .onnx (given, or beside the .pt); else torch. A sibling exported from other
weights than the given .pt is skipped as stale. The choice, and why each faster backend was skipped, is logged as
one line. An explicitly requested backend that cannot run raises `BackendUnavailable` instead of falling back.

Must not import `pipeline` or `stages`; torch, onnxruntime and tensorrt are imported only by the backend used.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from engines.backends import BACKENDS, META_SOURCE_SHA256, EncoderInfo, InferenceBackend
from engines.errors import BackendUnavailable, CheckpointError, WeightsNotFound

log = logging.getLogger(__name__)

SIL_HEIGHT, SIL_WIDTH = 64, 44
TORCH_SUFFIXES = (".pt", ".pth")
ARTEFACT_SUFFIXES = (*TORCH_SUFFIXES, ".onnx", ".engine")


class GaitEncoder:
    """One loaded encoder: `encode((N, T, 64, 44) uint8) -> (N, parts * part_dim) float32`, part-major.

    `name` identifies the source weights ("gaitbase-compact-casiab@3f2a9c1d") whichever backend runs them, so a
    gallery can refuse embeddings of another encoder. Row `i` reshapes to `(parts, part_dim)` for OpenGait's
    part-averaged distance.
    """

    min_frames = 1  # temporal max pooling accepts any number of frames

    def __init__(self, runner: InferenceBackend, info: EncoderInfo, path: Path) -> None:
        self._runner = runner
        self.name = info.name
        self.parts = info.parts
        self.part_dim = info.part_dim
        self.embedding_dim = info.parts * info.part_dim
        self.backend = runner.name
        self.device = runner.device
        self.path = path
        self.walk_direction = info.walk_direction  # training data's direction: the gait stage mirrors walks to it
        self.accept_distance = info.accept_distance  # calibrated open-set threshold, None if never calibrated
        self.margin_ratio = info.margin_ratio  # the margin ratio that threshold was calibrated with

    def encode_parts(self, silhouettes: NDArray[np.uint8]) -> NDArray[np.float32]:
        """(N, T, 64, 44) uint8 silhouettes (0 background, 255 person) -> (N, parts, part_dim) float32."""
        silhouettes = np.asarray(silhouettes)
        if silhouettes.ndim != 4 or silhouettes.shape[2:] != (SIL_HEIGHT, SIL_WIDTH) or silhouettes.shape[1] < 1:
            raise ValueError(f"expected silhouettes (N, T>=1, {SIL_HEIGHT}, {SIL_WIDTH}), got {silhouettes.shape}")
        if len(silhouettes) == 0:
            return np.zeros((0, self.parts, self.part_dim), np.float32)
        out = self._runner.run(np.ascontiguousarray(silhouettes, dtype=np.float32))
        if out.shape != (len(silhouettes), self.parts, self.part_dim):
            raise CheckpointError(f"{self.path}: the network returned {out.shape}, expected "
                                  f"({len(silhouettes)}, {self.parts}, {self.part_dim})")
        return out

    def encode(self, silhouettes: NDArray[np.uint8]) -> NDArray[np.float32]:
        """(N, T, 64, 44) uint8 -> (N, embedding_dim) float32, part-major (`reshape(N, parts, part_dim)`)."""
        return self.encode_parts(silhouettes).reshape(-1, self.embedding_dim)


def open_encoder(path: Path, backend: str = "auto", device: str = "auto", threads: int | None = None) -> GaitEncoder:
    """Load the encoder in `path` on `backend` ("auto" or one of torch/onnxruntime/tensorrt) and `device`.

    `device` is "auto", "cpu", "cuda" or "cuda:N"; `threads` sets torch's or ONNX Runtime's intra-op threads
    (None: the library's default). Raises `WeightsNotFound` when `path` does not exist, `BackendUnavailable` when
    an explicitly requested backend or device cannot run here (or "auto" finds nothing that can), and
    `CheckpointError` when the file cannot be read.
    """
    path = Path(path)
    if backend != "auto" and backend not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {backend!r}; use auto, {', '.join(BACKENDS)}")
    if not path.is_file():
        raise WeightsNotFound(f"{path}: no such encoder file (looked at {path.resolve()}); pass a .pt weights file, "
                              "a training checkpoint, a .onnx from tools/export.py or a .engine from "
                              "tools/build_engine.py")
    if path.suffix.lower() not in ARTEFACT_SUFFIXES:
        raise CheckpointError(f"{path}: unknown encoder file type {path.suffix!r} (expected "
                              f"{', '.join(ARTEFACT_SUFFIXES)})")
    if backend == "auto":
        return _open_auto(path, device, threads)
    if backend == "tensorrt":
        from engines.backends.tensorrt_backend import tensorrt_unavailable_reason

        reason = tensorrt_unavailable_reason()
        if reason:
            raise BackendUnavailable(f"tensorrt: {reason}; use backend onnxruntime or auto")
    artefact = _artefact_for(backend, path)
    if artefact is None:
        raise BackendUnavailable(f"{backend}: {_missing_artefact(backend, path)}; use backend auto")
    stale = _stale(path, artefact)
    if stale:
        raise BackendUnavailable(f"{backend}: {stale}")
    return _open(backend, artefact, device, threads)


def _open(backend: str, artefact: Path, device: str, threads: int | None) -> GaitEncoder:
    if backend == "tensorrt":
        from engines.backends.tensorrt_backend import open_tensorrt

        runner, info = open_tensorrt(artefact, device)
    elif backend == "onnxruntime":
        from engines.backends.onnxruntime_backend import open_onnxruntime

        runner, info = open_onnxruntime(artefact, device, threads)
    else:
        from engines.backends.torch_backend import open_torch

        runner, info = open_torch(artefact, device, threads)
    return GaitEncoder(runner, info, artefact)


def _artefact_for(backend: str, path: Path) -> Path | None:
    """The file `backend` runs: `path` itself when it has the right type, else a sibling with the same stem."""
    suffixes = {"tensorrt": (".engine",), "onnxruntime": (".onnx",), "torch": TORCH_SUFFIXES}[backend]
    if path.suffix.lower() in suffixes:
        return path
    for suffix in suffixes:
        sibling = path.with_suffix(suffix)
        if sibling.is_file():
            return sibling
    return None


def _missing_artefact(backend: str, path: Path) -> str:
    how = {
        "tensorrt": f"build it with `python tools/build_engine.py {path.with_suffix('.onnx')} --out "
                    f"{path.with_suffix('.engine')}`",
        "onnxruntime": f"export it with `python tools/export.py {path.with_suffix('.pt')} --out "
                       f"{path.with_suffix('.onnx')}`",
        "torch": "torch needs the .pt weights the other artefacts were made from",
    }[backend]
    wanted = {"tensorrt": ".engine", "onnxruntime": ".onnx", "torch": ".pt"}[backend]
    return f"needs a {wanted} file and there is none at {path.with_suffix(wanted)}; {how}"


def _source_sha256(path: Path) -> str | None:
    """sha256 of the weights an artefact came from: the file itself for a .pt, the recorded one otherwise."""
    suffix = path.suffix.lower()
    if suffix in TORCH_SUFFIXES:
        from engines.backends import artefact_sha256

        return artefact_sha256(path)
    if suffix == ".onnx":
        from engines.backends.onnxruntime_backend import recorded_source_sha256

        return recorded_source_sha256(path)
    from engines.backends.tensorrt_backend import sidecar_path

    sidecar = sidecar_path(path)
    try:
        return json.loads(sidecar.read_text()).get(META_SOURCE_SHA256) if sidecar.is_file() else None
    except (OSError, ValueError):
        return None


def _skip_reason(backend: str, path: Path, artefact: Path | None, device: str) -> str | None:
    """Why "auto" cannot use `backend` for `path` (runtime first, then the file), or None when it can try."""
    if backend == "tensorrt":
        from engines.backends.tensorrt_backend import tensorrt_unavailable_reason

        reason = tensorrt_unavailable_reason() or ("device cpu requested" if device == "cpu" else None)
        if reason:
            return reason
    if backend == "onnxruntime":
        reason = _onnxruntime_unsuitable(path, device)
        if reason:
            return reason
    if artefact is None:
        return f"no {path.with_suffix({'tensorrt': '.engine', 'onnxruntime': '.onnx'}.get(backend, '.pt')).name}"
    return _stale(path, artefact)


def _stale(path: Path, artefact: Path) -> str | None:
    """Why a sibling `artefact` must not stand in for `path`: it records other source weights than `path` has."""
    if artefact == path:
        return None
    given, sibling = _source_sha256(path), _source_sha256(artefact)
    if given and sibling and given != sibling:
        return f"{artefact.name} was made from other weights than {path.name} (stale; rebuild it)"
    return None


def _onnxruntime_unsuitable(path: Path, device: str) -> str | None:
    """ONNX Runtime is missing, or it is CPU-only while torch could run the given .pt on a GPU (faster)."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        return "the onnxruntime package is not installed"
    if device == "cpu" or path.suffix.lower() not in TORCH_SUFFIXES:
        return None
    import onnxruntime as ort
    import torch

    if "CUDAExecutionProvider" not in ort.get_available_providers() and torch.cuda.is_available():
        return "this onnxruntime has no CUDAExecutionProvider and torch on CUDA is faster than it on CPU"
    return None


def _open_auto(path: Path, device: str, threads: int | None) -> GaitEncoder:
    skipped: list[str] = []
    for backend in ("tensorrt", "onnxruntime", "torch"):
        artefact = _artefact_for(backend, path)
        reason = _skip_reason(backend, path, artefact, device)
        if reason is None:
            assert artefact is not None
            try:
                encoder = _open(backend, artefact, device, threads)
            except (BackendUnavailable, CheckpointError) as exc:
                reason = str(exc)
            else:
                why = "; ".join(skipped) if skipped else "the fastest backend"
                log.info("gait encoder backend=%s device=%s file=%s (auto: %s)", backend, encoder.device,
                         artefact, why)
                return encoder
        skipped.append(f"{backend} skipped: {reason}")
    raise BackendUnavailable(f"{path}: no backend can run it here ({'; '.join(skipped)})")
