"""Frame rings: a reader lets go of the rings its sources removed, so a long-lived stage does not keep them mapped."""

from __future__ import annotations

import secrets

import numpy as np
import pytest

from pipeline.errors import StaleFrame
from pipeline.shm import FrameRing, RingReaders, ring_name


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
