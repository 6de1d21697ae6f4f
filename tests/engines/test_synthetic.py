"""The synthetic 3D gait dataset: determinism, CASIA-B's packed layout, targets that agree with the silhouettes."""

from __future__ import annotations

import contextlib
import io
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.body.open_model import JOINT_NAMES
from engines.data.sequences import PackedNpzDataset, SequenceKey
from engines.data.synthetic import (
    CONDITIONS,
    SyntheticGaitDataset,
    SyntheticSpec,
    generate_synthetic,
    normalise_points,
    to_metric_root_relative,
)
from engines.errors import DatasetError
from engines.pretreat import PaddedSilhouette, pretreat_padded
from engines.train import target_tensors
from tests.conftest import TINY_SYNTHETIC
from tools import make_synthetic

SUBJECTS, FRAMES, VIEWS = TINY_SYNTHETIC["subjects"], TINY_SYNTHETIC["frames"], TINY_SYNTHETIC["views"]


def _spec(out: Path) -> SyntheticSpec:
    return SyntheticSpec(out=out, **TINY_SYNTHETIC)


@pytest.fixture(scope="module")
def root(synthetic_root: Path) -> Path:
    return synthetic_root


@pytest.fixture(scope="module")
def dataset(root: Path) -> SyntheticGaitDataset:
    return SyntheticGaitDataset(root)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generation_is_deterministic_and_resumable(root: Path, tmp_path: Path) -> None:
    """`root` was rendered in one process per core; one process makes the same files."""
    again = generate_synthetic(_spec(tmp_path), progress=False, workers=1)
    assert again.written == ["001", "002", "003"] and again.skipped == []
    assert _files(tmp_path) == _files(root)  # byte for byte, meta.json included
    assert again.bytes_on_disk == sum(len(b) for b in _files(root).values())
    (tmp_path / "targets" / "002.npz").unlink()
    resumed = generate_synthetic(_spec(tmp_path), progress=False)
    assert resumed.written == ["002"] and resumed.skipped == ["001", "003"]
    assert _files(tmp_path) == _files(root)
    with pytest.raises(DatasetError, match="other frames"):
        generate_synthetic(SyntheticSpec(out=tmp_path, subjects=SUBJECTS, frames=FRAMES + 1, views=VIEWS),
                           progress=False)


def test_silhouettes_are_casia_b_packed_npz(root: Path, dataset: SyntheticGaitDataset) -> None:
    packed = PackedNpzDataset(root / "sils-64x64-bin")
    expected = sorted(SequenceKey(f"{s:03d}", c, v) for s in range(1, SUBJECTS + 1) for c in CONDITIONS for v in VIEWS)
    assert sorted(packed.keys) == expected
    assert dataset.keys == packed.keys
    raw = np.load(root / "sils-64x64-bin" / "001.npz")["nm-01_090"]
    assert raw.shape == (FRAMES, 64, 8) and raw.dtype == np.uint8  # packbits of 64x64
    for index in range(len(dataset.keys)):
        frames = dataset.frames(index)
        assert frames.shape == (FRAMES, 64, 44) and set(np.unique(frames).tolist()) == {0, 255}
        np.testing.assert_array_equal(frames, packed.frames(index))
        rows = np.flatnonzero(frames.any(axis=(0, 2)))
        assert (rows[0], rows[-1]) == (0, 63)  # cropped to the person, 64 high, as OpenGait's pretreatment
    picked = np.array([3, 0, 7])
    np.testing.assert_array_equal(dataset.frames_at(5, picked), dataset.frames(5)[picked])
    only_side = SyntheticGaitDataset(root, subjects=["002"], views=["090"])
    assert {(k.subject, k.view) for k in only_side.keys} == {("002", "090")} and len(only_side.keys) == 6


