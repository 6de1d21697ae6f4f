"""tools/open_set_rules.py: the scores and the outcome counts on an eval_wild run."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
from open_set_rules import count_outcomes, scores  # noqa: E402


def test_scores_of_the_closest_identity():
    values = scores(np.array([[0.2, 0.4, 0.6]]))
    assert values["absolute"][0] == pytest.approx(0.2)
    assert values["ratio"][0] == pytest.approx(0.5)
    assert values["relative"][0] == pytest.approx(0.2 / 0.5)
    assert values["znorm"][0] == pytest.approx((0.2 - 0.5) / 0.1)


def test_outcomes_follow_each_threshold(tmp_path: Path):
    run = {"probes": [
        {"person": "a", "enrolled": True, "candidates": [["a", 0.2], ["b", 0.5], ["c", 0.6]]},
        {"person": "a", "enrolled": True, "candidates": [["b", 0.3], ["a", 0.5], ["c", 0.6]]},
        {"person": "z", "enrolled": False, "candidates": [["c", 0.35], ["a", 0.5], ["b", 0.7]]},
        {"person": "a", "enrolled": True, "candidates": []},  # no walk: unknown under every score
    ]}
    path = tmp_path / "wild.json"
    path.write_text(json.dumps(run))
    outcomes = count_outcomes(path, {"absolute": {"threshold": 0.32}, "ratio": {"threshold": 0.45}})
    assert outcomes["absolute"] == {"right": 1, "wrong": 1, "unknown": 1, "probes": 3, "strangers": 1,
                                    "strangers_named": 0}
    assert outcomes["ratio"] == {"right": 1, "wrong": 0, "unknown": 2, "probes": 3, "strangers": 1,
                                 "strangers_named": 0}
