"""Two nodes sharing one PostgreSQL gallery and one NATS broker (issue 15): node B, a real `run_pipeline.py --node`
with the whole graph on the outdoor clip played as a looped live camera, follows what node A's tools commit, with no
restart. An enrolment on A reaches B's match stage within 2 s of the commit and B names the person on their next walk;
a deletion on A reaches it within 2 s and the person is not named again. A PostgreSQL server killed with SIGKILL
leaves B matching against its copy in memory, the outage logged once; after the restart B catches up on a change
committed while it was still reconnecting."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, NatsServer, start_postgres, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
PROPAGATION_S = 2.0
#: match to sink: decisions made before B took a change up may reach its events this much later.
SINK_HOP_S = 1.0
#: Person A walks in frames 32-114 of the clip (30 fps), B from 110 on: in the first 4 s, enrolment finds one walker.
PERSON_A_S = 4.0
#: What is tested is propagation, not accuracy. On a slow 2-core machine node B keeps up with 6-7 of the camera's 15
#: fps, so a walk by leaves 15-20 silhouettes: some walks then gave no final window (min_frames 15) for 30 s, and
#: windows from the frames left put A at 0.35-0.37 against the encoder's 0.34. So B makes a window of 8 silhouettes
#: and decides with a looser threshold (A is the only one ever enrolled).
ACCEPT_DISTANCE = 0.5
MIN_FRAMES = 8
GALLERY_COPY = re.compile(r"gallery \S+ version (\d+): (\d+) identities")


class Tail:
    """The lines a running process appends to a file, each stamped with the wall-clock time this test first saw it
    (a thread reads the file every 50 ms): never earlier than the process wrote it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        offset, partial = 0, b""
        while not self._stop.wait(0.05):
            if not self.path.exists():
                continue
            with open(self.path, "rb") as file:
                file.seek(offset)
                chunk = file.read()
            offset += len(chunk)
            *complete, partial = (partial + chunk).split(b"\n")
            seen = time.time()
            self.lines.extend((seen, line.decode(errors="replace")) for line in complete)

    def matching(self, pattern: str | re.Pattern) -> list[tuple[float, re.Match]]:
        """(seen, match) for each line `pattern` is found in."""
        found = ((seen, re.search(pattern, line)) for seen, line in list(self.lines))
        return [(seen, match) for seen, match in found if match]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def identity_events(events: Tail, seen_after: float) -> list[dict]:
    """B's identity decisions first seen after `seen_after` (wall clock)."""
    return [json.loads(line) for seen, line in list(events.lines)
            if seen > seen_after and line.startswith('{"type":"identity"')]


def node_config(path: Path, host: str, gallery: str, nats_url: str, extra: str = "") -> Path:
    path.write_text(f"""\
extends: {REPO_ROOT / "configs" / "pipeline" / "default.yaml"}
node: {{site: test, host: {host}, nats_url: {nats_url}}}
stages:
  match: {{gallery: "{gallery}", accept_distance: {ACCEPT_DISTANCE}}}
{extra}""")
    return path


def node_a_tool(config: Path, tool: str, *args: str) -> str:
    """One of node A's tools, configured by node A's file; its output."""
    done = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / tool), "--config", str(config), *args],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def last_commit(url: str) -> tuple[int, float]:
    """The gallery's newest change: its sequence number, and when its transaction began (epoch seconds, before
    the commit: delays measured from it are, if anything, too long)."""
    import psycopg

    with psycopg.connect(url) as conn:
        seq, began = conn.execute("SELECT seq, extract(epoch FROM committed_at) FROM changes "
                                  "ORDER BY seq DESC LIMIT 1").fetchone()
    return seq, float(began)


def taken_up(log: Tail, url: str, identities: int, within_s: float = PROPAGATION_S) -> tuple[float, float]:
    """Waits for B's match stage to log the gallery's newest change, which must come `within_s` of its commit; (when
    the test saw that, the delay since the change's transaction began)."""
    seq, began = last_commit(url)
    seen, copy = wait_for(lambda: next(((s, m) for s, m in log.matching(GALLERY_COPY) if int(m[1]) == seq), None),
                          within_s + 3, f"node B to take change {seq} up")
    assert int(copy[2]) == identities, copy[0]
    assert seen - began < within_s, f"change {seq} reached node B's match stage {seen - began:.2f} s after it began"
    return seen, seen - began


