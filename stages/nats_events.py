"""Events on NATS JetStream: the sink's events reach a site's broker without the sink ever waiting on the network.

Each event goes to the subject `<prefix>.<site>.<host>.<stream>` (every part made a valid subject token) with its
id in the `Nats-Msg-Id` header, and is stored in the JetStream stream `<PREFIX>` (`GAITSTREAM_EVENTS` for the
default prefix, subjects `<prefix>.>`, a 2-minute duplicate window, no retention limit), created when missing; an
existing stream is used as it is, so a site sets limits by creating it first. The payload is the event's JSON line
as events.jsonl has it.

A stage never blocks, and a broker can be away for minutes, so `NatsEventPublisher` runs the nats-py client in its
own thread and asyncio loop. The sink only appends to a bounded queue (the oldest event goes when it is full, and
is counted); the thread publishes the queue in order, each event until JetStream acknowledges it, and nats-py
reconnects for ever while the broker is down. An event sent again (a retry whose acknowledgement was lost, a sink
restarted on resent frames) carries the same id, so JetStream stores it once.

nats-py comes with the `cluster` extra and is imported only when `stages.sink.nats_url` is set.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any, NamedTuple

from engines.gallery import redact_url
from engines.nats_client import connect_options, import_nats
from pipeline.errors import FatalError
from pipeline.metrics import ProcessMetrics

log = logging.getLogger(__name__)

DUPLICATE_WINDOW_S = 120.0  # JetStream drops a message whose id it stored this recently
RECONNECT_WAIT_S = 1  # between nats-py's reconnection attempts (it retries for ever)
ACK_TIMEOUT_S = 2.0  # a publish not acknowledged this fast is sent again, with the same id
RETRY_PAUSE_S = 0.2  # before trying an event again (disconnected, JetStream not ready, no acknowledgement)
FLUSH_ON_CLOSE_S = 2.0
STOP_S = 3.0  # for the thread to close its connection and end
_NOT_IN_A_TOKEN = re.compile(r"[\s.*>]")  # whitespace ends a subject, `.` separates tokens, `*` and `>` are wildcards

PUBLISHED, RETRY = "published", "retry"
DROPPED_FULL, DROPPED_REJECTED, DROPPED_CLOSING = "broker_queue_full", "broker_rejected", "closing"


class NatsEventsError(FatalError):
    """Events cannot go to NATS as configured (nats-py not installed, credentials unreadable)."""


class _Event(NamedTuple):
    subject: str
    msg_id: str
    payload: bytes


def subject_token(text: str) -> str:
    """`text` as one NATS subject token: whitespace, `.`, `*` and `>` become `_`."""
    return _NOT_IN_A_TOKEN.sub("_", text) or "_"


class NatsEventPublisher:
    """Queues events for NATS JetStream; a thread of its own publishes them in order until each is acknowledged.

    Event ids are `<site>:<host>:<run>:<stream>:<epoch>:<frame>:<n>`, `n` counting the events made from that frame
    (`end` instead of the frame for those made at the end of the stream). They are derived from what the sink
    processes, not counted by the sink: a sink restarted in batch mode is sent the frames it had not acknowledged
    again and makes the same events from them, with the same ids, which JetStream's duplicate window then drops.
    `run` tells apart runs over the same file (whose frames repeat epoch 0) and is the same for a restarted sink;
    live frames carry a new epoch whenever their source starts.

    `publish` never blocks: with the queue full the oldest event is dropped (`events_dropped_total{reason=
    "broker_queue_full"}`). The broker's outage and its end are logged once each. `report` moves the counts into
    the stage's metrics from the stage's own thread; `close` delivers what is queued for at most `flush_s`.
    """

    def __init__(self, url: str, *, site: str, host: str, run: str, subject_prefix: str = "gaitstream.events",
                 queue_events: int = 10_000, credentials: Path | None = None, ca: Path | None = None) -> None:
        self._nats = import_nats("events on NATS (stages.sink.nats_url)", NatsEventsError,
                                 with_nkeys=credentials is not None)
        self._connect_options = connect_options(NatsEventsError, credentials=credentials, ca=ca)
        self.servers = [server.strip() for server in url.split(",")]
        self.location = ",".join(redact_url(server) for server in self.servers)
        self.subject_base = f"{subject_prefix}.{subject_token(site)}.{subject_token(host)}"
        self.stream_name = subject_prefix.upper().replace(".", "_")
        self.stream_subjects = [f"{subject_prefix}.>"]
        self.id_base = f"{subject_token(site)}:{subject_token(host)}:{run}"
        self.queue_events = queue_events
        self._queue: deque[_Event] = deque()
        self._lock = threading.Lock()
        self._emptied = threading.Condition(self._lock)
        self._in_flight: _Event | None = None  # the event the thread is publishing; settled by the thread
        self._published = 0
        self._dropped: Counter[str] = Counter()
        self._outage_since: float | None = None
        self._stream_ready = False
        self._stopping = False
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nats-events", daemon=True)
        self._thread.start()
        self._started.wait()

    # --- the sink's side -----------------------------------------------------------------------------------------
    def publish(self, stream: str, epoch: int, frame: int | None, index: int, payload: bytes) -> None:
        """Queue the `index`-th event made from `frame` of `stream` (None: from its end); never blocks."""
        token = subject_token(stream)
        event = _Event(f"{self.subject_base}.{token}",
                       f"{self.id_base}:{token}:{epoch}:{'end' if frame is None else frame}:{index}", payload)
        with self._lock:
            if len(self._queue) >= self.queue_events:
                oldest = self._queue.popleft()
                if oldest is not self._in_flight:  # one being published may yet be acknowledged: the thread counts it
                    self._dropped[DROPPED_FULL] += 1
            self._queue.append(event)
        self._loop.call_soon_threadsafe(self._wake.set)

    def report(self, metrics: ProcessMetrics) -> None:
        """Add what was published and dropped since the last call; call from the stage's thread (metrics are not
        thread-safe)."""
        with self._lock:
            published, dropped = self._published, self._dropped
            self._published, self._dropped = 0, Counter()
        if published:
            metrics.inc("events_published_total", published)
        for reason, count in dropped.items():
            metrics.inc("events_dropped_total", count, reason=reason)

    def close(self, flush_s: float = FLUSH_ON_CLOSE_S) -> None:
        """Deliver what is queued for at most `flush_s`, stop the thread, and count what is left as dropped."""
        if self._stopping:
            return
        with self._emptied:
            self._emptied.wait_for(lambda: not self._queue, timeout=flush_s)
        self._stopping = True
        self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(STOP_S + 1.0)
        if self._thread.is_alive():
            log.warning("the NATS events thread did not stop within %.0f s", STOP_S)
        with self._lock:
            left = len(self._queue)
            self._queue.clear()
            if left:
                self._dropped[DROPPED_CLOSING] += left
        if left:
            log.warning("%d events not delivered to NATS %s before closing: dropped", left, self.location)

    # --- the thread ----------------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            asyncio.run(self._publish_forever())
        except (asyncio.CancelledError, asyncio.TimeoutError):  # closed; a connection slow to close is given up
            pass

    async def _publish_forever(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._wake = asyncio.Event()
        self._nc = self._nats.NATS()
        self._started.set()
        try:
            await self._nc.connect(self.servers, name=f"gaitstream sink {self.id_base}", allow_reconnect=True,
                                   max_reconnect_attempts=-1, reconnect_time_wait=RECONNECT_WAIT_S,
                                   error_cb=self._on_error, disconnected_cb=self._on_disconnected,
                                   **self._connect_options)
            js = self._nc.jetstream(timeout=ACK_TIMEOUT_S)
            while True:
                event = await self._next_event()
                outcome = RETRY
                try:
                    outcome = await self._deliver(js, event)
                finally:
                    self._settle(event, outcome)
        finally:
            if not self._nc.is_closed:
                await asyncio.wait_for(self._nc.close(), STOP_S)

    async def _next_event(self) -> _Event:
        """The oldest queued event, left in the queue (so a full queue can still drop it) until it is settled."""
        while True:
            with self._lock:
                if self._queue:
                    self._in_flight = self._queue[0]
                    return self._in_flight
                self._wake.clear()
            await self._wake.wait()

    async def _deliver(self, js: Any, event: _Event) -> str:
        """Publish one event and wait for JetStream's acknowledgement: PUBLISHED, RETRY or DROPPED_REJECTED."""
        from nats.errors import Error as NatsError
        from nats.errors import MaxPayloadError
        from nats.js.api import Header
        from nats.js.errors import BadRequestError, NoStreamResponseError, NotFoundError

        if not self._nc.is_connected:  # nats-py is reconnecting; the queue may drop this event meanwhile
            await asyncio.sleep(RETRY_PAUSE_S)
            return RETRY
        try:
            if not self._stream_ready:
                try:
                    await js.stream_info(self.stream_name)
                except NotFoundError:
                    await js.add_stream(name=self.stream_name, subjects=self.stream_subjects,
                                        duplicate_window=DUPLICATE_WINDOW_S)
                    log.info("created the JetStream stream %s (subjects %s) on NATS %s", self.stream_name,
                             self.stream_subjects[0], self.location)
                self._stream_ready = True
            await js.publish(event.subject, event.payload, headers={Header.MSG_ID: event.msg_id})
        except (BadRequestError, MaxPayloadError) as exc:  # sending it again cannot help; the events behind it can go
            log.warning("NATS %s refused an event on %s (%s): dropped", self.location, event.subject, exc)
            return DROPPED_REJECTED
        except (NatsError, asyncio.TimeoutError, OSError) as exc:
            if isinstance(exc, NoStreamResponseError):  # no stream takes the subject (yet): check it again
                self._stream_ready = False
            self._unreachable(exc)
            await asyncio.sleep(RETRY_PAUSE_S)
            return RETRY
        if self._outage_since is not None:
            log.info("NATS %s acknowledges events again after %.1f s (%d queued)", self.location,
                     time.monotonic() - self._outage_since, len(self._queue))
            self._outage_since = None
        return PUBLISHED

    def _settle(self, event: _Event, outcome: str) -> None:
        """Take an event that was published or refused off the queue; one the queue dropped meanwhile, and that was
        not acknowledged, is counted as dropped here."""
        with self._lock:
            self._in_flight = None
            queued = bool(self._queue) and self._queue[0] is event
            if outcome == RETRY:
                if not queued:
                    self._dropped[DROPPED_FULL] += 1
                return
            if queued:
                self._queue.popleft()
            if outcome == PUBLISHED:
                self._published += 1
            else:
                self._dropped[outcome] += 1
            if not self._queue:
                self._emptied.notify_all()

    def _unreachable(self, why: object) -> None:
        if self._stopping:
            return
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.warning("NATS %s does not acknowledge events (%s): keeping up to %d in memory (oldest dropped "
                        "beyond), reconnecting every %d s", self.location, str(why) or type(why).__name__,
                        self.queue_events, RECONNECT_WAIT_S)
        else:
            log.debug("NATS %s still unavailable: %s", self.location, why)

    async def _on_error(self, exc: Exception) -> None:
        """A lost connection, a failed reconnection or a refusal: each keeps events from being acknowledged."""
        self._unreachable(exc)

    async def _on_disconnected(self) -> None:
        self._unreachable("disconnected")
