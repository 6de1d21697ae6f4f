"""The cross-scene ("in the wild") benchmark: manifests of real clips, and the scores of the pipeline's answers.

A manifest is a CSV with the columns `clip,role,scene,people`: `role` is `gallery` (enrol the people of the clip) or
`probe` (identify them), `people` the names of the clip's walkers in order of first appearance, `;`-separated, and
the clip path is relative to the manifest. Scoring takes, per probe person, the pipeline's final answer for their
track (name and ranked candidates) and the matcher's distances of every window; it knows nothing of how they were
produced, so every number can be checked on hand-made answers. Must not import `pipeline` or `stages`.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from engines.errors import DatasetError
from engines.evaluation import equal_error_rate, threshold_at_far

UNKNOWN = "unknown"
Role = Literal["gallery", "probe"]


@dataclass(frozen=True)
class ManifestClip:
    """One row of a manifest."""

    path: Path
    role: Role
    scene: str
    people: tuple[str, ...]


def read_manifest(path: Path) -> list[ManifestClip]:
    """Every clip of a manifest, paths resolved against its folder; `DatasetError` naming the line of a bad row."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the manifest ({exc.strerror or exc})") from exc
    expected = {"clip", "role", "scene", "people"}
    if not rows or not expected <= set(rows[0]):
        raise DatasetError(f"{path}: a manifest needs the columns clip,role,scene,people and at least one row")
    clips = []
    for line, row in enumerate(rows, start=2):
        role = (row["role"] or "").strip()
        people = tuple(p.strip() for p in (row["people"] or "").split(";") if p.strip())
        clip = path.parent / (row["clip"] or "").strip()
        if role not in ("gallery", "probe"):
            raise DatasetError(f"{path}:{line}: role must be gallery or probe, not {role!r}")
        if not people:
            raise DatasetError(f"{path}:{line}: no people named for {row['clip']!r}")
        if UNKNOWN in people:
            raise DatasetError(f"{path}:{line}: {UNKNOWN!r} is the matcher's answer for strangers, not a name")
        if not clip.is_file():
            raise DatasetError(f"{path}:{line}: clip {clip} does not exist")
        clips.append(ManifestClip(clip, role, (row["scene"] or "").strip() or "-", people))  # type: ignore[arg-type]
    return clips


@dataclass
class ProbeAnswer:
    """The pipeline's answer for one person in one probe clip.

    `name` is the track's final label (None when no track of the clip could be assigned to the person: missed);
    `candidates` the final ranked (name, distance) list; `windows` the matcher's distance to every enrolled
    identity for each window of the track.
    """

    clip: str
    scene: str
    person: str
    enrolled: bool
    name: str | None
    candidates: list[tuple[str, float]] = field(default_factory=list)
    windows: list[dict[str, float]] = field(default_factory=list)

    @property
    def outcome(self) -> str:
        """right / wrong / unknown for enrolled people; unknown / false_accept for the others."""
        named = self.name not in (None, UNKNOWN)
        if not self.enrolled:
            return "false_accept" if named else "unknown"
        if not named:
            return "unknown"
        return "right" if self.name == self.person else "wrong"

    def rank_hit(self, k: int) -> bool:
        return self.person in [name for name, _ in self.candidates[:k]]


def _distance_stats(values: Sequence[float]) -> dict[str, float | int]:
    data = np.asarray(values, np.float64)
    if not len(data):
        return {"count": 0}
    p5, p50, p95 = np.percentile(data, [5, 50, 95])
    return {"count": int(len(data)), "mean": round(float(data.mean()), 4), "std": round(float(data.std()), 4),
            "p5": round(float(p5), 4), "p50": round(float(p50), 4), "p95": round(float(p95), 4)}


def _pairs(answers: Sequence[ProbeAnswer], level: Literal["track", "window"]) -> tuple[list[float], list[float]]:
    """Genuine distances (a probe against its own identity) and impostor distances (against every other one)."""
    genuine, impostor = [], []
    for answer in answers:
        tables = [dict(answer.candidates)] if level == "track" else answer.windows
        for table in tables:
            for name, distance in table.items():
                (genuine if name == answer.person else impostor).append(distance)
    return genuine, impostor


