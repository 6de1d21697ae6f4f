"""ZeroMQ edges with exact, credit-based flow control and at-least-once delivery across stage restarts.

A data edge is a DEALER (upstream, connects) → ROUTER (downstream, binds) pair. The upstream numbers every
message (`edge_seq`), keeps it until the downstream acknowledges it, and never has more than `window` messages
unacknowledged: that window is the queue bound, exact rather than ZeroMQ's approximate high-water mark. Acks are
cumulative per sender. When the DEALER (re)completes a handshake, i.e. the downstream process was restarted, every
unacknowledged message is sent again in order; the receiver drops duplicates by `(stream_id, epoch, seq)`.

Wire parts: upstream → downstream `[b"D", edge_seq, topic, header, *buffers]`; downstream → upstream
`[b"A", edge_seq]`. The ROUTER prepends the sender identity, unique per process incarnation.

`ipc://` endpoints are for one host; `tcp://` endpoints may carry CURVE keys (pyzmq's ironhouse pattern: the
binding side encrypts and admits only the client public keys in its `authorized_clients_dir`, checked by a ZAP
handler it starts on its context). Socket options are set before bind/connect, because libzmq applies most
options only to later binds and connects. Must not import `stages` or `engines`.
"""

from __future__ import annotations

import logging
import struct
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from pipeline.errors import TransportError

log = logging.getLogger(__name__)

DATA = b"D"
ACK = b"A"
_SEQ = struct.Struct("<q")
LINGER_MS = 200
CURVE_SERVER_NEEDS_CLIENTS = (
    "CURVE server without authorized_clients_dir would accept any client that knows the server's public key; "
    "set authorized_clients_dir"
)


@dataclass(frozen=True)
class CurveKeys:
    """CURVE key files for one tcp edge (made with `tools/make_keys.py` / `zmq.auth.create_certificates`).

    `server_secret_file` and `authorized_clients_dir` (the public keys of the only clients it admits) are needed
    by the binding (downstream) side, `client_secret_file` by the connecting side; both need `server_public_file`.
    """

    server_public_file: Path
    server_secret_file: Path | None = None
    client_secret_file: Path | None = None
    authorized_clients_dir: Path | None = None


def _load_certificate(path: Path) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise TransportError(f"CURVE key file not found: {path} (create keys with tools/make_keys.py)")
    return zmq.auth.load_certificate(str(path))


def _apply_curve_server(context: zmq.Context, socket: zmq.Socket, keys: CurveKeys) -> ThreadAuthenticator:
    """Make `socket` a CURVE server that admits only the clients in `authorized_clients_dir`; call before bind.

    Returns the running authenticator, to stop after the socket is closed. libzmq alone admits any client that
    knows the server's public key, which is public by design: only the ZAP handler checks who the client is.
    """
    if keys.server_secret_file is None:
        raise TransportError("CURVE: the binding side needs server_secret_file")
    if keys.authorized_clients_dir is None:
        raise TransportError(CURVE_SERVER_NEEDS_CLIENTS)
    public, secret = _load_certificate(keys.server_secret_file)
    if secret is None:
        raise TransportError(f"CURVE: {keys.server_secret_file} holds no secret key")
    authenticator = start_authenticator(context, keys.authorized_clients_dir)
    socket.curve_publickey, socket.curve_secretkey = public, secret
    socket.curve_server = True
    return authenticator


def _apply_curve_client(socket: zmq.Socket, keys: CurveKeys) -> None:
    if keys.client_secret_file is None:
        raise TransportError("CURVE: the connecting side needs client_secret_file")
    public, secret = _load_certificate(keys.client_secret_file)
    if secret is None:
        raise TransportError(f"CURVE: {keys.client_secret_file} holds no secret key")
    server_public, _ = _load_certificate(keys.server_public_file)
    socket.curve_publickey, socket.curve_secretkey = public, secret
    socket.curve_serverkey = server_public


