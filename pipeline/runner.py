"""The runners that host one stage (or one source) in one OS process, and the process entry point.

`StageRunner`: input edge -> `StageDriver` -> output edge, with custody-based acknowledgements, duplicate removal,
heartbeats and ticks. `SourceRunner`: reads its inputs one after another, each frame decoded straight into a free
slot of a shared-memory ring (`FrameSlots`), and sends FrameRecords, with the live drop-oldest queue (a capture
thread feeding a bounded deque) or the lossless batch policy (read only when the edge has credit), then an
EndOfStream each. `run_process` is what the supervisor spawns. Must not import `stages` or `engines`.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zmq
from numpy.typing import NDArray

from pipeline.config import RuntimeConfig, StageConfig, StreamSpec
from pipeline.driver import StageDriver
from pipeline.errors import FatalError, GaitstreamError, SchemaError, SourceError, StaleFrame
from pipeline.fence import ReadDeadline
from pipeline.logs import setup_logging
from pipeline.messages import (
    DataMessage,
    EndOfStream,
    Frame,
    FrameRecord,
    Heartbeat,
    Ready,
    Report,
    ReportEvent,
    Stop,
    decode,
    encode,
)
from pipeline.metrics import ProcessMetrics
from pipeline.shm import FrameRing, RingReaders, ring_name
from pipeline.stage import CapturedFrame, FrameSource, SourceConfig, SourceStage, Stage, StageContext
from pipeline.transport import ControlClient, CurveKeys, Custody, EdgeReceiver, EdgeSender

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_CRASH = 1
EXIT_FATAL = 3  # open() failed or a FatalError: restarting cannot help (missing weights, disk full)
SUMMARY_EVERY_S = 10.0


@dataclass(frozen=True)
class EdgeSpec:
    """One end of a data edge as a process sees it."""

    endpoint: str
    bind: str | None = None
    window: int = 8
    frame_encoding: Literal["shm", "raw", "jpeg"] = "shm"
    curve: CurveKeys | None = None


@dataclass(frozen=True)
class ProcessSpec:
    """Everything a stage process needs, picklable for the `spawn` start method."""

    process: str
    stage_cls: type[Stage]
    config: StageConfig
    runtime: RuntimeConfig
    run_id: str
    run_dir: Path
    control_endpoint: str
    incarnation: int
    streams: tuple[str, ...]
    input: EdgeSpec | None = None
    output: EdgeSpec | None = None
    inputs: tuple[StreamSpec, ...] = ()
    resume_after_seq: dict[str, int] = field(default_factory=dict)
    done_inputs: tuple[str, ...] = ()
    read_deadline: Path | None = None  # a leased camera's source reads only until this file's time (pipeline.fence)


def process_title(process: str) -> str:
    """The name `ps`/`top` show for a stage process (Linux keeps 15 bytes)."""
    return ("gs-" + process)[:15]


def die_with_parent(process: str) -> None:
    """Name this process after its stage and ask Linux to SIGKILL it when the supervisor dies (no orphans)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        libc.prctl(15, process_title(process).encode())  # PR_SET_NAME
    except (OSError, AttributeError):
        log.debug("prctl unavailable; orphan protection relies on the supervisor")


def heap_trimmer() -> Callable[[], None]:
    """glibc's `malloc_trim(0)`, or a no-op where the C library has none (musl, macOS).

    A stage that frees large buffers of varying size from several threads (frames, masks, activations) leaves the
    freed memory in glibc's arenas, so its RSS creeps up without a leak (10-minute soak: detect_track +12 %).
    Trimming every few seconds returns it to the operating system (the remedy Dask applies to its workers): the
    detector alone over 2,800 frames of varying batch size stayed at 1.31-1.32 GB trimmed, 1.47-1.52 GB not. A trim
    takes about 4 ms there (11 ms p95).
    """
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    trim.argtypes = [ctypes.c_size_t]

    def trim_heap() -> None:
        trim(0)

    return trim_heap


