"""Gait recognition metrics on part-based embeddings: CASIA-B cross-view Rank-1, retrieval metrics, open-set
calibration.

The metrics take embeddings `(N, P, C)` float32 and per-sequence labels and neither read files nor run a network,
so every number can be checked on hand-built embeddings; only `embed_sequences` runs an encoder.

- `casia_b_rank1`: the GaitSet/OpenGait protocol. Gallery NM-01..04, probes NM-05/06, BG-01/02, CL-01/02; for
  every (probe view, gallery view) pair the probe is matched against that gallery view only; Rank-1 per probe view
  is averaged over the gallery views other than its own, then over probe views. Distance: OpenGait's
  `cuda_dist(metric="euc")`, the per-part Euclidean distance averaged over parts.
- `retrieval_metrics`: Rank-k, mAP and mINP (Gait3D / OpenGait `evaluate_many`), every probe against the whole
  gallery, same view included.
- `reconstruction_errors`: Mesh-Gait's 3D joints, virtual markers and mesh against synthetic ground truth (mm).
- `open_set_calibration`: genuine and impostor distances under the matcher's own distance (part-normalised cosine,
  `engines.matching`), an identity's distance being that of its closest gallery embedding, and the acceptance
  threshold at chosen false-accept rates, which is what `stages.match`'s `accept_distance` needs.

Must not import `pipeline` or `stages`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

from engines.data.sampling import all_frame_indices
from engines.data.sequences import SilhouetteDataset
from engines.matching import normalise_parts

if TYPE_CHECKING:
    import torch

    from engines.data.synthetic import SyntheticGaitDataset
    from engines.gait.encoder import GaitEncoder

GALLERY_CONDITIONS = ("nm-01", "nm-02", "nm-03", "nm-04")
PROBE_SETS = {"NM": ("nm-05", "nm-06"), "BG": ("bg-01", "bg-02"), "CL": ("cl-01", "cl-02")}


def part_euclidean_distance(probe: NDArray[np.float32], gallery: NDArray[np.float32]) -> NDArray[np.float64]:
    """(Q, P, C) x (G, P, C) -> (Q, G): per-part Euclidean distance averaged over parts (OpenGait "euc")."""
    q, g = probe.astype(np.float64).transpose(1, 0, 2), gallery.astype(np.float64).transpose(1, 0, 2)  # (P, *, C)
    squared = (q ** 2).sum(-1)[:, :, None] + (g ** 2).sum(-1)[:, None, :] - 2.0 * q @ g.transpose(0, 2, 1)
    return np.sqrt(np.maximum(squared, 0.0)).mean(0)


def part_cosine_distance(probe: NDArray[np.float32], gallery: NDArray[np.float32]) -> NDArray[np.float64]:
    """(Q, P, C) x (G, P, C) -> (Q, G): 1 - mean per-part cosine, in [0, 2] (the matcher's distance)."""
    parts = probe.shape[1]
    q = normalise_parts(probe.reshape(len(probe), -1), parts).astype(np.float64)
    g = normalise_parts(gallery.reshape(len(gallery), -1), parts).astype(np.float64)
    return 1.0 - q @ g.T


@dataclass
class ProbeSetResult:
    """Rank-1 (%) of one probe set: per probe view (excluding the identical gallery view) and their mean."""

    per_view: dict[str, float]
    mean: float
    mean_including_identical_view: float

    def as_dict(self) -> dict[str, object]:
        return {"per_view": self.per_view, "mean": self.mean,
                "mean_including_identical_view": self.mean_including_identical_view}


def casia_b_rank1(embeddings: NDArray[np.float32], subjects: Sequence[str], conditions: Sequence[str],
                  views: Sequence[str], probe_sets: dict[str, tuple[str, ...]] | None = None,
                  gallery_conditions: Sequence[str] = GALLERY_CONDITIONS) -> dict[str, ProbeSetResult]:
    """CASIA-B cross-view Rank-1 per probe set (see the module docstring). View pairs without a gallery or
    probe sequence are left out of the means."""
    probe_sets = PROBE_SETS if probe_sets is None else probe_sets
    subjects, conditions, views = np.asarray(subjects), np.asarray(conditions), np.asarray(views)
    all_views = sorted(set(views.tolist()))
    in_gallery = np.isin(conditions, list(gallery_conditions))
    results = {}
    for set_name, probe_conditions in probe_sets.items():
        in_probe = np.isin(conditions, list(probe_conditions))
        per_view, per_view_all = {}, {}
        for probe_view in all_views:
            probe_rows = np.flatnonzero(in_probe & (views == probe_view))
            if not len(probe_rows):
                continue
            accuracy: dict[str, float] = {}
            for gallery_view in all_views:
                gallery_rows = np.flatnonzero(in_gallery & (views == gallery_view))
                if not len(gallery_rows):
                    continue
                dist = part_euclidean_distance(embeddings[probe_rows], embeddings[gallery_rows])
                nearest = subjects[gallery_rows][dist.argmin(1)]
                accuracy[gallery_view] = 100.0 * float(np.mean(nearest == subjects[probe_rows]))
            others = [a for v, a in accuracy.items() if v != probe_view]
            if others:
                per_view[probe_view] = float(np.mean(others))
            if accuracy:
                per_view_all[probe_view] = float(np.mean(list(accuracy.values())))
        if per_view:
            results[set_name] = ProbeSetResult(per_view, float(np.mean(list(per_view.values()))),
                                               float(np.mean(list(per_view_all.values()))))
    return results


def retrieval_metrics(dist: NDArray[np.float64], probe_labels: Sequence[str], gallery_labels: Sequence[str],
                      ranks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Rank-k accuracy, mAP and mINP in % for a (Q, G) distance matrix (OpenGait `evaluate_many`).

    AP of a probe is the mean precision at each position holding one of its identity's gallery entries; INP is
    (number of those entries) / (position of the last one), i.e. how much of the list must be inspected to find
    all of them. Probes whose identity is absent from the gallery are skipped.
    """
    probe_labels, gallery_labels = np.asarray(probe_labels), np.asarray(gallery_labels)
    order = np.argsort(dist, axis=1, kind="stable")
    matches = gallery_labels[order] == probe_labels[:, None]
    valid = matches.any(1)
    if not valid.any():
        raise ValueError("no probe has its identity in the gallery")
    matches = matches[valid]
    hits_so_far = matches.cumsum(1)
    positions = np.arange(1, matches.shape[1] + 1)
    num_relevant = matches.sum(1)
    average_precision = (hits_so_far / positions * matches).sum(1) / num_relevant
    last_hit = matches.shape[1] - 1 - np.argmax(matches[:, ::-1], axis=1)
    inverse_negative_penalty = num_relevant / (last_hit + 1.0)
    out = {f"rank{k}": 100.0 * float(np.mean(hits_so_far[:, min(k, matches.shape[1]) - 1] > 0)) for k in ranks}
    out["mAP"] = 100.0 * float(average_precision.mean())
    out["mINP"] = 100.0 * float(inverse_negative_penalty.mean())
    out["probes"] = int(valid.sum())
    return out


def identity_distances(dist: NDArray[np.float64], gallery_labels: Sequence[str]) -> tuple[NDArray[np.float64],
                                                                                         NDArray[np.str_]]:
    """(Q, G) sequence distances -> (Q, I) distance to each gallery identity (its closest embedding), identities."""
    gallery_labels = np.asarray(gallery_labels)
    identities = np.unique(gallery_labels)
    per_identity = np.stack([dist[:, gallery_labels == name].min(1) for name in identities], axis=1)
    return per_identity, identities


@dataclass
class OpenSetCalibration:
    """Genuine/impostor distance statistics and acceptance thresholds at the requested false-accept rates."""

    genuine: NDArray[np.float64]
    impostor: NDArray[np.float64]
    closest_impostor: NDArray[np.float64]
    thresholds: list[dict[str, float]] = field(default_factory=list)

    def as_dict(self, bins: int = 50) -> dict[str, object]:
        edges = np.linspace(0.0, max(1e-6, float(max(self.genuine.max(), self.impostor.max()))), bins + 1)
        return {
            "distance": "part-normalised cosine: 1 - mean per-part cosine, in [0, 2] (engines.matching); an "
                        "identity's distance is that of its closest gallery embedding",
            "genuine": _summary(self.genuine),
            "impostor": _summary(self.impostor),
            "closest_impostor": _summary(self.closest_impostor),
            "histogram": {"edges": edges.round(4).tolist(),
                          "genuine": np.histogram(self.genuine, edges)[0].tolist(),
                          "impostor": np.histogram(self.impostor, edges)[0].tolist()},
            "equal_error_rate": equal_error_rate(self.genuine, self.impostor),
            "thresholds": self.thresholds,
        }


def _summary(values: NDArray[np.float64]) -> dict[str, float]:
    percentiles = np.percentile(values, [1, 5, 50, 95, 99])
    return {"count": int(len(values)), "mean": float(values.mean()), "std": float(values.std()),
            **{f"p{p}": float(v) for p, v in zip((1, 5, 50, 95, 99), percentiles)}}


def threshold_at_far(impostor: NDArray[np.float64], far: float) -> float:
    """The largest distance threshold `t` (accept when distance <= t) whose false-accept rate is at most `far`.

    Among n impostor distances at most k = floor(far * n) may be accepted; ties are never split, so the threshold
    is the largest distinct value with at most k impostor distances at or below it, or just below the smallest
    impostor distance when there is none.
    """
    ordered = np.sort(impostor)
    allowed = int(np.floor(far * len(ordered) + 1e-9))
    values = np.unique(ordered)
    fits = values[np.searchsorted(ordered, values, side="right") <= allowed]
    return float(fits[-1]) if len(fits) else float(np.nextafter(ordered[0], -np.inf))


def equal_error_rate(genuine: NDArray[np.float64], impostor: NDArray[np.float64]) -> dict[str, float]:
    """The threshold where false-reject and false-accept rates meet, and that rate."""
    candidates = np.unique(np.concatenate([genuine, impostor]))
    frr = 1.0 - np.searchsorted(np.sort(genuine), candidates, side="right") / len(genuine)
    far = np.searchsorted(np.sort(impostor), candidates, side="right") / len(impostor)
    best = int(np.argmin(np.abs(frr - far)))
    return {"threshold": float(candidates[best]), "rate": float((frr[best] + far[best]) / 2)}


def open_set_calibration(probe: NDArray[np.float32], probe_labels: Sequence[str], gallery: NDArray[np.float32],
                         gallery_labels: Sequence[str],
                         far_targets: Sequence[float] = (0.01, 0.001)) -> OpenSetCalibration:
    """Genuine (probe vs its own identity) and impostor (probe vs every other identity) distances, and per FAR
    target the threshold, the genuine acceptance rate there (TAR), and `unknown_accept_rate`: the share of probes
    that would be accepted as someone if their own identity were not enrolled (closest impostor within it)."""
    per_identity, identities = identity_distances(part_cosine_distance(probe, gallery), gallery_labels)
    own = np.asarray(probe_labels)[:, None] == identities[None, :]
    enrolled = own.any(1)
    genuine = per_identity[own]
    impostor = per_identity[~own & enrolled[:, None]]
    closest_impostor = np.where(own, np.inf, per_identity)[enrolled].min(1)
    thresholds = []
    for far in far_targets:
        t = threshold_at_far(impostor, far)
        thresholds.append({"far": float(far), "threshold": t, "achieved_far": float(np.mean(impostor <= t)),
                           "tar": float(np.mean(genuine <= t)),
                           "unknown_accept_rate": float(np.mean(closest_impostor <= t))})
    return OpenSetCalibration(genuine=genuine, impostor=impostor, closest_impostor=closest_impostor,
                              thresholds=thresholds)


def embed_sequences(encoder: GaitEncoder, dataset: SilhouetteDataset, indices: Sequence[int],
                    max_frames: int | None = None, batch_size: int = 8,
                    progress: bool = True) -> NDArray[np.float32]:
    """(len(indices), P, C) embeddings of whole sequences (OpenGait "all_ordered"; the first `max_frames` only
    when given). Sequences of equal length share a batch; the result is in the order of `indices`."""
    lengths = np.asarray([min(dataset.num_frames(i), max_frames or dataset.num_frames(i)) for i in indices])
    out = np.zeros((len(indices), encoder.parts, encoder.part_dim), np.float32)
    with tqdm(total=len(indices), disable=not progress, unit="seq", dynamic_ncols=True) as bar:
        for length in np.unique(lengths):
            rows = np.flatnonzero(lengths == length)
            for start in range(0, len(rows), batch_size):
                chunk = rows[start: start + batch_size]
                frames = [dataset.frames_at(int(indices[r]), all_frame_indices(int(length), None)) for r in chunk]
                out[chunk] = encoder.encode_parts(np.stack(frames))
                bar.update(len(chunk))
    return out


def evaluate_casia_b(embeddings: NDArray[np.float32], subjects: Sequence[str], conditions: Sequence[str],
                     views: Sequence[str], far_targets: Sequence[float] = (0.01, 0.001)) -> dict[str, object]:
    """Every number of the CASIA-B report: cross-view Rank-1 per probe set, all-vs-gallery Rank-1/5, mAP, mINP
    (under OpenGait's distance and under the matcher's), and the open-set calibration. Probes: NM-05/06, BG, CL
    of all views; gallery: NM-01..04 of all views."""
    subjects, conditions = np.asarray(subjects), np.asarray(conditions)
    rank1 = casia_b_rank1(embeddings, subjects, conditions, views)
    gallery = np.isin(conditions, list(GALLERY_CONDITIONS))
    probe = np.isin(conditions, [c for group in PROBE_SETS.values() for c in group])
    retrieval = retrieval_metrics(part_euclidean_distance(embeddings[probe], embeddings[gallery]),
                                  subjects[probe], subjects[gallery])
    retrieval_cosine = retrieval_metrics(part_cosine_distance(embeddings[probe], embeddings[gallery]),
                                         subjects[probe], subjects[gallery])
    calibration = open_set_calibration(embeddings[probe], subjects[probe], embeddings[gallery], subjects[gallery],
                                       far_targets)
    return {
        "casia_b_rank1": {name: result.as_dict() for name, result in rank1.items()},
        "retrieval": {"distance": "part-averaged Euclidean (OpenGait)", **retrieval},
        "retrieval_part_cosine": {"distance": "part-normalised cosine (the matcher's)", **retrieval_cosine},
        "open_set": calibration.as_dict(),
    }


def format_rank1_table(rank1: dict[str, ProbeSetResult]) -> str:
    """The usual CASIA-B table: one row per probe set, one column per probe view, then the mean."""
    views = sorted({view for result in rank1.values() for view in result.per_view})
    lines = ["Rank-1 (%), identical view excluded", " ".join(["set ", *(f"{v:>5}" for v in views), " mean"])]
    for name, result in rank1.items():
        cells = [f"{result.per_view[v]:5.1f}" if v in result.per_view else "    -" for v in views]
        lines.append(" ".join([f"{name:<4}", *cells, f"{result.mean:5.1f}"]))
    return "\n".join(lines)


def reconstruction_errors(model: torch.nn.Module, dataset: SyntheticGaitDataset, indices: Sequence[int],
                          held_out_views: Sequence[str] = (), max_frames: int | None = None,
                          progress: bool = True,
                          baseline_poses: dict[str, NDArray[np.float64]] | None = None) -> dict[str, object]:
    """Mesh-Gait's 3D reconstruction on synthetic sequences with ground truth, in millimetres.

    Per frame: MPJPE over the 24 joints, the mean error of the 64 virtual markers, and the mean per-vertex error
    (MPVE) of the mesh interpolated from the markers. Both prediction and truth are made root-relative (pelvis) and
    metric with the ground truth's scale (`to_metric_root_relative`): silhouettes carry no absolute scale, so none is
    predicted. Reported over all frames, and split into views seen in training and `held_out_views`.
    `mirror_resolved` scores each frame against the nearer (by MPJPE) of the body and its mirror image, which
    project to the same silhouette (`Targets3D.mirrored`): the error a silhouette-only method can be held to.
    `joint_motion_mm` says whether the walk itself is read: a joint's mean distance from its own position averaged
    over the sequence, predicted against true (a branch that outputs one static pose scores 0). With
    `baseline_poses` (`view_mean_poses`), the MPJPE of predicting each view's mean pose on the same frames.
    """
    import torch

    from engines.data.synthetic import to_metric_root_relative

    joints = model.config.joints
    names = ("joints", "markers", "vertices")
    errors: dict[str, list[NDArray[np.float64]]] = {name: [] for name in names}
    resolved: dict[str, list[NDArray[np.float64]]] = {name: [] for name in names}
    mirror_chosen: list[NDArray[np.bool_]] = []
    motion: dict[str, list[float]] = {"predicted": [], "truth": []}  # mean distance of a joint from its own mean
    baseline: dict[str, list[NDArray[np.float64]]] = {"raw": [], "resolved": []}
    fallback = None if not baseline_poses else np.mean(list(baseline_poses.values()), axis=0)
    held_out: list[NDArray[np.bool_]] = []

    def metric(pelvis: NDArray[np.float32], points: NDArray[np.float32], scale: NDArray[np.float32]) -> NDArray:
        # The pelvis first, so every point set is made relative to its own frame's pelvis.
        return to_metric_root_relative(np.concatenate([pelvis, points], 1), scale)[:, 1:]

    model.eval()
    for index in tqdm(indices, disable=not progress, unit="seq", dynamic_ncols=True):
        frame_idx = all_frame_indices(dataset.num_frames(int(index)), max_frames)
        silhouettes = torch.from_numpy(dataset.frames_at(int(index), frame_idx)).float().div_(255.0)[None]
        with torch.inference_mode():
            output = model(silhouettes, with_3d=True)
        view = dataset.keys[int(index)].view
        truth = dataset.targets_at(int(index), frame_idx)
        scale = truth.half_extent_m
        decoded = {"joints": output.joints_3d[0].numpy(), "markers": output.markers_3d[0].numpy(),
                   "vertices": output.vertices_3d[0].numpy()}
        guess = {name: metric(decoded["joints"][:, :1], decoded[name], scale) for name in names}
        bodies = []  # the true body and its mirror image, root-relative metric points
        for body in (truth, truth.mirrored(dataset.mirror)):
            parts = {"joints": body.points[:, :joints], "markers": body.points[:, joints:], "vertices": body.vertices}
            bodies.append({name: metric(body.points[:, :1], parts[name], scale) for name in names})
        per_body = [{name: 1000.0 * np.linalg.norm(guess[name] - body[name], axis=-1).mean(-1) for name in names}
                    for body in bodies]
        use_mirror = per_body[1]["joints"] < per_body[0]["joints"]
        mirror_chosen.append(use_mirror)
        for name in names:
            errors[name].append(per_body[0][name])
            resolved[name].append(np.where(use_mirror, per_body[1][name], per_body[0][name]))
        if baseline_poses:
            pose = baseline_poses.get(view, fallback)
            raw, mirrored = (1000.0 * np.linalg.norm(body["joints"] - pose, axis=-1).mean(-1) for body in bodies)
            baseline["raw"].append(raw)
            baseline["resolved"].append(np.minimum(raw, mirrored))
        for key, points in (("predicted", guess["joints"]), ("truth", bodies[0]["joints"])):
            motion[key].append(1000.0 * np.linalg.norm(points - points.mean(0), axis=-1).mean())
        held_out.append(np.full(len(frame_idx), view in held_out_views))
    mask = np.concatenate(held_out)

    def split(values: list[NDArray[np.float64]]) -> dict[str, float | None]:
        joined = np.concatenate(values)
        return {"all": round(float(joined.mean()), 1),
                "seen_views": round(float(joined[~mask].mean()), 1) if (~mask).any() else None,
                "held_out_views": round(float(joined[mask].mean()), 1) if mask.any() else None}

    labels = {"joints": "mpjpe_mm", "markers": "marker_error_mm", "vertices": "mpve_mm"}
    report: dict[str, object] = {"frames": int(mask.size), "held_out_views": sorted(held_out_views),
                                 "joint_motion_mm": {k: round(float(np.mean(v)), 1) for k, v in motion.items()}}
    report.update({labels[name]: split(errors[name]) for name in names})
    mirror_report: dict[str, object] = {labels[name]: split(resolved[name]) for name in names}
    mirror_report["mirror_chosen_fraction"] = round(float(np.concatenate(mirror_chosen).mean()), 3)
    if baseline_poses:
        report["baseline_mean_pose_per_view_mpjpe_mm"] = round(float(np.concatenate(baseline["raw"]).mean()), 1)
        mirror_report["baseline_mean_pose_per_view_mpjpe_mm"] = round(
            float(np.concatenate(baseline["resolved"]).mean()), 1)
    report["mirror_resolved"] = mirror_report
    return report


def view_mean_poses(train: SyntheticGaitDataset, joints: int = 24, sample: int = 600,
                    seed: int = 0) -> dict[str, NDArray[np.float64]]:
    """Each view's mean root-relative metric pose (joints, 3) over `sample` training sequences: the 3D floor.

    Walking poses vary little, so one constant pose per view is already a fair guess; a 3D branch that does not
    beat it (`reconstruction_errors(..., baseline_poses=...)`) has not learnt to read the pose from the silhouettes.
    """
    from engines.data.synthetic import to_metric_root_relative

    sums: dict[str, NDArray[np.float64]] = {}
    counts: dict[str, int] = {}
    rng = np.random.default_rng(seed)
    for index in rng.choice(len(train.keys), min(sample, len(train.keys)), replace=False).tolist():
        truth = train.targets_at(index, np.arange(train.num_frames(index)))
        points = to_metric_root_relative(truth.points[:, :joints], truth.half_extent_m)
        view = train.keys[index].view
        sums[view] = sums.get(view, 0.0) + points.sum(0)
        counts[view] = counts.get(view, 0) + len(points)
    return {view: sums[view] / counts[view] for view in sums}