def start_authenticator(context: zmq.Context, authorized_clients_dir: Path) -> ThreadAuthenticator:
    """Start the ZAP handler that admits CURVE clients whose public key (`*.key`) is in `authorized_clients_dir`.

    It must run on the context of the CURVE socket before that socket binds. There is one per context (it binds
    `inproc://zeromq.zap.01`), so a process serves one CURVE socket. The folder is read once, here: add or remove
    a client's key, then restart the process.
    """
    try:
        trusted = zmq.auth.load_certificates(authorized_clients_dir)
    except (OSError, ValueError) as exc:  # pyzmq would only log this and then refuse every client
        raise TransportError(f"CURVE: cannot read authorized_clients_dir {authorized_clients_dir}: {exc}") from exc
    if not trusted:
        raise TransportError(f"CURVE: authorized_clients_dir {authorized_clients_dir} holds no client public keys "
                             "(*.key), so no client could connect (create keys with tools/make_keys.py)")
    authenticator = ThreadAuthenticator(context)
    try:
        authenticator.start()
    except zmq.ZMQError as exc:
        authenticator.stop()
        raise TransportError(f"CURVE: cannot start the authenticator ({exc}); one CURVE server per process") from exc
    authenticator.configure_curve(domain="*", location=str(authorized_clients_dir))
    return authenticator


#: Room a run folder must leave for its socket files ("detect_track-<run id>.sock" and more): ZeroMQ ipc paths are
#: limited to zmq.IPC_PATH_MAX_LEN bytes (107 on Linux), and a longer one cannot be bound.
IPC_NAME_RESERVE = 40


def ipc_folder_fits(folder: Path) -> bool:
    """Whether every socket of a run fits in `folder` under ZeroMQ's ipc path limit."""
    return len(str(folder)) + 1 + IPC_NAME_RESERVE <= zmq.IPC_PATH_MAX_LEN


def _bind(socket: zmq.Socket, endpoint: str) -> None:
    """Bind, or close the socket and say why: a socket left open on a failed bind blocks `Context.term` for ever."""
    try:
        socket.bind(endpoint)
    except zmq.ZMQError as exc:
        socket.close(linger=0)
        raise TransportError(f"cannot bind {endpoint}: {exc}") from exc


@dataclass
class _Sent:
    edge_seq: int
    parts: list[Any]
    token: Any