@dataclass(frozen=True, eq=False)
class Slot:
    """One shared-memory slot taken for a frame: readers refuse it until it is published. `pixels` is the one view
    of it a frame is decoded into, so `frame.pixels is slot.pixels` tells that the frame is in the slot."""

    ring: FrameRing
    index: int
    pixels: NDArray[np.uint8]


class FrameSlots:
    """The source's shared-memory slots: rings of one frame size each, a new ring when the size changes, a ring
    removed once no frame in it is in use.

    A slot is taken before a frame is decoded into it and returned when the whole chain has acknowledged the frame,
    or at once when the frame is not sent (skipped, dropped, failed). A live input's capture thread takes slots
    while the sending thread returns them, hence the lock.
    """

    def __init__(self, run_id: str, process: str, incarnation: int, slots_per_ring: int) -> None:
        self._name_parts = (run_id, process, str(incarnation))
        self.slots_per_ring = slots_per_ring
        self.rings: dict[str, FrameRing] = {}
        self._free: dict[str, deque[int]] = {}
        self._in_use: dict[str, int] = {}
        self._count = 0
        self._current: str | None = None
        self._lock = threading.Lock()

    def has_free(self) -> bool:
        """Whether `take` for the current frame size would give a slot (also before the first ring)."""
        with self._lock:
            return self._current is None or bool(self._free[self._current])

    def take(self, shape: tuple[int, ...]) -> Slot | None:
        """A free slot for a frame of `shape` (H, W, 3), opened for writing; None while all are in use."""
        with self._lock:
            ring = self.rings.get(self._current) if self._current else None
            if ring is None or ring.slot_shape != tuple(shape):
                self._count += 1
                name = ring_name(self._name_parts[0], *self._name_parts[1:], str(self._count))
                ring = self.rings[name] = FrameRing(name, self.slots_per_ring, *shape)
                self._free[name] = deque(range(self.slots_per_ring))
                self._in_use[name] = 0
                self._current = name
                self._retire_idle()
            free = self._free[ring.name]
            if not free:
                return None
            index = free.popleft()
            self._in_use[ring.name] += 1
        return Slot(ring, index, ring.begin(index))

    def release(self, slot: Slot) -> None:
        """Return a slot: its frame was acknowledged by the whole chain, or never sent."""
        with self._lock:
            name = slot.ring.name
            if name not in self.rings:
                return
            self._free[name].append(slot.index)
            self._in_use[name] -= 1
            self._retire_idle()

    def _retire_idle(self) -> None:
        for name in [n for n in self.rings if n != self._current and self._in_use[n] == 0]:
            self.rings.pop(name).close(unlink=True)
            del self._free[name], self._in_use[name]

    def close(self) -> None:
        with self._lock:
            for ring in self.rings.values():
                ring.close(unlink=True)
            self.rings.clear()


