"""USF HumanID gait challenge silhouettes as Haiping Lu published them with MPCA: 32x22 half-cycle tensors.

A file (`Gal.npz`, `PrbA.npz`, ...) holds `fea3D` uint8 (32, 22, 10, N) in {0, 1}, with 0 the person and 1 the
background, and `gnd` (N,) the subject of each half cycle; a subject's half cycles are consecutive samples of one
walk. `read_usf` joins them into one sequence per subject and turns each frame into the network's 64x44 silhouette
with OpenGait's pretreatment (`engines.pretreat`: crop to the person's rows, upscale to 64 high, centre on the
horizontal centre of mass), the same path every pipeline mask takes. `gei_rank1` is the no-learning baseline:
each subject's mean silhouette on the raw 32x22 tensors, Euclidean nearest neighbour.

Must not import `pipeline` or `stages`.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from engines.errors import DatasetError
from engines.pretreat import SIL_HEIGHT, SIL_WIDTH, Rejection, pretreat_silhouette


@dataclass(frozen=True)
class UsfSet:
    """One USF file: per subject, its raw (T, 32, 22) person masks in {0, 1} and the pretreated (T, 64, 44)."""

    name: str
    subjects: NDArray[np.int64]  # (S,)
    raw: list[NDArray[np.uint8]]  # S x (T, 32, 22), 1 = person
    silhouettes: list[NDArray[np.uint8]]  # S x (T, 64, 44) uint8 {0, 255}


def _pretreat(mask: NDArray[np.uint8]) -> NDArray[np.uint8]:
    result = pretreat_silhouette(mask, min_height_px=1, max_width_ratio=10.0)
    return np.zeros((SIL_HEIGHT, SIL_WIDTH), np.uint8) if isinstance(result, Rejection) else result


def read_usf(path: Path) -> UsfSet:
    """One file of the set; `DatasetError` when it is missing or not in the expected layout."""
    try:
        with np.load(path) as data:
            tensors, labels = data["fea3D"], data["gnd"].reshape(-1).astype(np.int64)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"{path}: not a USF HumanID npz with fea3D and gnd ({exc})") from exc
    if tensors.ndim != 4 or tensors.shape[:3] != (32, 22, 10) or tensors.shape[3] != len(labels):
        raise DatasetError(f"{path}: fea3D has shape {tensors.shape}, expected (32, 22, 10, N) with N = len(gnd)")
    frames = (1 - tensors.transpose(3, 2, 0, 1)).astype(np.uint8)  # (N, 10, 32, 22), person = 1
    subjects, first = np.unique(labels, return_index=True)
    order = np.argsort(first)
    raw, silhouettes = [], []
    for subject in subjects[order]:
        walk = frames[labels == subject].reshape(-1, 32, 22)
        raw.append(walk)
        silhouettes.append(np.stack([_pretreat(frame) for frame in walk]))
    return UsfSet(path.stem, subjects[order], raw, silhouettes)


def gei_rank1(gallery: UsfSet, probe: UsfSet) -> float:
    """Rank-1 (%) of the gait-energy-image baseline: mean raw silhouette per subject, Euclidean nearest neighbour."""
    gallery_gei = np.stack([walk.mean(0).ravel() for walk in gallery.raw]).astype(np.float64)
    probe_gei = np.stack([walk.mean(0).ravel() for walk in probe.raw]).astype(np.float64)
    distance = ((probe_gei[:, None] - gallery_gei[None]) ** 2).sum(-1)
    return 100.0 * float(np.mean(gallery.subjects[distance.argmin(1)] == probe.subjects))