class EdgeSender:
    """Upstream end of a data edge: queues, numbers, sends within the credit window, resends after reconnects.

    `send` never blocks: messages wait in `pending` until the window has room. Each message carries a `token`
    (e.g. the shared-memory slot of its frame) returned by `handle_ack` once the message is acknowledged.
    """

    def __init__(
        self,
        context: zmq.Context,
        endpoint: str,
        identity: str,
        window: int,
        curve: CurveKeys | None = None,
    ) -> None:
        if window < 1:
            raise TransportError(f"edge window must be >= 1, got {window}")
        self.endpoint = endpoint
        self.window = window
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.IDENTITY, identity.encode())
        self.socket.setsockopt(zmq.LINGER, LINGER_MS)
        self.socket.setsockopt(zmq.IMMEDIATE, 1)  # queue only to completed connections; we resend ourselves
        self.socket.setsockopt(zmq.SNDHWM, 2 * window + 8)
        self.socket.setsockopt(zmq.RECONNECT_IVL, 50)
        self.socket.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        if curve is not None:
            _apply_curve_client(self.socket, curve)
        self.monitor = self.socket.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        self.socket.connect(endpoint)
        self.pending: deque[_Sent] = deque()
        self.unacked: deque[_Sent] = deque()
        self.next_seq = 0
        self.acked_through = -1
        self.resends = 0

    @property
    def has_credit(self) -> bool:
        return len(self.unacked) < self.window

    @property
    def backlog(self) -> int:
        """Messages not yet acknowledged (queued here or in flight downstream)."""
        return len(self.pending) + len(self.unacked)

    @property
    def last_seq(self) -> int:
        """The edge sequence number of the last message queued (-1 if none)."""
        return self.next_seq - 1

    def send(self, parts: Sequence[Any], token: Any = None) -> int:
        """Queue one message for sending; returns its edge sequence number."""
        sent = _Sent(self.next_seq, [DATA, _SEQ.pack(self.next_seq), *parts], token)
        self.next_seq += 1
        self.pending.append(sent)
        self.pump()
        return sent.edge_seq

    def pump(self) -> None:
        """Hand pending messages to ZeroMQ while the window allows and a peer is connected."""
        while self.pending and self.has_credit:
            item = self.pending[0]
            try:
                self.socket.send_multipart(item.parts, flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return  # no completed connection yet: wait for the handshake
            self.unacked.append(self.pending.popleft())

    def handle_ack(self) -> list[Any]:
        """Read acks available on the socket; returns the tokens of newly acknowledged messages."""
        tokens: list[Any] = []
        while True:
            try:
                parts = self.socket.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                break
            if len(parts) != 2 or parts[0] != ACK or len(parts[1]) != _SEQ.size:
                log.warning("edge %s: dropped malformed ack (%d parts)", self.endpoint, len(parts))
                continue
            acked = _SEQ.unpack(parts[1])[0]
            self.acked_through = max(self.acked_through, acked)
            while self.unacked and self.unacked[0].edge_seq <= acked:
                tokens.append(self.unacked.popleft().token)
            # A restarted receiver may ack resent messages we still hold as pending.
            while self.pending and self.pending[0].edge_seq <= acked and not self.unacked:
                tokens.append(self.pending.popleft().token)
        self.pump()
        return tokens

    def handle_monitor(self) -> None:
        """On every completed handshake (first connect or a restarted peer), resend what is unacknowledged."""
        while True:
            try:
                event = recv_monitor_message(self.monitor, flags=zmq.NOBLOCK)
            except zmq.Again:
                break
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED and self.unacked:
                log.info("edge %s: peer (re)connected; resending %d unacknowledged", self.endpoint, len(self.unacked))
                self.resends += len(self.unacked)
                self.pending.extendleft(reversed(self.unacked))
                self.unacked.clear()
        self.pump()

    def close(self) -> None:
        self.socket.disable_monitor()
        self.monitor.close(linger=0)
        self.socket.close(linger=LINGER_MS)


@dataclass(frozen=True)
class Incoming:
    """One data message as received: who sent it, its edge sequence number, and its message parts."""

    sender: bytes
    edge_seq: int
    parts: list[Any]


class EdgeReceiver:
    """Downstream end of a data edge: binds, receives from any number of senders, acknowledges cumulatively."""

    def __init__(
        self,
        context: zmq.Context,
        endpoint: str,
        curve: CurveKeys | None = None,
        on_malformed: Callable[[], None] = lambda: None,
    ) -> None:
        self.endpoint = endpoint
        self.on_malformed = on_malformed
        self.socket = context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, LINGER_MS)
        self.socket.setsockopt(zmq.RCVHWM, 0)  # the senders' windows bound what can arrive
        self.authenticator = _apply_curve_server(context, self.socket, curve) if curve is not None else None
        _bind(self.socket, endpoint)

    def recv(self) -> Incoming | None:
        """One message if available (never blocks); malformed envelopes are counted and skipped."""
        while True:
            try:
                parts = self.socket.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return None
            if len(parts) >= 4 and parts[1].bytes == DATA and len(parts[2]) == _SEQ.size:
                return Incoming(parts[0].bytes, _SEQ.unpack(parts[2].bytes)[0], parts[3:])
            self.on_malformed()
            log.warning("edge %s: dropped malformed envelope (%d parts)", self.endpoint, len(parts))

    def ack(self, sender: bytes, edge_seq: int) -> None:
        try:
            self.socket.send_multipart([sender, ACK, _SEQ.pack(edge_seq)], flags=zmq.NOBLOCK)
        except (zmq.Again, zmq.ZMQError):
            pass  # the sender is gone; its successor gets everything resent by its own upstream

    def close(self) -> None:
        self.socket.close(linger=LINGER_MS)
        if self.authenticator is not None:
            self.authenticator.stop()


