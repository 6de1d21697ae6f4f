"""The stage contract: what a stage is given (`StageContext`), what it implements (`Stage`, `SourceStage`), and how
a source hands over frames (`FrameSource`, `CapturedFrame`).

Lifecycle a stage can rely on, in this order: `__init__(config, context)` stores things and does no I/O;
`open()` loads weights and opens files (raise a specific error: the process reports it and exits without being
restarted); then, for each input in arrival order, `process_batch(records)` (default: `process` per record) or
`on_end_of_stream(eos)` before the end-of-stream is forwarded; `on_tick(now_s)` at least every `tick_ms` (what it
returns is sent on like any output); `close()` on a clean stop, never after a hard kill. A stage never touches
sockets, never sleeps and never blocks on the network. Every host drives it through one `pipeline.driver.StageDriver`
(batching, failure isolation, counting), so a stage runs unchanged in a test (`pipeline.testing.run_stage`), in one
process with others (`pipeline.sequential.StageChain`), in its own process (`pipeline.runner`) or across hosts.

Sources implement `SourceStage.open_source(spec) -> FrameSource`; the source runner (`pipeline.runner`) owns the
live drop-oldest queue, the lossless batch policy, the shared-memory ring and end-of-stream. Must not import
`stages` or `engines`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar

import numpy as np
import zmq
from numpy.typing import NDArray
from pydantic import Field

from pipeline.config import StageConfig, StreamSpec
from pipeline.messages import (
    DataMessage,
    EndOfStream,
    FrameRecord,
    Report,
    ReportEvent,
)
from pipeline.metrics import ProcessMetrics
from pipeline.transport import EventPublisher

log = logging.getLogger(__name__)

@dataclass
class StageContext:
    """What the runner offers a stage: identity, metrics, reports to the supervisor, an event publisher."""

    process: str
    incarnation: int
    run_dir: Path
    streams: tuple[str, ...]
    metrics: ProcessMetrics
    clock: Callable[[], float] = time.monotonic
    report_sink: Callable[[Report], None] = lambda report: None
    zmq_context: Any = None
    publishers: list[EventPublisher] = field(default_factory=list)

    def report(self, event: ReportEvent, stream_id: str = "", detail: str = "", **data: Any) -> None:
        """Tell the supervisor something it must know (an input skipped, a stream opened)."""
        self.report_sink(Report(self.process, event, stream_id, detail, data))

    def open_publisher(self, endpoint: str, hwm: int = 10_000) -> EventPublisher:
        """A PUB socket for events to other programs; closed by the runner."""
        if self.zmq_context is None:
            self.zmq_context = zmq.Context.instance()
        publisher = EventPublisher(self.zmq_context, endpoint, hwm)
        self.publishers.append(publisher)
        return publisher


ConfigT = TypeVar("ConfigT", bound=StageConfig)


class Stage(Generic[ConfigT]):
    """One step of the chain: receives FrameRecords, returns FrameRecords (see the module docstring).

    `Stage[GaitConfig]` types `self.config` as the stage's own settings; `Config` names that class for the
    config model and for the stage's defaults.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[StageConfig]] = StageConfig

    def __init__(self, config: ConfigT, context: StageContext) -> None:
        self.config: ConfigT = config
        self.context = context

    def open(self) -> None:
        """Load weights, open files; raise a specific error when that is impossible."""

    def process(self, record: FrameRecord) -> list[DataMessage]:
        return [record]

    def process_batch(self, records: list[FrameRecord]) -> list[DataMessage]:
        """Records that arrived together (from any streams, each stream in order); override to batch work."""
        return [out for record in records for out in self.process(record)]

    def on_end_of_stream(self, eos: EndOfStream) -> list[DataMessage]:
        """Flush and forget the stream's state. Returns what to forward, ending with the (possibly updated) `eos`."""
        return [eos]

    def on_tick(self, now_s: float) -> list[DataMessage] | None:
        """Time-driven housekeeping (expire state); called at least every tick_ms. Messages it returns go
        downstream like any output (nothing: None)."""

    def close(self) -> None:
        """Release resources; idempotent; not called after a hard kill."""


@dataclass(frozen=True)
class CapturedFrame:
    """One decoded frame from a source: BGR uint8 (H, W, 3), its frame index, media time and capture time."""

    pixels: NDArray[np.uint8]
    index: int
    pts_s: float
    capture_ns: int


class FrameSource(Protocol):
    """A video input. `read` blocks at most the source's read timeout, reconnects live inputs internally, returns
    None at the end of the input, and raises SourceError when the input is lost for good.

    `read(into=buffer)` puts the frame's pixels straight into `buffer` (a shared-memory slot) when the frame has
    its shape, and then `CapturedFrame.pixels is buffer`; otherwise the pixels come in a new array. `frame_shape`,
    the (H, W, 3) the next frame is expected to have, lets the caller pick a buffer that fits before decoding.
    """

    stream_id: str
    uri: str
    live: bool
    fps: float
    frame_count: int | None
    frame_shape: tuple[int, int, int] | None

    def open(self) -> None: ...

    def read(self, into: NDArray[np.uint8] | None = None) -> CapturedFrame | None: ...

    def interrupt(self) -> None:
        """Make a read() blocked in another thread (waiting, reconnecting) return None soon."""

    def close(self) -> None: ...


class SourceConfig(StageConfig):
    """Settings of the source runner: flow-control policy and the live queue."""

    mode: Literal["auto", "live", "batch"] = Field(
        "auto", description="live: drop the oldest frames when behind; batch: lose nothing; auto: live for cameras"
    )
    live_queue_frames: int = Field(2, ge=1, description="frames a live source holds while the pipeline is busy")
    parallel_inputs: int = Field(1, ge=1, description="recorded files read at the same time (one process each)")


class SourceStage(Stage[ConfigT]):
    """Base of source stages: turns a stream spec into a FrameSource; the source runner does the rest."""

    Config: ClassVar[type[StageConfig]] = SourceConfig

    def open_source(self, spec: StreamSpec, *, realtime: bool) -> FrameSource:
        raise NotImplementedError

    @classmethod
    def is_live(cls, spec: StreamSpec) -> bool:
        """Whether this input is a live camera (as opposed to a recorded file)."""
        raise NotImplementedError
