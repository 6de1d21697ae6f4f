"""A synthetic CASIA-B-like gait dataset with known 3D: SMPL-format bodies walking past fixed cameras.

CASIA-B has no 3D ground truth, so Mesh-Gait (arXiv 2510.10406) is trained on rendered walkers. Everything is a
function of the seed: subject s draws its body and gait from `default_rng([seed, s, 0])` and its condition c
(index k) from `default_rng([seed, s, 1 + k])`, so subjects can be generated in any order, resumed, or added.

Layout under ROOT (never committed):

- `sils-64x64-bin/SSS.npz`: CASIA-B's packed layout (`engines.data.sequences.PackedNpzDataset`), key
  `COND-NN_VVV`, value `np.packbits(sil > 127, axis=-1)` of the (T, 64, 64) silhouettes pretreated by
  `engines.pretreat` as real masks are;
- `targets/SSS.npz`: per sequence `COND-NN_VVV/{points_cam (T, 88, 3), points_2d (T, 88, 2), camera_R (3, 3),
  camera_t (3,), camera_K (3, 3), crop (T, 3)}`; per condition `COND-NN/{vertices_world (T, V, 3) float16,
  pose (T, 72), transl (T, 3), betas (10,)}`; and the subject's `betas` (10,). The 88 points are the 24 SMPL
  joints then the 64 virtual markers; `crop` = (row0, scale, col_offset) maps image pixel (u, v) to the 64x44
  network frame: col = u * scale - col_offset, row = (v - row0) * scale;
- `body_model.pkl`, `marker_interpolation.npy` (V, 64), `meta.json` (settings, styles, split, markers).

The normalised frame the network predicts: x_n = (col - 22) / 32, y_n = (row - 32) / 32 from the silhouette
position, z_n = (Z - Z_pelvis) / half_extent_m from the camera-frame depth, where half_extent_m is half the
camera-y extent of that frame's posed mesh (64 silhouette pixels <-> 2 units <-> the body's height).

One silhouette fits two bodies: the body and its mirror image through the plane Z = Z_pelvis (left and right
swapped, z_n negated) project to the same pixels under weak perspective, so a frame's 3D is known only up to that
reflection (`Targets3D.mirrored`, used by the mirror-invariant 3D loss and the mirror-resolved MPJPE).

Must not import `pipeline` or `stages`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

from engines.body.open_model import JOINT_NAMES, build_open_body_model, mirror_joint_ids
from engines.body.render import (
    CASIA_B_VIEWS_DEG,
    Camera,
    camera_for_view,
    camera_to_pixels,
    outfit_extras,
    project,
    render_sequence,
)
from engines.body.smpl import BodyModel, fit_marker_interpolation, mirror_vertex_ids, virtual_marker_ids
from engines.body.walking import GaitStyle, dress_for_condition, global_rotations, sample_identity, walking_sequence
from engines.data.sequences import PackedNpzDataset, SequenceKey
from engines.errors import DatasetError, EngineError
from engines.files import atomic_savez, atomic_write_bytes
from engines.pretreat import SIL_HEIGHT, SIL_PADDED_WIDTH, SIL_WIDTH, PaddedSilhouette, pretreat_padded

log = logging.getLogger(__name__)

FORMAT = "gaitstream-synthetic-gait/1"
CONDITIONS = ("nm-01", "nm-02", "nm-03", "nm-04", "bg-01", "cl-01")
VIEWS = tuple(f"{view:03d}" for view in CASIA_B_VIEWS_DEG)
HELD_OUT_VIEWS = ("036", "144")
NUM_JOINTS = 24
NUM_MARKERS = 64
NUM_POINTS = NUM_JOINTS + NUM_MARKERS
SILS_DIR, TARGETS_DIR = "sils-64x64-bin", "targets"
BODY_MODEL_FILE, META_FILE, INTERPOLATION_FILE = "body_model.pkl", "meta.json", "marker_interpolation.npy"
_FRAME_MARGIN_PX = 2  # the walker must stay this far inside the image; the camera backs off until it does
_INTERPOLATION_FRAMES = 6  # frames per training sequence used to fit the marker interpolation


def _default_root() -> Path:
    return Path(__file__).resolve().parents[2] / "runs" / "synthetic"


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate; everything but `out`, `subjects` and `body_model` must match when resuming."""

    out: Path = field(default_factory=_default_root)
    subjects: int = 100
    frames: int = 60
    seed: int = 0
    fps: float = 25.0
    body_model: Path | None = None  # an SMPL-format pkl; None = the open model (engines.body.open_model, seed 0)
    image_hw: tuple[int, int] = (240, 320)  # CASIA-B's frame size
    focal_px: float = 380.0
    camera_distance_m: float = 6.5  # from the path centre; grows per sequence if the walker would leave the frame
    camera_height_m: float = 1.0
    train_fraction: float = 0.8
    views: tuple[str, ...] = VIEWS  # fewer for quick tests
    # Real cameras look down on walkers and see them from afar: per sequence, an elevation drawn from
    # [0, elevation_max_deg] and the camera distance scaled by a factor from distance_scale (smaller walkers, whose
    # silhouettes pretreatment upscales). The defaults are CASIA-B's level camera at one distance.
    elevation_max_deg: float = 0.0
    distance_scale: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        if not 1 <= self.subjects <= 999:
            raise DatasetError(f"subjects must be between 1 and 999 (got {self.subjects})")
        if self.frames < 4:
            raise DatasetError(f"frames must be >= 4 (got {self.frames})")
        if self.fps <= 0:
            raise DatasetError(f"fps must be > 0 (got {self.fps})")
        if not self.views or not set(self.views) <= set(VIEWS):
            raise DatasetError(f"views must be some of {', '.join(VIEWS)} (got {list(self.views)})")
        if not 0 <= self.elevation_max_deg <= 60:
            raise DatasetError(f"elevation_max_deg must lie in [0, 60] (got {self.elevation_max_deg})")
        low, high = self.distance_scale
        if not 0.5 <= low <= high <= 4:
            raise DatasetError(f"distance_scale must be 0.5 <= low <= high <= 4 (got {self.distance_scale})")

    def settings(self) -> dict[str, Any]:
        """The settings a resumed run must share with the files already written."""
        settings = {"format": FORMAT, "seed": self.seed, "frames": self.frames, "fps": self.fps,
                    "conditions": list(CONDITIONS), "views": list(self.views), "image_hw": list(self.image_hw),
                    "focal_px": self.focal_px, "camera_distance_m": self.camera_distance_m,
                    "camera_height_m": self.camera_height_m}
        if self.elevation_max_deg or self.distance_scale != (1.0, 1.0):  # absent from sets made before them
            settings |= {"elevation_max_deg": self.elevation_max_deg, "distance_scale": list(self.distance_scale)}
        return settings


