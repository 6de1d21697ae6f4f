"""Small stages for exercising the runtime in real processes: a pass-through and a recording sink.

They live in an importable module so `spawn`ed stage processes can load them by name.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from pipeline.config import StageConfig
from pipeline.messages import DataMessage, EndOfStream, FrameRecord
from pipeline.stage import Stage


class PassThrough(Stage):
    """Forwards records; optionally slow, to make queues fill."""

    name = "relay"

    class Config(StageConfig):
        delay_ms: float = Field(0.0, ge=0)

    def process(self, record: FrameRecord) -> list[DataMessage]:
        if self.config.delay_ms:
            deadline = time.perf_counter() + self.config.delay_ms / 1e3
            while time.perf_counter() < deadline:
                pass  # busy wait: a stand-in for compute, not a sleep
        return [record]


class RecordingSink(Stage):
    """Appends one JSON line per record (stream, seq, frame shape, pixel checksum) to a file; the test reads it."""

    name = "recorder"

    class Config(StageConfig):
        path: str = ""

    def open(self) -> None:
        self.file = open(self.config.path, "a", buffering=1)

    def process(self, record: FrameRecord) -> list[DataMessage]:
        pixels = record.frame.pixels
        self.file.write(json.dumps({"stream": record.stream_id, "seq": record.seq, "epoch": record.epoch,
                                    "shape": list(pixels.shape),
                                    "sum": int(np.asarray(pixels[::16, ::16], np.int64).sum()),
                                    "pid": os.getpid()}) + "\n")
        return []

    def on_end_of_stream(self, eos: EndOfStream) -> list[DataMessage]:
        self.file.write(json.dumps({"stream": eos.stream_id, "eos": eos.frames, "reason": eos.reason}) + "\n")
        return [eos]

    def close(self) -> None:
        if hasattr(self, "file"):
            self.file.close()


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def graph_supervisor(streams: list[dict], overrides: dict[str, object],
                     graph: tuple[str, ...] = ("relay", "recorder"), **options: Any) -> Any:
    """A real Supervisor of source → relay → recorder (`options` go to it)."""
    from pipeline.config import build_config_model, load_config
    from pipeline.supervisor import Supervisor
    from stages.source import VideoSourceStage

    stages = {"source": VideoSourceStage, "relay": PassThrough, "recorder": RecordingSink}
    model = build_config_model({k: v.Config for k, v in stages.items()}, list(graph))
    pairs = [(["streams"], streams)] + [(key.split("."), value) for key, value in overrides.items()]
    return Supervisor(load_config(model, None, pairs), stages, **options)


def run_graph(streams: list[dict], overrides: dict[str, object], graph: tuple[str, ...] = ("relay", "recorder")):
    """Run source → relay → recorder under a real Supervisor; returns the RunResult."""
    return graph_supervisor(streams, overrides, graph).run()


if __name__ == "__main__":  # used by tests that need the supervisor in its own process (signals)
    import sys

    from pipeline.logs import setup_logging

    setup_logging("supervisor", "INFO")
    arguments = json.loads(sys.argv[1])
    result = run_graph(arguments["streams"], arguments["overrides"])
    print(json.dumps(result.to_json()))
    sys.exit(result.exit_code)
