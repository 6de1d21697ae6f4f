"""The one loop body of a stage, whoever hosts it: the process runner, the in-process chain and the test harness.

A stage's contract (`pipeline.stage.Stage`) is driven in exactly one way: runs of consecutive records go to
`process_batch` together; an end-of-stream goes to `on_end_of_stream` after the records before it, and the stage must
end what it returns with that end-of-stream; `on_tick` runs with the host's clock and may return messages too. A
batch that raises is counted and forwarded unchanged (one bad frame must not take the stage down); `FatalError`
(a full disk, say) is never swallowed. Hosts differ only in where messages come from and go to. Must not import
`stages` or `engines`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from pipeline.errors import FatalError
from pipeline.messages import DataMessage, EndOfStream, FrameRecord
from pipeline.metrics import ProcessMetrics

log = logging.getLogger(__name__)


class StageDriver:
    """Drives one opened stage; counts frames in, failures and per-frame processing time in `metrics`.

    `last` marks the chain's last stage, which also counts frames done per stream (what a stopped run reports).
    """

    def __init__(self, stage: object, metrics: ProcessMetrics, *, last: bool = False) -> None:
        self.stage = stage
        self.metrics = metrics
        self.last = last
        self.consecutive_failures = 0
        self.seconds = 0.0  # time spent inside the stage

    def records(self, records: list[FrameRecord]) -> list[DataMessage]:
        """One `process_batch` call; on failure the records go on unchanged and the failure is counted."""
        started = time.perf_counter()
        try:
            outputs = list(self.stage.process_batch(records))  # type: ignore[attr-defined]
            self.consecutive_failures = 0
        except FatalError:
            raise
        except Exception as exc:  # one bad batch must not take the stage down: count, forward unchanged
            self.consecutive_failures += len(records)
            self.metrics.inc("errors_total", len(records), kind=type(exc).__name__)
            first = records[0]
            log.warning("process failed: %s: %s stream=%s seq=%d n=%d", type(exc).__name__, exc, first.stream_id,
                        first.seq, len(records), exc_info=log.isEnabledFor(logging.DEBUG))
            outputs = list(records)
        elapsed_s = time.perf_counter() - started
        self.seconds += elapsed_s
        for _ in records:
            self.metrics.observe_ms("process", elapsed_s * 1e3 / len(records))
        self.metrics.inc("frames_in_total", len(records))
        if self.last:
            for record in records:
                self.metrics.inc("frames_done_total", stream=record.stream_id)
        return outputs

    def end_of_stream(self, eos: EndOfStream) -> list[DataMessage]:
        """`on_end_of_stream`, checked to end with the end-of-stream; on failure the end-of-stream goes on alone."""
        started = time.perf_counter()
        try:
            outputs = list(self.stage.on_end_of_stream(eos))  # type: ignore[attr-defined]
            if not outputs or not isinstance(outputs[-1], EndOfStream):
                raise TypeError(f"{type(self.stage).__name__}.on_end_of_stream must end with the EndOfStream")
        except FatalError:
            raise
        except Exception as exc:
            self.metrics.inc("errors_total", kind=type(exc).__name__)
            log.warning("end-of-stream handling failed: %s: %s stream=%s", type(exc).__name__, exc, eos.stream_id)
            outputs = [eos]
        self.seconds += time.perf_counter() - started
        return outputs

    def tick(self, now_s: float) -> list[DataMessage]:
        """`on_tick`; what it returns (messages it decided to send on its own) goes downstream."""
        started = time.perf_counter()
        outputs = list(self.stage.on_tick(now_s) or ())  # type: ignore[attr-defined]
        self.seconds += time.perf_counter() - started
        return outputs

    def push(self, messages: Sequence[DataMessage]) -> list[DataMessage]:
        """Messages that arrived together, in order: runs of records as one batch, end-of-streams after them."""
        outputs: list[DataMessage] = []
        pending: list[FrameRecord] = []
        for message in messages:
            if isinstance(message, EndOfStream):
                if pending:
                    outputs += self.records(pending)
                    pending = []
                outputs += self.end_of_stream(message)
            else:
                pending.append(message)  # type: ignore[arg-type]
        if pending:
            outputs += self.records(pending)
        return outputs
