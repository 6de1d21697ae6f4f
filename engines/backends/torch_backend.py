"""The torch backend: GaitBase or Mesh-Gait from a weights file or training checkpoint, eval mode, no autograd.

Always available (torch is a core dependency), so it is the backend of last resort and the reference the other
backends are checked against. Must not import `pipeline` or `stages`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from engines.backends import EncoderInfo
from engines.errors import BackendUnavailable
from engines.gait.gaitbase import EmbeddingOnly
from engines.gait.weights import load_gait_model

log = logging.getLogger(__name__)


def torch_device(device: str) -> torch.device:
    """"auto" -> CUDA when present, else CPU; an explicit CUDA device that is absent is `BackendUnavailable`."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise BackendUnavailable(f"torch: unknown device {device!r} (use cpu, cuda, cuda:N or auto)") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailable(f"torch: device {device!r} requested but CUDA is not available; use device cpu")
    return resolved


class TorchBackend:
    """`EmbeddingOnly(network)` on a torch device."""

    name = "torch"

    def __init__(self, module: torch.nn.Module, device: str = "auto", threads: int | None = None) -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        self._device = torch_device(device)
        self.device = str(self._device)
        self.module = module.to(self._device).eval()

    def run(self, silhouettes: NDArray[np.float32]) -> NDArray[np.float32]:
        with torch.inference_mode():
            out = self.module(torch.from_numpy(silhouettes).to(self._device))
        return out.float().cpu().numpy()


def open_torch(path: Path, device: str = "auto", threads: int | None = None) -> tuple[TorchBackend, EncoderInfo]:
    """Load weights or a checkpoint (`WeightsNotFound` / `CheckpointError` as `load_gait_model` raises them)."""
    model, info = load_gait_model(path)
    backend = TorchBackend(EmbeddingOnly(model), device, threads)
    return backend, EncoderInfo.from_weights(info, model.config.parts, model.config.part_dim)
