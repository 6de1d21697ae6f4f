"""The two silhouette readers on the shared CASIA-B data: the bit-packed npz files and OpenGait's pkl layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engines.data.sequences import OpenGaitPklDataset, PackedNpzDataset, SequenceKey, open_dataset, select
from engines.errors import DatasetError


@pytest.fixture(scope="module")
def npz_075(casia_b: Path) -> PackedNpzDataset:
    dataset = open_dataset(casia_b / "sils-64x64-bin", ["075"])
    assert isinstance(dataset, PackedNpzDataset)
    return dataset


def test_npz_reader_gives_network_sized_binary_silhouettes(npz_075: PackedNpzDataset) -> None:
    keys = npz_075.keys
    assert len(keys) == 110  # 10 sequences x 11 views
    assert {k.subject for k in keys} == {"075"}
    assert {k.view for k in keys} == {f"{18 * i:03d}" for i in range(11)}
    index = keys.index(SequenceKey("075", "nm-01", "090"))
    frames = npz_075.frames(index)
    assert frames.dtype == np.uint8 and frames.shape == (npz_075.num_frames(index), 64, 44)
    assert set(np.unique(frames).tolist()) == {0, 255}
    assert frames.mean() > 10  # a person, not an empty frame
    picked = np.asarray([0, 5, 2])
    np.testing.assert_array_equal(npz_075.frames_at(index, picked), frames[picked])


def test_pkl_reader_agrees_with_the_npz_files(casia_b: Path, npz_075: PackedNpzDataset) -> None:
    pkl = open_dataset(casia_b / "opengait-pkl-sample")
    assert isinstance(pkl, OpenGaitPklDataset)
    assert pkl.keys == [SequenceKey("001", "cl-01", "090"), SequenceKey("001", "nm-01", "090"),
                        SequenceKey("075", "bg-01", "090"), SequenceKey("075", "nm-05", "000")]
    for index in range(len(pkl.keys)):
        frames = pkl.frames(index)
        assert frames.dtype == np.uint8 and frames.shape[1:] == (64, 44) and pkl.num_frames(index) == len(frames)
    grey = pkl.frames(3)
    binary = npz_075.frames(npz_075.keys.index(pkl.keys[3]))
    assert grey.shape == binary.shape
    assert np.mean((grey > 127) == (binary > 127)) > 0.999  # the npz is the pkl binarised at 127


def test_pkl_reader_filters_subjects(casia_b: Path) -> None:
    pkl = open_dataset(casia_b / "opengait-pkl-sample", ["075"])
    assert {k.subject for k in pkl.keys} == {"075"}


def test_select_by_subject_and_condition(npz_075: PackedNpzDataset) -> None:
    gallery = select(npz_075.keys, conditions=["nm-01", "nm-02", "nm-03", "nm-04"])
    assert len(gallery) == 44
    assert select(npz_075.keys, subjects=["076"]) == []


def test_missing_or_wrong_dataset_paths(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        open_dataset(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="no sequences found"):
        open_dataset(tmp_path)
    np.savez(tmp_path / "001.npz", **{"nm-01_090": np.zeros((3, 64, 64), np.uint8)})
    with pytest.raises(DatasetError, match="does not match"):
        open_dataset(tmp_path)
