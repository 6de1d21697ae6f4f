"""Two matcher rules measured off CASIA-B: how an enrolled identity is represented, and per-camera centring.

    python tools/eval_wild.py --manifest ../shared/assets/datasets/kth-walking/manifest.csv \\
        --dump-embeddings runs/rules/kth.npz
    python tools/eval.py --weights weights/meshgait_compact_casiab.pt --usf ../shared/assets/datasets/usf-humanid \\
        --dump-embeddings runs/rules/usf.npz
    python tools/eval.py --weights weights/meshgait_compact_casiab.pt --dump-embeddings runs/rules/casiab.npz
    python tools/matcher_rules.py runs/rules/kth.npz runs/rules/usf.npz runs/rules/casiab.npz --json OUT.json

Each dump is a set of walks (one or more window embeddings each), enrolled (gallery) or to be identified (probe), in
scenes: `tools/eval_wild.py --dump-embeddings` (scene = the manifest's), `tools/eval.py --usf ... --dump-embeddings`
(scene = the probe set) or a CASIA-B dump of `tools/eval.py --dump-embeddings` (gallery: NM 1-4 in all views, one
identity seen by 11 cameras; probes NM 5-6, BG, CL: scene = condition). A probe walk is the mean of its windows, as
the match stage's `TrackEvidence` makes it. Rank-1 per scene and the equal error rate of the walk-level distances
for every combination of:

- gallery `nearest`: an identity is as close as its closest enrolled window (the match stage's rule);
  `mean`: as close as the mean of all its windows (one prototype per person);
- centring `none`: the part-normalised embeddings as they are; `scene`: each scene's mean probe embedding
  subtracted from its probes and the gallery's mean from the gallery before normalising again (per-camera
  centring, as camera-wise normalisation in cross-domain re-identification and mean re-estimation in speaker
  verification do: a scene's common offset is not identity); with `--casiab DUMP` also `shrunk`: each mean drawn
  toward CASIA-B's mean embedding as if it had `--prior-walks` more walks (what a live camera that has seen few
  people would have to use).

Whether a threshold keeps its meaning across cameras is measured twice: with `--casiab DUMP` each rule's threshold
is calibrated there (at most `--far` of the impostor walk distances accepted, as the encoder's `accept_distance`
is; `--calibrate-on DUMP`: on another dump, e.g. real footage) and applied unchanged to every dataset; and within
each dataset of several scenes, each scene is decided with the threshold calibrated on the other scenes
(`other_scenes_threshold`: the false accepts and genuine accepts it gives there, as a site calibrated on its other
cameras would get on a new one).

A dump given as `A.npz+B.npz` (two encoders' dumps of the same walks, e.g. `tools/eval_wild.py` run twice with
`--set stages.gait.encoder=...` on one detection cache) is their ensemble: the parts of both side by side, so every
distance is the mean of the two encoders' distances (`load_ensemble`).

`--decide ACCEPT MARGIN` also scores the match stage's own decision on each dump (the closest identity named when
within ACCEPT and at most MARGIN times the runner-up's distance; `engines.matching.decide_identity`) in galleries of
`--gallery-size` people drawn at random from the enrolled ones (default: all of them): of the probe walks whose
person is in the gallery, the share named right and named wrong; of the others, strangers to that gallery, the share
named as someone. That is open-set identification's false positive identification rate, which grows with the
gallery: the nearest of many strangers is nearer than a random one, which a pairwise false-accept rate does not see.

`--calibrate-decision MARGIN --gallery-size N` chooses the open-set threshold on what it is for: the largest
`accept_distance` at which the match stage, with that margin ratio, names at most `--strangers-named` (10) % of the
walks of people who are not in random N-person galleries, on each dump, and the smallest of those over the dumps
(the encoder's calibration: CASIA-B and USF, README "Calibrating on your cameras"). It calibrates the match stage's
distances (`nearest none`) unless `--decision-rule` names another rule: `nearest scene` for the threshold that
`stages.match.centring.accept_distance` needs (centred distances have a scale of their own).

Only what helps on every dataset is worth making a matcher rule: real footage, other probe sets and cameras decide.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from engines.evaluation import equal_error_rate, identity_distances, threshold_at_far
from engines.matching import normalise_parts
from engines.reports import write_report

GALLERY_CONDITIONS = ("nm-01", "nm-02", "nm-03", "nm-04")
GALLERY_RULES = ("nearest", "mean")
CENTRING_RULES = ("none", "scene")


@dataclass(frozen=True)
class WalkSet:
    """Window embeddings (N, D), part-normalised, with the walk, person, scene and gallery flag of each."""

    vectors: NDArray[np.float32]
    walks: NDArray[np.int64]
    people: NDArray[np.str_]
    scenes: NDArray[np.str_]
    gallery: NDArray[np.bool_]
    parts: int


def load_walks(path: Path) -> WalkSet:
    """Any of the three dumps (see the module doc) as a `WalkSet`; ValueError for another file."""
    with np.load(path) as dump:
        data = {key: dump[key] for key in dump.files}
    if {"vectors", "walk", "role", "person", "scene", "parts"} <= set(data):  # eval_wild / eval --usf
        parts = int(data["parts"])
        return WalkSet(normalise_parts(data["vectors"], parts), data["walk"].astype(np.int64),
                       data["person"].astype(str), data["scene"].astype(str), data["role"] == "gallery", parts)
    if {"embeddings", "subjects", "conditions"} <= set(data):  # CASIA-B: every sequence one walk
        embeddings = data["embeddings"]
        parts = embeddings.shape[1]
        conditions = np.char.lower(data["conditions"].astype(str))
        return WalkSet(normalise_parts(embeddings.reshape(len(embeddings), -1), parts), np.arange(len(embeddings)),
                       data["subjects"].astype(str), np.char.partition(conditions, "-")[:, 0],
                       np.isin(conditions, GALLERY_CONDITIONS), parts)
    raise ValueError(f"{path}: not an embedding dump of tools/eval_wild.py or tools/eval.py")


def load_ensemble(spec: str) -> WalkSet:
    """`A.npz+B.npz+...`: the dumps' part embeddings concatenated walk by walk (ValueError unless they hold the same
    windows of the same walks, in the same order); a single path loads as `load_walks` does."""
    sets = [load_walks(Path(path)) for path in spec.split("+")]
    first = sets[0]
    for other in sets[1:]:
        if not (len(other.walks) == len(first.walks) and (other.walks == first.walks).all()
                and (other.people == first.people).all() and (other.gallery == first.gallery).all()):
            raise ValueError(f"{spec}: the dumps do not hold the same windows of the same walks")
    parts = sum(walk_set.parts for walk_set in sets)
    vectors = normalise_parts(np.concatenate([walk_set.vectors for walk_set in sets], 1), parts)
    return WalkSet(vectors, first.walks, first.people, first.scenes, first.gallery, parts)


def _centre(vectors: NDArray[np.float32], parts: int, prior: NDArray[np.float32] | None,
            prior_walks: float) -> NDArray[np.float32]:
    """Subtract the rows' mean (drawn toward `prior` as if it were `prior_walks` more rows) and normalise."""
    mean = vectors.mean(0) if prior is None else (vectors.sum(0) + prior_walks * prior) / (len(vectors) + prior_walks)
    return normalise_parts(vectors - mean[None], parts)


