"""TensorRT: the optimisation profile arithmetic everywhere; building and running an engine only where TensorRT,
pycuda and a GPU are present (the lent GPU machine, never CI)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.backends.tensorrt_backend import ProfileShapes, profile_shapes, sidecar_path, tensorrt_unavailable_reason
from engines.errors import EngineError
from tools import build_engine as build_engine_tool


def test_profile_shapes_from_the_command_line_values() -> None:
    shapes = profile_shapes(16, (10, 30, 120))
    assert shapes == ProfileShapes(min=(1, 10, 64, 44), opt=(8, 30, 64, 44), max=(16, 120, 64, 44))
    assert profile_shapes(1, (30,)) == ProfileShapes(min=(1, 30, 64, 44), opt=(1, 30, 64, 44), max=(1, 30, 64, 44))
    assert profile_shapes(16, (10, 30, 120), opt_batch=4).opt == (4, 30, 64, 44)


@pytest.mark.parametrize(("max_batch", "frames", "opt_batch", "match"), [
    (0, (10, 30, 120), None, "max batch"),
    (16, (30, 10, 120), None, "min <= opt <= max"),
    (16, (0, 10, 120), None, "min <= opt <= max"),
    (16, (10, 120), None, "one count or min,opt,max"),
    (4, (10, 30, 120), 8, "opt batch"),
])
def test_profile_shapes_rejects_impossible_profiles(max_batch: int, frames: tuple[int, ...], opt_batch: int | None,
                                                    match: str) -> None:
    with pytest.raises(ValueError, match=match):
        profile_shapes(max_batch, frames, opt_batch)


@pytest.mark.skipif(tensorrt_unavailable_reason() is None, reason="TensorRT can run here")
def test_build_engine_tool_without_tensorrt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = build_engine_tool.main([str(tmp_path / "x.onnx"), "--out", str(tmp_path / "x.engine"), "--fp16",
                                   "--max-batch", "16", "--frames", "10,30,120"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: tensorrt:") and "pip install .[tensorrt]" in err[0]


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.skipif(tensorrt_unavailable_reason() is not None, reason=f"{tensorrt_unavailable_reason()}")
def test_engine_matches_torch(tmp_path: Path, casia_b: Path) -> None:
    from engines.backends.onnxruntime_backend import export_onnx
    from engines.backends.parity import compare_encoders
    from engines.gait.encoder import open_encoder
    from engines.gait.gaitbase import GaitBase, GaitBaseConfig
    from engines.gait.weights import save_weights

    torch.manual_seed(0)
    save_weights(GaitBase(GaitBaseConfig(channels=(4, 8, 8, 16), part_dim=8, num_classes=4)), tmp_path / "w.pt",
                 name="gaitbase-tiny", metadata={})
    export_onnx(tmp_path / "w.pt", tmp_path / "w.onnx")
    with contextlib.redirect_stdout(io.StringIO()):
        code = build_engine_tool.main([str(tmp_path / "w.onnx"), "--out", str(tmp_path / "w.engine"),
                                       "--max-batch", "8", "--frames", "10,30,100"])
    assert code == 0 and sidecar_path(tmp_path / "w.engine").is_file()
    reference = open_encoder(tmp_path / "w.pt", backend="torch", device="cpu")
    engine = open_encoder(tmp_path / "w.engine", backend="tensorrt", device="cuda")
    assert engine.name == reference.name and engine.backend == "tensorrt"
    cases = compare_encoders(reference, engine, casia_b / "sils-64x64-bin", batches=(1, 8), frames=(10, 30, 100))
    assert min(case.min_cosine for case in cases) >= 0.9999, cases
    with pytest.raises(EngineError, match="outside the engine's profile"):
        engine.encode(np.zeros((1, 101, 64, 44), np.uint8))
