"""Two real `run_pipeline.py --node` processes (what `gaitstream node` runs) on one camera, a shared clip played
as a live stream, with a real nats-server holding the leases: one reads it, the other takes it over when the first
is SIGKILLed, and the two never read it at the same time."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO_ROOT, NatsServer, free_port, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
TTL_S = 3.0
RENEW_S = TTL_S / 5
SOURCE_EVENT = re.compile(r"source (started|stopped) camera=(\S+) host=(\S+) process=\S+ (?:pid|exit)=(\S+) at=(\S+)")


class Node:
    """`run_pipeline.py --node` as a subprocess, its log in a file."""

    def __init__(self, host: str, config: Path, log: Path) -> None:
        self.host = host
        self.log = log
        with open(log, "w") as sink:
            self.process = subprocess.Popen([sys.executable, str(REPO_ROOT / "run_pipeline.py"), "--node",
                                             str(config), "--no-display"], cwd=REPO_ROOT, stdout=sink,
                                            stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text()

    def source_events(self) -> list[tuple[str, str, str, str, float]]:
        """(started|stopped, camera, host, pid or exit code, wall-clock time) per source event in its log."""
        return [(*m.groups()[:4], float(m.group(5))) for m in SOURCE_EVENT.finditer(self.text())]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def node_config(folder: Path, host: str, clip: Path | str, nats_url: str, source: str = "loop: true") -> Path:
    """A node of site `test` whose one lease candidate is `clip` played as camera `door` (looped); the cheapest
    stages that still read every frame (background subtraction, no video written)."""
    path = folder / f"{host}.yaml"
    path.write_text(f"""\
extends: {REPO_ROOT / "configs" / "pipeline" / "default.yaml"}
graph: [detect_track, sink]
streams:
  - {{uri: {clip}, id: door}}
node:
  site: test
  host: {host}
  nats_url: {nats_url}
  leases: {{ttl_s: {TTL_S}}}
stages:
  source: {{{source}}}
  detect_track: {{detector: {{backend: bgsub}}}}
  sink: {{write_video: false, out_dir: {folder / ("out-" + host)}}}
""")
    return path


def test_a_killed_node_s_camera_is_taken_over_within_the_ttl_without_overlap(tmp_path, outdoor_clip,
                                                                            nats_server: NatsServer):
    nodes = {host: Node(host, node_config(tmp_path, host, outdoor_clip, nats_server.url), tmp_path / f"{host}.log")
             for host in ("node-a",)}
    try:
        a = nodes["node-a"]
        wait_for(lambda: "stream opened stream=door" in a.text(), 180, "node-a to read the camera")
        reader = int(a.source_events()[0][3])
        b = nodes["node-b"] = Node("node-b", node_config(tmp_path, "node-b", outdoor_clip, nats_server.url),
                                   tmp_path / "node-b.log")
        wait_for(lambda: "detect_track ready" in b.text() and "sink ready" in b.text(), 180, "node-b's stages")
        time.sleep(TTL_S)  # node-a renews all along: node-b, a candidate too, must not take the camera
        assert not b.source_events()

        a.process.send_signal(signal.SIGKILL)
        a.process.wait(10)
        killed = time.time()
        wait_for(lambda: not psutil.pid_exists(reader) or psutil.Process(reader).status() == psutil.STATUS_ZOMBIE,
                 5, "node-a's source process to die with it")
        reader_gone = time.time()
        wait_for(lambda: b.source_events(), TTL_S + RENEW_S + 5, "node-b to take the camera over")
        wait_for(lambda: "stream opened stream=door" in b.text(), 30, "node-b to read the camera")

        event, camera, host, _, started = b.source_events()[0]
        assert (event, camera, host) == ("started", "door", "node-b")
        assert reader_gone < started, "node-b started reading while node-a's reader was still alive"
        assert started - killed <= TTL_S + RENEW_S + 1.0, "taken over later than the TTL allows"
        assert [e[:3] for e in a.source_events()] == [("started", "door", "node-a")]

        b.process.send_signal(signal.SIGTERM)  # a clean stop: the source stops, then the lease is released
        assert b.process.wait(30) == 0
        text = b.text()
        assert text.index("lease released camera=door host=node-b") > text.index("stream opened stream=door")
    finally:
        for node in nodes.values():
            node.stop()


def test_a_camera_the_holder_cannot_open_is_handed_to_a_host_that_can(tmp_path, outdoor_clip, nats_server: NatsServer):
    """node-a takes the door camera but reaches it at an address where nothing answers; its source reports that,
    and node-a hands the camera over instead of holding it unread: node-b, which can read it, has it then."""
    unreachable = f"rtsp://127.0.0.1:{free_port()}/door"
    a = Node("node-a", node_config(tmp_path, "node-a", unreachable, nats_server.url,
                                   "initial_connect_attempts: 1"), tmp_path / "node-a.log")
    nodes = [a]
    try:
        wait_for(lambda: "lease taken camera=door host=node-a" in a.text(), 180, "node-a to take the camera")
        b = Node("node-b", node_config(tmp_path, "node-b", outdoor_clip, nats_server.url), tmp_path / "node-b.log")
        nodes.append(b)
        wait_for(lambda: "handed over" in a.text(), 60, "node-a to hand the camera over")
        wait_for(lambda: "stream opened stream=door" in b.text(), 180, "node-b to read the camera")
        time.sleep(2 * RENEW_S)  # node-a rests from the camera: it must not take it back
        assert [e[:3] for e in b.source_events()][:1] == [("started", "door", "node-b")]
        assert [e[0] for e in a.source_events()].count("started") == 1
        assert "cannot be read here" in a.text() and a.process.poll() is None  # node-a runs on, camera-less
    finally:
        for node in nodes:
            node.stop()