@dataclass(frozen=True)
class SyntheticSummary:
    """What one `generate_synthetic` call did, for the command line's last line."""

    root: Path
    written: list[str]  # subjects generated by this call
    skipped: list[str]  # subjects already complete
    seconds: float
    bytes_on_disk: int


@dataclass(frozen=True)
class _Walk:
    """One condition of one subject in the world frame, feet on the floor (y = 0)."""

    vertices: NDArray[np.float32]  # (T, V, 3)
    joints: NDArray[np.float32]  # (T, 24, 3)
    pose: NDArray[np.float32]  # (T, 72)
    transl: NDArray[np.float32]  # (T, 3)
    betas: NDArray[np.float32]  # (10,)
    extras: list[NDArray[np.float32]]  # each (T, P, 3)


def subject_ids(count: int) -> list[str]:
    """CASIA-B-style subject ids "001", "002", ... (the file stems under sils-64x64-bin/ and targets/)."""
    return [f"{number:03d}" for number in range(1, count + 1)]


def split_subjects(subjects: list[str], train_fraction: float = 0.8) -> tuple[list[str], list[str]]:
    """The first `train_fraction` of the subjects train (at least one), the rest test (at least one if >= 2)."""
    count = len(subjects)
    train = min(max(1, round(train_fraction * count)), count - 1 if count > 1 else 1)
    return subjects[:train], subjects[train:]


