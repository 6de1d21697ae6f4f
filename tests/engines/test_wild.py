"""Cross-scene benchmark logic: manifest reading with clear errors, and scores of hand-made answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from engines.errors import DatasetError
from engines.wild import ProbeAnswer, read_manifest, score_answers, score_by_scene


def _manifest(tmp_path: Path, body: str) -> Path:
    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "b.mp4").write_bytes(b"x")
    path = tmp_path / "manifest.csv"
    path.write_text("clip,role,scene,people\n" + body)
    return path


def test_manifest_rows_resolve_against_its_folder(tmp_path: Path) -> None:
    clips = read_manifest(_manifest(tmp_path, "a.mp4,gallery,out,A;B\nb.mp4,probe,hall, C \n"))
    assert [c.path for c in clips] == [tmp_path / "a.mp4", tmp_path / "b.mp4"]
    assert clips[0].people == ("A", "B") and clips[1].people == ("C",)
    assert clips[1].role == "probe" and clips[1].scene == "hall"


def test_shared_manifests_read(shared_dir: Path) -> None:
    kth = read_manifest(shared_dir / "assets" / "datasets" / "kth-walking" / "manifest.csv")
    assert {c.role for c in kth} == {"gallery", "probe"} and {c.scene for c in kth} == {"d1", "d2", "d3", "d4"}
    assert all(len(c.people) == 1 for c in kth)


@pytest.mark.parametrize(("body", "message"), [
    ("a.mp4,enrol,out,A\n", "role must be gallery or probe"),
    ("a.mp4,probe,out,\n", "no people named"),
    ("missing.mp4,probe,out,A\n", "does not exist"),
    ("a.mp4,probe,out,unknown\n", "not a name"),
])
def test_bad_manifest_rows_name_their_line(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(DatasetError, match=rf"manifest.csv:2: .*{message}"):
        read_manifest(_manifest(tmp_path, body))


def test_missing_columns_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("clip,people\na.mp4,A\n")
    with pytest.raises(DatasetError, match="clip,role,scene,people"):
        read_manifest(path)


def _answer(person: str, name: str | None, candidates: list[tuple[str, float]], enrolled: bool = True,
            scene: str = "s") -> ProbeAnswer:
    return ProbeAnswer("clip.mp4", scene, person, enrolled, name, candidates, [dict(candidates)])


def test_scores_count_outcomes_ranks_and_false_accepts() -> None:
    answers = [
        _answer("A", "A", [("A", 0.1), ("B", 0.5)]),
        _answer("B", "A", [("A", 0.2), ("B", 0.3)]),           # wrong name, right at rank 2
        _answer("B", "unknown", [("B", 0.6), ("A", 0.7)]),     # unknown, but rank 1 right
        _answer("A", None, []),                                # missed by the tracker
        _answer("C", "unknown", [("A", 0.6), ("B", 0.7)], enrolled=False),
        _answer("D", "B", [("B", 0.3), ("A", 0.7)], enrolled=False),
    ]
    scores = score_answers(answers)
    assert (scores["probes"], scores["right"], scores["wrong"], scores["unknown"], scores["missed"]) == (4, 1, 1, 2, 1)
    assert scores["rank1"] == 50.0 and scores["rank5"] == 75.0
    assert (scores["impostors"], scores["false_accepts"]) == (2, 1)
    assert scores["window_rank1"] == pytest.approx(100 * 2 / 3, abs=0.1)
    track = scores["distances"]["track"]
    assert track["genuine"]["count"] == 3 and track["impostor"]["count"] == 3 + 4
    assert track["threshold_at_far"]["threshold"] < 0.2  # below the smallest impostor distance (0.2)


def test_scores_split_by_scene() -> None:
    answers = [_answer("A", "A", [("A", 0.1)], scene="x"), _answer("A", "unknown", [("A", 0.9)], scene="y")]
    scores = score_by_scene(answers)
    assert scores["scenes"]["x"]["right"] == 1 and scores["scenes"]["y"]["unknown"] == 1
    assert scores["overall"]["probes"] == 2 and scores["overall"]["rank1"] == 100.0