def walk_distances(walks: WalkSet, gallery_rule: str, centring: str, prior: NDArray[np.float32] | None = None,
                   prior_walks: float = 20.0) -> tuple[NDArray[np.float32], NDArray[np.str_], NDArray[np.str_],
                                                       NDArray[np.str_]]:
    """(probe walks, identities) distances under a rule, with the identities and each probe walk's person and
    scene. `centring` is none, scene or shrunk (scene, each mean drawn toward `prior`)."""
    names = np.unique(walks.people[walks.gallery])
    gallery = walks.vectors[walks.gallery]
    owners = np.searchsorted(names, walks.people[walks.gallery])
    if gallery_rule == "mean":
        gallery = normalise_parts(np.stack([gallery[owners == i].mean(0) for i in range(len(names))]), walks.parts)
        owners = np.arange(len(names))
    probe_ids = np.unique(walks.walks[~walks.gallery])
    probes = np.stack([walks.vectors[walks.walks == w].mean(0) for w in probe_ids])
    first = np.asarray([np.flatnonzero(walks.walks == w)[0] for w in probe_ids])
    people, scenes = walks.people[first], walks.scenes[first]
    if centring != "none":
        toward = prior if centring == "shrunk" else None
        gallery = _centre(gallery, walks.parts, toward, prior_walks)
        for scene in np.unique(scenes):
            probes[scenes == scene] = _centre(probes[scenes == scene], walks.parts, toward, prior_walks)
    distances, _ = identity_distances(1.0 - normalise_parts(probes, walks.parts) @ gallery.T, names[owners])
    return distances, names, people, scenes


