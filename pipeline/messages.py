"""The message schema and its wire codec: typed dataclasses in, `[topic, msgpack header, *array buffers]` out.

One data message travels the whole chain, `FrameRecord`: each stage fills in its part (tracks, silhouettes,
embeddings, identities) and forwards it, so metadata always travels with its frame. `EndOfStream` closes a
stream and is never dropped. Control messages (`Ready`, `Heartbeat`, `Report`, `Stop`) travel only between a
stage process and its supervisor.

Wire format (pyzmq idiom): part 0 is the topic (the stream id, so SUB sockets can filter by stream), part 1 a
msgpack header `{"v": schema version, "kind": ..., "body": ...}` in which every array is replaced by
`{"__a": index, "d": dtype, "s": shape}` and travels as its own zero-copy part. Pixels of a `Frame` stay in a
shared-memory slot on one host (the header carries ring, slot and generation) and travel inline across hosts,
raw or JPEG. No pickle, ever.

Times are `time.monotonic_ns()` of the capturing host, so latency since capture is only meaningful on that host.
Must not import `stages`, `engines` or `torch`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

import msgpack
import numpy as np
from numpy.typing import NDArray

from pipeline.errors import SchemaError, StaleFrame

SCHEMA_VERSION = 3  # 2: Embeddings.accept_distance; 3: Embeddings.margin_ratio
FrameEncoding = Literal["shm", "raw", "jpeg"]


def _check_array(owner: str, name: str, value: Any, dtype: Any, shape: tuple[int | None, ...]) -> None:
    """Raise SchemaError unless `value` is an ndarray of `dtype` whose shape matches (None = any size)."""
    ok = (
        isinstance(value, np.ndarray)
        and value.dtype == np.dtype(dtype)
        and value.ndim == len(shape)
        and all(want is None or want == got for want, got in zip(shape, value.shape))
    )
    if not ok:
        want = "(" + ", ".join("n" if s is None else str(s) for s in shape) + f") {np.dtype(dtype)}"
        got = f"{value.shape} {value.dtype}" if isinstance(value, np.ndarray) else type(value).__name__
        raise SchemaError(f"{owner}.{name}: expected {want}, got {got}")


def _same_length(owner: str, **arrays: Sequence[Any]) -> None:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise SchemaError(f"{owner}: per-track fields differ in length: {lengths}")


def _ids(values: Sequence[int] | NDArray[np.int64] = ()) -> NDArray[np.int64]:
    return np.asarray(values, dtype=np.int64).reshape(-1)


@dataclass(frozen=True, slots=True)
class Frame:
    """Pixels of one captured frame: BGR uint8 (height_px, width_px, 3).

    On one host `pixels` is a read-only view into the source's shared-memory ring (`shm_ring`, `shm_slot`,
    `shm_generation`); across hosts it arrives inline. `pixels` is None only while a reference is unresolved.
    """

    height_px: int
    width_px: int
    pixels: NDArray[np.uint8] | None = None
    shm_ring: str = ""
    shm_slot: int = -1
    shm_generation: int = -1

    def __post_init__(self) -> None:
        if self.pixels is not None:
            _check_array("Frame", "pixels", self.pixels, np.uint8, (self.height_px, self.width_px, 3))


@dataclass(frozen=True, slots=True)
class Tracks:
    """Tracked people in one frame; track ids are unique within their stream and never reused."""

    boxes_xyxy_px: NDArray[np.float32] = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    track_ids: NDArray[np.int64] = field(default_factory=_ids)
    scores: NDArray[np.float32] = field(default_factory=lambda: np.zeros(0, np.float32))

    def __post_init__(self) -> None:
        _check_array("Tracks", "boxes_xyxy_px", self.boxes_xyxy_px, np.float32, (None, 4))
        _check_array("Tracks", "track_ids", self.track_ids, np.int64, (None,))
        _check_array("Tracks", "scores", self.scores, np.float32, (None,))
        _same_length("Tracks", boxes=self.boxes_xyxy_px, ids=self.track_ids, scores=self.scores)

    def __len__(self) -> int:
        return len(self.track_ids)


@dataclass(frozen=True, slots=True)
class Silhouettes:
    """Pretreated silhouettes of this frame, one per track that passed the checks: (m, 64, 44) uint8 {0, 255}."""

    track_ids: NDArray[np.int64] = field(default_factory=_ids)
    images: NDArray[np.uint8] = field(default_factory=lambda: np.zeros((0, 64, 44), np.uint8))

    def __post_init__(self) -> None:
        _check_array("Silhouettes", "track_ids", self.track_ids, np.int64, (None,))
        _check_array("Silhouettes", "images", self.images, np.uint8, (None, 64, 44))
        _same_length("Silhouettes", ids=self.track_ids, images=self.images)


@dataclass(frozen=True, slots=True)
class Rejections:
    """Tracks of this frame whose mask did not become a silhouette, with the reason (e.g. 'truncated')."""

    track_ids: NDArray[np.int64] = field(default_factory=_ids)
    reasons: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_array("Rejections", "track_ids", self.track_ids, np.int64, (None,))
        _same_length("Rejections", ids=self.track_ids, reasons=self.reasons)


@dataclass(frozen=True, slots=True)
class Embeddings:
    """Gait embeddings of the tracks whose window completed on this frame: (k, D) float32.

    `parts` lets a matcher reshape to (k, parts, D // parts) for OpenGait's part-averaged distance; `encoder`
    names the weights that produced them; `window_frames` is the number of silhouettes in each window, and
    `final` marks the embedding computed when the track ended. `accept_distance` and `margin_ratio` are the
    open-set decision calibrated for that encoder (its weights' metadata), None when it was never calibrated.
    """

    track_ids: NDArray[np.int64]
    vectors: NDArray[np.float32]
    window_frames: NDArray[np.int64]
    final: NDArray[np.bool_]
    parts: int
    encoder: str
    accept_distance: float | None = None
    margin_ratio: float | None = None

    def __post_init__(self) -> None:
        _check_array("Embeddings", "track_ids", self.track_ids, np.int64, (None,))
        _check_array("Embeddings", "vectors", self.vectors, np.float32, (None, None))
        _check_array("Embeddings", "window_frames", self.window_frames, np.int64, (None,))
        _check_array("Embeddings", "final", self.final, np.bool_, (None,))
        _same_length("Embeddings", ids=self.track_ids, vectors=self.vectors, frames=self.window_frames)
        if self.parts < 1 or self.vectors.shape[1] % self.parts:
            raise SchemaError(f"Embeddings: dimension {self.vectors.shape[1]} is not a multiple of parts={self.parts}")


@dataclass(frozen=True, slots=True)
class Candidate:
    """One gallery identity considered for a track, with its distance (lower is closer)."""

    name: str
    distance: float


@dataclass(frozen=True, slots=True)
class Identities:
    """Current identity label of each live track: a gallery name or 'unknown', after temporal voting.

    `scores` are confidences in [0, 1]; `decided` marks tracks whose decision was (re)made on this frame, which is
    when sinks emit an identity event.
    """

    track_ids: NDArray[np.int64] = field(default_factory=_ids)
    names: tuple[str, ...] = ()
    scores: NDArray[np.float32] = field(default_factory=lambda: np.zeros(0, np.float32))
    decided: NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, np.bool_))
    candidates: tuple[tuple[Candidate, ...], ...] = ()

    def __post_init__(self) -> None:
        _check_array("Identities", "track_ids", self.track_ids, np.int64, (None,))
        _check_array("Identities", "scores", self.scores, np.float32, (None,))
        _check_array("Identities", "decided", self.decided, np.bool_, (None,))
        _same_length(
            "Identities",
            ids=self.track_ids,
            names=self.names,
            scores=self.scores,
            decided=self.decided,
            candidates=self.candidates,
        )


@dataclass(frozen=True, slots=True)
class FrameRecord:
    """Everything known about one frame of one stream; stages fill in their part with `dataclasses.replace`.

    `seq` is the frame index on the stream: for files the decoded frame number (deterministic, so a restarted
    source resumes without duplicates), for live streams the capture count within `epoch` (a new epoch starts
    whenever a live source process starts). Gaps in `seq` within an epoch are frames dropped at the source.
    `pts_s` is the media time in seconds and `fps` the stream's nominal frame rate. `hops` records, per stage, the
    monotonic ns at which it forwarded the record, for per-stage latency.
    """

    stream_id: str
    seq: int
    epoch: int
    capture_ns: int
    pts_s: float
    fps: float
    frame: Frame
    tracks: Tracks = field(default_factory=Tracks)
    ended_track_ids: NDArray[np.int64] = field(default_factory=_ids)
    label_map: NDArray[np.uint8] | None = None
    silhouettes: Silhouettes | None = None
    rejections: Rejections | None = None
    embeddings: Embeddings | None = None
    identities: Identities | None = None
    hops: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        _check_array("FrameRecord", "ended_track_ids", self.ended_track_ids, np.int64, (None,))
        if self.label_map is not None:
            shape = (self.frame.height_px, self.frame.width_px)
            _check_array("FrameRecord", "label_map", self.label_map, np.uint8, shape)


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """The stream has no more frames; `frames` is how many it delivered. No flow-control policy drops it.

    `reason` is 'end' (input exhausted), 'error' (input failed part-way, `detail` says why) or 'stopped'.
    Tracks still alive at the end are ended here: stages add `ended_track_ids` and the final `embeddings` and
    `identities` of those tracks, as they would on a frame.
    """

    stream_id: str
    epoch: int
    frames: int
    reason: Literal["end", "error", "stopped"] = "end"
    detail: str = ""
    source: str = ""
    ended_track_ids: NDArray[np.int64] = field(default_factory=_ids)
    embeddings: Embeddings | None = None
    identities: Identities | None = None


@dataclass(frozen=True, slots=True)
class Ready:
    """Control: a process has opened its resources and connected its sockets."""

    process: str
    pid: int
    incarnation: int


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Control: a process is alive; carries its metrics snapshot (see `pipeline.metrics`)."""

    process: str
    metrics: dict[str, Any]


class ReportEvent(str, Enum):
    """What a `Report` says; a str on the wire, checked against this list when decoded."""

    FATAL = "fatal"  # the process cannot go on (open failed, disk full): the run fails with `detail`
    INPUT_FAILED = "input_failed"  # an input could not be opened: skipped
    STREAM_OPENED = "stream_opened"
    STREAM_LOST = "stream_lost"  # a live stream is gone for good
    INPUT_DONE = "input_done"  # a source finished an input (not to be replayed after a restart)
    STREAM_FINISHED = "stream_finished"  # the last stage handled a stream's end
    DRAINED = "drained"  # every stream ended and every output acknowledged
    STOP_REQUESTED = "stop_requested"  # e.g. q pressed in the overlay window


@dataclass(frozen=True, slots=True)
class Report:
    """Control: something the supervisor must know (an input skipped, a stream finished or lost)."""

    process: str
    event: ReportEvent
    stream_id: str = ""
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "event", ReportEvent(self.event))
        except ValueError:
            raise SchemaError(f"Report: unknown event {self.event!r}") from None


@dataclass(frozen=True, slots=True)
class Stop:
    """Control: finish now (shutdown); the process closes its resources and exits 0."""

    reason: str = ""


DataMessage = FrameRecord | EndOfStream
ControlMessage = Ready | Heartbeat | Report | Stop
Message = DataMessage | ControlMessage

KINDS: dict[str, type] = {
    "frame_record": FrameRecord,
    "end_of_stream": EndOfStream,
    "ready": Ready,
    "heartbeat": Heartbeat,
    "report": Report,
    "stop": Stop,
}
_KIND_OF = {cls: kind for kind, cls in KINDS.items()}
_NESTED: dict[str, type] = {
    cls.__name__: cls for cls in (Frame, Tracks, Silhouettes, Rejections, Embeddings, Candidate, Identities)
}

# Resolves a shared-memory reference (ring, slot, generation, height, width) to pixels; raises StaleFrame.
FrameResolver = Callable[[str, int, int, int, int], NDArray[np.uint8]]


class _Packer:
    def __init__(self, frame_encoding: FrameEncoding, jpeg_quality: int) -> None:
        self.frame_encoding = frame_encoding
        self.jpeg_quality = jpeg_quality
        self.buffers: list[Any] = []

    def array(self, value: np.ndarray) -> dict[str, Any]:
        value = np.ascontiguousarray(value)
        self.buffers.append(value)
        return {"__a": len(self.buffers) - 1, "d": value.dtype.str, "s": list(value.shape)}

    def frame(self, frame: Frame) -> dict[str, Any]:
        body: dict[str, Any] = {"__t": "Frame", "height_px": frame.height_px, "width_px": frame.width_px}
        if frame.shm_ring and self.frame_encoding == "shm":
            body.update(shm_ring=frame.shm_ring, shm_slot=frame.shm_slot, shm_generation=frame.shm_generation)
            return body
        if frame.pixels is None:
            raise SchemaError("Frame: cannot send inline, its pixels were never resolved")
        if self.frame_encoding == "jpeg":
            import cv2  # only across hosts with JPEG frames

            ok, encoded = cv2.imencode(".jpg", frame.pixels, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
            if not ok:
                raise SchemaError("Frame: JPEG encoding failed")
            body["jpeg"] = self.array(encoded.reshape(-1))
        else:
            body["pixels"] = self.array(frame.pixels)
        return body

    def pack(self, value: Any) -> Any:
        if isinstance(value, np.ndarray):
            return self.array(value)
        if isinstance(value, Frame):
            return self.frame(value)
        if dataclasses.is_dataclass(value):
            body = {f.name: self.pack(getattr(value, f.name)) for f in dataclasses.fields(value)}
            body["__t"] = type(value).__name__
            return body
        if isinstance(value, (list, tuple)):
            return [self.pack(v) for v in value]
        if isinstance(value, dict):
            return {str(k): self.pack(v) for k, v in value.items()}
        if isinstance(value, np.generic):
            return value.item()
        return value


def encode(message: Message, *, frame_encoding: FrameEncoding = "shm", jpeg_quality: int = 90) -> list[Any]:
    """Message -> multipart parts `[topic, header, *buffers]`; arrays are passed by reference (send with copy=False).

    `frame_encoding` says how pixels travel: 'shm' (reference to the shared-memory slot when there is one, else
    raw), 'raw' or 'jpeg' (inline, for edges that cross hosts).
    """
    kind = _KIND_OF.get(type(message))
    if kind is None:
        raise SchemaError(f"cannot encode {type(message).__name__}: not a message kind")
    packer = _Packer(frame_encoding, jpeg_quality)
    body = {f.name: packer.pack(getattr(message, f.name)) for f in dataclasses.fields(message)}
    header = msgpack.packb({"v": SCHEMA_VERSION, "kind": kind, "body": body}, use_bin_type=True)
    topic = getattr(message, "stream_id", "").encode()
    return [topic, header, *packer.buffers]


class _Unpacker:
    def __init__(self, buffers: Sequence[Any], resolve_frame: FrameResolver | None) -> None:
        self.buffers = buffers
        self.resolve_frame = resolve_frame

    def array(self, ref: dict[str, Any]) -> np.ndarray:
        buffer = self.buffers[ref["__a"]]
        dtype = np.dtype(ref["d"])
        if dtype.hasobject:
            raise SchemaError("object arrays are not allowed on the wire")
        return np.frombuffer(buffer, dtype=dtype).reshape(ref["s"])

    def frame(self, body: dict[str, Any]) -> Frame:
        height, width = int(body["height_px"]), int(body["width_px"])
        ring = body.get("shm_ring", "")
        if ring:
            if self.resolve_frame is None:
                raise SchemaError("Frame refers to shared memory but this receiver has no ring resolver")
            slot, generation = int(body["shm_slot"]), int(body["shm_generation"])
            pixels = self.resolve_frame(ring, slot, generation, height, width)
            return Frame(height, width, pixels, ring, slot, generation)
        if "jpeg" in body:
            import cv2

            pixels = cv2.imdecode(self.array(body["jpeg"]), cv2.IMREAD_COLOR)
            if pixels is None:
                raise SchemaError("Frame: JPEG payload does not decode")
            return Frame(height, width, pixels)
        return Frame(height, width, self.array(body["pixels"]))

    def unpack(self, value: Any) -> Any:
        if isinstance(value, dict):
            if "__a" in value:
                return self.array(value)
            type_name = value.get("__t")
            if type_name == "Frame":
                return self.frame(value)
            if type_name is not None:
                cls = _NESTED.get(type_name)
                if cls is None:
                    raise SchemaError(f"unknown nested type {type_name!r}")
                return cls(**{k: self.unpack(v) for k, v in value.items() if k != "__t"})
            return {k: self.unpack(v) for k, v in value.items()}
        if isinstance(value, list):
            return tuple(self.unpack(v) for v in value)
        return value


def decode(parts: Sequence[Any], *, resolve_frame: FrameResolver | None = None) -> Message:
    """Multipart parts (bytes, memoryviews or zmq.Frame) -> message; raises SchemaError for anything malformed."""
    if len(parts) < 2:
        raise SchemaError(f"expected at least 2 parts (topic, header), got {len(parts)}")
    buffers = [getattr(p, "buffer", p) for p in parts]
    try:
        header = msgpack.unpackb(buffers[1], raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for garbage input
        raise SchemaError(f"header is not valid msgpack: {exc}") from exc
    if not isinstance(header, dict) or not {"v", "kind", "body"} <= header.keys():
        raise SchemaError("header lacks v/kind/body")
    if header["v"] != SCHEMA_VERSION:
        raise SchemaError(f"schema version {header['v']} received, this build speaks {SCHEMA_VERSION}")
    cls = KINDS.get(header["kind"])
    if cls is None:
        raise SchemaError(f"unknown message kind {header['kind']!r}")
    unpacker = _Unpacker(buffers[2:], resolve_frame)
    try:
        fields = {k: unpacker.unpack(v) for k, v in header["body"].items()}
        if cls in (Heartbeat, Report):
            fields = {k: _thaw(v) for k, v in fields.items()}
        return cls(**fields)
    except (SchemaError, StaleFrame):
        raise
    except Exception as exc:  # a field of the wrong type or shape, an out-of-range buffer index
        raise SchemaError(f"malformed {header['kind']}: {type(exc).__name__}: {exc}") from exc


def _thaw(value: Any) -> Any:
    """Free-form dicts (metrics, report data) come back with lists, not the tuples dataclass fields get."""
    if isinstance(value, dict):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value
