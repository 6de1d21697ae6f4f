"""TensorRT 10: building an engine from the exported ONNX, and the backend that runs it on an NVIDIA GPU.

The engine has one optimisation profile over the input `(batch, frames, 64, 44)`; windows outside the profile's
frame range cannot run, and batches larger than its maximum are split. TensorRT 10 networks are always explicit
batch, and tensors are addressed by name (`set_input_shape`, `set_tensor_address`, `execute_async_v3`). Buffers
are pycuda allocations on the device's primary context, the one TensorRT's runtime uses.

A built engine holds no record of the weights it came from, so `build_engine` writes a sidecar `X.engine.json`
with the ONNX file's encoder name and layout. `tensorrt` and `pycuda` are imported only when used (they are an
optional extra: `pip install .[tensorrt]`). Must not import `pipeline` or `stages`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from engines.backends import EncoderInfo, artefact_sha256
from engines.errors import BackendUnavailable, CheckpointError, EngineError, WeightsNotFound

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install .[tensorrt] on an NVIDIA machine"
SIL_SHAPE = (64, 44)


def tensorrt_unavailable_reason() -> str | None:
    """Why the TensorRT backend cannot run here (package, pycuda, driver or GPU missing), or None when it can."""
    if importlib.util.find_spec("tensorrt") is None:
        return f"the tensorrt package is not installed ({INSTALL_HINT})"
    if importlib.util.find_spec("pycuda") is None:
        return f"pycuda is not installed ({INSTALL_HINT})"
    try:
        import pycuda.driver as cuda

        cuda.init()
        count = cuda.Device.count()
    except Exception as exc:  # pycuda raises its own error types when the driver is missing or broken
        return f"no usable CUDA driver ({exc})"
    return None if count > 0 else "no CUDA device is visible"


def _import_tensorrt(advice: str = "use backend onnxruntime or auto") -> Any:
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        raise BackendUnavailable(f"tensorrt: {reason}; {advice}")
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailable(f"tensorrt: the package does not import ({exc}); {advice}") from exc
    if int(trt.__version__.split(".")[0]) < 10:
        raise BackendUnavailable(f"tensorrt: version {trt.__version__} found, 10.x needed ({INSTALL_HINT})")
    return trt


@dataclass(frozen=True)
class ProfileShapes:
    """An optimisation profile for the input `(batch, frames, 64, 44)`: TensorRT tunes kernels for `opt`."""

    min: tuple[int, int, int, int]
    opt: tuple[int, int, int, int]
    max: tuple[int, int, int, int]


def profile_shapes(max_batch: int, frames: Sequence[int], opt_batch: int | None = None) -> ProfileShapes:
    """Profile shapes from a maximum batch and the frames as `(min, opt, max)` or one fixed count.

    Batch runs from 1 to `max_batch`, tuned for `opt_batch` (default half of the maximum, at least 1): the gait
    stage batches the windows that become ready together, usually a few. Raises `ValueError` on impossible values.
    """
    if max_batch < 1:
        raise ValueError(f"max batch must be >= 1, got {max_batch}")
    if len(frames) == 1:
        frames = (frames[0],) * 3
    if len(frames) != 3:
        raise ValueError(f"frames must be one count or min,opt,max; got {list(frames)}")
    f_min, f_opt, f_max = (int(f) for f in frames)
    if not 1 <= f_min <= f_opt <= f_max:
        raise ValueError(f"frames must satisfy 1 <= min <= opt <= max; got {f_min},{f_opt},{f_max}")
    opt_batch = max(1, max_batch // 2) if opt_batch is None else opt_batch
    if not 1 <= opt_batch <= max_batch:
        raise ValueError(f"opt batch {opt_batch} must lie in [1, {max_batch}]")
    return ProfileShapes(min=(1, f_min, *SIL_SHAPE), opt=(opt_batch, f_opt, *SIL_SHAPE),
                         max=(max_batch, f_max, *SIL_SHAPE))


def sidecar_path(engine_path: Path) -> Path:
    """`X.engine` -> `X.engine.json`: the encoder identity and profile of an engine."""
    return Path(engine_path).with_name(Path(engine_path).name + ".json")


def build_engine(onnx_path: Path, out: Path, *, shapes: ProfileShapes, fp16: bool = True,
                 workspace_gib: float = 2.0) -> Path:
    """Parse `onnx_path`, build a serialized engine with one profile, write it to `out` plus its sidecar."""
    import onnx

    trt = _import_tensorrt("build engines on the NVIDIA machine that will run them")
    onnx_path, out = Path(onnx_path), Path(out)
    if not onnx_path.is_file():
        raise WeightsNotFound(f"{onnx_path}: no such ONNX file; export one with tools/export.py")
    meta = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: every network is explicit batch; the old flag is ignored
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    input_name = network.get_input(0).name
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, shapes.min, shapes.opt, shapes.max)
    config.add_optimization_profile(profile)
    log.info("building tensorrt engine onnx=%s fp16=%s min=%s opt=%s max=%s", onnx_path, fp16, shapes.min,
             shapes.opt, shapes.max)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"{onnx_path}: TensorRT could not build an engine (see the TensorRT log above)")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(bytes(serialized))
    sidecar = {**meta, "tensorrt": trt.__version__, "fp16": fp16, "onnx": onnx_path.name,
               "profile": {"min": shapes.min, "opt": shapes.opt, "max": shapes.max}}
    sidecar_path(out).write_text(json.dumps(sidecar, indent=2) + "\n")
    log.info("wrote tensorrt engine path=%s bytes=%d", out, out.stat().st_size)
    return out


def _cuda_index(device: str) -> int:
    if device in ("auto", "cuda"):
        return 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    raise BackendUnavailable(f"tensorrt: runs only on CUDA devices, not {device!r}; use backend onnxruntime or torch")


class TensorRTBackend:
    """A deserialized engine, one execution context and one CUDA stream; buffers grow to the largest batch seen."""

    name = "tensorrt"

    def __init__(self, path: Path, device: str = "auto") -> None:
        path = Path(path)
        if not path.is_file():
            raise WeightsNotFound(f"{path}: no such TensorRT engine; build one with tools/build_engine.py")
        trt = _import_tensorrt()
        index = _cuda_index(device)
        import pycuda.driver as cuda

        self._trt, self._cuda = trt, cuda
        if index >= cuda.Device.count():
            raise BackendUnavailable(f"tensorrt: CUDA device {index} requested, {cuda.Device.count()} present")
        self.device = f"cuda:{index}"
        self._context_cuda = cuda.Device(index).retain_primary_context()
        self._context_cuda.push()
        try:
            self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
            if self.engine is None:
                raise CheckpointError(f"{path}: TensorRT cannot deserialize it (built by another TensorRT version "
                                      "or for another GPU?); rebuild it with tools/build_engine.py here")
            self.context = self.engine.create_execution_context()
            self.stream = cuda.Stream()
            names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
            inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            outputs = [n for n in names if n not in inputs]
            if len(inputs) != 1 or len(outputs) != 1:
                raise CheckpointError(f"{path}: expected one input and one output tensor, found {names}")
            self.input_name, self.output_name = inputs[0], outputs[0]
            low, _, high = self.engine.get_tensor_profile_shape(self.input_name, 0)
            self.max_batch, self.min_frames, self.max_frames = int(high[0]), int(low[1]), int(high[1])
            self._out_dtype = trt.nptype(self.engine.get_tensor_dtype(self.output_name))
        finally:
            self._context_cuda.pop()
        self._buffers: dict[str, tuple[Any, Any]] = {}
        self.path = path

    def info(self) -> EncoderInfo:
        """The encoder recorded in the sidecar by `build_engine`, or one named after the engine file."""
        sidecar = sidecar_path(self.path)
        recorded = EncoderInfo.from_metadata(json.loads(sidecar.read_text())) if sidecar.is_file() else None
        if recorded is not None:
            return recorded
        shape = tuple(self.engine.get_tensor_shape(self.output_name))
        if len(shape) != 3 or min(shape[1:]) < 1:
            raise CheckpointError(f"{self.path}: output shape {shape} is not (batch, parts, channels)")
        return EncoderInfo(name=f"{self.path.stem}@{artefact_sha256(self.path)[:8]}", parts=shape[1],
                           part_dim=shape[2])

    def _buffer(self, role: str, shape: tuple[int, ...], dtype: Any) -> tuple[Any, Any]:
        """(page-locked host array of `shape`, device allocation), reallocated only when a bigger one is needed."""
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        host, device = self._buffers.get(role, (None, None))
        if host is None or host.nbytes < nbytes:
            host = self._cuda.pagelocked_empty(int(np.prod(shape)), dtype)
            device = self._cuda.mem_alloc(nbytes)
            self._buffers[role] = (host, device)
        return host[: int(np.prod(shape))].reshape(shape), device

    def run(self, silhouettes: NDArray[np.float32]) -> NDArray[np.float32]:
        frames = silhouettes.shape[1]
        if not self.min_frames <= frames <= self.max_frames:
            raise EngineError(f"tensorrt: {frames}-frame windows are outside the engine's profile "
                              f"[{self.min_frames}, {self.max_frames}]; rebuild with --frames covering them")
        chunks = [self._run_chunk(silhouettes[i: i + self.max_batch])
                  for i in range(0, len(silhouettes), self.max_batch)]
        return np.concatenate(chunks).astype(np.float32, copy=False)

    def _run_chunk(self, silhouettes: NDArray[np.float32]) -> NDArray[np.float32]:
        cuda = self._cuda
        self._context_cuda.push()
        try:
            self.context.set_input_shape(self.input_name, silhouettes.shape)
            out_shape = tuple(self.context.get_tensor_shape(self.output_name))
            host_in, device_in = self._buffer("input", silhouettes.shape, np.float32)
            host_out, device_out = self._buffer("output", out_shape, self._out_dtype)
            host_in[...] = silhouettes
            cuda.memcpy_htod_async(device_in, host_in, self.stream)
            self.context.set_tensor_address(self.input_name, int(device_in))
            self.context.set_tensor_address(self.output_name, int(device_out))
            if not self.context.execute_async_v3(stream_handle=self.stream.handle):
                raise EngineError("tensorrt: execute_async_v3 failed (see the TensorRT log)")
            cuda.memcpy_dtoh_async(host_out, device_out, self.stream)
            self.stream.synchronize()
            return np.array(host_out, dtype=np.float32)
        finally:
            self._context_cuda.pop()


def open_tensorrt(path: Path, device: str = "auto") -> tuple[TensorRTBackend, EncoderInfo]:
    backend = TensorRTBackend(path, device)
    return backend, backend.info()