class _Base:
    """What both runners share: sockets to the supervisor, heartbeats, stop handling."""

    def __init__(self, spec: ProcessSpec) -> None:
        self.spec = spec
        self.runtime = spec.runtime
        self.zmq = zmq.Context()
        self.identity = f"{spec.process}:{spec.incarnation}:{os.getpid()}"
        self.control = ControlClient(self.zmq, spec.control_endpoint, self.identity)
        self.metrics = ProcessMetrics(spec.process)
        self.context = StageContext(
            process=spec.process,
            incarnation=spec.incarnation,
            run_dir=spec.run_dir,
            streams=spec.streams,
            metrics=self.metrics,
            report_sink=self.send_control,
            zmq_context=self.zmq,
        )
        self.stage = spec.stage_cls(spec.config, self.context)
        self.stop_requested = False
        self.next_heartbeat_s = 0.0
        self.trim_heap = heap_trimmer() if spec.runtime.heap_trim_interval_s else (lambda: None)
        self.next_heap_trim_s = time.monotonic() + spec.runtime.heap_trim_interval_s
        self.sender: EdgeSender | None = None
        if spec.output is not None:
            out = spec.output
            self.sender = EdgeSender(self.zmq, out.endpoint, self.identity, out.window, out.curve)
        self.poller = zmq.Poller()
        self.poller.register(self.control.socket, zmq.POLLIN)
        if self.sender is not None:
            self.poller.register(self.sender.socket, zmq.POLLIN)
            self.poller.register(self.sender.monitor, zmq.POLLIN)

    def send_control(self, message: Any) -> None:
        self.control.send(encode(message))

    def heartbeat_extra(self) -> dict[str, Any]:
        return {}

    def service_control(self) -> None:
        now = time.monotonic()
        while (parts := self.control.recv()) is not None:
            try:
                message = decode(parts)
            except SchemaError as exc:
                log.warning("control: dropped malformed message: %s", exc)
                continue
            if isinstance(message, Stop):
                log.info("stop requested: %s", message.reason or "shutdown")
                self.stop_requested = True
        if now >= self.next_heartbeat_s:
            self.next_heartbeat_s = now + self.runtime.heartbeat_interval_s
            if self.sender is not None:
                self.metrics.set("backlog", self.sender.backlog)
                self.metrics.inc("resent_total", self.sender.resends - self.metrics.counters.get("resent_total", 0))
            if now >= self.next_heap_trim_s:  # a trim costs ~5 ms and re-faulting what it released: not too often
                self.next_heap_trim_s = now + self.runtime.heap_trim_interval_s
                self.trim_heap()
            snapshot = self.metrics.snapshot()
            snapshot.update(self.heartbeat_extra())
            self.send_control(Heartbeat(self.spec.process, snapshot))

    def service_sender(self) -> list[Any]:
        """Acks and reconnects on the output edge; returns the tokens of acknowledged messages."""
        if self.sender is None:
            return []
        self.sender.handle_monitor()
        return self.sender.handle_ack()

    def close(self) -> None:
        for publisher in self.context.publishers:
            publisher.close()
        if self.sender is not None:
            self.sender.close()
        # Final heartbeat so the supervisor's totals include the last messages.
        self.next_heartbeat_s = 0.0
        self.service_control()
        self.control.close()
        self.zmq.term()


