"""End-to-end fixtures: the pipeline as a subprocess, a real RTSP server, a virtual X display."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, free_port, wait_for

RTSP_SERVER = Path(__file__).with_name("rtsp_server.py")
SYSTEM_PYTHON = "/usr/bin/python3"


def read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]


def pipeline_command(*args: str) -> list[str]:
    return [sys.executable, str(REPO_ROOT / "run_pipeline.py"), *args]


def run_pipeline(*args: str, timeout_s: float = 240, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(pipeline_command(*args), cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout_s, env={**os.environ, **(env or {})})


class RtspServer:
    """gst-rtsp-server serving one file on loopback; can be stopped and started again on the same port."""

    def __init__(self, clip: Path, log_dir: Path) -> None:
        self.clip = clip
        self.port = free_port()
        self.url = f"rtsp://127.0.0.1:{self.port}/live"
        self.log_dir = log_dir
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = open(self.log_dir / f"rtsp-server-{self.starts}.log", "w")
        self.process = subprocess.Popen([SYSTEM_PYTHON, str(RTSP_SERVER), "--port", str(self.port),
                                         "--file", str(self.clip)], stdout=log, stderr=subprocess.STDOUT)

        def listening() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return True
            except OSError:
                return False

        wait_for(listening, 15, "the RTSP server to listen")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        self.process = None


@pytest.fixture
def rtsp_server(outdoor_clip: Path, tmp_path: Path) -> Iterator[RtspServer]:
    if not Path(SYSTEM_PYTHON).exists() or subprocess.run(
        [SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0')"], capture_output=True
    ).returncode:
        pytest.fail("GStreamer's RTSP server is missing: apt-get install gir1.2-gst-rtsp-server-1.0 python3-gi "
                    "gstreamer1.0-plugins-good gstreamer1.0-plugins-bad (.ci/run does this)", pytrace=False)
    server = RtspServer(outdoor_clip, tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def xvfb_display() -> Iterator[str]:
    """A virtual X display (Xvfb) for the overlay window; yields its DISPLAY value."""
    if shutil.which("Xvfb") is None:
        pytest.fail("Xvfb is missing: apt-get install xvfb (.ci/run does this)", pytrace=False)
    number = 90 + os.getpid() % 9
    display = f":{number}"
    server = subprocess.Popen(["Xvfb", display, "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: Path(f"/tmp/.X11-unix/X{number}").exists(), 10, "Xvfb to start")
    yield display
    server.terminate()
    server.wait(5)
