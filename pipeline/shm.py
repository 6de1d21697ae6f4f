"""Rings of shared-memory frame slots: on one host, pixels are written once by the source and read in place.

A ring is a file in /dev/shm mapped by every process that touches it (plain `mmap`, so Python's resource tracker
never unlinks a ring behind our back). Layout: a 64-byte header, then one int64 generation per slot, then the
slots. The writer sets a slot's generation to -1 while pixels go in (the source decodes straight into the slot) and
to a fresh positive number when they are complete; a reader accepts a slot only if its generation still equals the
one in the message (`StaleFrame` otherwise).
The source reuses a slot only after the whole chain has acknowledged the frame in it, so in practice the check
catches bugs and foreign writers, not races.

Rings are named `gaitstream-<run id>-...`; the supervisor unlinks every ring of its run at exit, so a killed
process leaks nothing past the run. A run id starts with the supervisor's pid (`new_run_id`), so the rings of a
supervisor killed with SIGKILL, which cannot clean up, are removed by the next run on the host
(`remove_orphaned_rings`): /dev/shm is RAM, and a camera host that crashes now and then must not lose it for good.
Must not import `stages` or `engines`.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import re
import secrets
import struct
import tempfile
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from pipeline.errors import StaleFrame

_MAGIC = b"GSRING01"
_HEADER = struct.Struct("<8sqqqq")  # magic, slots, height, width, channels
_HEADER_BYTES = 64
RING_PREFIX = "gaitstream-"


def shm_dir() -> Path:
    """Where rings live: /dev/shm on Linux (RAM-backed), else the temp dir."""
    path = Path("/dev/shm")
    return path if path.is_dir() else Path(tempfile.gettempdir())


def ring_name(run_id: str, *parts: str) -> str:
    """A file-name-safe ring name inside the run's namespace."""
    safe = [re.sub(r"[^A-Za-z0-9_.-]", "_", p) for p in parts]
    return "-".join([RING_PREFIX + run_id, *safe])


def new_run_id() -> str:
    """`<supervisor pid, hex>x<random>`: unique, and says whose rings are whose."""
    return f"{os.getpid():x}x{secrets.token_hex(3)}"