def _identity(seed: int, subject: str) -> tuple[NDArray[np.float64], GaitStyle]:
    return sample_identity(np.random.default_rng([seed, int(subject), 0]))


def _walk(model: BodyModel, spec: SyntheticSpec, subject: str, condition_index: int,
          identity: tuple[NDArray[np.float64], GaitStyle]) -> _Walk:
    rng = np.random.default_rng([spec.seed, int(subject), 1 + condition_index])
    style, betas, outfit = dress_for_condition(identity[1], identity[0], CONDITIONS[condition_index], rng)
    global_orient, body_pose, transl = walking_sequence(style, spec.frames, spec.fps, rng)
    vertices, joints = model.forward(betas[None], global_orient, body_pose, transl)
    floor = np.float32(vertices[..., 1].min())
    vertices[..., 1] -= floor
    joints[..., 1] -= floor
    transl = transl - np.array([0.0, floor, 0.0], np.float32)
    rotations = global_rotations(global_orient, body_pose, model.parents)
    return _Walk(vertices, joints, np.concatenate([global_orient, body_pose], axis=1), transl,
                 np.asarray(betas, np.float32), outfit_extras(outfit, model, vertices, joints, rotations))


def _framed_camera(spec: SyntheticSpec, view: str, walk: _Walk, rng: np.random.Generator) -> Camera:
    """The view's camera (elevation and distance drawn from `rng` within the spec's ranges), backed off (x1.1 per
    try) until the whole walker stays inside the image in every frame."""
    points = np.concatenate([walk.vertices, *walk.extras], axis=1)
    height, width = spec.image_hw
    elevation = float(rng.uniform(0.0, spec.elevation_max_deg)) if spec.elevation_max_deg else 0.0
    low, high = spec.distance_scale
    distance = spec.camera_distance_m * (float(rng.uniform(low, high)) if high > low else low)
    for _ in range(12):
        camera = camera_for_view(float(view), distance, spec.camera_height_m, spec.image_hw, spec.focal_px,
                                 elevation)
        uv, depth = project(points, camera)
        inside = (uv >= _FRAME_MARGIN_PX).all() and (uv[..., 0] <= width - 1 - _FRAME_MARGIN_PX).all() \
            and (uv[..., 1] <= height - 1 - _FRAME_MARGIN_PX).all()
        if inside and (depth > 0.5).all():
            return camera
        distance *= 1.1
    raise DatasetError(f"view {view}: the walker does not fit in a {width}x{height} image even from {distance:.1f} m")


