"""A camera's read deadline, kept by the node and obeyed by the camera's own source process.

A node gives a camera up by its own clock half a TTL after its last good lease renewal (`engines.leases`), and
stops the camera's source then. That stop is sent by the node process; a node that is frozen (SIGSTOP, a paused VM,
a stalled interpreter) sends nothing while its source keeps reading, and another host may by then hold the camera.
So the node also writes the deadline into a file in the run folder at every renewal, and the source checks it before
each frame it reads: past the deadline it stops reading on its own, whatever state the node is in. Both sides use
this host's monotonic clock (`time.monotonic`, the same in every process), never wall time.

Must not import `stages` or `engines`.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

_DEADLINE = struct.Struct("<d")


def deadline_path(run_dir: Path, stream_id: str) -> Path:
    """Where a camera's deadline lives in a run folder."""
    return run_dir / f"lease-{re.sub(r'[^A-Za-z0-9_.-]', '_', stream_id)}.deadline"


def extend_deadline(path: Path, deadline_s: float) -> None:
    """Let the camera be read until `deadline_s` (monotonic); atomic, so a reader never sees half a value."""
    temporary = path.with_name(path.name + ".new")
    temporary.write_bytes(_DEADLINE.pack(deadline_s))
    os.replace(temporary, path)


class ReadDeadline:
    """A source's view of its camera's deadline. The node only ever moves a deadline later, so the file is read again
    only once the value last read has passed: checking before every frame costs no I/O while the lease is renewed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._known_s = float("-inf")

    def passed(self, now_s: float) -> bool:
        """Whether the camera may no longer be read: past its deadline, or none was ever written (no lease yet)."""
        if now_s < self._known_s:
            return False
        try:
            (self._known_s,) = _DEADLINE.unpack(self.path.read_bytes())
        except (OSError, struct.error):
            self._known_s = float("-inf")
        return now_s >= self._known_s