class StageRunner(_Base):
    """Hosts one processing stage: input edge → stage → output edge, with custody-based acknowledgements."""

    def __init__(self, spec: ProcessSpec) -> None:
        super().__init__(spec)
        if spec.input is None:
            raise GaitstreamError(f"{spec.process}: a processing stage needs an input edge")
        bind = spec.input.bind or spec.input.endpoint
        self.receiver = EdgeReceiver(
            self.zmq, bind, spec.input.curve,
            on_malformed=lambda: self.metrics.inc("dropped_total", reason="malformed_envelope"),
        )
        self.poller.register(self.receiver.socket, zmq.POLLIN)
        self.rings = RingReaders()
        self.driver = StageDriver(self.stage, self.metrics, last=spec.output is None)
        self.custody = Custody()
        self.last_seen: dict[str, tuple[int, int]] = {}  # stream -> (epoch, seq)
        self.ended: set[tuple[str, int]] = set()
        self.drained_reported = False

    def _accepting(self) -> bool:
        return self.sender is None or (self.sender.has_credit and not self.sender.pending)

    def _outputs_through(self) -> int:
        return self.sender.last_seq if self.sender is not None else -1

    def _is_duplicate(self, message: DataMessage) -> bool:
        if isinstance(message, EndOfStream):
            return (message.stream_id, message.epoch) in self.ended
        epoch, seq = self.last_seen.get(message.stream_id, (-1, -1))
        if message.epoch < epoch or (message.epoch == epoch and message.seq <= seq):
            return True
        self.last_seen[message.stream_id] = (message.epoch, message.seq)
        return False

    def _emit(self, outputs: Sequence[DataMessage]) -> None:
        now_ns = time.monotonic_ns()
        for message in outputs:
            if isinstance(message, FrameRecord):
                message = dataclasses.replace(message, hops=(*message.hops, (self.spec.process, now_ns)))
                self.metrics.inc("frames_out_total")
                self.metrics.observe_ms("latency_since_capture", (now_ns - message.capture_ns) / 1e6)
            if self.sender is not None:
                assert self.spec.output is not None
                self.sender.send(encode(message, frame_encoding=self.spec.output.frame_encoding))

    def _run_records(self, records: list[FrameRecord]) -> None:
        self._emit(self.driver.records(records))

    def _run_end_of_stream(self, eos: EndOfStream) -> None:
        self._emit(self.driver.end_of_stream(eos))
        self.ended.add((eos.stream_id, eos.epoch))
        if self.sender is None:
            self.context.report(ReportEvent.STREAM_FINISHED, eos.stream_id, eos.detail, frames=eos.frames,
                                reason=eos.reason)

    def _take_input(self) -> None:
        """Drain up to max_batch messages; process runs of records together, end-of-streams in order."""
        batch: list[tuple[Any, FrameRecord]] = []

        def flush() -> None:
            if batch:
                self._run_records([record for _, record in batch])
                for incoming, _ in batch:
                    self.custody.processed(incoming.sender, incoming.edge_seq, self._outputs_through())
                batch.clear()

        for _ in range(self.runtime.max_batch):
            if not self._accepting():
                break
            incoming = self.receiver.recv()
            if incoming is None:
                break
            try:
                message = decode(incoming.parts, resolve_frame=self.rings.resolve)
            except (SchemaError, StaleFrame) as exc:
                reason = "malformed" if isinstance(exc, SchemaError) else "stale_frame"
                self.metrics.inc("dropped_total", reason=reason)
                log.warning("dropped a message (%s): %s", reason, exc)
                self.custody.processed(incoming.sender, incoming.edge_seq, self._outputs_through())
                continue
            if isinstance(message, (FrameRecord, EndOfStream)) and self._is_duplicate(message):
                self.metrics.inc("dropped_total", reason="duplicate")
                self.custody.processed(incoming.sender, incoming.edge_seq, self._outputs_through())
                continue
            if isinstance(message, FrameRecord):
                batch.append((incoming, message))
            elif isinstance(message, EndOfStream):
                flush()
                self._run_end_of_stream(message)
                self.custody.processed(incoming.sender, incoming.edge_seq, self._outputs_through())
            else:
                self.metrics.inc("dropped_total", reason="unexpected_kind")
                self.custody.processed(incoming.sender, incoming.edge_seq, self._outputs_through())
        flush()

    def _release(self) -> None:
        acked = self.sender.acked_through if self.sender is not None else float("inf")
        for sender, edge_seq in self.custody.release(acked).items():  # type: ignore[arg-type]
            self.receiver.ack(sender, edge_seq)

    def heartbeat_extra(self) -> dict[str, Any]:
        self.metrics.set("custody_pending", len(self.custody))
        return {}

    def _check_drained(self) -> None:
        if self.drained_reported or not self.spec.streams:
            return
        ended_streams = {stream for stream, _ in self.ended}
        backlog = self.sender.backlog if self.sender is not None else 0
        if set(self.spec.streams) <= ended_streams and backlog == 0 and len(self.custody) == 0:
            self.drained_reported = True
            self.context.report(ReportEvent.DRAINED)

    def run(self) -> int:
        self.send_control(Ready(self.spec.process, os.getpid(), self.spec.incarnation))
        tick_s = self.runtime.tick_ms / 1e3
        next_tick = time.monotonic() + tick_s
        while not self.stop_requested:
            timeout_ms = max(0.0, min(next_tick, self.next_heartbeat_s) - time.monotonic()) * 1e3
            self.poller.poll(timeout_ms)
            self.service_sender()
            if self._accepting():
                self._take_input()
            self._release()
            self.service_control()
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + tick_s
                self._emit(self.driver.tick(now))
                self.metrics.set("mapped_rings", self.rings.forget_unlinked())
            self._check_drained()
            if self.driver.consecutive_failures >= self.runtime.max_consecutive_failures:
                log.error("%d consecutive failures; exiting to be restarted", self.driver.consecutive_failures)
                return EXIT_CRASH
        return EXIT_OK

    def close(self) -> None:
        self.stage.close()
        self.receiver.close()
        self.rings.close()
        super().close()