def test_node_b_follows_node_a_s_gallery_without_a_restart_and_rides_out_a_killed_server(
        tmp_path: Path, outdoor_clip: Path, nats_server: NatsServer):
    postgres = start_postgres()
    url = postgres.url()
    config_a = node_config(tmp_path / "node-a.yaml", "node-a", url, nats_server.url)
    config_b = node_config(tmp_path / "node-b.yaml", "node-b", url, nats_server.url, f"""\
  source: {{loop: true}}
  gait: {{min_frames: {MIN_FRAMES}}}
  sink: {{write_video: false, out_dir: {tmp_path / "out-b"}}}
streams:
  - {{uri: {outdoor_clip}, id: door}}
""")
    with open(tmp_path / "node-b.log", "w") as sink:
        node_b = subprocess.Popen([sys.executable, str(REPO_ROOT / "run_pipeline.py"), "--node", str(config_b),
                                   "--no-display"], cwd=REPO_ROOT, stdout=sink, stderr=subprocess.STDOUT)
    log, events = Tail(tmp_path / "node-b.log"), Tail(tmp_path / "out-b" / "door" / "events.jsonl")
    delays = {}
    try:
        wait_for(lambda: log.matching(GALLERY_COPY), 120, "node B's match stage to load the empty gallery")
        assert int(log.matching(GALLERY_COPY)[0][1][2]) == 0

        # Enrolled on A (while B's other stages may still be starting): taken up within 2 s, then named.
        enrolled = node_a_tool(config_a, "enroll.py", "--quiet", "--source", str(outdoor_clip), "--name", "A",
                               "--max-seconds", str(PERSON_A_S))
        assert "enrolled A:" in enrolled
        seen, delays["enrol"] = taken_up(log, url, identities=1)
        wait_for(lambda: any(e["identity"] == "A" for e in identity_events(events, seen)), 60,
                 "node B to name A on a walk by")
        backup = tmp_path / "a.npz"
        node_a_tool(config_a, "gallery.py", "export", str(backup))

        # Deleted on A: taken up within 2 s; a whole pass of the clip later (A walks by again), nobody named A.
        node_a_tool(config_a, "gallery.py", "delete", "A")
        seen, delays["delete"] = taken_up(log, url, identities=0)
        cutoff = seen + SINK_HOP_S
        wait_for(lambda: identity_events(events, cutoff), 30, "node B's decisions after the deletion")
        start_t = identity_events(events, cutoff)[0]["t"]
        wait_for(lambda: any(e["t"] > start_t + 7.1 for e in identity_events(events, cutoff)), 30,
                 "node B's decisions over a whole pass of the clip")
        assert {e["identity"] for e in identity_events(events, cutoff)} == {"unknown"}

        # A back on A (import of the export); the server killed: B keeps naming A from its copy in memory.
        node_a_tool(config_a, "gallery.py", "import", str(backup))
        _, delays["import"] = taken_up(log, url, identities=1)
        postgres.kill()
        outage = wait_for(lambda: log.matching(r"gallery \S+ unreachable"), 10, "node B to notice the outage")[0][0]
        wait_for(lambda: any(e["identity"] == "A" for e in identity_events(events, outage + SINK_HOP_S)), 30,
                 "node B to name A while the server is down")

        # Restarted, and A deleted at once (B reconnects with a back-off): B catches up on it.
        postgres.start()
        node_a_tool(config_a, "gallery.py", "delete", "A")
        _, delays["after restart"] = taken_up(log, url, identities=0, within_s=15)
        assert log.matching(r"gallery \S+ reachable again")
        assert len(log.matching(r"gallery \S+ unreachable")) == 1, "the outage is logged once"
        assert node_b.poll() is None
        assert not log.matching(r" died \(| silent for "), "no stage of node B was restarted"
        print(f"from a commit on node A to node B's match stage (s): {delays}")
    finally:
        node_b.terminate()
        try:
            node_b.wait(30)
        except subprocess.TimeoutExpired:
            node_b.kill()
        log.close()
        events.close()
        postgres.stop()
