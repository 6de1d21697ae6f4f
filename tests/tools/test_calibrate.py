"""tools/calibrate.py: the open-set decision written into the weights reaches the encoder, through torch and ONNX."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engines.gait.encoder import open_encoder
from engines.gait.weights import build_model, save_weights
from tools import calibrate

TINY = {"channels": (4, 8, 8, 16), "part_dim": 8, "num_classes": 4}


def test_the_threshold_and_its_margin_travel_with_the_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    weights = tmp_path / "w.pt"
    save_weights(build_model("gaitbase", TINY), weights, name="gaitbase-tiny", metadata={})
    (tmp_path / "w.onnx").write_bytes(b"")  # an ONNX file beside the weights is exported again
    assert calibrate.main([str(weights), "--accept-distance", "0.45", "--margin-ratio", "0.75",
                           "--source", "test"]) == 0
    for backend in ("torch", "onnxruntime"):
        encoder = open_encoder(weights, backend=backend, device="cpu", threads=1)
        assert (encoder.accept_distance, encoder.margin_ratio) == (0.45, 0.75), backend
    # a new threshold without its ratio clears the old ratio rather than keep one chosen for another threshold
    assert calibrate.main([str(weights), "--accept-distance", "0.4", "--no-onnx"]) == 0
    encoder = open_encoder(weights, backend="torch", device="cpu", threads=1)
    assert (encoder.accept_distance, encoder.margin_ratio) == (0.4, None)
    with pytest.raises(SystemExit):
        calibrate.main([str(weights), "--walk-direction", "none", "--margin-ratio", "0.8"])
