"""Files written so that a reader, or a process restarted after a crash, never finds half of one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray


def atomic_savez(path: Path, arrays: dict[str, NDArray[Any]], compress: bool = False) -> None:
    """Write an npz next to `path` and rename it into place, so a file that exists is always complete."""
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("wb") as handle:
        (np.savez_compressed if compress else np.savez)(handle, **arrays)
    os.replace(temporary, path)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` next to `path` and rename it into place, as `atomic_savez` does."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
