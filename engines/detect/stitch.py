"""Track stitching: one walk, one track id, even when the tracker lost the walker for a moment.

Multi-object trackers (ByteTrack, BoT-SORT, the background-subtraction tracker) start a new id when a person
reappears after a missed detection or an occlusion longer than their own buffer. For gait that split is costly:
each fragment is too short to be recognised well, and the first one may be named from a few windows. A
`TrackStitcher` per stream maps tracker ids to walk ids: a new tracker id that appears where a recently lost walk
should be by now (its last box moved on at its last velocity), at the same size, continues that walk. Walk ids are
the stitcher's own, counted up from `first_id` and never reused: a tracker that finds a person again under an id
whose walk has already ended starts a new walk. Must not import `pipeline` or `stages`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray


@dataclass
class _Walk:
    box: NDArray[np.float64]  # last box (x1, y1, x2, y2)
    velocity: NDArray[np.float64]  # box centre, px per second
    last_seen_s: float


@dataclass
class TrackStitcher:
    """Tracker ids -> walk ids for one stream (see the module docstring).

    A lost walk can be continued within `max_gap_s` of its last sighting, by a new id whose box centre lies within
    `max_offset` box heights of the predicted centre and whose height is within a factor `max_scale` of the walk's.
    """

    max_gap_s: float = 1.0
    max_offset: float = 0.6
    max_scale: float = 1.4
    first_id: int = 1
    walks: dict[int, _Walk] = field(default_factory=dict)
    alias: dict[int, int] = field(default_factory=dict)  # tracker id -> walk id, for walks not ended
    stitched: int = 0

    def __post_init__(self) -> None:
        self.next_id = self.first_id

    def update(self, now_s: float, track_ids: NDArray[np.int64],
               boxes_xyxy_px: NDArray[np.float32]) -> NDArray[np.int64]:
        """The walk id of each of this frame's tracker ids."""
        out = np.empty(len(track_ids), np.int64)
        present = {self.alias[t] for t in track_ids.tolist() if t in self.alias}
        for row, (track_id, box) in enumerate(zip(track_ids.tolist(), np.asarray(boxes_xyxy_px, np.float64))):
            walk_id = self.alias.get(track_id)
            if walk_id is None:
                walk_id = self._continued_walk(now_s, box, present)
                if walk_id is None:
                    walk_id, self.next_id = self.next_id, self.next_id + 1
                else:
                    self.stitched += 1
                present.add(walk_id)
                self.alias[track_id] = walk_id
            out[row] = walk_id
            self._observe(walk_id, box, now_s)
        return out

    def _continued_walk(self, now_s: float, box: NDArray[np.float64], present: set[int]) -> int | None:
        best, best_offset = None, self.max_offset
        height = box[3] - box[1]
        centre = (box[:2] + box[2:]) / 2
        for walk_id, walk in self.walks.items():
            gap = now_s - walk.last_seen_s
            if walk_id in present or not 0 < gap <= self.max_gap_s:
                continue
            walk_height = walk.box[3] - walk.box[1]
            if not 1 / self.max_scale <= height / max(walk_height, 1e-6) <= self.max_scale:
                continue
            predicted = (walk.box[:2] + walk.box[2:]) / 2 + walk.velocity * gap
            offset = float(np.linalg.norm(centre - predicted)) / max(walk_height, 1e-6)
            if offset <= best_offset:
                best, best_offset = walk_id, offset
        return best

    def _observe(self, walk_id: int, box: NDArray[np.float64], now_s: float) -> None:
        walk = self.walks.get(walk_id)
        if walk is None:
            self.walks[walk_id] = _Walk(box.copy(), np.zeros(2), now_s)
            return
        dt = now_s - walk.last_seen_s
        if dt > 0:
            velocity = ((box[:2] + box[2:]) / 2 - (walk.box[:2] + walk.box[2:]) / 2) / dt
            walk.velocity = 0.7 * walk.velocity + 0.3 * velocity  # smoothed: one jittery box must not aim it
        walk.box = box.copy()
        walk.last_seen_s = now_s

    def forget(self, walk_id: int) -> None:
        """The walk has ended: drop it and every tracker id that led to it (seen again, they start a new walk)."""
        self.walks.pop(walk_id, None)
        for track_id in [t for t, w in self.alias.items() if w == walk_id]:
            del self.alias[track_id]
