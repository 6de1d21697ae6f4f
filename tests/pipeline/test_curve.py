"""CURVE on tcp edges over real loopback sockets: only clients in authorized_clients_dir get through.

Keys come from `tools/make_keys.py`; the edge ends are the ones the stage runner builds (EdgeReceiver binds as
the CURVE server, EdgeSender connects), with keys made from the config the way the supervisor makes them.
"""

from __future__ import annotations

import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

from pipeline.config import ConfigError, CurveSettings, build_config_model, load_config
from pipeline.errors import TransportError
from pipeline.supervisor import _curve_keys
from pipeline.transport import CurveKeys, EdgeReceiver, EdgeSender, EventPublisher, Incoming
from tests.pipeline.runtime_stages import PassThrough
from tools import make_keys

ANY_PORT = "tcp://127.0.0.1:*"
REFUSED_FOR_S = 2.0


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    out = tmp_path / "keys"
    assert make_keys.main(["--out", str(out), "--server", "edge", "--client", "cam-1", "--client", "cam-2"]) == 0
    return out


@pytest.fixture
def context() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.term()  # hangs if a socket or an authenticator was left open


def server_keys(keys: Path) -> CurveKeys | None:
    return _curve_keys(CurveSettings(server_public_file=keys / "edge.key", server_secret_file=keys / "edge.key_secret",
                                     authorized_clients_dir=keys / "authorized_clients"))


def client_keys(keys: Path, client_secret_file: Path) -> CurveKeys | None:
    return _curve_keys(CurveSettings(server_public_file=keys / "edge.key", client_secret_file=client_secret_file))


def bound_endpoint(receiver: EdgeReceiver) -> str:
    return receiver.socket.getsockopt_string(zmq.LAST_ENDPOINT)


def delivered(sender: EdgeSender, receiver: EdgeReceiver, timeout_s: float) -> Incoming | None:
    """What reaches the receiver within `timeout_s`, while the sender runs its reconnect/resend loop."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sender.handle_monitor()
        incoming = receiver.recv()
        if incoming is not None:
            return incoming
        time.sleep(0.02)
    return None


def wait_for_event(monitor: zmq.Socket, event: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while monitor.poll(max(1, int((deadline - time.monotonic()) * 1e3))):
        if recv_monitor_message(monitor)["event"] == event:
            return True
    return False


def assert_only_authorised_get_through(context: zmq.Context, keys: Path, refused: CurveKeys | None) -> None:
    """`refused` connects first and is turned away by ZAP; then the authorised cam-1 delivers and is acked."""
    receiver = EdgeReceiver(context, ANY_PORT, server_keys(keys))
    monitor = receiver.socket.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
    intruder = EdgeSender(context, bound_endpoint(receiver), "intruder", 4, refused)
    known = None
    try:
        intruder.send([b"frames", b"from an unknown key"])
        assert wait_for_event(monitor, zmq.EVENT_HANDSHAKE_FAILED_AUTH, 5.0), "ZAP did not reject the unknown key"
        assert delivered(intruder, receiver, REFUSED_FOR_S) is None
        known = EdgeSender(context, bound_endpoint(receiver), "cam-1", 4, client_keys(keys, keys / "cam-1.key_secret"))
        known.send([b"frames", b"from cam-1"], token="slot-0")
        incoming = delivered(known, receiver, 5.0)
        assert incoming is not None and incoming.sender == b"cam-1"
        assert [part.bytes for part in incoming.parts] == [b"frames", b"from cam-1"]
        receiver.ack(incoming.sender, incoming.edge_seq)
        deadline = time.monotonic() + 5.0
        acked: list = []
        while not acked and time.monotonic() < deadline:
            known.socket.poll(50)
            acked = known.handle_ack()
        assert acked == ["slot-0"]
        assert receiver.recv() is None, "the unknown client's message arrived after all"
    finally:
        receiver.socket.disable_monitor()
        monitor.close(linger=0)
        for sender in (intruder, known):
            if sender is not None:
                sender.close()
        receiver.close()


def test_client_with_a_fresh_key_pair_is_refused(context: zmq.Context, keys: Path, tmp_path: Path):
    (tmp_path / "intruder").mkdir()
    _, intruder_secret = zmq.auth.create_certificates(tmp_path / "intruder", "intruder")
    assert_only_authorised_get_through(context, keys, client_keys(keys, Path(intruder_secret)))


def test_client_whose_key_is_not_in_authorized_clients_is_refused(context: zmq.Context, keys: Path):
    (keys / "authorized_clients" / "cam-2.key").unlink()  # cam-2 still holds the server public key and its pair
    assert_only_authorised_get_through(context, keys, client_keys(keys, keys / "cam-2.key_secret"))


def test_curve_server_without_authorized_clients_is_refused(context: zmq.Context, keys: Path, tmp_path: Path):
    open_to_all = CurveKeys(keys / "edge.key", server_secret_file=keys / "edge.key_secret")
    with pytest.raises(TransportError, match="without authorized_clients_dir .* set authorized_clients_dir"):
        EdgeReceiver(context, ANY_PORT, open_to_all)
    with pytest.raises(TransportError, match="without authorized_clients_dir"):
        EventPublisher(context, ANY_PORT, curve=open_to_all)
    (tmp_path / "empty").mkdir()
    trusts_no_one = CurveKeys(keys / "edge.key", keys / "edge.key_secret", authorized_clients_dir=tmp_path / "empty")
    with pytest.raises(TransportError, match="holds no client public keys"):
        EdgeReceiver(context, ANY_PORT, trusts_no_one)
    config = tmp_path / "server.yaml"  # beside keys/, as written by make_keys
    config.write_text("stages:\n  relay:\n    input_bind: tcp://0.0.0.0:5555\n    curve:\n"
                      "      server_public_file: keys/edge.key\n      server_secret_file: keys/edge.key_secret\n")
    with pytest.raises(ConfigError, match=r"server.yaml: stages\.relay\.curve: .*set authorized_clients_dir"):
        load_config(build_config_model({"relay": PassThrough.Config}, ["relay"]), config)


def test_make_keys_refuses_to_overwrite_and_keeps_secrets_private(keys: Path, capsys: pytest.CaptureFixture[str]):
    secrets = [keys / "edge.key_secret", keys / "cam-1.key_secret", keys / "cam-2.key_secret"]
    assert [stat.S_IMODE(path.stat().st_mode) for path in secrets] == [0o600] * 3
    assert sorted(path.name for path in (keys / "authorized_clients").iterdir()) == ["cam-1.key", "cam-2.key"]
    assert zmq.auth.load_certificate(keys / "authorized_clients" / "cam-1.key")[1] is None  # public only
    capsys.readouterr()
    before = (keys / "edge.key_secret").read_text()
    assert make_keys.main(["--out", str(keys), "--server", "edge", "--client", "cam-3"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: keys exist") and "--force" in error and error.count("\n") == 1
    assert (keys / "edge.key_secret").read_text() == before and not (keys / "cam-3.key_secret").exists()
    assert make_keys.main(["--out", str(keys), "--server", "edge", "--client", "cam-1", "--force"]) == 0
    assert (keys / "edge.key_secret").read_text() != before
    assert stat.S_IMODE((keys / "edge.key_secret").stat().st_mode) == 0o600
    assert "also admits cam-2.key" in capsys.readouterr().out
