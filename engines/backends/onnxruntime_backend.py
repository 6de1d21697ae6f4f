"""ONNX export of the gait encoder and the ONNX Runtime backend that runs it (CPU, or CUDA when its EP is present).

The export keeps the batch and frame axes dynamic: a window may hold any number of silhouettes, and a graph with
the traced frame count baked in would silently reject (or mis-reshape) every other length. `export_onnx` checks
the written graph for that before it returns. The ONNX file records the source weights' encoder name in its
`metadata_props`, so both backends give embeddings the same gallery accepts.

On CPU the session uses every graph optimisation (constant folding, Conv+BN fusion, layout transforms) and a fixed
intra-op thread count, which is what makes it at least as fast as eager torch (`tools/bench.py encoder`).
Must not import `pipeline` or `stages`; torch is imported only by `export_onnx`.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from engines.backends import INPUT_NAME, META_SOURCE_SHA256, OUTPUT_NAME, EncoderInfo, artefact_sha256
from engines.errors import BackendUnavailable, CheckpointError, EngineError, WeightsNotFound

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18
HOW_TO_EXPORT = "python tools/export.py WEIGHTS.pt --out WEIGHTS.onnx"


def export_onnx(weights: Path, out: Path, opset: int = DEFAULT_OPSET) -> EncoderInfo:
    """Write `EmbeddingOnly(network)` from `weights` (.pt weights or checkpoint) to one self-contained ONNX file.

    Input `silhouettes` (batch, frames, 64, 44) float32 in [0, 255]; output `embeddings` (batch, P, C) float32.
    """
    import onnx
    import torch

    from engines.gait.gaitbase import EmbeddingOnly
    from engines.gait.weights import load_gait_model

    if opset < 17:
        raise EngineError(f"opset {opset} is too old; use 17 or newer")
    model, weights_info = load_gait_model(weights)
    info = EncoderInfo.from_weights(weights_info, model.config.parts, model.config.part_dim)
    wrapper = EmbeddingOnly(model).eval()
    example = torch.full((2, 8, 64, 44), 255.0)
    batch = torch.export.Dim("batch", min=1, max=4096)
    frames = torch.export.Dim("frames", min=1, max=65536)
    with tempfile.TemporaryDirectory() as tmp:
        traced_path = Path(tmp) / "encoder.onnx"
        torch.onnx.export(wrapper, (example,), str(traced_path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_shapes={"silhouettes": {0: batch, 1: frames}}, opset_version=opset, dynamo=True,
                          verbose=False)
        graph = onnx.load(str(traced_path))  # pulls in the external weight data the exporter wrote beside it
    check_dynamic_axes(graph)
    del graph.metadata_props[:]
    for key, value in info.to_metadata().items():
        graph.metadata_props.add(key=key, value=value)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(graph, str(out))
    log.info("exported onnx path=%s encoder=%s opset=%d bytes=%d", out, info.name, opset, out.stat().st_size)
    return info


def check_dynamic_axes(graph: object) -> None:
    """Refuse a graph whose batch or frame axis came out as a fixed number."""
    dims = graph.graph.input[0].type.tensor_type.shape.dim  # type: ignore[attr-defined]
    fixed = [axis for axis in (0, 1) if dims[axis].HasField("dim_value")]
    if fixed:
        names = {0: "batch", 1: "frames"}
        raise EngineError(f"ONNX export baked in the {', '.join(names[a] for a in fixed)} axis "
                          f"({[d.dim_value or d.dim_param for d in dims]}); it must stay dynamic")


def session_options(threads: int | None) -> object:
    """CPU-friendly session options: all graph optimisations, `threads` intra-op threads (None: ORT's default).

    Intra-op threads sleep between calls instead of spinning: the encoder runs once per window stride, and spinning
    threads took the detector's cores in between (1 camera on 2 cores: 20-26 frames dropped in 20 s, 0-2 without).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads is not None:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def ort_providers(device: str) -> list[str | tuple[str, dict[str, str]]]:
    """Execution providers for `device` ("auto", "cpu", "cuda", "cuda:N"); CUDA absent when asked is an error."""
    import onnxruntime as ort

    cuda_present = "CUDAExecutionProvider" in ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "auto":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda_present else ["CPUExecutionProvider"]
    if not device.startswith("cuda"):
        raise BackendUnavailable(f"onnxruntime: unknown device {device!r} (use cpu, cuda, cuda:N or auto)")
    if not cuda_present:
        raise BackendUnavailable(
            f"onnxruntime: device {device!r} requested but this onnxruntime has no CUDAExecutionProvider "
            "(install onnxruntime-gpu on an NVIDIA machine); use device cpu"
        )
    index = device.partition(":")[2] or "0"
    return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]


class OnnxRuntimeBackend:
    """An ONNX Runtime inference session over an exported encoder."""

    name = "onnxruntime"

    def __init__(self, path: Path, device: str = "auto", threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailable("onnxruntime: the package is not installed; use backend torch") from exc
        path = Path(path)
        if not path.is_file():
            raise WeightsNotFound(f"{path}: no such ONNX file (looked at {path.resolve()}); {HOW_TO_EXPORT}")
        try:
            self.session = ort.InferenceSession(str(path), session_options(threads), providers=ort_providers(device))
        except (BackendUnavailable, WeightsNotFound):
            raise
        except Exception as exc:  # onnxruntime raises its own pybind exception types for unreadable models
            raise CheckpointError(f"{path}: onnxruntime cannot load it ({str(exc).splitlines()[0]})") from exc
        self.path = path
        self.input_name = self.session.get_inputs()[0].name
        used = self.session.get_providers()[0]
        self.device = "cpu" if used == "CPUExecutionProvider" else f"cuda ({used})"

    def run(self, silhouettes: NDArray[np.float32]) -> NDArray[np.float32]:
        return self.session.run(None, {self.input_name: silhouettes})[0]

    def info(self) -> EncoderInfo:
        """The encoder recorded by `export_onnx`, else one named after this file with layout from the output shape."""
        meta = self.session.get_modelmeta().custom_metadata_map
        recorded = EncoderInfo.from_metadata(meta)
        if recorded is not None:
            return recorded
        shape = self.session.get_outputs()[0].shape
        if len(shape) != 3 or not all(isinstance(d, int) for d in shape[1:]):
            raise CheckpointError(f"{self.path}: output shape {shape} is not (batch, parts, channels); "
                                  f"is this a gait encoder? ({HOW_TO_EXPORT})")
        return EncoderInfo(name=f"{self.path.stem}@{artefact_sha256(self.path)[:8]}", parts=shape[1],
                           part_dim=shape[2])


def open_onnxruntime(path: Path, device: str = "auto",
                     threads: int | None = None) -> tuple[OnnxRuntimeBackend, EncoderInfo]:
    backend = OnnxRuntimeBackend(path, device, threads)
    return backend, backend.info()


def recorded_source_sha256(path: Path) -> str | None:
    """The source weights' sha256 an exported ONNX file records (None if absent), read without a session."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # an unreadable file records nothing; opening it later gives the real error
        return None
    return {p.key: p.value for p in model.metadata_props}.get(META_SOURCE_SHA256)
