"""The encoder interface the gait stage relies on, on torch and ONNX Runtime, and how "auto" picks a backend.

A tiny randomly initialised GaitBase stands in for trained weights: the interface, shapes, names and backend
choice do not depend on what the network has learnt.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.backends import artefact_sha256
from engines.backends.onnxruntime_backend import export_onnx
from engines.errors import BackendUnavailable, CheckpointError, WeightsNotFound
from engines.gait.encoder import open_encoder
from engines.gait.gaitbase import GaitBase, GaitBaseConfig
from engines.gait.weights import save_weights

TINY = GaitBaseConfig(channels=(4, 8, 8, 16), part_dim=8, num_classes=4)
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def tiny_weights(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    save_weights(GaitBase(TINY), path, name="gaitbase-tiny", metadata={"note": "random, for tests"})
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(weights.pt, weights.onnx exported from it) in one folder."""
    folder = tmp_path_factory.mktemp("encoder")
    weights = tiny_weights(folder / "tiny.pt")
    export_onnx(weights, folder / "tiny.onnx")
    return weights, folder / "tiny.onnx"


@pytest.fixture(scope="module")
def windows(casia_b: Path) -> np.ndarray:
    """Three real 12-frame windows of subject 075, (3, 12, 64, 44) uint8."""
    packed = np.load(casia_b / "sils-64x64-bin" / "075.npz")
    frames = [np.unpackbits(packed[key][:12], axis=-1)[:, :, 10:54] * np.uint8(255)
              for key in ("nm-01_090", "bg-01_090", "cl-01_000")]
    return np.stack(frames)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_encoder_interface(exported: tuple[Path, Path], windows: np.ndarray, backend: str) -> None:
    weights, onnx_path = exported
    encoder = open_encoder(onnx_path if backend == "onnxruntime" else weights, backend=backend, device="cpu",
                           threads=1)
    assert encoder.backend == backend
    assert encoder.name == f"gaitbase-tiny@{artefact_sha256(weights)[:8]}"  # the ONNX file carries the weights' name
    assert (encoder.parts, encoder.embedding_dim) == (16, 16 * 8)
    vectors = encoder.encode(windows)
    assert vectors.shape == (3, 128) and vectors.dtype == np.float32
    np.testing.assert_array_equal(vectors.reshape(3, 16, 8), encoder.encode_parts(windows))
    np.testing.assert_allclose(encoder.encode(windows[1:2]), vectors[1:2], rtol=1e-4, atol=1e-5)
    assert encoder.encode(windows[:, :1]).shape == (3, 128)  # a single frame is a valid window
    assert encoder.encode(np.zeros((0, 5, 64, 44), np.uint8)).shape == (0, 128)
    with pytest.raises(ValueError, match="64, 44"):
        encoder.encode(np.zeros((1, 5, 64, 64), np.uint8))


def test_auto_prefers_onnx_beside_the_weights_and_says_why(exported: tuple[Path, Path],
                                                           caplog: pytest.LogCaptureFixture) -> None:
    weights, _ = exported
    with caplog.at_level(logging.INFO, logger="engines.gait.encoder"):
        encoder = open_encoder(weights, device="cpu", threads=1)
    assert encoder.backend == "onnxruntime"
    lines = [r.getMessage() for r in caplog.records if r.name == "engines.gait.encoder"]
    assert len(lines) == 1
    assert "backend=onnxruntime" in lines[0]
    if not HAS_TENSORRT:
        assert "tensorrt skipped: the tensorrt package is not installed" in lines[0]


def test_auto_falls_back_to_torch_without_an_onnx(exported: tuple[Path, Path], tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    weights = shutil.copy(exported[0], tmp_path / "alone.pt")
    with caplog.at_level(logging.INFO, logger="engines.gait.encoder"):
        encoder = open_encoder(Path(weights), device="cpu", threads=1)
    assert encoder.backend == "torch"
    assert "onnxruntime skipped: no alone.onnx" in caplog.text


def test_auto_skips_an_onnx_exported_from_other_weights(exported: tuple[Path, Path], tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    weights = tiny_weights(tmp_path / "tiny.pt", seed=1)
    shutil.copy(exported[1], tmp_path / "tiny.onnx")
    with caplog.at_level(logging.INFO, logger="engines.gait.encoder"):
        encoder = open_encoder(weights, device="cpu", threads=1)
    assert encoder.backend == "torch"
    assert "stale" in caplog.text
    with pytest.raises(BackendUnavailable, match="onnxruntime: tiny.onnx was made from other weights"):
        open_encoder(weights, backend="onnxruntime", device="cpu")


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed here")
def test_explicit_tensorrt_without_the_package(exported: tuple[Path, Path], tmp_path: Path) -> None:
    engine = tmp_path / "tiny.engine"
    engine.write_bytes(b"not built here")
    with pytest.raises(BackendUnavailable, match="tensorrt: the tensorrt package is not installed.*use backend "
                                                 "onnxruntime or auto"):
        open_encoder(engine, backend="tensorrt", device="cuda")
    with pytest.raises(BackendUnavailable, match="tensorrt: the tensorrt package is not installed"):
        open_encoder(exported[0], backend="tensorrt")


def test_explicit_onnxruntime_needs_an_onnx(exported: tuple[Path, Path], tmp_path: Path) -> None:
    weights = shutil.copy(exported[0], tmp_path / "alone.pt")
    with pytest.raises(BackendUnavailable, match="onnxruntime: needs a .onnx file.*tools/export.py"):
        open_encoder(Path(weights), backend="onnxruntime", device="cpu")


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFound, match="no such encoder file"):
        open_encoder(tmp_path / "absent.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="corrupt.pt"):
        open_encoder(corrupt, backend="torch", device="cpu")
    bad_onnx = tmp_path / "bad.onnx"
    bad_onnx.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="onnxruntime cannot load it"):
        open_encoder(bad_onnx, backend="onnxruntime", device="cpu")
    with pytest.raises(BackendUnavailable, match="unknown backend"):
        open_encoder(corrupt, backend="openvino")
