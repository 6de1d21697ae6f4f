"""USF HumanID reader: one pretreated walk per subject, in the file's order; the GEI baseline on the real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engines.data.usf import gei_rank1, read_usf
from engines.errors import DatasetError


@pytest.fixture(scope="module")
def usf(assets: Path) -> Path:
    return assets / "datasets" / "usf-humanid"


def test_walks_are_joined_per_subject_and_pretreated(usf: Path):
    gallery = read_usf(usf / "Gal.npz")
    raw = np.load(usf / "Gal.npz")
    labels = raw["gnd"].reshape(-1)
    assert len(gallery.subjects) == len(np.unique(labels)) == 71
    first = gallery.subjects[0]
    assert gallery.raw[0].shape == (10 * int((labels == first).sum()), 32, 22)
    assert gallery.silhouettes[0].shape == (len(gallery.raw[0]), 64, 44)
    assert set(np.unique(gallery.silhouettes[0])) == {0, 255}
    # the person is the file's 0 (its background is 1): a walker fills well under half the frame
    assert 0.1 < gallery.raw[0].mean() < 0.45 and 0.1 < (gallery.silhouettes[0] > 0).mean() < 0.5


def test_gei_baseline_on_probe_b(usf: Path):
    """Mean silhouette per subject, Euclidean nearest neighbour: far above chance (1/71), far below perfect."""
    assert 40.0 < gei_rank1(read_usf(usf / "Gal.npz"), read_usf(usf / "PrbB.npz")) < 75.0


def test_a_wrong_file_is_a_clear_error(tmp_path: Path):
    path = tmp_path / "x.npz"
    np.savez(path, fea3D=np.zeros((32, 22, 5, 2), np.uint8), gnd=np.zeros(2))
    with pytest.raises(DatasetError, match="expected"):
        read_usf(path)
    with pytest.raises(DatasetError, match="not a USF"):
        read_usf(tmp_path / "missing.npz")