def test_points_2d_agree_with_the_normalised_frame_and_the_silhouettes(root: Path,
                                                                      dataset: SyntheticGaitDataset) -> None:
    frames = np.arange(FRAMES)
    for index, key in enumerate(dataset.keys):
        stored = np.load(root / "targets" / f"{key.subject}.npz")
        name = f"{key.condition}_{key.view}"
        points_2d = stored[f"{name}/points_2d"]
        targets = dataset.targets_at(index, frames)
        assert targets.points.shape == (FRAMES, 88, 3) and targets.points.dtype == np.float32
        assert targets.vertices.shape == (FRAMES, dataset.num_vertices, 3)
        np.testing.assert_allclose(targets.points[..., 0] * 32 + 22, points_2d[..., 0], atol=1e-4)
        np.testing.assert_allclose(targets.points[..., 1] * 32 + 32, points_2d[..., 1], atol=1e-4)
        np.testing.assert_allclose(targets.points[:, 0, 2], 0.0, atol=1e-6)  # depth is relative to the pelvis

        silhouettes = dataset.frames(index) > 0
        # surface markers on the outline (the top of the head) may sit on the frame's edge, half a pixel out
        assert points_2d[..., 0].min() > -0.6 and points_2d[..., 0].max() < 43.6
        assert points_2d[..., 1].min() > -0.6 and points_2d[..., 1].max() < 63.6
        cols = np.clip(np.round(points_2d[..., 0]).astype(int), 0, 43)
        rows = np.clip(np.round(points_2d[..., 1]).astype(int), 0, 63)
        on_silhouette = silhouettes[frames[:, None], rows, cols]
        assert on_silhouette[:, :24].all(), f"{key}: joints off the silhouette"
        grown = np.stack([cv2.dilate(s.astype(np.uint8), np.ones((3, 3), np.uint8)) for s in silhouettes]) > 0
        assert grown[frames[:, None], rows[:, 24:], cols[:, 24:]].all(), f"{key}: markers off the silhouette"
        # the mesh spans the silhouette: 64 rows <-> y_n from -1 to 1; depth root-relative and body-sized
        vertical = targets.vertices[..., 1]
        assert np.abs(vertical.min(axis=1) + 1).max() < 0.06 and np.abs(vertical.max(axis=1) - 1).max() < 0.06
        assert np.abs(targets.vertices[..., 2]).max() < 0.8
        assert ((targets.half_extent_m > 0.75) & (targets.half_extent_m < 1.05)).all()


def test_markers_and_the_metric_frame(root: Path, dataset: SyntheticGaitDataset) -> None:
    key_index = dataset.keys.index(SequenceKey("003", "nm-02", "090"))
    stored = np.load(root / "targets" / "003.npz")
    vertices = stored["nm-02/vertices_world"].astype(np.float32)
    markers = dataset.marker_vertex_ids
    assert markers.shape == (64,) and len(set(markers.tolist())) == 64
    np.testing.assert_allclose(stored["nm-02_090/points_cam"][:, 24:],
                               vertices[:, markers] @ stored["nm-02_090/camera_R"].T + stored["nm-02_090/camera_t"],
                               atol=3e-3)  # float16 vertices
    interpolation = dataset.marker_interpolation
    assert interpolation.shape == (dataset.num_vertices, 64)
    np.testing.assert_allclose(interpolation.sum(axis=1), 1.0, atol=1e-5)
    rebuilt = np.einsum("vm,tmc->tvc", interpolation, vertices[:, markers])
    assert np.linalg.norm(rebuilt - vertices, axis=-1).mean() < 0.02  # test subject; fitted on two identities only
    joints = np.einsum("jv,tvc->tjc", dataset.joint_regressor, vertices)
    assert joints.shape == (FRAMES, 24, 3)

    # the weak-perspective metric frame is close to the true root-relative camera frame (MPJPE in mm)
    targets = dataset.targets_at(key_index, np.arange(FRAMES))
    metric = to_metric_root_relative(targets.points, targets.half_extent_m)
    truth = stored["nm-02_090/points_cam"] - stored["nm-02_090/points_cam"][:, :1]
    assert np.abs(metric[:, 0]).max() < 1e-6
    assert np.linalg.norm(metric[:, :24] - truth[:, :24], axis=-1).mean() < 0.03
    again = normalise_points(stored["nm-02_090/points_cam"], stored["nm-02_090/points_2d"],
                             stored["nm-02_090/points_cam"][:, 0, 2], targets.half_extent_m)
    np.testing.assert_allclose(again, targets.points, atol=1e-6)