class SourceRunner(_Base):
    """Hosts a source: reads its inputs one after another and sends FrameRecords, then an EndOfStream each."""

    def __init__(self, spec: ProcessSpec) -> None:
        super().__init__(spec)
        if self.sender is None or spec.output is None:
            raise GaitstreamError(f"{spec.process}: a source needs an output edge")
        self.output = spec.output
        self.stage: SourceStage
        self.epoch_live = time.time_ns()
        # A live input's waiting frames and the one being decoded hold slots too, beside the window in flight.
        queue_frames = getattr(spec.config, "live_queue_frames", 0)
        self.slots = FrameSlots(spec.run_id, spec.process, spec.incarnation, spec.output.window + queue_frames + 1)
        self.acked_seq: dict[str, int] = dict(spec.resume_after_seq)
        self.read_deadline = ReadDeadline(spec.read_deadline) if spec.read_deadline is not None else None

    def heartbeat_extra(self) -> dict[str, Any]:
        return {"acked_seq": dict(self.acked_seq)}

    # --- shared-memory slots -------------------------------------------------------------------------------
    def _fenced(self) -> bool:
        """Past the read deadline of a leased camera: stop reading (and say so once), whatever the node does."""
        if self.read_deadline is None or not self.read_deadline.passed(time.monotonic()):
            return False
        if not self.stop_requested:
            log.warning("%s: the camera's lease deadline passed without a renewal from the node: not reading it",
                        self.spec.process)
            self.stop_requested = True
        return True

    def _read(self, source: FrameSource) -> tuple[CapturedFrame | None, Slot | None]:
        """The next frame, decoded into a free slot of the size the source expects when there is one; a slot the
        frame does not end up in is the sender's to return (`_in_slot`), one with no frame is returned here.
        None when the camera's lease deadline has passed."""
        if self._fenced():
            return None, None
        shape = source.frame_shape
        slot = self.slots.take(shape) if self.output.frame_encoding == "shm" and shape else None
        frame = None
        try:
            frame = source.read(into=slot.pixels if slot is not None else None)
        finally:
            if frame is None and slot is not None:
                self.slots.release(slot)
        return (frame, slot) if frame is not None else (None, None)

    def _in_slot(self, frame: CapturedFrame, slot: Slot | None) -> Slot | None:
        """The slot holding the frame's pixels: the one it was decoded into, else (size changed, no slot was free)
        a copy, counted, into a slot of its size; None if stopped while waiting for one."""
        if slot is not None and frame.pixels is slot.pixels:
            return slot
        reason = "no_slot" if slot is None else "size_changed"
        if slot is not None:
            self.slots.release(slot)
        while (slot := self.slots.take(frame.pixels.shape)) is None:
            if self.stop_requested:
                return None
            self._service(self.runtime.tick_ms)
        np.copyto(slot.pixels, frame.pixels)
        self.metrics.inc("frames_copied_total", reason=reason)
        return slot

    def _on_acked(self, tokens: list[Any]) -> None:
        for token in tokens:
            if token is None:
                continue
            stream_id, seq, slot = token
            self.acked_seq[stream_id] = max(seq, self.acked_seq.get(stream_id, -1))
            if slot is not None:
                self.slots.release(slot)

    def _has_credit(self) -> bool:
        assert self.sender is not None
        return self.sender.has_credit and not self.sender.pending

    def _can_read(self) -> bool:
        """Batch mode reads a frame only when it can be sent at once: credit, and a slot to decode into."""
        return self._has_credit() and (self.output.frame_encoding != "shm" or self.slots.has_free())

    def _send_frame(self, stream_id: str, epoch: int, fps: float, frame: CapturedFrame, slot: Slot | None) -> None:
        assert self.sender is not None
        height, width = frame.pixels.shape[:2]
        if self.output.frame_encoding == "shm":
            placed = self._in_slot(frame, slot)
            if placed is None:
                return
            generation = placed.ring.publish(placed.index)
            image = Frame(height, width, placed.pixels, placed.ring.name, placed.index, generation)
            token = (stream_id, frame.index, placed)
        else:
            image = Frame(height, width, frame.pixels)
            token = (stream_id, frame.index, None)
        record = FrameRecord(stream_id, frame.index, epoch, frame.capture_ns, frame.pts_s, fps, image)
        self.sender.send(encode(record, frame_encoding=self.output.frame_encoding), token)
        self.metrics.inc("frames_out_total")

    # --- loop helpers ----------------------------------------------------------------------------------------
    def _service(self, timeout_ms: float) -> None:
        self.poller.poll(timeout_ms)
        self._on_acked(self.service_sender())
        self.service_control()

    def _wait_drained(self) -> None:
        """After an input ends: wait until the chain acknowledged everything sent (or a stop)."""
        assert self.sender is not None
        while self.sender.backlog and not self.stop_requested:
            self._service(self.runtime.tick_ms)

    def _send_end(self, eos: EndOfStream) -> None:
        assert self.sender is not None
        self.sender.send(encode(eos), None)
        self._wait_drained()

    def run(self) -> int:
        self.send_control(Ready(self.spec.process, os.getpid(), self.spec.incarnation))
        for spec in self.spec.inputs:
            stream_id = spec.id or spec.uri
            if self.stop_requested:
                break
            if stream_id in self.spec.done_inputs:
                continue
            self._run_input(spec, stream_id)
            if not self.stop_requested:
                self.context.report(ReportEvent.INPUT_DONE, stream_id)
        return EXIT_OK

    def _run_input(self, spec: StreamSpec, stream_id: str) -> None:
        config: SourceConfig = self.spec.config  # type: ignore[assignment]
        live = self.stage.is_live(spec) if config.mode == "auto" else config.mode == "live"
        if self._fenced():  # a node frozen since it asked for this source: the camera may be another host's now
            return
        source = self.stage.open_source(spec, realtime=live)
        epoch = self.epoch_live if live else 0
        try:
            source.open()
        except SourceError as exc:
            log.error("%s", exc)
            self.metrics.inc("inputs_failed_total")
            self.context.report(ReportEvent.INPUT_FAILED, stream_id, str(exc), uri=spec.uri)
            self._send_end(EndOfStream(stream_id, epoch, 0, "error", str(exc), spec.uri))
            return
        self.context.report(
            ReportEvent.STREAM_OPENED, stream_id, spec.uri, fps=source.fps, frame_count=source.frame_count, live=live
        )
        log.info("stream opened stream=%s uri=%s live=%s fps=%.2f frames=%s",
                 stream_id, spec.uri, live, source.fps, source.frame_count)
        reason, detail, frames = "end", "", 0
        try:
            if live:
                frames = self._pump_live(source, stream_id, epoch, config.live_queue_frames)
            else:
                frames = self._pump_batch(source, stream_id)
        except SourceError as exc:
            reason, detail, frames = "error", str(exc), getattr(exc, "frames", frames)
            log.error("%s stream=%s", exc, stream_id)
            self.context.report(ReportEvent.STREAM_LOST, stream_id, str(exc))
        finally:
            source.close()
        if self.stop_requested:
            reason = "stopped"
        self._send_end(EndOfStream(stream_id, epoch, frames, reason, detail, spec.uri))

    def _pump_batch(self, source: FrameSource, stream_id: str) -> int:
        """Read only when the edge has credit: nothing is ever dropped. Returns frames delivered."""
        resume_after = self.spec.resume_after_seq.get(stream_id, -1)
        delivered = 0
        while not self.stop_requested:
            self._service(0 if self._can_read() else self.runtime.tick_ms)
            if not self._can_read():
                continue
            try:
                frame, slot = self._read(source)
            except SourceError as exc:
                exc.frames = delivered  # type: ignore[attr-defined]
                raise
            if frame is None:
                break
            delivered += 1
            if frame.index <= resume_after:  # delivered before this source restarted
                if slot is not None:
                    self.slots.release(slot)
                continue
            self._send_frame(stream_id, 0, source.fps, frame, slot)
        return delivered

    def _pump_live(self, source: FrameSource, stream_id: str, epoch: int, queue_frames: int) -> int:
        """A capture thread keeps reading at the camera's pace; when the chain is behind, the oldest waiting frame
        is dropped and counted, so what reaches the chain is always recent."""
        waiting: deque[tuple[CapturedFrame, Slot | None]] = deque()
        lock = threading.Lock()
        done = threading.Event()
        failure: list[SourceError] = []
        captured = [0]
        wake_recv = self.zmq.socket(zmq.PAIR)
        wake_addr = f"inproc://wake-{id(waiting)}"
        wake_recv.bind(wake_addr)
        wake_send = self.zmq.socket(zmq.PAIR)
        wake_send.connect(wake_addr)
        send_lock = threading.Lock()

        def capture() -> None:
            try:
                while not done.is_set():
                    frame, slot = self._read(source)
                    if frame is None:
                        break
                    captured[0] += 1
                    with lock:
                        if len(waiting) >= queue_frames:
                            self._drop(waiting.popleft())
                            self.metrics.inc("dropped_total", reason="live_queue_full")
                        waiting.append((frame, slot))
                    with send_lock:
                        wake_send.send(b"", flags=zmq.NOBLOCK)
            except SourceError as exc:
                failure.append(exc)
            finally:
                done.set()
                with send_lock:
                    try:
                        wake_send.send(b"", flags=zmq.NOBLOCK)
                    except zmq.ZMQError:
                        pass

        thread = threading.Thread(target=capture, name=f"capture-{stream_id}", daemon=True)
        self.poller.register(wake_recv, zmq.POLLIN)
        thread.start()
        delivered = 0
        try:
            while not self.stop_requested:
                self._service(self.runtime.tick_ms)
                while wake_recv.poll(0):
                    wake_recv.recv()
                while self._has_credit():
                    with lock:
                        entry = waiting.popleft() if waiting else None
                    if entry is None:
                        break
                    self._send_frame(stream_id, epoch, source.fps, *entry)
                    delivered += 1
                with lock:
                    empty = not waiting
                if done.is_set() and empty:
                    break
        finally:
            done.set()
            source.interrupt()
            self.poller.unregister(wake_recv)
            thread.join(timeout=5.0)
            with lock:
                while waiting:
                    self._drop(waiting.popleft())
            with send_lock:
                wake_send.close(linger=0)
            wake_recv.close(linger=0)
        if failure:
            failure[0].frames = delivered  # type: ignore[attr-defined]
            raise failure[0]
        return delivered

    def _drop(self, entry: tuple[CapturedFrame, Slot | None]) -> None:
        """A captured frame that will not be sent gives its slot back."""
        slot = entry[1]
        if slot is not None:
            self.slots.release(slot)

    def close(self) -> None:
        self.stage.close()
        self.slots.close()
        super().close()


