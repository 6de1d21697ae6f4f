"""Which open-set score keeps its false-accept rate from CASIA-B to real footage? Calibrate on one, count on the other.

    python tools/eval.py --weights weights/meshgait_compact_casiab.pt --open-set --json /tmp/casiab.json \\
        --dump-embeddings runs/casiab_meshgait_embeddings.npz
    python tools/open_set_rules.py --casiab-embeddings runs/casiab_meshgait_embeddings.npz \\
        --wild docs/results/wild_kth_meshgait_compact_casiab_fps15.json --json docs/results/open_set_rules.json

A threshold is only worth shipping if it means the same thing in a scene it was not fitted to. Each score below is
calibrated on CASIA-B as a site would use it: galleries of `--gallery-size` random test subjects (NM 1-4), every
NM 5-6 / BG / CL sequence a probe, the threshold the one that names at most `--far` of the strangers (probes whose
subject is not enrolled). Then the same threshold decides the walks of a `tools/eval_wild.py` run (its final
candidates of each probe track) and the outcomes are counted. Scores, lower = more confident:

- `absolute`: the distance to the closest identity (what the matcher uses);
- `ratio`: closest / runner-up (the matcher's margin as a score);
- `znorm`: the closest distance standardised against the probe's distances to every other identity (cohort
  normalisation: the other enrolled people are the cohort);
- `relative`: closest / mean distance to the other identities.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from engines.evaluation import identity_distances, part_cosine_distance
from engines.reports import write_report

GALLERY_CONDITIONS = ("nm-01", "nm-02", "nm-03", "nm-04")


def scores(distances: NDArray[np.float64]) -> dict[str, NDArray[np.float64]]:
    """(N, I) distances to each enrolled identity, I >= 3 -> each score of the closest identity, per probe."""
    ordered = np.sort(distances, axis=1)
    closest, others = ordered[:, 0], ordered[:, 1:]
    return {"absolute": closest, "ratio": closest / others[:, 0],
            "znorm": (closest - others.mean(1)) / np.maximum(others.std(1), 1e-9),
            "relative": closest / others.mean(1)}


def calibrate_on_casia_b(embeddings_npz: Path, gallery_size: int, far: float, trials: int,
                         seed: int = 0) -> dict[str, dict[str, float]]:
    """Each score's threshold naming at most `far` of CASIA-B's strangers, and the share of right Rank-1 probes
    it accepts, over `trials` random galleries."""
    dump = np.load(embeddings_npz)
    embeddings, subjects, conditions = dump["embeddings"], dump["subjects"], dump["conditions"]
    in_gallery = np.isin(conditions, GALLERY_CONDITIONS)
    per_identity, names = identity_distances(part_cosine_distance(embeddings[~in_gallery], embeddings[in_gallery]),
                                             subjects[in_gallery])
    probe_subjects = subjects[~in_gallery]
    rng = np.random.default_rng(seed)
    strangers: dict[str, list[NDArray]] = {}
    genuine: dict[str, list[NDArray]] = {}
    for _ in range(trials):
        enrolled = np.isin(names, rng.choice(names, gallery_size, replace=False))
        distances = per_identity[:, enrolled]
        is_stranger = ~np.isin(probe_subjects, names[enrolled])
        right = ~is_stranger & (names[enrolled][distances.argmin(1)] == probe_subjects)
        for name, values in scores(distances).items():
            strangers.setdefault(name, []).append(values[is_stranger])
            genuine.setdefault(name, []).append(values[right])
    out = {}
    for name in strangers:
        ordered = np.sort(np.concatenate(strangers[name]))
        threshold = float(ordered[int(np.floor(far * len(ordered)))])  # accept when score < threshold
        out[name] = {"threshold": threshold, "casia_b_right_accepted": float(np.mean(
            np.concatenate(genuine[name]) < threshold))}
    return out


def count_outcomes(wild_json: Path, thresholds: dict[str, dict[str, float]]) -> dict[str, dict[str, int]]:
    """Each score's outcomes on an eval_wild run: right / wrong names of enrolled probe people, strangers named."""
    run = json.loads(wild_json.read_text())
    outcomes = {name: {"right": 0, "wrong": 0, "unknown": 0, "probes": 0, "strangers": 0, "strangers_named": 0}
                for name in thresholds}
    for probe in run["probes"]:
        candidates = probe["candidates"]
        usable = len(candidates) >= 3
        values = scores(np.array([[d for _, d in candidates]])) if usable else {}
        for name, threshold in thresholds.items():
            counts = outcomes[name]
            named = usable and float(values[name][0]) < threshold["threshold"]
            if not probe["enrolled"]:
                counts["strangers"] += 1
                counts["strangers_named"] += int(named)
                continue
            counts["probes"] += 1
            counts["unknown" if not named else "right" if candidates[0][0] == probe["person"] else "wrong"] += 1
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--casiab-embeddings", type=Path, required=True,
                        help="tools/eval.py --dump-embeddings output of the encoder that made --wild")
    parser.add_argument("--wild", type=Path, nargs="+", required=True, help="tools/eval_wild.py --json outputs")
    parser.add_argument("--gallery-size", type=int, default=10, help="identities enrolled (KTH's dev set: 10)")
    parser.add_argument("--far", type=float, default=0.01, help="share of strangers a threshold may name")
    parser.add_argument("--trials", type=int, default=200, help="random CASIA-B galleries")
    parser.add_argument("--json", type=Path, help="write the thresholds and outcomes here")
    args = parser.parse_args(argv)
    for path in (args.casiab_embeddings, *args.wild):
        if not path.is_file():
            print(f"error: no file {path}", file=sys.stderr)
            return 2
    if args.gallery_size < 3:
        print("error: --gallery-size must be at least 3 (the cohort scores need two other identities)",
              file=sys.stderr)
        return 2
    thresholds = calibrate_on_casia_b(args.casiab_embeddings, args.gallery_size, args.far, args.trials)
    result = {"gallery_size": args.gallery_size, "far": args.far, "casia_b": thresholds, "wild": {}}
    print(f"{'score':10s} {'threshold':>9s} {'CASIA-B right':>13s}   " + "   ".join(
        f"{path.stem[:28]:>28s}" for path in args.wild))
    outcomes = {str(path): count_outcomes(path, thresholds) for path in args.wild}
    result["wild"] = outcomes
    for name, threshold in thresholds.items():
        cells = [f"{o[name]['right']:3d} right {o[name]['wrong']:2d} wrong, {o[name]['strangers_named']:2d}/"
                 f"{o[name]['strangers']:<2d} str." for o in outcomes.values()]
        print(f"{name:10s} {threshold['threshold']:9.3f} {100 * threshold['casia_b_right_accepted']:12.1f}%   "
              + "   ".join(f"{c:>28s}" for c in cells))
    if args.json is not None:
        write_report(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