def _pretreat_rendered(mask: NDArray[np.uint8]) -> tuple[NDArray[np.uint8], NDArray[np.float64]]:
    """The 64x64 silhouette of a rendered mask and its crop (row0, scale, col_offset) into the 64x44 frame.

    The mask goes through `engines.pretreat` inside a window exactly twice as wide as the person is high, so the
    resized width is a whole number of pixels and rows and columns share one scale (on a full frame the width is
    rounded down, which would shift points by up to a pixel).
    """
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    height = int(rows[-1] - rows[0] + 1)
    first_col = int((cols[0] + cols[-1]) // 2 - height)
    window = np.zeros((height, 2 * height), np.uint8)
    lo, hi = max(first_col, 0), min(first_col + 2 * height, mask.shape[1])
    window[:, lo - first_col : hi - first_col] = mask[rows[0] : rows[-1] + 1, lo:hi]
    result = pretreat_padded(window, min_height_px=8)  # far walkers are small: upscaled like real ones
    if not isinstance(result, PaddedSilhouette):
        raise DatasetError(f"rendered silhouette rejected by pretreatment: {result.reason} ({result.detail})")
    transform = result.transform
    side_cut = (SIL_PADDED_WIDTH - SIL_WIDTH) // 2
    crop = np.array([transform.row0 + rows[0], transform.row_scale,
                     transform.col_offset + first_col * transform.col_scale + side_cut])
    return result.silhouette, crop


def image_to_silhouette(uv: NDArray[np.floating], crop: NDArray[np.floating]) -> NDArray[np.float32]:
    """(T, P, 2) image pixels (u, v) -> (T, P, 2) (col, row) in the 64x44 network frame, with `crop` (T, 3)."""
    uv, crop = np.asarray(uv, np.float64), np.asarray(crop, np.float64)
    row0, scale, col_offset = crop[:, None, 0], crop[:, None, 1], crop[:, None, 2]
    return np.stack([uv[..., 0] * scale - col_offset, (uv[..., 1] - row0) * scale], axis=-1).astype(np.float32)


def normalise_points(points_cam: NDArray[np.floating], points_2d: NDArray[np.floating],
                     pelvis_z: NDArray[np.floating], half_extent_m: NDArray[np.floating]) -> NDArray[np.float32]:
    """(..., P, 3) camera-frame metres + (..., P, 2) silhouette (col, row) -> (..., P, 3) in the normalised frame.

    x_n = (col - 22) / 32, y_n = (row - 32) / 32, z_n = (Z - pelvis_z) / half_extent_m; `pelvis_z` and
    `half_extent_m` are per frame (...).
    """
    points_cam, points_2d = np.asarray(points_cam, np.float64), np.asarray(points_2d, np.float64)
    half = SIL_HEIGHT / 2
    depth = (points_cam[..., 2] - np.asarray(pelvis_z)[..., None]) / np.asarray(half_extent_m)[..., None]
    return np.stack([(points_2d[..., 0] - SIL_WIDTH / 2) / half, (points_2d[..., 1] - half) / half, depth],
                    axis=-1).astype(np.float32)


def to_metric_root_relative(points_n: NDArray[np.floating], half_extent_m: NDArray[np.floating],
                            root_index: int = 0) -> NDArray[np.float32]:
    """(..., P, 3) normalised points -> (..., P, 3) metres relative to point `root_index` (weak perspective).

    All three coordinates scale by the frame's `half_extent_m` (...): 32 silhouette pixels span half the body's
    height. Use it on predictions and targets alike for MPJPE in millimetres (x 1000).
    """
    metric = np.asarray(points_n, np.float64) * np.asarray(half_extent_m, np.float64)[..., None, None]
    return (metric - metric[..., root_index : root_index + 1, :]).astype(np.float32)


def half_vertical_extent_m(vertices_cam: NDArray[np.floating]) -> NDArray[np.float32]:
    """(T, V, 3) camera-frame meshes -> (T,) half their camera-y extent, metres."""
    y = np.asarray(vertices_cam)[..., 1]
    return ((y.max(axis=-1) - y.min(axis=-1)) / 2).astype(np.float32)


def _subject_complete(root: Path, subject: str) -> bool:
    return (root / SILS_DIR / f"{subject}.npz").is_file() and (root / TARGETS_DIR / f"{subject}.npz").is_file()


def _generate_subject(model: BodyModel, spec: SyntheticSpec, subject: str, marker_ids: NDArray[np.int64]) -> None:
    identity = _identity(spec.seed, subject)
    sils: dict[str, NDArray[np.uint8]] = {}
    targets: dict[str, NDArray[Any]] = {"betas": np.asarray(identity[0], np.float32)}
    parts = model.part_of_vertex
    for index, condition in enumerate(CONDITIONS):
        walk = _walk(model, spec, subject, index, identity)
        targets |= {f"{condition}/vertices_world": walk.vertices.astype(np.float16),
                    f"{condition}/pose": walk.pose, f"{condition}/transl": walk.transl,
                    f"{condition}/betas": walk.betas}
        points_world = np.concatenate([walk.joints, walk.vertices[:, marker_ids]], axis=1)
        for view in spec.views:
            camera = _framed_camera(spec, view, walk, np.random.default_rng([spec.seed, int(subject), 50 + index,
                                                                            int(view)]))
            masks = render_sequence(walk.vertices, camera, parts, walk.extras)
            pretreated = [_pretreat_rendered(mask) for mask in masks]
            silhouettes = np.stack([sil for sil, _ in pretreated])
            crop = np.stack([c for _, c in pretreated])
            uv, _ = project(points_world, camera)
            key = f"{condition}_{view}"
            sils[key] = np.packbits(silhouettes > 127, axis=-1)
            targets |= {f"{key}/points_cam": camera.to_camera(points_world).astype(np.float32),
                        f"{key}/points_2d": image_to_silhouette(uv, crop),
                        f"{key}/camera_R": camera.R.astype(np.float32), f"{key}/camera_t": camera.t.astype(np.float32),
                        f"{key}/camera_K": camera.K.astype(np.float32), f"{key}/crop": crop.astype(np.float32)}
    atomic_savez(spec.out / TARGETS_DIR / f"{subject}.npz", targets, compress=False)
    atomic_savez(spec.out / SILS_DIR / f"{subject}.npz", sils, compress=True)


def _body_model_bytes(spec: SyntheticSpec) -> bytes:
    if spec.body_model is None:
        buffer = io.BytesIO()
        pickle.dump(build_open_body_model(seed=0), buffer, protocol=2)
        return buffer.getvalue()
    BodyModel.load(Path(spec.body_model))  # refuse a file smplx cannot use before copying it into the root
    return Path(spec.body_model).read_bytes()


def _prepare_root(spec: SyntheticSpec) -> tuple[BodyModel, dict[str, Any]]:
    """Body model, marker ids, marker interpolation and meta.json: written once, checked when resuming."""
    root = spec.out
    body_bytes = _body_model_bytes(spec)
    digest = hashlib.sha256(body_bytes).hexdigest()
    meta_path = root / META_FILE
    previous = read_meta(root) if meta_path.is_file() else None
    if previous is not None:
        mismatched = [k for k, v in spec.settings().items() if previous.get(k) != v]
        if previous.get("body_model", {}).get("sha256") != digest:
            mismatched.append("body_model")
        if mismatched:
            raise DatasetError(f"{root}: already holds a synthetic dataset made with other {', '.join(mismatched)}; "
                               "use another --out or delete it")
    for folder in (root, root / SILS_DIR, root / TARGETS_DIR):
        folder.mkdir(parents=True, exist_ok=True)
    model_path = root / BODY_MODEL_FILE
    if not model_path.is_file() or model_path.read_bytes() != body_bytes:
        atomic_write_bytes(model_path, body_bytes)
    model = BodyModel.load(model_path)

    subjects = subject_ids(spec.subjects)
    train, test = split_subjects(subjects, spec.train_fraction)
    marker_ids = virtual_marker_ids(model, NUM_MARKERS)
    meta = spec.settings() | {
        "subjects": subjects,
        "split": {"train": train, "test": test},
        "held_out_views": list(HELD_OUT_VIEWS),
        "body_model": {"file": BODY_MODEL_FILE, "sha256": digest, "num_vertices": model.num_vertices,
                       "source": "open model (engines/body/open_model.py, seed 0)" if spec.body_model is None
                       else Path(spec.body_model).name},
        "marker_vertex_ids": marker_ids.tolist(),
        "points": {"count": NUM_POINTS, "joints": NUM_JOINTS, "markers": NUM_MARKERS},
        "normalised_frame": "x_n = (col - 22) / 32, y_n = (row - 32) / 32, z_n = (Z - Z_pelvis) / half_extent_m",
        "styles": {subject: asdict(_identity(spec.seed, subject)[1]) for subject in subjects},
    }
    if previous == meta and (root / INTERPOLATION_FILE).is_file():
        return model, meta  # same training identities: the interpolation on disk is the one a refit would give
    stride = max(1, spec.frames // _INTERPOLATION_FRAMES)
    meshes = [_walk(model, spec, subject, index, _identity(spec.seed, subject)).vertices[::stride]
              for subject in train for index in range(len(CONDITIONS))]
    buffer = io.BytesIO()
    np.save(buffer, fit_marker_interpolation(np.concatenate(meshes), marker_ids))
    atomic_write_bytes(root / INTERPOLATION_FILE, buffer.getvalue())
    atomic_write_bytes(meta_path, (json.dumps(meta, indent=1) + "\n").encode())
    return model, meta


def generate_synthetic(spec: SyntheticSpec, progress: bool = True, workers: int | None = None) -> SyntheticSummary:
    """Write (or finish) the dataset under `spec.out`; subjects already complete are skipped.

    Subjects are independent (each draws from its own seeded generators), so `workers` processes (default: one per
    core) render them in parallel and the files are the same byte for byte as from one: the 300 widened walkers take
    20 minutes on 2 cores, so a 16-core machine lent for minutes must not render them one at a time.
    """
    started = time.monotonic()
    model, meta = _prepare_root(spec)
    marker_ids = np.asarray(meta["marker_vertex_ids"], np.int64)
    skipped = [subject for subject in meta["subjects"] if _subject_complete(spec.out, subject)]
    pending = [subject for subject in meta["subjects"] if subject not in skipped]
    workers = max(1, min(workers or os.cpu_count() or 1, len(pending)))
    written = []
    with tqdm(total=len(pending), desc="synthetic subjects", unit="subject", disable=not progress) as bar:
        if workers == 1:
            for subject in pending:
                _generate_subject(model, spec, subject, marker_ids)
                written.append(subject)
                bar.update(1)
        else:  # spawn, not fork: the parent's torch (OpenMP) threads do not survive a fork
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_start_worker,
                                     initargs=(spec, marker_ids)) as pool:
                futures = {pool.submit(_generate_in_worker, subject): subject for subject in pending}
                for future in as_completed(futures):
                    future.result()
                    written.append(futures[future])
                    bar.update(1)
    written.sort()
    size = sum(path.stat().st_size for path in spec.out.rglob("*") if path.is_file())
    seconds = time.monotonic() - started
    log.info("synthetic dataset root=%s written=%d skipped=%d workers=%d seconds=%.1f bytes=%d",
             spec.out, len(written), len(skipped), workers, seconds, size)
    return SyntheticSummary(spec.out, written, skipped, seconds, size)


_worker_state: dict[str, Any] = {}


def _start_worker(spec: SyntheticSpec, marker_ids: NDArray[np.int64]) -> None:
    """A rendering process: one thread (the processes are the parallelism) and the root's body model."""
    import torch

    torch.set_num_threads(1)
    _worker_state.update(model=BodyModel.load(spec.out / BODY_MODEL_FILE), spec=spec, marker_ids=marker_ids)


def _generate_in_worker(subject: str) -> None:
    _generate_subject(_worker_state["model"], _worker_state["spec"], subject, _worker_state["marker_ids"])


def read_meta(root: Path) -> dict[str, Any]:
    path = root / META_FILE
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read the synthetic dataset's meta.json ({exc}); regenerate it with "
                           f"`python tools/make_synthetic.py --out {root}`") from exc
    if meta.get("format") != FORMAT:
        raise DatasetError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


