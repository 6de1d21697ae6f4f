"""In-process harness: run one stage on a list of messages, without processes or sockets.

The same stage code runs here, in its own process, and across hosts; tests use this to check a stage's logic on
real inputs frame by frame, with an injectable clock. Must not import `stages` or `engines`.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pipeline.config import StageConfig
from pipeline.driver import StageDriver
from pipeline.messages import DataMessage, EndOfStream, Frame, FrameRecord, Report
from pipeline.metrics import ProcessMetrics
from pipeline.stage import Stage, StageContext


@dataclass
class StageRun:
    """What a stage produced: its output messages in order, its reports, its metrics."""

    outputs: list[DataMessage]
    reports: list[Report] = field(default_factory=list)
    metrics: ProcessMetrics | None = None

    def records(self) -> list[FrameRecord]:
        return [m for m in self.outputs if isinstance(m, FrameRecord)]


def make_record(
    stream_id: str, seq: int, pixels: NDArray[np.uint8], *, fps: float = 30.0, epoch: int = 0
) -> FrameRecord:
    """A FrameRecord with inline pixels, as a source would send it."""
    height, width = pixels.shape[:2]
    return FrameRecord(stream_id, seq, epoch, time.monotonic_ns(), seq / fps, fps, Frame(height, width, pixels))


def make_context(process: str, *, streams: Iterable[str] = (), clock: Callable[[], float] = time.monotonic,
                 reports: list[Report] | None = None) -> StageContext:
    sink = reports.append if reports is not None else (lambda report: None)
    return StageContext(process=process, incarnation=0, run_dir=Path(tempfile.mkdtemp(prefix="gaitstream-test-")),
                        streams=tuple(streams), metrics=ProcessMetrics(process, clock), clock=clock, report_sink=sink)


def run_stage(
    stage_cls: type[Stage],
    messages: Iterable[DataMessage],
    config: StageConfig | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    batch_size: int = 1,
    streams: Iterable[str] = (),
) -> StageRun:
    """open → process (in batches of `batch_size` consecutive records) / end-of-stream → close, through the same
    `StageDriver` the process runner uses; the stage ticks with `clock` after every message."""
    reports: list[Report] = []
    context = make_context(stage_cls.name, streams=streams, clock=clock, reports=reports)
    stage = stage_cls(config if config is not None else stage_cls.Config(), context)
    driver = StageDriver(stage, context.metrics)
    stage.open()
    outputs: list[Any] = []
    pending: list[DataMessage] = []
    try:
        for message in messages:
            pending.append(message)
            if isinstance(message, EndOfStream) or len(pending) >= batch_size:
                outputs += driver.push(pending)
                pending = []
            outputs += driver.tick(clock())
        outputs += driver.push(pending)
    finally:
        stage.close()
    return StageRun(outputs, reports, context.metrics)