def _owner_alive(run_id: str) -> bool:
    """Whether the supervisor a run id names may still run (a run id without a pid: assumed so)."""
    match = re.fullmatch(r"([0-9a-f]+)x[0-9a-f]+", run_id)
    if match is None:
        return True
    try:
        os.kill(int(match.group(1), 16), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _writer_alive(path: Path) -> bool:
    """Whether a process still holds the ring open for writing (its writer keeps a shared lock on it while it lives;
    locks, unlike pids, mean the same in every pid namespace that shares /dev/shm)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the exclusive lock if it was taken
    return False


def remove_orphaned_rings() -> int:
    """Unlink the rings of runs whose supervisor is gone (killed before it could clean up) and that no writer holds;
    returns how many. A reused pid only delays the clean-up to a later run, it never removes a live run's ring."""
    removed = 0
    for path in shm_dir().glob(f"{RING_PREFIX}*"):
        run_id = path.name[len(RING_PREFIX):].split("-", 1)[0]
        if not _owner_alive(run_id) and not _writer_alive(path):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def remove_run_rings(run_id: str) -> int:
    """Unlink every ring of a run (also those of killed processes); returns how many were removed."""
    removed = 0
    for path in shm_dir().glob(f"{RING_PREFIX}{run_id}-*"):
        path.unlink(missing_ok=True)
        removed += 1
    return removed


class _MappedRing:
    def __init__(self, path: Path, fd: int, writable: bool) -> None:
        self.path = path
        size = os.fstat(fd).st_size
        access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
        self._map = mmap.mmap(fd, size, access=access)
        magic, slots, height, width, channels = _HEADER.unpack_from(self._map, 0)
        if magic != _MAGIC:
            raise StaleFrame(f"{path} is not a gaitstream frame ring")
        self.slots, self.height, self.width, self.channels = slots, height, width, channels
        self.slot_shape = (height, width, channels)
        self.generations = np.frombuffer(self._map, np.int64, slots, _HEADER_BYTES)
        data_offset = _HEADER_BYTES + 8 * slots
        self.data = np.frombuffer(self._map, np.uint8, slots * height * width * channels, data_offset).reshape(
            slots, height, width, channels
        )
        if not writable:
            self.data.flags.writeable = False

    def close(self) -> None:
        # numpy views keep the buffer exported; drop them before closing the map.
        self.generations = self.data = None  # type: ignore[assignment]
        try:
            self._map.close()
        except BufferError:
            pass  # a caller still holds a frame view; the map closes when it is collected


class FrameRing:
    """Writer side of a ring, owned by one source process."""

    def __init__(self, name: str, slots: int, height: int, width: int, channels: int = 3) -> None:
        self.name = name
        path = shm_dir() / name
        size = _HEADER_BYTES + 8 * slots + slots * height * width * channels
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, size)
            with mmap.mmap(fd, _HEADER_BYTES) as header:
                _HEADER.pack_into(header, 0, _MAGIC, slots, height, width, channels)
            self._ring = _MappedRing(path, fd, writable=True)
            fcntl.flock(fd, fcntl.LOCK_SH)  # held while the writer lives: `remove_orphaned_rings` leaves it alone
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._next_generation = 1

    @property
    def slots(self) -> int:
        return self._ring.slots

    @property
    def slot_shape(self) -> tuple[int, int, int]:
        return self._ring.slot_shape

    def begin(self, slot: int) -> NDArray[np.uint8]:
        """Open `slot` for writing: readers refuse it until `publish`; returns the writable view to fill."""
        self._ring.generations[slot] = -1
        return self._ring.data[slot]

    def publish(self, slot: int) -> int:
        """Mark `slot` complete; returns the generation readers must present."""
        generation = self._next_generation
        self._next_generation += 1
        self._ring.generations[slot] = generation
        return generation

    def write(self, slot: int, pixels: NDArray[np.uint8]) -> int:
        """Copy a frame into `slot` and publish it; returns the generation readers must present."""
        np.copyto(self.begin(slot), pixels)
        return self.publish(slot)

    def view(self, slot: int) -> NDArray[np.uint8]:
        """The writer's own view of a slot (valid until the slot is written again)."""
        return self._ring.data[slot]

    def close(self, unlink: bool = True) -> None:
        self._ring.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if unlink:
            self._ring.path.unlink(missing_ok=True)


class RingReaders:
    """Reader side: attaches rings by name on first use and resolves (slot, generation) to read-only views."""

    def __init__(self) -> None:
        self._rings: dict[str, _MappedRing] = {}

    def resolve(self, name: str, slot: int, generation: int, height: int, width: int) -> NDArray[np.uint8]:
        ring = self._rings.get(name)
        if ring is None:
            path = shm_dir() / name
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError as exc:
                raise StaleFrame(f"frame ring {name} no longer exists") from exc
            try:
                ring = self._rings[name] = _MappedRing(path, fd, writable=False)
            finally:
                os.close(fd)
        if ring.slot_shape[:2] != (height, width) or not 0 <= slot < ring.slots:
            raise StaleFrame(f"ring {name} holds {ring.slot_shape} x {ring.slots}, asked slot {slot} {height}x{width}")
        if int(ring.generations[slot]) != generation:
            raise StaleFrame(f"ring {name} slot {slot} was reused (generation {generation} gone)")
        return ring.data[slot]

    def forget(self, name: str) -> None:
        ring = self._rings.pop(name, None)
        if ring is not None:
            ring.close()

    def forget_unlinked(self) -> int:
        """Unmap rings their source has removed; returns how many are still mapped.

        A source unlinks a ring only when no frame in it is in use anywhere in the chain (slots are reused only
        after the whole chain acknowledged them), so no view into it is alive here: without this, a reader that
        outlives many sources (a 24-hour camera reconnecting, batch folders) would keep every ring's pages mapped.
        """
        for name in [n for n in self._rings if not (shm_dir() / n).exists()]:
            self.forget(name)
        return len(self._rings)

    def close(self) -> None:
        for name in list(self._rings):
            self.forget(name)
