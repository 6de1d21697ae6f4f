"""P x K batches and frame sampling: shapes, grouping, tiling of short sequences, and determinism per seed."""

from __future__ import annotations

import numpy as np
import pytest

from engines.data.sampling import PKBatchSampler, all_frame_indices, fixed_frame_indices
from engines.errors import DatasetError


def test_pk_batches_group_k_sequences_of_p_identities() -> None:
    labels = np.repeat(np.arange(6), [5, 5, 5, 5, 5, 1])
    sampler = PKBatchSampler(labels, p=4, k=3)
    batch = sampler.sample(np.random.default_rng(0))
    assert batch.shape == (12,)
    groups = labels[batch].reshape(4, 3)
    assert (groups == groups[:, :1]).all() and len(set(groups[:, 0].tolist())) == 4
    np.testing.assert_array_equal(batch, sampler.sample(np.random.default_rng(0)))
    rare = PKBatchSampler(labels, p=6, k=3).sample(np.random.default_rng(1))
    assert (labels[rare] == 5).sum() == 3  # one sequence, drawn with replacement


def test_pk_sampler_needs_p_identities() -> None:
    with pytest.raises(DatasetError, match="at least P=4"):
        PKBatchSampler([0, 0, 1, 1], p=4, k=2)


def test_fixed_frames_tile_short_sequences() -> None:
    rng = np.random.default_rng(0)
    picked = fixed_frame_indices(100, 30, rng)
    assert picked.shape == (30,) and len(set(picked.tolist())) == 30 and picked.max() < 100
    short = fixed_frame_indices(7, 30, rng)
    assert short.shape == (30,) and set(short.tolist()) == set(range(7))  # every frame used, some repeated
    np.testing.assert_array_equal(fixed_frame_indices(50, 10, np.random.default_rng(3)),
                                  fixed_frame_indices(50, 10, np.random.default_rng(3)))


def test_all_frames_in_order_with_an_optional_cap() -> None:
    np.testing.assert_array_equal(all_frame_indices(5, None), np.arange(5))
    np.testing.assert_array_equal(all_frame_indices(5, 3), np.arange(3))
    np.testing.assert_array_equal(all_frame_indices(5, 10), np.arange(5))


@pytest.mark.parametrize("name", ["flip_prob", "low_res_prob", "morph_prob", "truncate_prob", "holes_prob"])
def test_real_footage_augmentations_keep_a_centred_binary_walker(name: str):
    """Each degradation changes the walk but leaves a pretreated-looking silhouette: binary, 64x44, mass centred."""
    from engines.data.augment import AugmentConfig, augment_sequence

    frames = np.zeros((12, 64, 44), np.uint8)
    frames[:, 4:60, 17:27] = 255  # torso and legs
    frames[:, 20:40, 12:17] = 255  # an arm in front: not symmetric
    out = augment_sequence(frames, AugmentConfig(**{name: 1.0}), np.random.default_rng(3))
    assert out.shape == frames.shape and out.dtype == np.uint8
    assert set(np.unique(out)) <= {0, 255} and not np.array_equal(out, frames)
    columns = out.astype(np.float64).sum(axis=(0, 1))
    centre = float((columns * np.arange(44)).sum() / columns.sum())
    assert abs(centre - 21.5) < 3.5