def score_rules(distances: NDArray[np.float32], names: NDArray[np.str_], people: NDArray[np.str_],
                scenes: NDArray[np.str_], threshold: float | None = None, far: float = 0.01) -> dict[str, object]:
    """Rank-1 (%) per scene and overall over probe walks of enrolled people; the walk-level equal error rate; this
    data's threshold at `far` false accepts and the genuine share it accepts; each scene's false and genuine accepts
    at the other scenes' threshold; and, given a `threshold` calibrated elsewhere, those it gives here (%)."""
    enrolled = np.isin(people, names)
    hits = names[distances.argmin(1)] == people
    genuine = distances[enrolled, np.searchsorted(names, people[enrolled])]
    impostor = distances[names[None, :] != people[:, None]]
    own = threshold_at_far(impostor, far)

    def percent(values: NDArray[np.bool_]) -> float | None:
        return round(100.0 * float(values.mean()), 1) if len(values) else None

    report: dict[str, object] = {
        "rank1": {str(s): percent(hits[enrolled & (scenes == s)]) for s in np.unique(scenes[enrolled])},
        "rank1_overall": percent(hits[enrolled]), "probes": int(enrolled.sum()),
        "equal_error_rate": round(100.0 * equal_error_rate(genuine, impostor)["rate"], 1) if len(genuine) else None,
        "own_threshold": round(own, 4), "own_threshold_genuine_accepted": percent(genuine <= own)}
    if len(np.unique(scenes)) > 1:  # calibrated on the other cameras: does the threshold carry to this one?
        carried = {}
        for scene in np.unique(scenes):
            here = scenes == scene
            elsewhere = threshold_at_far(distances[~here][names[None, :] != people[~here][:, None]], far)
            mine = enrolled[here]
            carried[str(scene)] = {
                "threshold": round(elsewhere, 4),
                "false_accepts": percent(distances[here][names[None, :] != people[here][:, None]] <= elsewhere),
                "genuine_accepted": percent(distances[here][mine, np.searchsorted(names, people[here][mine])]
                                            <= elsewhere)}
        report["other_scenes_threshold"] = carried
    if threshold is not None:
        report |= {"calibrated_threshold": round(threshold, 4),
                   "false_accepts": round(100.0 * float(np.mean(impostor <= threshold)), 1),
                   "genuine_accepted": percent(genuine <= threshold)}
    return report


def decisions(distances: NDArray[np.float32], names: NDArray[np.str_], people: NDArray[np.str_], accept: float,
              margin: float, gallery_size: int | None = None, draws: int = 200, seed: int = 0) -> dict[str, object]:
    """The match stage's decisions on (walks x identities) distances, in random `gallery_size`-person galleries
    (`draws` of them; all enrolled people once when None): named right and wrong (% of walks whose person is in the
    gallery) and strangers named (% of walks whose person is not). Ties in the margin test count as named, as in
    `decide_identity`."""
    size = len(names) if gallery_size is None or gallery_size >= len(names) else gallery_size
    if size < 2:
        raise ValueError("decisions need galleries of at least 2 people")
    rng = np.random.default_rng(seed)
    owner = np.searchsorted(names, people)
    owner[~np.isin(people, names)] = -1
    right = wrong = members = strangers = named_strangers = 0
    for _ in range(draws if size < len(names) else 1):
        gallery = np.sort(rng.choice(len(names), size, replace=False))
        here = distances[:, gallery]
        closest = here.argsort(1)[:, :2]
        first, second = np.take_along_axis(here, closest, 1).T
        named = (first <= accept) & (first <= margin * second)
        member = np.isin(owner, gallery)
        hit = gallery[closest[:, 0]] == owner
        right += int((named & hit & member).sum())
        wrong += int((named & ~hit & member).sum())
        members += int(member.sum())
        strangers += int((~member).sum())
        named_strangers += int((named & ~member).sum())

    def percent(count: int, total: int) -> float | None:
        return round(100.0 * count / total, 1) if total else None

    return {"accept_distance": accept, "margin_ratio": margin, "gallery_size": size,
            "named_right": percent(right, members), "named_wrong": percent(wrong, members),
            "strangers_named": percent(named_strangers, strangers)}


