"""Track stitching: a walk lost for a moment keeps its id; other people and ended walks do not take it."""

from __future__ import annotations

import numpy as np

from engines.detect.stitch import TrackStitcher


def box(x: float, height: float = 100.0) -> np.ndarray:
    return np.asarray([[x, 100.0, x + height / 2.5, 100.0 + height]], np.float32)


def ids(*values: int) -> np.ndarray:
    return np.asarray(values, np.int64)


def test_a_walk_split_by_the_tracker_is_one_track():
    stitcher = TrackStitcher(max_gap_s=1.0)
    first = [int(stitcher.update(t / 10, ids(7), box(100 + 10 * t))[0]) for t in range(10)]  # 100 px/s
    assert set(first) == {1}
    # lost for 0.5 s, found again under a new tracker id where the walk should be by now
    again = stitcher.update(1.4, ids(9), box(100 + 10 * 14))
    assert again.tolist() == [1] and stitcher.stitched == 1
    assert stitcher.update(1.5, ids(9), box(100 + 10 * 15)).tolist() == [1]


def test_someone_else_elsewhere_or_later_starts_a_new_walk():
    stitcher = TrackStitcher(max_gap_s=1.0)
    for t in range(10):
        stitcher.update(t / 10, ids(7), box(100 + 10 * t))
    assert stitcher.update(1.2, ids(8), box(600)).tolist() == [2]  # far from where walk 1 should be
    assert stitcher.update(1.3, ids(11), box(230, height=200)).tolist() == [3]  # twice the size
    assert stitcher.update(2.5, ids(12), box(250)).tolist() == [4]  # walk 1 lost too long ago


def test_ended_walks_are_never_reused_even_by_their_old_tracker_id():
    stitcher = TrackStitcher(max_gap_s=1.0, first_id=1_000_001)
    assert stitcher.update(0.0, ids(5), box(100)).tolist() == [1_000_001]
    stitcher.forget(1_000_001)
    assert stitcher.update(0.2, ids(5), box(100)).tolist() == [1_000_002]


def test_two_people_visible_together_keep_their_own_ids():
    stitcher = TrackStitcher(max_gap_s=1.0)
    for t in range(5):
        assert stitcher.update(t / 10, ids(1, 2), np.concatenate([box(100 + 10 * t), box(140 + 10 * t)])).tolist() \
            == [1, 2]
    # tracker 2 swaps to a new id while walk 1 is still visible: continues walk 2, never walk 1
    assert stitcher.update(0.5, ids(1, 3), np.concatenate([box(150), box(190)])).tolist() == [1, 2]
