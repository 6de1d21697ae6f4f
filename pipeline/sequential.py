"""The same stages composed in one process, one frame at a time, with no sockets or shared memory.

Three uses: tools that need a pipeline's results in their own process (enrolment reads the embeddings of a chosen
track; the cross-scene evaluation replays cached detections into the later stages), and the baseline the
multi-process pipeline is measured against (`tools/bench.py pipeline`), which is how the published gait demos run:
decode, detect, segment, encode, match, draw, one after the other.
Must not import `stages` or `engines`: the stage classes come in as arguments.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline.config import StreamSpec
from pipeline.driver import StageDriver
from pipeline.messages import DataMessage, EndOfStream, Frame, FrameRecord
from pipeline.metrics import ProcessMetrics
from pipeline.stage import SourceStage, Stage, StageContext

log = logging.getLogger(__name__)


@dataclass
class SequentialRun:
    """Frames read per stream and the seconds each stage spent, source (decode) included."""

    frames: dict[str, int] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    wall_seconds: float = 0.0


def stage_context(name: str, run_dir: Path = Path("."), streams: tuple[str, ...] = ()) -> StageContext:
    """The context of a stage run in this process (no supervisor, first incarnation)."""
    return StageContext(process=name, incarnation=0, run_dir=run_dir, streams=streams,
                        metrics=ProcessMetrics(name, time.monotonic))


class StageChain:
    """Stages of `graph` opened in this process; `push` runs messages through all of them, in graph order.

    A context manager: `with StageChain(...) as chain:` opens every stage and closes the opened ones, last first,
    however the block ends. `stage_seconds` accumulates the time each stage spent.
    """

    def __init__(self, config: Any, stage_classes: Mapping[str, type[Stage]], graph: Sequence[str], *,
                 run_dir: Path = Path(".")) -> None:
        streams = tuple(spec.id for spec in config.streams)
        self.graph = tuple(graph)
        self.stages = [stage_classes[name](getattr(config.stages, name), stage_context(name, run_dir, streams))
                       for name in self.graph]
        self.drivers = [StageDriver(stage, stage.context.metrics, last=i == len(self.stages) - 1)
                        for i, stage in enumerate(self.stages)]
        self._opened: list[Stage] = []

    @property
    def stage_seconds(self) -> dict[str, float]:
        """Seconds each stage spent in its own code."""
        return {name: driver.seconds for name, driver in zip(self.graph, self.drivers)}

    def __enter__(self) -> StageChain:
        try:
            for stage in self.stages:
                stage.open()
                self._opened.append(stage)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def push(self, messages: Sequence[DataMessage]) -> list[DataMessage]:
        """Every message through every stage (`StageDriver.push`: consecutive records in one batch, as the process
        runner gives them), each stage ticking after its share; returns the last stage's output."""
        out_messages = list(messages)
        now = time.monotonic()
        for driver in self.drivers:
            out_messages = driver.push(out_messages) + driver.tick(now)
        return out_messages

    def close(self) -> None:
        while self._opened:
            stage = self._opened.pop()
            try:
                stage.close()
            except Exception:  # closing must not hide the error that got us here
                log.exception("closing stage %s failed", stage.name)


def read_stream(source_stage: SourceStage, spec: StreamSpec, *, max_seconds: float | None = None,
                progress: bool = False, timing: dict[str, float] | None = None) -> Iterator[DataMessage]:
    """The FrameRecords of one input in order, then its EndOfStream, as a batch-mode source sends them.

    A stream that cannot be opened raises the source's `SourceError`. `max_seconds` of media time stops the stream
    early (live streams never end by themselves). Decode time is added to `timing["source"]` when given.
    """
    source = source_stage.open_source(spec, realtime=False)
    source.open()
    frames, stopped_early = 0, False
    try:
        with tqdm(total=getattr(source, "frame_count", None), desc=spec.id, unit="frame", disable=not progress,
                  leave=False) as bar:
            while True:
                tick = time.perf_counter()
                captured = source.read()
                if timing is not None:
                    timing["source"] = timing.get("source", 0.0) + time.perf_counter() - tick
                if captured is None or (max_seconds is not None and captured.pts_s >= max_seconds):
                    stopped_early = captured is not None
                    break
                height, width = captured.pixels.shape[:2]
                yield FrameRecord(spec.id, captured.index, 0, captured.capture_ns, captured.pts_s, source.fps,
                                  Frame(height, width, captured.pixels))
                frames += 1
                bar.update(1)
    finally:
        source.close()
    yield EndOfStream(spec.id, 0, frames, "stopped" if stopped_early else "end", "", spec.uri)


def run_sequential(
    config: Any,
    stage_classes: Mapping[str, type[Stage]],
    *,
    on_output: Callable[[DataMessage], None] = lambda message: None,
    run_dir: Path = Path("."),
    max_seconds: float | None = None,
    progress: bool = False,
) -> SequentialRun:
    """Run `config.graph` over every stream of `config`, in order, in this process.

    Each frame goes through every stage before the next is read; every output of the last stage (records and
    end-of-stream messages) is handed to `on_output`. A stream that cannot be opened raises the source's
    `SourceError`. `max_seconds` of media time stops each stream early (live streams never end by themselves).
    """
    streams = tuple(spec.id for spec in config.streams)
    source_cls = stage_classes["source"]
    assert issubclass(source_cls, SourceStage)
    source_stage = source_cls(config.stages.source, stage_context("source", run_dir, streams))
    result = SequentialRun()
    timing: dict[str, float] = {"source": 0.0}
    started = time.perf_counter()
    with StageChain(config, stage_classes, config.graph, run_dir=run_dir) as chain:
        for spec in config.streams:
            frames = 0
            for message in read_stream(source_stage, spec, max_seconds=max_seconds, progress=progress,
                                       timing=timing):
                frames += isinstance(message, FrameRecord)
                for output in chain.push([message]):
                    on_output(output)
            result.frames[spec.id] = frames
        result.stage_seconds = {**timing, **chain.stage_seconds}
    result.wall_seconds = time.perf_counter() - started
    return result