def accept_for_strangers(distances: NDArray[np.float32], names: NDArray[np.str_], people: NDArray[np.str_],
                         margin: float, strangers_named: float, gallery_size: int) -> float:
    """The largest `accept_distance` (to 0.001, at most 2) at which the match stage, with `margin`, names at most
    `strangers_named` % of the walks of people not in random `gallery_size`-person galleries. Found by bisection: the
    share grows with the threshold. 2 means the threshold never binds here (the margin alone keeps the rate)."""
    low, high = 0.0, 2.0
    if decisions(distances, names, people, high, margin, gallery_size)["strangers_named"] <= strangers_named:
        return high
    while high - low > 5e-4:
        middle = (low + high) / 2
        named = decisions(distances, names, people, middle, margin, gallery_size)["strangers_named"]
        low, high = (middle, high) if named <= strangers_named else (low, middle)  # type: ignore[operator]
    return float(np.floor(low * 1000) / 1000)


def _cell(value: object) -> str:
    return f"{value:5.1f}" if isinstance(value, float) else "    -"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dumps", nargs="+", help="embedding dumps (see above); A.npz+B.npz: two encoders' ensemble")
    parser.add_argument("--casiab", help="the encoder's CASIA-B dump: where each rule's threshold is "
                        "calibrated, and the mean the `shrunk` rule draws toward")
    parser.add_argument("--calibrate-on", help="the dump each rule's threshold is calibrated on "
                        "(default: --casiab's), e.g. real footage's")
    parser.add_argument("--prior-walks", type=float, default=20.0, help="weight of the prior mean, in walks")
    parser.add_argument("--far", type=float, default=0.01, help="false-accept rate of the thresholds")
    parser.add_argument("--decide", type=float, nargs=2, metavar=("ACCEPT", "MARGIN"),
                        help="score the match stage's decisions at this threshold and margin ratio (see above)")
    parser.add_argument("--gallery-size", type=int, help="with --decide: people per random gallery (default: all)")
    parser.add_argument("--calibrate-decision", type=float, metavar="MARGIN",
                        help="the open-set threshold for this margin ratio: on each dump the largest that names at "
                        "most --strangers-named %% of strangers in --gallery-size galleries, then the smallest of "
                        "those (README: calibrating)")
    parser.add_argument("--strangers-named", type=float, default=10.0, help="with --calibrate-decision (%(default)s)")
    parser.add_argument("--decision-rule", nargs=2, metavar=("GALLERY", "CENTRING"), default=("nearest", "none"),
                        help="with --calibrate-decision: the rule whose distances are calibrated (default: the match "
                        "stage's, nearest none; e.g. nearest scene for `stages.match.centring`)")
    parser.add_argument("--json", type=Path, help="write every number here")
    args = parser.parse_args(argv)
    if args.gallery_size is not None and (args.decide is None and args.calibrate_decision is None
                                          or args.gallery_size < 2):
        parser.error("--gallery-size needs --decide or --calibrate-decision and at least 2 people")
    if tuple(args.decision_rule) not in product(GALLERY_RULES, CENTRING_RULES):
        parser.error(f"--decision-rule: GALLERY one of {GALLERY_RULES}, CENTRING one of {CENTRING_RULES}")
    if args.calibrate_decision is not None and args.gallery_size is None:
        parser.error("--calibrate-decision needs --gallery-size (smaller than each dump's enrolled people: the rest "
                     "are the strangers)")
    try:
        casiab = None if args.casiab is None else load_ensemble(args.casiab)
        calibration = casiab if args.calibrate_on is None else load_ensemble(args.calibrate_on)
        datasets = [(path, load_ensemble(path)) for path in args.dumps]
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    prior = None if casiab is None else casiab.vectors.mean(0)
    rules = list(product(GALLERY_RULES, (*CENTRING_RULES, "shrunk") if prior is not None else CENTRING_RULES))
    thresholds: dict[tuple[str, str], float | None] = {rule: None for rule in rules}
    if calibration is not None:
        for rule in rules:
            distances, names, people, _ = walk_distances(calibration, *rule, prior, args.prior_walks)
            thresholds[rule] = threshold_at_far(distances[names[None, :] != people[:, None]], args.far)
    calibrated_on = args.calibrate_on or args.casiab
    report: dict[str, object] = {"casiab": None if args.casiab is None else str(args.casiab),
                                 "calibrated_on": None if calibrated_on is None else str(calibrated_on),
                                 "prior_walks": args.prior_walks, "far": args.far, "datasets": {}}
    for path, walks in datasets:
        print(f"{path}: {len(np.unique(walks.walks))} walks, {len(np.unique(walks.people[walks.gallery]))} enrolled")
        rows = report["datasets"][str(path)] = {}  # type: ignore[index]
        for rule in rules:
            distances, names, people, scenes = walk_distances(walks, *rule, prior, args.prior_walks)
            row = rows[f"{rule[0]}/{rule[1]}"] = score_rules(distances, names, people, scenes, thresholds[rule],
                                                            args.far)
            per_scene = " ".join(f"{scene} {value:5.1f}" for scene, value in row["rank1"].items())  # type: ignore[union-attr]
            transfer = "" if thresholds[rule] is None else (
                f"  calibrated t {row['calibrated_threshold']:.3f}: false acc. {row['false_accepts']:4.1f} % genuine "
                f"{_cell(row['genuine_accepted'])} %")
            print(f"  gallery {rule[0]:<8s} centring {rule[1]:<6s} Rank-1 {_cell(row['rank1_overall'])} ({per_scene})  "
                  f"EER {_cell(row['equal_error_rate'])} %{transfer}")
            if "other_scenes_threshold" in row:
                carried = "  ".join(f"{scene} {_cell(v['false_accepts'])} / {_cell(v['genuine_accepted'])}"
                                    for scene, v in row["other_scenes_threshold"].items())  # type: ignore[union-attr]
                print(f"    threshold from the other scenes, false acc. / genuine %: {carried}")
            if args.decide is not None:
                decided = row["decisions"] = decisions(distances, names, people, *args.decide, args.gallery_size)
                print(f"    decisions at {args.decide[0]} / margin {args.decide[1]}, {decided['gallery_size']}-person "
                      f"galleries: right {_cell(decided['named_right'])} % wrong {_cell(decided['named_wrong'])} % "
                      f"strangers named {_cell(decided['strangers_named'])} %")
    if args.calibrate_decision is not None:
        found = {}
        rule = tuple(args.decision_rule)
        for path, walks in datasets:
            distances, names, people, _ = walk_distances(walks, *rule)
            if len(names) <= args.gallery_size:
                print(f"error: {path}: {len(names)} enrolled people leave no strangers for {args.gallery_size}-person "
                      "galleries", file=sys.stderr)
                return 2
            found[str(path)] = accept_for_strangers(distances, names, people, args.calibrate_decision,
                                                    args.strangers_named, args.gallery_size)
            binds = "" if found[str(path)] < 2 else " (never binds: the margin alone names fewer)"
            print(f"{path}: accept_distance {found[str(path)]:.3f}{binds}")
        chosen = min(found.values())
        report["decision_calibration"] = {"rule": "/".join(rule), "margin_ratio": args.calibrate_decision,
                                          "gallery_size": args.gallery_size,
                                          "strangers_named": args.strangers_named, "per_dump": found,
                                          "accept_distance": chosen}
        print(f"accept_distance {chosen:.3f} (rule {'/'.join(rule)}, margin {args.calibrate_decision}, at most "
              f"{args.strangers_named} % of strangers named in {args.gallery_size}-person galleries of every dump)")
    if args.json is not None:
        write_report(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
