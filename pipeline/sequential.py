"""The same stages composed in one process, one frame at a time, with no sockets or shared memory.

Two uses: tools that need a pipeline's results in their own process (enrolment reads the embeddings of a chosen
track), and the baseline the multi-process pipeline is measured against (`tools/bench.py pipeline`), which is how the
published gait demos run: decode, detect, segment, encode, match, draw, one after the other.
Must not import `stages` or `engines`: the stage classes come in as arguments.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

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


def _context(name: str, run_dir: Path, streams: tuple[str, ...]) -> StageContext:
    return StageContext(process=name, incarnation=0, run_dir=run_dir, streams=streams,
                        metrics=ProcessMetrics(name, time.monotonic))


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
    graph: Sequence[str] = config.graph
    streams = tuple(spec.id for spec in config.streams)
    source_cls = stage_classes["source"]
    assert issubclass(source_cls, SourceStage)
    source_stage = source_cls(config.stages.source, _context("source", run_dir, streams))
    stages = [stage_classes[name](getattr(config.stages, name), _context(name, run_dir, streams)) for name in graph]
    result = SequentialRun(stage_seconds={"source": 0.0, **{name: 0.0 for name in graph}})
    started = time.perf_counter()
    opened: list[Stage] = []
    try:
        for stage in stages:
            stage.open()
            opened.append(stage)
        for spec in config.streams:
            source = source_stage.open_source(spec, realtime=False)
            source.open()
            frames, stopped_early = 0, False
            with tqdm(total=getattr(source, "frame_count", None), desc=spec.id, unit="frame", disable=not progress,
                      leave=False) as bar:
                while True:
                    tick = time.perf_counter()
                    captured = source.read()
                    result.stage_seconds["source"] += time.perf_counter() - tick
                    if captured is None or (max_seconds is not None and captured.pts_s >= max_seconds):
                        stopped_early = captured is not None
                        break
                    height, width = captured.pixels.shape[:2]
                    record = FrameRecord(spec.id, captured.index, 0, captured.capture_ns, captured.pts_s, source.fps,
                                         Frame(height, width, captured.pixels))
                    _through(stages, graph, [record], result, on_output)
                    frames += 1
                    bar.update(1)
            source.close()
            result.frames[spec.id] = frames
            reason = "stopped" if stopped_early else "end"
            _through(stages, graph, [EndOfStream(spec.id, 0, frames, reason, "", spec.uri)], result, on_output)
    finally:
        for stage in reversed(opened):
            try:
                stage.close()
            except Exception:  # closing must not hide the error that got us here
                log.exception("closing stage %s failed", stage.name)
    result.wall_seconds = time.perf_counter() - started
    return result


def _through(stages: list[Stage], graph: Sequence[str], messages: list[DataMessage], result: SequentialRun,
             on_output: Callable[[DataMessage], None]) -> None:
    for name, stage in zip(graph, stages):
        tick = time.perf_counter()
        out: list[DataMessage] = []
        for message in messages:
            if isinstance(message, EndOfStream):
                out += stage.on_end_of_stream(message)
            else:
                out += stage.process_batch([message])
        stage.on_tick(time.monotonic())
        result.stage_seconds[name] += time.perf_counter() - tick
        messages = out
    for message in messages:
        on_output(message)
