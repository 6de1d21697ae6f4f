"""Camera leases on NATS JetStream key-value: which host of a site reads which camera, and who takes over when a
host dies.

A lease is one key of a key-value bucket (one bucket per site, its `max_age` the lease's TTL) named after the
camera, whose value names the holder. A host takes a free camera with `create`, which succeeds only when the key
does not exist: nobody holds it, or its holder's last write is older than the TTL and the store expired it. It
renews every `renew_interval_s` with `update(last=revision)`, a compare-and-swap on the revision it wrote last, so a
renewal can only extend a lease nobody has taken since. Each write restarts the key's age: a lease lives `ttl_s`
after its last renewal. A host that dies stops renewing, and any host with the camera among its candidates takes it
at its next attempt after the expiry, `ttl_s + renew_interval_s` after the last renewal at worst. A host that stops
on purpose (`close`) deletes its keys, and the others take the cameras at their next attempt.

Fencing. The store's expiry is the only arbiter, and a host cut off from the broker cannot learn that its lease
expired. So a host gives a camera up by its own clock: `fence_s` (default half the TTL) after the *start* of its
last successful write, answered or not, which is before the store's clock (which counts from when the write
arrived) can expire it. The rest of the TTL is the time its reader has to stop. Two hosts never read one camera at
once as long as each stops its reader within `ttl_s - fence_s` of the loss callback; only durations on each host's
own monotonic clock are compared, never timestamps across hosts.

Hand-over. A host that holds a camera it cannot read (its source gave up on it) hands it over: it stops renewing the
lease, reports the camera lost, and does not try to take it again for `rest_s`. The lease is not deleted but left
to expire, so another host takes the camera `ttl_s` after the last renewal at most, when this host's reader has
long stopped; a camera no host can read goes round the hosts, each resting from it in turn.

Every value is `<host> <token>`, the token random per `CameraLeases`: a write whose acknowledgement was lost (a
timeout) is recognised as our own on the next round and its revision adopted, rather than read as a takeover.

One thread runs the nats-py client in its own asyncio loop; `on_change(camera, held)` is called from that thread,
in order, and must return quickly (hand the work to another thread). nats-py comes with the `cluster` extra and is
imported when a `CameraLeases` is made. Must not import `pipeline` or `stages`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engines.errors import EngineError
from engines.gallery import redact_url
from engines.nats_client import connect_options, import_nats

log = logging.getLogger(__name__)

RECONNECT_WAIT_S = 0.5  # between nats-py's reconnection attempts (it retries for ever)
FENCE_CHECK_S = 0.05  # how often held leases are checked against the fence
STOP_S = 3.0  # for the thread to release its leases, close its connection and end
_NOT_IN_A_KEY = re.compile(r"[^-/_=.a-zA-Z0-9]")
_NOT_IN_A_BUCKET = re.compile(r"[^a-zA-Z0-9_-]")


class LeaseError(EngineError):
    """Leases cannot work as configured: nats-py missing, timings that cannot fence, a bucket with another TTL."""


def lease_key(camera: str) -> str:
    """`camera` as a key-value key (letters, digits and `-/_=.`; others become `_`)."""
    return _NOT_IN_A_KEY.sub("_", camera).strip(".") or "_"


def lease_bucket(site: str) -> str:
    """The bucket that holds a site's camera leases."""
    return "gaitstream_leases_" + _NOT_IN_A_BUCKET.sub("_", site)


@dataclass
class _Lease:
    revision: int
    sent_s: float  # monotonic time the last successful write was sent: the fence counts from here