_JOINT = {name: index for index, name in enumerate(JOINT_NAMES)}
#: The leg joints (hip, knee, ankle, foot) of each side, by which `Targets3D.canonical` labels left and right.
_LEFT_LEG = [_JOINT[f"left_{name}"] for name in ("hip", "knee", "ankle", "foot")]
_RIGHT_LEG = [_JOINT[f"right_{name}"] for name in ("hip", "knee", "ankle", "foot")]
#: |z| of the body's unit forward vector above which `Targets3D.canonical` goes by facing (about 17 deg off side-on).
_FACING_DECISIVE = 0.3


@dataclass(frozen=True)
class Targets3D:
    """3D targets of some frames of one sequence in the normalised frame (see the module docstring)."""

    points: NDArray[np.float32]  # (t, 88, 3): 24 SMPL joints, then the 64 virtual markers
    vertices: NDArray[np.float32]  # (t, V, 3)
    half_extent_m: NDArray[np.float32]  # (t,) metres per normalised unit

    def mirrored(self, mirror: MirrorMap) -> Targets3D:
        """The mirror body's targets: same silhouettes, left and right swapped, depth negated about the pelvis."""
        vertices = self.vertices[:, mirror.vertex_ids]
        vertices[..., 2] *= -1
        joints = self.points[:, mirror.joint_ids]
        joints[..., 2] *= -1
        points = np.concatenate([joints, vertices[:, mirror.marker_vertex_ids]], axis=1)
        return Targets3D(points=points, vertices=vertices, half_extent_m=self.half_extent_m)

    def canonical(self, mirror: MirrorMap) -> Targets3D:
        """Per frame the one of the body and its mirror image that a rule on the silhouette alone would pick.

        The two cast the same silhouette; the mirror faces the other way in depth (toward the camera instead of
        away) and has its legs' labels swapped. Where the body faces the camera or turns away from it (|forward_z|
        above `_FACING_DECISIVE`), the one facing the camera is kept: its whole depth layout then follows from the
        silhouette. Side-on, where facing is undecided, the one with its left leg on the image's right is kept,
        which fixes the legs' labels and, seen from the side, their depth too. The nearer-of-the-two rule
        (`mesh_losses(mirrored=...)`) instead chooses by the head's own guess, a coin toss per frame from a static
        start, which pulls both to their average.
        """
        points = self.points
        hips = points[:, _JOINT["left_hip"]] - points[:, _JOINT["right_hip"]]
        forward = np.cross(hips, points[:, _JOINT["neck"]] - points[:, _JOINT["pelvis"]])
        facing = forward[:, 2] / np.maximum(np.linalg.norm(forward, axis=-1), 1e-9)
        legs = points[:, _LEFT_LEG, 0].mean(1) - points[:, _RIGHT_LEG, 0].mean(1)
        keep = np.where(np.abs(facing) > _FACING_DECISIVE, facing < 0, legs >= 0)
        other = self.mirrored(mirror)
        return Targets3D(points=np.where(keep[:, None, None], points, other.points),
                         vertices=np.where(keep[:, None, None], self.vertices, other.vertices),
                         half_extent_m=self.half_extent_m)

    def flipped(self, mirror: MirrorMap) -> Targets3D:
        """The targets of the horizontally flipped silhouettes (`pretreat.mirror_silhouettes`, x -> -x in the
        normalised frame): the mirror-image person, whose left joint is the reflection of the original's right."""
        vertices = self.vertices[:, mirror.vertex_ids]
        vertices[..., 0] *= -1
        joints = self.points[:, mirror.joint_ids]
        joints[..., 0] *= -1
        points = np.concatenate([joints, vertices[:, mirror.marker_vertex_ids]], axis=1)
        return Targets3D(points=points, vertices=vertices, half_extent_m=self.half_extent_m)