def test_mirror_body_fits_the_same_silhouette(dataset: SyntheticGaitDataset) -> None:
    """The mirror body: joint twins at the same pixels, depth negated, bone lengths of the twin bones."""
    key_index = dataset.keys.index(SequenceKey("003", "nm-02", "090"))
    targets = dataset.targets_at(key_index, np.arange(FRAMES))
    twin = targets.mirrored(dataset.mirror)
    joints = dataset.mirror.joint_ids
    np.testing.assert_array_equal(twin.points[:, :24, :2], targets.points[:, joints, :2])
    np.testing.assert_array_equal(twin.points[:, :24, 2], -targets.points[:, joints, 2])
    np.testing.assert_array_equal(twin.points[:, 24:], twin.vertices[:, dataset.marker_vertex_ids])
    again = twin.mirrored(dataset.mirror)
    np.testing.assert_array_equal(again.vertices, targets.vertices)
    np.testing.assert_array_equal(again.points[:, :24], targets.points[:, :24])
    np.testing.assert_allclose(again.points[:, 24:], targets.points[:, 24:], atol=3e-3)  # markers from vertices
    # a real body, not a relabelling: each bone of the twin is as long as the body's twin bone
    knee, hip = 4, 1  # left_knee, left_hip
    metric, twin_metric = (to_metric_root_relative(t.points, t.half_extent_m) for t in (targets, twin))
    np.testing.assert_allclose(np.linalg.norm(twin_metric[:, knee] - twin_metric[:, hip], axis=-1),
                               np.linalg.norm(metric[:, joints[knee]] - metric[:, joints[hip]], axis=-1), rtol=1e-5)


def test_canonical_targets_are_one_per_silhouette(dataset: SyntheticGaitDataset) -> None:
    """A body and its mirror cast one silhouette and get one canonical target: the left leg on the image's right."""
    key_index = dataset.keys.index(SequenceKey("003", "nm-02", "090"))
    targets = dataset.targets_at(key_index, np.arange(FRAMES))
    canonical, from_twin = targets.canonical(dataset.mirror), targets.mirrored(dataset.mirror).canonical(dataset.mirror)
    np.testing.assert_array_equal(canonical.points[:, :24], from_twin.points[:, :24])
    np.testing.assert_array_equal(canonical.vertices, from_twin.vertices)
    left, right = (canonical.points[:, [JOINT_NAMES.index(f"{side}_{j}") for j in ("hip", "knee", "ankle", "foot")], 0]
                   for side in ("left", "right"))
    assert (left.mean(1) >= right.mean(1)).all()
    kept = (canonical.points == targets.points).all(axis=(1, 2))
    assert 0 < kept.sum() < FRAMES  # a walk swaps which leg is on which side: both labellings occur
    points, vertices, mirrored = target_tensors([targets], dataset.mirror, canonical=True)  # as training takes them
    assert mirrored is None
    np.testing.assert_array_equal(points[0].numpy(), canonical.points)
    np.testing.assert_array_equal(vertices[0].numpy(), canonical.vertices)


def test_meta_records_split_views_and_markers(dataset: SyntheticGaitDataset) -> None:
    assert dataset.train_subjects == ["001", "002"] and dataset.test_subjects == ["003"]
    assert dataset.held_out_views == ["036", "144"]
    assert dataset.meta["views"] == list(VIEWS) and dataset.meta["frames"] == FRAMES
    assert set(dataset.meta["styles"]) == {"001", "002", "003"}
    assert dataset.meta["body_model"]["num_vertices"] == dataset.num_vertices