def score_answers(answers: Sequence[ProbeAnswer], far: float = 0.01) -> dict[str, object]:
    """Rank-1/5 and outcome counts over enrolled probe people, false accepts of the others, window Rank-1, and
    genuine/impostor distances (window- and track-level) with the thresholds they imply on this data."""
    enrolled = [a for a in answers if a.enrolled]
    strangers = [a for a in answers if not a.enrolled]
    outcomes = [a.outcome for a in enrolled]

    def percent(hits: int, total: int) -> float | None:
        return round(100.0 * hits / total, 1) if total else None

    window_hits = [min(table, key=table.__getitem__) == a.person for a in enrolled for table in a.windows if table]
    report: dict[str, object] = {
        "rank1": percent(sum(a.rank_hit(1) for a in enrolled), len(enrolled)),
        "rank5": percent(sum(a.rank_hit(5) for a in enrolled), len(enrolled)),
        "probes": len(enrolled),
        "right": outcomes.count("right"),
        "wrong": outcomes.count("wrong"),
        "unknown": outcomes.count("unknown"),
        "missed": sum(a.name is None for a in enrolled),
        "impostors": len(strangers),
        "false_accepts": sum(a.outcome == "false_accept" for a in strangers),
        "window_rank1": percent(sum(window_hits), len(window_hits)),
        "windows": len(window_hits),
    }
    distances: dict[str, object] = {}
    for level in ("track", "window"):
        genuine, impostor = _pairs(answers, level)  # type: ignore[arg-type]
        entry: dict[str, object] = {"genuine": _distance_stats(genuine), "impostor": _distance_stats(impostor)}
        if genuine and impostor:
            entry["threshold_at_far"] = {"far": far,
                                         "threshold": threshold_at_far(np.asarray(impostor), far)}
            eer = equal_error_rate(np.asarray(genuine), np.asarray(impostor))
            entry["equal_error_rate"] = {"rate": round(eer["rate"], 4), "threshold": round(eer["threshold"], 4)}
        distances[level] = entry
    report["distances"] = distances
    return report


def score_by_scene(answers: Sequence[ProbeAnswer], far: float = 0.01) -> dict[str, object]:
    """`score_answers` per scene and overall: {"scenes": {scene: ...}, "overall": ...}."""
    scenes = sorted({a.scene for a in answers})
    return {"scenes": {scene: score_answers([a for a in answers if a.scene == scene], far) for scene in scenes},
            "overall": score_answers(answers, far)}


def format_scores(scores: dict[str, object]) -> str:
    """The printed table: one row per scene, then overall."""
    header = (f"{'scene':<12}{'probes':>7}{'Rank-1':>8}{'Rank-5':>8}{'right':>7}{'wrong':>7}{'unknown':>8}"
              f"{'strangers':>10}{'false acc.':>11}{'win R-1':>9}{'genuine':>9}{'impostor':>9}{'t@1%FAR':>9}")
    lines = [header]
    rows = {**scores["scenes"], "overall": scores["overall"]}  # type: ignore[dict-item]
    for scene, row in rows.items():
        track = row["distances"]["track"]

        def cell(value: object, width: int, fmt: str = "") -> str:
            return f"{'-' if value is None else format(value, fmt):>{width}}"

        lines.append(
            f"{scene:<12}{row['probes']:>7}{cell(row['rank1'], 8, '.1f')}{cell(row['rank5'], 8, '.1f')}"
            f"{row['right']:>7}{row['wrong']:>7}{row['unknown']:>8}{row['impostors']:>10}{row['false_accepts']:>11}"
            f"{cell(row['window_rank1'], 9, '.1f')}{cell(track['genuine'].get('mean'), 9, '.3f')}"
            f"{cell(track['impostor'].get('mean'), 9, '.3f')}"
            f"{cell(track.get('threshold_at_far', {}).get('threshold'), 9, '.3f')}")
    return "\n".join(lines)


class WalkDump:
    """Window embeddings of walks, labelled (walk, role, clip, scene, person, enrolled), written as one npz: what
    `tools/eval_wild.py` and `tools/eval.py --usf` dump with `--dump-embeddings` and `tools/matcher_rules.py` reads,
    so matcher rules can be compared offline on any benchmark."""

    def __init__(self) -> None:
        self.vectors: list[np.ndarray] = []
        self.rows: list[tuple[int, str, str, str, str, bool]] = []
        self.walks = 0

    def add(self, windows: Sequence[np.ndarray], role: Role, clip: str, scene: str, person: str, *,
            enrolled: bool) -> None:
        """One walk: its window embeddings (each (D,) or (P, C))."""
        for vector in windows:
            self.vectors.append(np.asarray(vector, np.float32).reshape(-1))
            self.rows.append((self.walks, role, clip, scene, person, enrolled))
        self.walks += 1

    def save(self, path: Path, *, encoder: str | None, parts: int) -> None:
        if not self.rows:
            raise ValueError("no walk to write")
        walk, role, clip, scene, person, enrolled = (np.asarray(column) for column in zip(*self.rows))
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, vectors=np.stack(self.vectors), walk=walk, role=role, clip=clip, scene=scene,
                            person=person, enrolled=enrolled, encoder=np.asarray(encoder or ""),
                            parts=np.asarray(parts))
