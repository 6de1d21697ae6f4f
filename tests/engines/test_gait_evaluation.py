"""Evaluation metrics on hand-built embeddings whose Rank-1, mAP, mINP and thresholds are known by hand."""

from __future__ import annotations

import numpy as np
import pytest

from engines.evaluation import (
    casia_b_rank1,
    equal_error_rate,
    evaluate_casia_b,
    open_set_calibration,
    part_cosine_distance,
    part_euclidean_distance,
    retrieval_metrics,
    threshold_at_far,
)


def test_part_distances_match_their_definitions() -> None:
    rng = np.random.default_rng(0)
    probe, gallery = rng.normal(size=(3, 4, 5)).astype(np.float32), rng.normal(size=(6, 4, 5)).astype(np.float32)
    euclid = part_euclidean_distance(probe, gallery)
    cosine = part_cosine_distance(probe, gallery)
    for i in range(3):
        for j in range(6):
            assert euclid[i, j] == pytest.approx(np.mean(np.linalg.norm(probe[i] - gallery[j], axis=1)), rel=1e-5)
            cos = [probe[i, p] @ gallery[j, p] / np.linalg.norm(probe[i, p]) / np.linalg.norm(gallery[j, p])
                   for p in range(4)]
            assert cosine[i, j] == pytest.approx(1.0 - np.mean(cos), abs=1e-5)


def test_retrieval_metrics_by_hand() -> None:
    gallery = ["A", "B", "A", "C"]
    dist = np.asarray([
        [0.1, 0.2, 0.3, 0.4],  # A: hits at ranks 1 and 3 -> AP (1 + 2/3) / 2, INP 2/3
        [0.1, 0.5, 0.2, 0.3],  # B: hit at rank 4 only -> AP 1/4, INP 1/4, misses Rank-1, makes Rank-5
        [0.1, 0.2, 0.3, 0.4],  # D: not enrolled -> left out
    ])
    out = retrieval_metrics(dist, ["A", "B", "D"], gallery)
    assert out["probes"] == 2
    assert out["rank1"] == pytest.approx(50.0)
    assert out["rank5"] == pytest.approx(100.0)
    assert out["mAP"] == pytest.approx(100 * (5 / 6 + 1 / 4) / 2)
    assert out["mINP"] == pytest.approx(100 * (2 / 3 + 1 / 4) / 2)


def test_casia_b_rank1_excludes_the_identical_view() -> None:
    e1, e2 = np.asarray([[1.0, 0.0], [1.0, 0.0]]), np.asarray([[0.0, 1.0], [0.0, 1.0]])
    rows = [  # subject, condition, view, embedding; probe 001 at 090 looks like 002
        ("001", "nm-01", "000", e1), ("002", "nm-01", "000", e2), ("001", "nm-01", "090", e1),
        ("002", "nm-01", "090", e2), ("001", "nm-05", "000", e1), ("002", "nm-05", "000", e2),
        ("001", "nm-05", "090", e2), ("002", "nm-05", "090", e2),
    ]
    embeddings = np.stack([r[3] for r in rows]).astype(np.float32)
    result = casia_b_rank1(embeddings, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])
    assert set(result) == {"NM"}  # no BG/CL probes here
    assert result["NM"].per_view == {"000": 100.0, "090": 50.0}
    assert result["NM"].mean == pytest.approx(75.0)


def test_threshold_at_far() -> None:
    impostor = np.linspace(0.1, 1.0, 10)
    assert threshold_at_far(impostor, 0.1) == pytest.approx(0.1)
    assert threshold_at_far(impostor, 0.3) == pytest.approx(0.3)
    below = threshold_at_far(impostor, 0.05)
    assert below < 0.1 and np.mean(impostor <= below) == 0.0
    tied = np.asarray([0.1, 0.1, *np.linspace(0.3, 1.0, 8)])
    assert threshold_at_far(tied, 0.1) < 0.1  # accepting 0.1 would accept 20 %


def test_equal_error_rate() -> None:
    out = equal_error_rate(np.asarray([0.1, 0.2, 0.3]), np.asarray([0.25, 0.5, 0.6]))
    assert out == {"threshold": pytest.approx(0.25), "rate": pytest.approx(1 / 3)}


def test_open_set_calibration_by_hand() -> None:
    def at(degrees: float) -> np.ndarray:
        return np.asarray([[np.cos(np.radians(degrees)), np.sin(np.radians(degrees))]], np.float32)

    gallery = np.stack([at(0), at(0), at(90)])  # identity A twice, B once
    probe = np.stack([at(10), at(80)])
    calibration = open_set_calibration(probe, ["A", "B"], gallery, ["A", "A", "B"], far_targets=(0.5,))
    near, far = 1 - np.cos(np.radians(10)), 1 - np.cos(np.radians(80))
    np.testing.assert_allclose(np.sort(calibration.genuine), [near, near], atol=1e-6)
    np.testing.assert_allclose(np.sort(calibration.impostor), [far, far], atol=1e-6)
    (row,) = calibration.thresholds
    assert row["threshold"] < far and row["achieved_far"] == 0.0  # two tied impostors: accepting one is impossible
    assert row["tar"] == 1.0 and row["unknown_accept_rate"] == 0.0
    report = calibration.as_dict(bins=4)
    assert sum(report["histogram"]["genuine"]) == 2 and report["genuine"]["count"] == 2


def test_evaluate_casia_b_perfect_embeddings() -> None:
    subjects, conditions, views, vectors = [], [], [], []
    rng = np.random.default_rng(1)
    identity = {s: rng.normal(size=(2, 3)) for s in ("075", "076", "077")}
    for s in identity:
        for condition in ("nm-01", "nm-02", "nm-03", "nm-04", "nm-05", "nm-06", "bg-01", "bg-02", "cl-01", "cl-02"):
            for view in ("000", "090", "180"):
                subjects.append(s), conditions.append(condition), views.append(view)
                vectors.append(identity[s] + 0.01 * rng.normal(size=(2, 3)))
    report = evaluate_casia_b(np.asarray(vectors, np.float32), subjects, conditions, views)
    assert {name: r["mean"] for name, r in report["casia_b_rank1"].items()} == {"NM": 100.0, "BG": 100.0, "CL": 100.0}
    assert report["retrieval"]["rank1"] == 100.0 and report["retrieval"]["mAP"] == pytest.approx(100.0)
    assert report["retrieval"]["mINP"] == pytest.approx(100.0)
    assert report["open_set"]["thresholds"][0]["tar"] == 1.0