@dataclass(frozen=True)
class MirrorMap:
    """Index maps of the body model's left/right reflection (`engines.body.smpl.mirror_*_ids`)."""

    joint_ids: NDArray[np.int64]  # (24,) each joint's twin
    vertex_ids: NDArray[np.int64]  # (V,) each vertex's twin
    marker_vertex_ids: NDArray[np.int64]  # (64,) the markers' vertices (a marker's twin need not be a marker)


class SyntheticGaitDataset(PackedNpzDataset):
    """The synthetic silhouettes (as `PackedNpzDataset`: `keys`, `frames`, `frames_at`, `num_frames`) plus 3D.

    `subjects` None = every subject in meta.json; `views` None = all eleven, else e.g. the training views without
    `held_out_views`. Targets are read lazily per call from `targets/SSS.npz` (one open handle per subject and
    process, so DataLoader workers do not share file offsets).
    """

    def __init__(self, root: Path, subjects: Iterable[str] | None = None,
                 views: Iterable[str] | None = None) -> None:
        root = Path(root)
        how = f"generate it with `python tools/make_synthetic.py --out {root}`"
        if not (root / META_FILE).is_file():
            raise DatasetError(f"{root}: no synthetic gait dataset here (meta.json missing); {how}")
        meta = read_meta(root)
        wanted = list(meta["subjects"]) if subjects is None else list(subjects)
        unknown = sorted(set(wanted) - set(meta["subjects"]))
        if unknown:
            raise DatasetError(f"{root}: subjects {unknown} are not in this dataset (it has {len(meta['subjects'])})")
        missing = [s for s in wanted if not _subject_complete(root, s)]
        if missing:
            raise DatasetError(f"{root}: incomplete, {len(missing)} of {len(wanted)} subjects missing "
                               f"(first: {missing[0]}); finish it with `python tools/make_synthetic.py --out {root}`")
        super().__init__(root / SILS_DIR, wanted)
        if views is not None:
            view_set = {f"{int(view):03d}" for view in views}
            kept = [i for i, key in enumerate(self.keys) if key.view in view_set]
            self.keys = [self.keys[i] for i in kept]
            self._packed = [self._packed[i] for i in kept]
            if not self.keys:
                raise DatasetError(f"{root}: no sequences for views {sorted(view_set)} (it has {meta['views']})")
        try:
            body = BodyModel.load(root / BODY_MODEL_FILE)
            self._interpolation = np.load(root / INTERPOLATION_FILE).astype(np.float32)
        except (EngineError, OSError, ValueError) as exc:
            raise DatasetError(f"{root}: cannot read the body model or marker interpolation ({exc}); {how}") from exc
        self.root = root
        self.meta = meta
        self._regressor = body.joint_regressor
        self._num_vertices = body.num_vertices
        self.mirror = MirrorMap(mirror_joint_ids(), mirror_vertex_ids(body), self.marker_vertex_ids)
        self._archives: dict[str, Any] = {}
        self._archive_pid = os.getpid()

    @property
    def marker_vertex_ids(self) -> NDArray[np.int64]:
        """(64,) vertex ids of the virtual markers (points 24..87)."""
        return np.asarray(self.meta["marker_vertex_ids"], np.int64)

    @property
    def marker_interpolation(self) -> NDArray[np.float32]:
        """(V, 64) affine map from the markers to the whole mesh, fitted on training identities."""
        return self._interpolation

    @property
    def joint_regressor(self) -> NDArray[np.float32]:
        """(24, V) SMPL joint regressor of the body model."""
        return self._regressor

    @property
    def num_vertices(self) -> int:
        return self._num_vertices

    @property
    def train_subjects(self) -> list[str]:
        return list(self.meta["split"]["train"])

    @property
    def test_subjects(self) -> list[str]:
        return list(self.meta["split"]["test"])

    @property
    def held_out_views(self) -> list[str]:
        """Views synthetic training must not use (kept for cross-view evaluation)."""
        return list(self.meta["held_out_views"])

    def __getstate__(self) -> dict[str, Any]:
        """Pickled into spawned DataLoader workers without the open npz handles; each process opens its own."""
        return self.__dict__ | {"_archives": {}}

    def _archive(self, subject: str) -> Any:
        if os.getpid() != self._archive_pid:  # forked worker: the parent's handles share file offsets
            self._archives, self._archive_pid = {}, os.getpid()
        if subject not in self._archives:
            self._archives[subject] = np.load(self.root / TARGETS_DIR / f"{subject}.npz")
        return self._archives[subject]

    def targets_at(self, index: int, frame_indices: NDArray[np.int64]) -> Targets3D:
        """The 88 points and the mesh of sequence `index` at `frame_indices` (t,), in the normalised frame."""
        key: SequenceKey = self.keys[index]
        archive = self._archive(key.subject)
        name = f"{key.condition}_{key.view}"
        frames = np.asarray(frame_indices, np.int64)
        points_cam = archive[f"{name}/points_cam"][frames]
        crop = archive[f"{name}/crop"][frames]
        rotation, translation = archive[f"{name}/camera_R"], archive[f"{name}/camera_t"]
        vertices_cam = archive[f"{key.condition}/vertices_world"][frames].astype(np.float32) @ rotation.T \
            + translation
        half_extent = half_vertical_extent_m(vertices_cam)
        pelvis_z = points_cam[:, 0, 2]
        vertices_2d = image_to_silhouette(camera_to_pixels(vertices_cam, archive[f"{name}/camera_K"]), crop)
        return Targets3D(
            points=normalise_points(points_cam, archive[f"{name}/points_2d"][frames], pelvis_z, half_extent),
            vertices=normalise_points(vertices_cam, vertices_2d, pelvis_z, half_extent),
            half_extent_m=half_extent,
        )