def run_process(spec: ProcessSpec) -> None:
    """Entry point of every stage process (the `spawn` target): logging, signals, resources, loop, release."""
    setup_logging(spec.process, spec.runtime.log_level)
    die_with_parent(spec.process)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the supervisor coordinates

    def on_term(signum: int, frame: Any) -> None:
        raise SystemExit(EXIT_OK)

    signal.signal(signal.SIGTERM, on_term)
    runner_cls = SourceRunner if issubclass(spec.stage_cls, SourceStage) else StageRunner
    try:
        runner = runner_cls(spec)
    except GaitstreamError as exc:
        log.error("%s", exc)
        raise SystemExit(EXIT_FATAL) from None
    try:
        runner.stage.open()
    except Exception as exc:  # any failure to open is final for this process: report it in one line
        _report_fatal(runner, exc, "cannot open stage")
        runner.close()
        raise SystemExit(EXIT_FATAL) from None
    code = EXIT_CRASH
    try:
        code = runner.run()
    except FatalError as exc:
        _report_fatal(runner, exc, "stopping")
        code = EXIT_FATAL
    finally:
        runner.close()
    raise SystemExit(code)


def _report_fatal(runner: _Base, exc: Exception, doing: str) -> None:
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    # The supervisor receives the report and the run ends with it as its one error line; no second copy here.
    log.debug("%s: %s", doing, message, exc_info=True)
    runner.send_control(Report(runner.spec.process, ReportEvent.FATAL, detail=message))