class CameraLeases:
    """Holds leases on as many of `cameras` (ids, in order of preference) as are free, up to `max_cameras`.

    `start()` begins (and waits up to `start_timeout_s` for the first round, so a bucket that cannot serve fails
    there; an unreachable broker does not: the thread keeps trying). `held()` is what this host holds now;
    `on_change(camera, True)` when one is gained, `(camera, False)` when it is lost (taken, fenced, or closing).
    `on_renew(camera, fence_at_s)` after each successful write, before `on_change` for a new lease: the monotonic
    time this host must stop reading the camera by unless renewed again (`pipeline.fence` hands it to the reader).
    `close()` releases what is held (delete, so others need not wait for the TTL): stop reading first.
    """

    def __init__(self, url: str, *, host: str, cameras: Sequence[str], bucket: str = lease_bucket("site"),
                 ttl_s: float = 10.0, renew_interval_s: float | None = None, fence_s: float | None = None,
                 max_cameras: int | None = None, credentials: Path | None = None, ca: Path | None = None,
                 on_change: Callable[[str, bool], None] | None = None,
                 on_renew: Callable[[str, float], None] | None = None) -> None:
        self._nats = import_nats("camera leases (node.nats_url)", LeaseError, with_nkeys=credentials is not None)
        self._connect_options = connect_options(LeaseError, credentials=credentials, ca=ca)
        self.fence_s = fence_s if fence_s is not None else ttl_s / 2
        self.renew_interval_s = renew_interval_s if renew_interval_s is not None else ttl_s / 5
        if not 0 < self.renew_interval_s < self.fence_s < ttl_s:
            raise LeaseError(f"leases need renew_interval_s < fence_s < ttl_s, got {self.renew_interval_s:g} s, "
                             f"{self.fence_s:g} s, {ttl_s:g} s")
        if _NOT_IN_A_BUCKET.search(bucket):
            raise LeaseError(f"lease bucket {bucket!r}: only letters, digits, '-' and '_'")
        self.keys = {camera: lease_key(camera) for camera in cameras}
        if len(set(self.keys.values())) != len(self.keys):
            raise LeaseError(f"camera ids {list(self.keys)} give the same lease key twice ({list(self.keys.values())}):"
                             " make them differ in letters or digits")
        self.servers = [server.strip() for server in url.split(",")]
        self.location = ",".join(redact_url(server) for server in self.servers)
        self.host = host
        self.bucket = bucket
        self.ttl_s = ttl_s
        self.max_cameras = max_cameras
        self.on_change = on_change
        self.on_renew = on_renew
        self.value = f"{host} {secrets.token_hex(8)}".encode()
        self._held: dict[str, _Lease] = {}
        self._resting: dict[str, float] = {}  # camera -> monotonic time before which it is not taken again
        self._handing_over: set[str] = set()
        self._lock = threading.Lock()
        self._first_round = threading.Event()
        self._failure: Exception | None = None
        self._outage_since: float | None = None
        self._thread = threading.Thread(target=self._run, name="camera-leases", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None

    # --- the owner's side ----------------------------------------------------------------------------------------
    def start(self, start_timeout_s: float = 5.0) -> None:
        self._thread.start()
        self._first_round.wait(start_timeout_s)
        if self._failure is not None:
            raise self._failure

    def held(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._held)

    def hand_over(self, camera: str, rest_s: float) -> None:
        """Give `camera` up for another host to take (this one cannot read it): its lease is no longer renewed from
        the next round, `on_change(camera, False)` reported then, and it is not taken again for `rest_s`. Any
        thread."""
        with self._lock:
            if camera in self.keys:
                self._handing_over.add(camera)
                self._resting[camera] = time.monotonic() + rest_s

    def close(self) -> None:
        """Stop taking and renewing, report every held camera lost, then delete their keys."""
        if self._thread.ident is None:  # never started
            return
        if self._loop is not None and self._task is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(STOP_S + 1.0)
        if self._thread.is_alive():
            log.warning("the camera-leases thread did not stop within %.0f s", STOP_S)

    # --- the thread ----------------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            asyncio.run(self._hold_forever())
        except asyncio.CancelledError:
            pass
        except LeaseError as exc:
            self._failure = exc
            log.error("%s", exc)
        finally:
            self._first_round.set()

    async def _hold_forever(self) -> None:
        from nats.errors import Error as NatsError

        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        fence = asyncio.create_task(self._fence_forever())
        nc, kv = None, None
        try:
            while True:
                try:
                    if nc is None:
                        nc = await self._connect()
                    if kv is None:
                        kv = await self._open_bucket(nc.jetstream(timeout=self.renew_interval_s))
                    self._give_up_handed_over()
                    if nc.is_connected:  # else nats-py is reconnecting, and the fence watches the clock
                        await self._renew(kv)
                        await self._acquire(kv)
                        self._reachable()
                except (NatsError, asyncio.TimeoutError, OSError) as exc:
                    self._unreachable(exc)
                self._first_round.set()
                await asyncio.sleep(self.renew_interval_s)
        finally:
            fence.cancel()
            await self._release(kv)
            if nc is not None and not nc.is_closed:
                try:
                    await asyncio.wait_for(nc.close(), STOP_S)
                except (asyncio.TimeoutError, NatsError):
                    pass

    async def _connect(self) -> Any:
        """A connection that reconnects by itself once made; the first attempt failing raises (retried next
        round)."""
        nc = self._nats.NATS()
        await nc.connect(self.servers, name=f"gaitstream leases {self.host}", allow_reconnect=True,
                         max_reconnect_attempts=-1, reconnect_time_wait=RECONNECT_WAIT_S,
                         connect_timeout=max(self.renew_interval_s, 1.0), error_cb=self._on_error,
                         disconnected_cb=self._on_disconnected, **self._connect_options)
        return nc

    async def _open_bucket(self, js: Any) -> Any:
        """The site's bucket, created with our TTL when missing; one with another TTL is refused (its leases would
        expire on a clock our fence does not follow)."""
        from nats.js.errors import BucketNotFoundError

        try:
            kv = await js.key_value(self.bucket)
        except BucketNotFoundError:
            kv = await js.create_key_value(bucket=self.bucket, ttl=self.ttl_s, history=1,
                                           description="gaitstream camera leases: camera -> holding host")
            log.info("created the lease bucket %s (TTL %g s) on NATS %s", self.bucket, self.ttl_s, self.location)
        max_age = (await js.stream_info(f"KV_{self.bucket}")).config.max_age
        if max_age is None or abs(max_age - self.ttl_s) > 1e-3:
            raise LeaseError(f"the lease bucket {self.bucket} on NATS {self.location} keeps leases for "
                             f"{max_age or 'ever'} s, this host's ttl_s is {self.ttl_s:g} s: every host of a site "
                             f"needs the same ttl_s (or delete the bucket: nats kv del {self.bucket})")
        return kv

    async def _write(self, kv: Any, camera: str, last: int | None) -> int | None:
        """Create (`last` None) or renew the lease; its new revision, or None when another host holds it. A failed
        compare-and-swap whose key holds our own value (a write whose acknowledgement was lost) adopts it."""
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

        key = self.keys[camera]
        try:
            return await (kv.create(key, self.value) if last is None else kv.update(key, self.value, last=last))
        except KeyWrongLastSequenceError:
            pass
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:  # expired between the two calls: the next round creates it
            return None
        if entry.value != self.value:
            return None
        try:
            return await kv.update(key, self.value, last=entry.revision)
        except KeyWrongLastSequenceError:
            return None

    async def _renew(self, kv: Any) -> None:
        with self._lock:
            held = list(self._held.items())
        for camera, lease in held:
            sent = time.monotonic()
            revision = await self._write(kv, camera, lease.revision)
            with self._lock:
                current = self._held.get(camera)
                renewed = revision is not None and current is lease  # not fenced while the write was out
                if renewed:
                    self._held[camera] = _Lease(revision, sent)
            if renewed:
                self._renewed(camera, sent)
            if revision is None:
                self._lose(camera, "another host holds it (this host's lease had expired)")

    def _give_up_handed_over(self) -> None:
        with self._lock:
            cameras, self._handing_over = self._handing_over, set()
        for camera in sorted(cameras):
            rest_s = self._resting[camera] - time.monotonic()
            self._lose(camera, f"handed over: this host cannot read it; not taken again for {max(rest_s, 0):.0f} s")

    async def _acquire(self, kv: Any) -> None:
        for camera in self.keys:
            with self._lock:
                if camera in self._held or self._resting.get(camera, 0.0) > time.monotonic():
                    continue
                if self.max_cameras is not None and len(self._held) >= self.max_cameras:
                    return
            sent = time.monotonic()
            revision = await self._write(kv, camera, None)
            if revision is not None:
                with self._lock:
                    self._held[camera] = _Lease(revision, sent)
                log.info("lease taken camera=%s host=%s ttl_s=%g", camera, self.host, self.ttl_s)
                self._renewed(camera, sent)
                self._notify(camera, True)

    async def _fence_forever(self) -> None:
        while True:
            now = time.monotonic()
            with self._lock:
                stale = [camera for camera, lease in self._held.items() if now - lease.sent_s >= self.fence_s]
            for camera in stale:
                self._lose(camera, f"not renewed for {self.fence_s:g} s (fenced: the broker may be unreachable)")
            await asyncio.sleep(FENCE_CHECK_S)

    async def _release(self, kv: Any) -> None:
        from nats.errors import Error as NatsError

        with self._lock:
            held, self._held = self._held, {}
        for camera in held:
            log.info("lease released camera=%s host=%s", camera, self.host)
            self._notify(camera, False)
        if kv is None:
            return
        for camera, lease in held.items():
            try:
                await asyncio.wait_for(kv.delete(self.keys[camera], last=lease.revision), STOP_S / 2)
            except (NatsError, asyncio.TimeoutError, OSError):
                pass  # taken meanwhile, or the broker is away: the lease expires by itself

    def _lose(self, camera: str, why: str) -> None:
        with self._lock:
            if self._held.pop(camera, None) is None:
                return
        log.warning("lease lost camera=%s host=%s: %s", camera, self.host, why)
        self._notify(camera, False)

    def _renewed(self, camera: str, sent_s: float) -> None:
        if self.on_renew is None:
            return
        try:
            self.on_renew(camera, sent_s + self.fence_s)
        except Exception:  # as in _notify: one camera's failure must not stop the others' renewals
            log.exception("camera-leases: on_renew(%s) failed", camera)

    def _notify(self, camera: str, held: bool) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change(camera, held)
        except Exception:  # the owner's bug must not stop the renewals of the other cameras
            log.exception("camera-leases: on_change(%s, %s) failed", camera, held)

    def _reachable(self) -> None:
        if self._outage_since is not None:
            log.info("NATS %s answers lease requests again after %.1f s", self.location,
                     time.monotonic() - self._outage_since)
            self._outage_since = None

    def _unreachable(self, why: object) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.warning("NATS %s does not answer lease requests (%s): held cameras are given up %g s after their "
                        "last renewal", self.location, str(why) or type(why).__name__, self.fence_s)

    async def _on_error(self, exc: Exception) -> None:
        self._unreachable(exc)

    async def _on_disconnected(self) -> None:
        self._unreachable("disconnected")
