"""Frame rings: a reader lets go of the rings its sources removed, so a long-lived stage does not keep them mapped;
the rings of a killed run do not outlive the next run."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import numpy as np
import pytest

from pipeline.errors import StaleFrame
from pipeline.shm import FrameRing, RingReaders, new_run_id, remove_orphaned_rings, ring_name, shm_dir


def test_rings_removed_by_their_source_are_unmapped_by_readers():
    readers = RingReaders()
    names = [ring_name(secrets.token_hex(4), "cam", str(i)) for i in range(3)]
    rings = [FrameRing(name, 2, 4, 6) for name in names]
    try:
        for ring, name in zip(rings, names):
            generation = ring.write(0, np.full((4, 6, 3), 7, np.uint8))
            assert readers.resolve(name, 0, generation, 4, 6)[0, 0, 0] == 7
        assert readers.forget_unlinked() == 3
        rings[0].close(unlink=True)
        rings[1].close(unlink=True)
        assert readers.forget_unlinked() == 1
        with pytest.raises(StaleFrame, match="no longer exists"):
            readers.resolve(names[0], 0, 1, 4, 6)
    finally:
        rings[2].close(unlink=True)
        readers.close()
    assert readers.forget_unlinked() == 0


def test_a_slot_being_written_is_refused_until_published():
    """The source decodes straight into a slot: until `publish`, a reader holding an older reference gets nothing."""
    name = ring_name(secrets.token_hex(4), "cam", "0")
    ring, readers = FrameRing(name, 1, 4, 6), RingReaders()
    try:
        old = ring.write(0, np.full((4, 6, 3), 7, np.uint8))
        ring.begin(0)[:] = 9
        with pytest.raises(StaleFrame, match="reused"):
            readers.resolve(name, 0, old, 4, 6)
        assert readers.resolve(name, 0, ring.publish(0), 4, 6)[0, 0, 0] == 9
    finally:
        ring.close(unlink=True)
        readers.close()


def test_rings_of_a_killed_supervisor_are_removed_and_live_ones_kept():
    """Before: a supervisor killed with SIGKILL left its rings in /dev/shm (RAM) until the host rebooted. A ring is
    removed only when its run's supervisor is gone and no writer holds it (a pid from another pid namespace that
    shares /dev/shm must not cost a live run its frames)."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_run = f"{int(dead.stdout):x}x{secrets.token_hex(3)}"
    live_run = new_run_id()
    assert live_run.startswith(f"{os.getpid():x}x")
    orphan = FrameRing(ring_name(dead_run, "cam", "0"), 1, 4, 6)
    orphan.close(unlink=False)  # its writer died with the supervisor
    kept = {"dead supervisor, live writer": FrameRing(ring_name(dead_run, "cam", "1"), 1, 4, 6),
            "live supervisor": FrameRing(ring_name(live_run, "cam", "0"), 1, 4, 6),
            "no pid in the name": FrameRing(ring_name(secrets.token_hex(4), "cam", "0"), 1, 4, 6)}
    try:
        assert remove_orphaned_rings() >= 1
        assert not (shm_dir() / orphan.name).exists()
        assert [why for why, ring in kept.items() if not (shm_dir() / ring.name).exists()] == []
    finally:
        for ring in kept.values():
            ring.close(unlink=True)
