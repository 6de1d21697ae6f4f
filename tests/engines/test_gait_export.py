"""ONNX export: dynamic batch and frame axes, the weights' identity in the file, and parity with torch on real
CASIA-B windows at batch 1 and 8 and 10, 30 and 100 frames (the tool's own check, run as the user runs it)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from engines.backends import META_NAME, META_SOURCE_SHA256, artefact_sha256
from engines.backends.onnxruntime_backend import check_dynamic_axes
from engines.backends.parity import MIN_COSINE, compare_encoders, cosine_rows
from engines.errors import EngineError
from engines.gait.encoder import open_encoder
from engines.gait.weights import build_model, save_weights
from tools import export as export_tool

TINY = {"channels": (4, 8, 8, 16), "part_dim": 8, "num_classes": 4}
TINY_3D = {"vertices": 40, "depth_bins": 4, "heatmap_channels": 8}


@pytest.fixture(scope="module", params=["gaitbase", "meshgait"])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
             casia_b: Path) -> tuple[Path, Path, int, str]:
    """Run `tools/export.py` once per network (GaitBase, Mesh-Gait): (weights, onnx, exit code, stdout)."""
    kind = request.param
    folder = tmp_path_factory.mktemp(f"export-{kind}")
    torch.manual_seed(0)
    model = build_model(kind, {**TINY, **(TINY_3D if kind == "meshgait" else {})})
    save_weights(model, folder / "w.pt", name=f"{kind}-tiny", metadata={})
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = export_tool.main([str(folder / "w.pt"), "--out", str(folder / "w.onnx"), "--threads", "1",
                                 "--dataset", str(casia_b / "sils-64x64-bin")])
    return folder / "w.pt", folder / "w.onnx", code, stdout.getvalue()


def test_export_tool_passes_its_parity_check(exported: tuple[Path, Path, int, str]) -> None:
    _, _, code, out = exported
    assert code == 0, out
    rows = [line.split() for line in out.splitlines() if line[:5].strip().isdigit()]
    assert [(int(r[0]), int(r[1])) for r in rows] == [(1, 10), (1, 30), (1, 100), (8, 10), (8, 30), (8, 100)]
    assert all(float(r[3]) >= MIN_COSINE for r in rows)
    assert "ok: ONNX Runtime matches torch" in out


def test_graph_axes_are_dynamic_and_identity_recorded(exported: tuple[Path, Path, int, str]) -> None:
    weights, onnx_path, _, _ = exported
    model = onnx.load(str(onnx_path))
    assert max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")) >= 17
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.HasField("dim_param") for d in dims] == [True, True, False, False]
    assert [d.dim_value for d in dims[2:]] == [64, 44]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta[META_SOURCE_SHA256] == artefact_sha256(weights)
    assert meta[META_NAME].endswith(f"-tiny@{artefact_sha256(weights)[:8]}")
    dims[1].dim_value = 30  # what a legacy trace with the example's length would have written
    with pytest.raises(EngineError, match="frames"):
        check_dynamic_axes(model)


def test_parity_cases_meet_the_bar(exported: tuple[Path, Path, int, str], casia_b: Path) -> None:
    weights, onnx_path, _, _ = exported
    reference = open_encoder(weights, backend="torch", device="cpu", threads=1)
    candidate = open_encoder(onnx_path, backend="onnxruntime", device="cpu", threads=1)
    cases = compare_encoders(reference, candidate, casia_b / "sils-64x64-bin", batches=(1, 8), frames=(10, 30, 100))
    assert len(cases) == 6
    for case in cases:
        assert case.min_cosine >= MIN_COSINE, case
        assert case.max_abs_diff < 1e-3, case


def test_cosine_rows() -> None:
    a = np.asarray([[1.0, 0.0], [1.0, 1.0]], np.float32)
    b = np.asarray([[2.0, 0.0], [-1.0, -1.0]], np.float32)
    np.testing.assert_allclose(cosine_rows(a, b), [1.0, -1.0])


def test_onnx_runtime_threads_sleep_between_windows() -> None:
    """The encoder runs once per window stride; spinning threads would take the detector's cores in between."""
    from engines.backends.onnxruntime_backend import session_options

    options = session_options(threads=2)
    assert options.intra_op_num_threads == 2
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
