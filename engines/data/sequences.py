"""Silhouette sequence datasets: the shared CASIA-B bit-packed npz files and OpenGait's pkl layout.

Both readers expose the same `SilhouetteDataset` surface: a list of `SequenceKey`s and `frames(i)` returning
`(T, 64, 44) uint8` (OpenGait's 64x64 pretreated silhouettes with 10 columns cut from each side). The npz reader
keeps the bit-packed arrays in RAM (about 0.6 GB for all of CASIA-B instead of 3 GB unpacked) and unpacks one
sequence per call; the pkl reader reads a file per call, so it costs no RAM up front.

Must not import `pipeline` or `stages`.
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from engines.errors import DatasetError
from engines.pretreat import SIL_HEIGHT, SIL_PADDED_WIDTH, SIL_WIDTH, cut_sides

log = logging.getLogger(__name__)

NPZ_KEY = re.compile(r"^(?P<condition>[a-z]+-\d+)_(?P<view>\d{3})$")
CASIA_B_TRAIN_SUBJECTS = tuple(f"{i:03d}" for i in range(1, 75))
CASIA_B_TEST_SUBJECTS = tuple(f"{i:03d}" for i in range(75, 125))
CASIA_B_VIEWS = tuple(f"{angle:03d}" for angle in range(0, 181, 18))


@dataclass(frozen=True, order=True)
class SequenceKey:
    """One walking sequence: subject id ("075"), condition ("nm-05") and camera view in degrees ("090")."""

    subject: str
    condition: str
    view: str


class SilhouetteDataset(Protocol):
    """A set of silhouette sequences addressed by index."""

    keys: list[SequenceKey]

    def frames(self, index: int) -> NDArray[np.uint8]:
        """(T, 64, 44) uint8 silhouettes of sequence `index`, T >= 1."""
        ...

    def num_frames(self, index: int) -> int: ...


def default_casia_b_root() -> Path:
    """The shared CASIA-B silhouettes beside the project (`../shared/assets/datasets/casia-b`)."""
    return Path(__file__).resolve().parents[3] / "shared" / "assets" / "datasets" / "casia-b"


def _to_network_width(frames: NDArray[np.uint8], where: str) -> NDArray[np.uint8]:
    if frames.ndim != 3 or frames.shape[1] != SIL_HEIGHT or frames.shape[2] not in (SIL_PADDED_WIDTH, SIL_WIDTH):
        raise DatasetError(f"{where}: expected silhouettes (T, 64, 64) or (T, 64, 44), got shape {frames.shape}")
    if frames.shape[0] == 0:
        raise DatasetError(f"{where}: sequence has no frames")
    return cut_sides(frames) if frames.shape[2] == SIL_PADDED_WIDTH else np.ascontiguousarray(frames)


class PackedNpzDataset:
    """CASIA-B as the shared `SUBJECT.npz` files: key `TYPE-SEQ_VIEW`, value `packbits(sil > 127, axis=-1)`.

    Reads only the listed subjects (all `*.npz` in `root` when None). Sequences with zero frames are skipped with
    a warning, since CASIA-B has a few empty ones (subject 005 lacks several views).
    """

    def __init__(self, root: Path, subjects: Iterable[str] | None = None) -> None:
        root = Path(root)
        layout = "SUBJECT.npz files with keys like 'nm-01_090' holding bit-packed (T, 64, 8) uint8"
        if not root.is_dir():
            raise DatasetError(f"{root}: dataset folder does not exist (expected {layout})")
        files = sorted(root.glob("*.npz")) if subjects is None else [root / f"{s}.npz" for s in subjects]
        self.keys: list[SequenceKey] = []
        self._packed: list[NDArray[np.uint8]] = []
        empty = 0
        for path in files:
            if not path.is_file():
                log.warning("subject file missing, skipped path=%s", path)
                continue
            try:
                with np.load(path) as archive:
                    entries = {name: archive[name] for name in archive.files}
            except (OSError, ValueError, zipfile.BadZipFile) as exc:
                raise DatasetError(f"{path}: cannot read npz ({exc}); expected {layout}") from exc
            for name in sorted(entries):
                match = NPZ_KEY.match(name)
                packed = entries[name]
                if match is None or packed.ndim != 3 or packed.shape[1:] != (SIL_HEIGHT, SIL_PADDED_WIDTH // 8):
                    raise DatasetError(f"{path}: entry {name!r} of shape {packed.shape} does not match {layout}")
                if packed.shape[0] == 0:
                    empty += 1
                    continue
                self.keys.append(SequenceKey(path.stem, match["condition"], match["view"]))
                self._packed.append(packed)
        if not self.keys:
            raise DatasetError(f"{root}: no sequences found (expected {layout})")
        log.info("loaded CASIA-B npz sequences=%d subjects=%d empty_skipped=%d root=%s",
                 len(self.keys), len({k.subject for k in self.keys}), empty, root)

    def frames(self, index: int) -> NDArray[np.uint8]:
        unpacked = np.unpackbits(self._packed[index], axis=-1)
        return cut_sides(unpacked) * np.uint8(255)

    def num_frames(self, index: int) -> int:
        return int(self._packed[index].shape[0])

    def frames_at(self, index: int, frame_indices: NDArray[np.int64]) -> NDArray[np.uint8]:
        """Only the requested frames of sequence `index` (cheaper than `frames` when sampling 30 of 100)."""
        unpacked = np.unpackbits(self._packed[index][frame_indices], axis=-1)
        return cut_sides(unpacked) * np.uint8(255)


class OpenGaitPklDataset:
    """OpenGait's pretreated layout `SUBJECT/TYPE-SEQ/VIEW/*.pkl`, each a pickled (T, 64, 64) uint8 array.

    Pickle can run code: only open pkl trees you produced or trust (OpenGait's `pretreatment.py` output).
    """

    def __init__(self, root: Path, subjects: Iterable[str] | None = None) -> None:
        root = Path(root)
        layout = "SUBJECT/TYPE-SEQ/VIEW/*.pkl (OpenGait pretreatment output)"
        if not root.is_dir():
            raise DatasetError(f"{root}: dataset folder does not exist (expected {layout})")
        wanted = None if subjects is None else set(subjects)
        self.keys = []
        self._files: list[Path] = []
        for view_dir in sorted(root.glob("*/*/*")):
            subject, condition, view = view_dir.relative_to(root).parts
            if not view_dir.is_dir() or (wanted is not None and subject not in wanted):
                continue
            pkls = sorted(view_dir.glob("*.pkl"))
            if not pkls:
                continue
            if len(pkls) > 1:
                raise DatasetError(f"{view_dir}: holds {len(pkls)} pkl files; expected one silhouette pkl")
            self.keys.append(SequenceKey(subject, condition, view))
            self._files.append(pkls[0])
        if not self.keys:
            raise DatasetError(f"{root}: no sequences found (expected {layout})")
        self._lengths: dict[int, int] = {}

    def frames(self, index: int) -> NDArray[np.uint8]:
        path = self._files[index]
        try:
            with path.open("rb") as handle:
                data = pickle.load(handle)  # trusted local files, see the class docstring
        except (OSError, pickle.UnpicklingError, EOFError) as exc:
            raise DatasetError(f"{path}: cannot read pkl ({exc})") from exc
        frames = _to_network_width(np.asarray(data, dtype=np.uint8), str(path))
        self._lengths[index] = frames.shape[0]
        return frames

    def num_frames(self, index: int) -> int:
        if index not in self._lengths:
            self.frames(index)
        return self._lengths[index]

    def frames_at(self, index: int, frame_indices: NDArray[np.int64]) -> NDArray[np.uint8]:
        return self.frames(index)[frame_indices]


def open_dataset(root: Path, subjects: Iterable[str] | None = None) -> PackedNpzDataset | OpenGaitPklDataset:
    """The npz reader when `root` holds `*.npz` files, else the pkl-tree reader."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(
            f"{root}: dataset path does not exist (expected CASIA-B SUBJECT.npz files or an OpenGait "
            "SUBJECT/TYPE-SEQ/VIEW/*.pkl tree)"
        )
    if any(root.glob("*.npz")):
        return PackedNpzDataset(root, subjects)
    return OpenGaitPklDataset(root, subjects)


def select(keys: Sequence[SequenceKey], *, subjects: Iterable[str] | None = None,
           conditions: Iterable[str] | None = None) -> list[int]:
    """Indices of the keys whose subject and condition are in the given sets (None = any)."""
    subject_set = None if subjects is None else set(subjects)
    condition_set = None if conditions is None else set(conditions)
    return [
        i for i, key in enumerate(keys)
        if (subject_set is None or key.subject in subject_set)
        and (condition_set is None or key.condition in condition_set)
    ]