def test_pretreat_transform_maps_mask_pixels_exactly() -> None:
    mask = np.zeros((300, 200), np.uint8)
    cv2.rectangle(mask, (50, 40), (110, 260), 255, -1)
    result = pretreat_padded(mask)
    assert isinstance(result, PaddedSilhouette)
    transform = result.transform
    cols = np.flatnonzero(result.silhouette.any(axis=0))
    # pixel edges (centre +- 0.5) of the rectangle land on the silhouette's edges
    assert (39.5 - transform.row0) * transform.row_scale == pytest.approx(-0.5)
    assert (260.5 - transform.row0) * transform.row_scale == pytest.approx(63.5)
    assert 49.5 * transform.col_scale - transform.col_offset == pytest.approx(cols[0] - 0.5, abs=0.5)
    assert 110.5 * transform.col_scale - transform.col_offset == pytest.approx(cols[-1] + 0.5, abs=0.5)


def test_missing_or_incomplete_root_says_how_to_make_it(root: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="tools/make_synthetic.py --out"):
        SyntheticGaitDataset(tmp_path / "nowhere")
    for name in ("meta.json", "body_model.pkl", "marker_interpolation.npy"):
        (tmp_path / name).write_bytes((root / name).read_bytes())
    (tmp_path / "sils-64x64-bin").mkdir()
    with pytest.raises(DatasetError, match="incomplete, 3 of 3 subjects missing"):
        SyntheticGaitDataset(tmp_path)
    with pytest.raises(DatasetError, match="not in this dataset"):
        SyntheticGaitDataset(root, subjects=["042"])


def test_cli_reports_bad_input_in_one_line(tmp_path: Path) -> None:
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = make_synthetic.main(["--out", str(tmp_path), "--subjects", "0", "--no-progress"])
    assert code == 2 and stderr.getvalue() == "error: subjects must be between 1 and 999 (got 0)\n"
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = make_synthetic.main(["--out", str(tmp_path), "--body-model", str(tmp_path / "none.pkl")])
    assert code == 2 and stderr.getvalue().startswith("error: ") and "none.pkl" in stderr.getvalue()
    assert stderr.getvalue().count("\n") == 1


def test_dataset_pickles_for_dataloader_workers(dataset: SyntheticGaitDataset) -> None:
    before = dataset.targets_at(0, np.array([1, 2]))  # opens a handle that must not travel
    clone = pickle.loads(pickle.dumps(dataset))
    after = clone.targets_at(0, np.array([1, 2]))
    np.testing.assert_array_equal(before.points, after.points)
    np.testing.assert_array_equal(before.vertices, after.vertices)


def test_flipped_targets_lie_on_the_flipped_silhouettes(dataset: SyntheticGaitDataset) -> None:
    """A horizontally flipped walk keeps 3D supervision: the mirror-image person's joints sit on the flipped pixels."""
    from engines.pretreat import mirror_silhouettes

    key_index = dataset.keys.index(SequenceKey("003", "nm-02", "090"))
    frames = np.arange(FRAMES)
    targets = dataset.targets_at(key_index, frames)
    flipped = targets.flipped(dataset.mirror)
    silhouettes = mirror_silhouettes(dataset.frames(key_index)) > 0
    cols = np.clip(np.round(flipped.points[:, :24, 0] * 32 + 22).astype(int), 0, 43)
    rows = np.clip(np.round(flipped.points[:, :24, 1] * 32 + 32).astype(int), 0, 63)
    assert silhouettes[frames[:, None], rows, cols].all(), "flipped joints off the flipped silhouette"
    left_knee = 4
    np.testing.assert_array_equal(flipped.points[:, left_knee, 0],
                                  -targets.points[:, dataset.mirror.joint_ids[left_knee], 0])
    np.testing.assert_array_equal(flipped.points[:, :24, 2], targets.points[:, dataset.mirror.joint_ids, 2])
    again = flipped.flipped(dataset.mirror)
    np.testing.assert_array_equal(again.points[:, :24], targets.points[:, :24])