class Custody:
    """Acknowledge an input only once every output derived from it has been acknowledged downstream.

    This is what makes a `kill -9` of a middle stage lossless: until its outputs are safe downstream, the stage's
    inputs stay unacknowledged upstream and are resent to its successor. Inputs are released in processing order.
    """

    def __init__(self) -> None:
        self._pending: deque[tuple[bytes, int, int]] = deque()

    def __len__(self) -> int:
        return len(self._pending)

    def processed(self, sender: bytes, edge_seq: int, outputs_through: int) -> None:
        """Record an input whose outputs end at output edge seq `outputs_through` (-1: produced nothing yet)."""
        self._pending.append((sender, edge_seq, outputs_through))

    def release(self, outputs_acked_through: int) -> dict[bytes, int]:
        """Inputs now safe to acknowledge: sender -> highest edge seq."""
        acks: dict[bytes, int] = {}
        while self._pending and self._pending[0][2] <= outputs_acked_through:
            sender, edge_seq, _ = self._pending.popleft()
            acks[sender] = max(edge_seq, acks.get(sender, -1))
        return acks


class ControlClient:
    """A stage process's line to its supervisor: DEALER → the supervisor's ROUTER."""

    def __init__(self, context: zmq.Context, endpoint: str, identity: str) -> None:
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.IDENTITY, identity.encode())
        self.socket.setsockopt(zmq.LINGER, LINGER_MS)
        self.socket.connect(endpoint)

    def send(self, parts: Sequence[Any]) -> None:
        try:
            self.socket.send_multipart(parts, flags=zmq.NOBLOCK)
        except zmq.Again:
            log.warning("control: supervisor not reachable; message dropped")

    def recv(self) -> list[Any] | None:
        try:
            return self.socket.recv_multipart(flags=zmq.NOBLOCK)
        except zmq.Again:
            return None

    def close(self) -> None:
        self.socket.close(linger=LINGER_MS)


class ControlServer:
    """The supervisor's end of every control line: ROUTER, one identity per process incarnation."""

    def __init__(self, context: zmq.Context, endpoint: str) -> None:
        self.socket = context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, LINGER_MS)
        _bind(self.socket, endpoint)

    def recv(self) -> tuple[bytes, list[Any]] | None:
        try:
            parts = self.socket.recv_multipart(flags=zmq.NOBLOCK)
        except zmq.Again:
            return None
        return parts[0], parts[1:]

    def send(self, identity: bytes, parts: Sequence[Any]) -> None:
        try:
            self.socket.send_multipart([identity, *parts], flags=zmq.NOBLOCK)
        except (zmq.Again, zmq.ZMQError):
            pass  # that process is gone

    def close(self) -> None:
        self.socket.close(linger=LINGER_MS)


class EventPublisher:
    """PUB socket for events to other programs: at its high-water mark PUB drops, so a slow reader never stalls us."""

    def __init__(self, context: zmq.Context, endpoint: str, hwm: int = 10_000, curve: CurveKeys | None = None) -> None:
        self.socket = context.socket(zmq.PUB)
        self.socket.setsockopt(zmq.SNDHWM, hwm)
        self.socket.setsockopt(zmq.LINGER, LINGER_MS)
        self.authenticator = _apply_curve_server(context, self.socket, curve) if curve is not None else None
        _bind(self.socket, endpoint)

    def publish(self, topic: str, payload: bytes) -> None:
        try:
            self.socket.send_multipart([topic.encode(), payload], flags=zmq.NOBLOCK)
        except zmq.Again:
            pass  # PUB at HWM: the reader is too slow; events are best-effort for subscribers

    def close(self) -> None:
        self.socket.close(linger=LINGER_MS)
        if self.authenticator is not None:
            self.authenticator.stop()
