"""tools/matcher_rules.py: walk dumps of every benchmark read alike, and what the gallery and centring rules do."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from engines.wild import WalkDump

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
from matcher_rules import accept_for_strangers, decisions, load_ensemble, load_walks, main, score_rules, walk_distances  # noqa: E402

PARTS = 2


def _scene_shifted_dump(path: Path) -> Path:
    """Four people, each a direction of their own; the probe scene adds one large common offset to everyone, so
    raw nearest neighbours all fall on whoever lies nearest the offset, and centring the scene undoes it."""
    rng = np.random.default_rng(0)
    identity = {name: rng.standard_normal(8) for name in "abcd"}
    offset = 6.0 * rng.standard_normal(8)
    dump = WalkDump()
    for name, vector in identity.items():
        windows = [vector + 0.05 * rng.standard_normal(8) for _ in range(2)]
        dump.add(windows, "gallery", "enrol.mp4", "lab", name, enrolled=True)
        dump.add([vector + offset + 0.05 * rng.standard_normal(8)], "probe", "probe.mp4", "hall", name,
                 enrolled=True)
    dump.add([rng.standard_normal(8) + offset], "probe", "probe.mp4", "hall", "stranger", enrolled=False)
    dump.save(path, encoder="test", parts=PARTS)
    return path


def test_walk_dump_round_trip(tmp_path: Path):
    walks = load_walks(_scene_shifted_dump(tmp_path / "wild.npz"))
    assert walks.parts == PARTS
    assert len(np.unique(walks.walks)) == 9
    assert walks.gallery.sum() == 8  # two windows per enrolled walk
    assert set(walks.scenes[~walks.gallery]) == {"hall"}
    # every part of every window is a unit vector scaled by 1/sqrt(parts), as the matcher compares them
    norms = np.linalg.norm(walks.vectors.reshape(len(walks.vectors), PARTS, -1), axis=2)
    assert norms == pytest.approx(np.full_like(norms, 1 / np.sqrt(PARTS)), abs=1e-5)


def test_scene_centring_removes_a_common_offset(tmp_path: Path):
    walks = load_walks(_scene_shifted_dump(tmp_path / "wild.npz"))
    raw = score_rules(*walk_distances(walks, "nearest", "none"))
    centred = score_rules(*walk_distances(walks, "nearest", "scene"))
    assert centred["rank1_overall"] == 100.0
    assert raw["rank1_overall"] < centred["rank1_overall"]
    assert centred["probes"] == 4  # the stranger counts only as an impostor


def test_mean_gallery_rule_gives_one_prototype_per_identity(tmp_path: Path):
    walks = load_walks(_scene_shifted_dump(tmp_path / "wild.npz"))
    distances, names, people, scenes = walk_distances(walks, "mean", "none")
    assert distances.shape == (5, 4) and list(names) == list("abcd")
    assert list(people) == [*"abcd", "stranger"] and set(scenes) == {"hall"}


def test_ensemble_distance_is_the_mean_of_its_members(tmp_path: Path):
    first = _scene_shifted_dump(tmp_path / "a.npz")
    with np.load(first) as dump:  # a second "encoder": the same walks, other vectors
        data = {key: dump[key] for key in dump.files}
    data["vectors"] = np.random.default_rng(5).standard_normal(data["vectors"].shape).astype(np.float32)
    np.savez(tmp_path / "b.npz", **data)
    both = load_ensemble(f"{first}+{tmp_path / 'b.npz'}")
    assert both.parts == 2 * PARTS
    # one prototype per identity (rule "mean"): with "nearest" the ensemble picks its own closest window
    members = [walk_distances(load_walks(path), "mean", "none")[0] for path in (first, tmp_path / "b.npz")]
    assert walk_distances(both, "mean", "none")[0] == pytest.approx((members[0] + members[1]) / 2, abs=1e-5)
    data["walk"] = data["walk"][::-1].copy()
    np.savez(tmp_path / "c.npz", **data)
    with pytest.raises(ValueError, match="same windows"):
        load_ensemble(f"{first}+{tmp_path / 'c.npz'}")


def test_decisions_follow_the_match_stage_rule_and_count_strangers_per_gallery():
    """Three enrolled people; walk 0 is a's (clearly closest), walk 1 b's but too close to c to be named, walk 2
    a stranger near a. In the full gallery: a named right, b unknown, the stranger named as a. In 2-person galleries
    a walk whose person was not drawn is a stranger there, named or not by the same rule; nobody is named wrong."""
    names = np.array(["a", "b", "c"])
    people = np.array(["a", "b", "x"])
    distances = np.array([[0.10, 0.40, 0.45],
                          [0.50, 0.30, 0.32],
                          [0.20, 0.60, 0.70]], dtype=np.float32)
    full = decisions(distances, names, people, accept=0.35, margin=0.9)
    assert (full["gallery_size"], full["named_right"], full["named_wrong"], full["strangers_named"]) == \
        (3, 50.0, 0.0, 100.0)
    pairs = decisions(distances, names, people, accept=0.5, margin=0.9, gallery_size=2, draws=300)
    assert pairs["gallery_size"] == 2 and pairs["named_wrong"] == 0.0
    assert 0 < pairs["strangers_named"] < 100
    with pytest.raises(ValueError, match="at least 2 people"):
        decisions(distances, names, people, 0.5, 0.9, gallery_size=1)


def test_the_decision_threshold_is_the_largest_that_keeps_the_strangers_rate():
    """Ten strangers, each equally far from all three enrolled people (0.1, 0.2, ... 1.0), with margin 1 (ties are
    named): a stranger is named exactly when the threshold reaches its distance, in every gallery drawn."""
    names = np.array(["a", "b", "c"])
    people = np.array([f"x{i}" for i in range(10)])
    distances = np.repeat(np.arange(1, 11, dtype=np.float32)[:, None] / 10, 3, axis=1)
    assert accept_for_strangers(distances, names, people, 1.0, 30.0, 2) == pytest.approx(0.399)
    assert accept_for_strangers(distances, names, people, 1.0, 0.0, 2) == pytest.approx(0.099)
    assert accept_for_strangers(distances, names, people, 1.0, 100.0, 2) == 2.0  # never binds
    assert accept_for_strangers(distances, names, people, 0.9, 0.0, 2) == 2.0  # the margin names no one


def test_casia_b_dump_maps_conditions_to_scenes(tmp_path: Path):
    rng = np.random.default_rng(1)
    conditions = np.array(["nm-01", "nm-02", "nm-05", "bg-01", "cl-01"] * 2)
    subjects = np.array(["075"] * 5 + ["076"] * 5)
    np.savez(tmp_path / "casiab.npz", embeddings=rng.standard_normal((10, PARTS, 4)).astype(np.float32),
             subjects=subjects, conditions=conditions, views=np.array(["090"] * 10))
    walks = load_walks(tmp_path / "casiab.npz")
    assert walks.gallery.sum() == 4
    assert sorted(set(walks.scenes[~walks.gallery])) == ["bg", "cl", "nm"]


def test_cli_calibrates_on_casia_b_and_reports_transfer(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    wild = _scene_shifted_dump(tmp_path / "wild.npz")
    out = tmp_path / "rules.json"
    assert main([str(wild), "--casiab", str(wild), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = report["datasets"][str(wild)]
    assert set(rows) == {f"{g}/{c}" for g in ("nearest", "mean") for c in ("none", "scene", "shrunk")}
    assert rows["nearest/scene"]["false_accepts"] <= 1.0 + 1e-9  # calibrated on itself: at most --far
    assert "calibrated t" in capsys.readouterr().out and report["calibrated_on"] == str(wild)


def test_cli_rejects_a_file_that_is_not_a_dump(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    assert main([str(tmp_path / "other.npz")]) == 2
    assert "not an embedding dump" in capsys.readouterr().err


def test_cli_calibrates_the_decision_under_the_rule_asked_for(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """`--decision-rule nearest scene` calibrates the centred distances `stages.match.centring` decides on."""
    wild = _scene_shifted_dump(tmp_path / "wild.npz")
    out = tmp_path / "rules.json"
    assert main([str(wild), "--calibrate-decision", "0.9", "--gallery-size", "2", "--decision-rule", "nearest",
                 "scene", "--json", str(out)]) == 0
    calibration = json.loads(out.read_text())["decision_calibration"]
    distances, names, people, _ = walk_distances(load_walks(wild), "nearest", "scene")
    assert calibration["rule"] == "nearest/scene"
    assert calibration["accept_distance"] == accept_for_strangers(distances, names, people, 0.9, 10.0, 2)
    assert "rule nearest/scene" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([str(wild), "--calibrate-decision", "0.9", "--gallery-size", "2", "--decision-rule", "nearest", "shrunk"])
