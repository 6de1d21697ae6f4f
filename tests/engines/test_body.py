"""The open SMPL-format body model through smplx, walking motion signs, silhouettes and the marker interpolation."""

from __future__ import annotations

import contextlib
import io
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import smplx
import torch

from engines.body.open_model import (
    JOINT_NAMES,
    PARENTS,
    build_open_body_model,
    mirror_joint_ids,
    write_body_model,
)
from engines.body.render import camera_for_view, project, render_sequence
from engines.body.smpl import BodyModel, fit_marker_interpolation, mirror_vertex_ids, virtual_marker_ids
from engines.body.walking import (
    axis_angle_to_matrix,
    dress_for_condition,
    matrix_to_axis_angle,
    sample_identity,
    walking_sequence,
)
from engines.errors import CheckpointError, WeightsNotFound


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("body") / "open_body.pkl"
    write_body_model(build_open_body_model(seed=0), path)
    return path


@pytest.fixture(scope="module")
def body(model_path: Path) -> BodyModel:
    return BodyModel.load(model_path)


def _walk(body: BodyModel, seed: int, frames: int = 40, condition: str = "nm",
          phase_zero: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (T, V, 3) and joints (T, 24, 3) of one walking identity, lowest point of the sequence on y = 0."""
    rng = np.random.default_rng(seed)
    betas, style = sample_identity(rng)
    style, betas, _ = dress_for_condition(style, betas, condition, rng)
    orient, pose, transl = walking_sequence(style, frames, 25.0, None if phase_zero else rng)
    vertices, joints = body.forward(betas[None], orient, pose, transl)
    floor = vertices[..., 1].min()
    vertices[..., 1] -= floor
    joints[..., 1] -= floor
    return vertices, joints


def test_smplx_loads_the_generated_model_as_an_smpl_file(model_path: Path, body: BodyModel) -> None:
    data = build_open_body_model(seed=0)
    with contextlib.redirect_stdout(io.StringIO()):
        layer = smplx.SMPL(model_path=str(model_path), vertex_ids=data["vertex_ids"])
    with torch.no_grad():
        out = layer()  # zero pose and shape: the template itself
    template = data["v_template"]
    np.testing.assert_allclose(out.vertices[0].numpy(), template, atol=1e-5)
    np.testing.assert_allclose(out.joints[0, :24].numpy(), data["J_regressor"] @ template, atol=1e-5)
    assert 1000 <= len(template) <= 2000
    assert 1.70 <= np.ptp(template[:, 1]) <= 1.75  # metres, head to heel
    assert data["kintree_table"][1].tolist() == list(range(24))
    assert body.parents.tolist() == list(PARENTS)
    assert body.num_vertices == len(template) and body.faces.max() < len(template)
    # T-pose in SMPL axes: left hand on +x at shoulder height, toes forward (+z), head up
    joints = data["J_regressor"] @ template
    names = {name: i for i, name in enumerate(JOINT_NAMES)}
    assert joints[names["left_wrist"], 0] > 0.6 and joints[names["right_wrist"], 0] < -0.6
    assert abs(joints[names["left_wrist"], 1] - joints[names["left_shoulder"], 1]) < 0.02
    assert joints[names["left_foot"], 2] > joints[names["left_ankle"], 2] + 0.08
    assert joints[names["head"], 1] > joints[names["neck"], 1] > joints[names["pelvis"], 1]
    # each piece is grouped with its owner: 24 vertex groups, the owner's weight dominant
    assert sorted(set(body.part_of_vertex.tolist())) == list(range(24))
    assert np.sort(body.lbs_weights, axis=1)[:, -1].min() >= 0.6
    np.testing.assert_allclose(body.lbs_weights.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(body.joint_regressor.sum(axis=1), 1.0, atol=1e-5)


def test_joints_of_a_walking_body_project_inside_its_rendered_silhouettes(body: BodyModel) -> None:
    """Acceptance: smplx poses the generated model with a walking sequence; every joint lands on the silhouette."""
    for seed in (1, 2):
        vertices, joints = _walk(body, seed, frames=30)
        for view in (0, 36, 90, 126, 180):
            camera = camera_for_view(view)
            masks = render_sequence(vertices, camera, body.part_of_vertex)
            uv, _ = project(joints, camera)
            cols, rows = np.round(uv[..., 0]).astype(int), np.round(uv[..., 1]).astype(int)
            inside = masks[np.arange(len(masks))[:, None], rows, cols] > 0
            assert inside.all(), f"seed {seed} view {view}: joints outside {np.argwhere(~inside)[:5]}"
            heights = [np.ptp(np.flatnonzero(mask.any(axis=1))) for mask in masks]
            assert min(heights) > 80  # a whole person, not a sliver, at 6.5 m with f = 380 px
            assert not (masks[:, [0, -1]].any() or masks[:, :, [0, -1]].any())  # never cut by the frame


def test_shape_components_change_the_body_as_named(body: BodyModel) -> None:
    zero = np.zeros((1, 3), np.float32)

    def shaped(component: int, value: float) -> tuple[np.ndarray, np.ndarray]:
        betas = np.zeros((1, 10), np.float32)
        betas[0, component] = value
        vertices, joints = body.forward(betas, zero, np.zeros((1, 69), np.float32), zero)
        return vertices[0], joints[0]

    neutral_v, neutral_j = shaped(0, 0.0)
    taller_v, _ = shaped(0, 2.0)
    assert np.ptp(taller_v[:, 1]) - np.ptp(neutral_v[:, 1]) == pytest.approx(2 * 0.04 * 1.72, abs=0.02)
    waist = (body.part_of_vertex == 3)
    heavier_v, _ = shaped(1, 2.0)
    assert np.ptp(heavier_v[waist, 0]) / np.ptp(neutral_v[waist, 0]) == pytest.approx(1.16, abs=0.02)

    def leg(joints: np.ndarray) -> float:
        return float(np.linalg.norm(joints[1] - joints[4]) + np.linalg.norm(joints[4] - joints[7]))

    def arm(joints: np.ndarray) -> float:
        return float(np.linalg.norm(joints[16] - joints[18]) + np.linalg.norm(joints[18] - joints[20]))

    # the joint regressor follows the shape: joints move with the longer legs and arms
    assert leg(shaped(2, 2.0)[1]) - leg(neutral_j) == pytest.approx(0.07, abs=0.005)
    assert arm(shaped(6, 2.0)[1]) - arm(neutral_j) == pytest.approx(0.06, abs=0.005)
    assert shaped(4, 2.0)[1][16, 0] - neutral_j[16, 0] == pytest.approx(0.03, abs=0.005)  # shoulder width
    belly_v, _ = shaped(8, 2.0)
    assert belly_v[waist, 2].max() - neutral_v[waist, 2].max() > 0.04  # the belly sticks out in front


def _numpy_lbs(data: dict, pose: np.ndarray) -> np.ndarray:
    """SMPL's linear blend skinning written out from the paper, with cv2.Rodrigues, for one pose (24, 3)."""
    template, regressor, weights = data["v_template"], data["J_regressor"], data["weights"]
    rotations = np.stack([cv2.Rodrigues(p.astype(np.float64))[0] for p in pose])
    feature = (rotations[1:] - np.eye(3)).reshape(-1)
    posed = template + data["posedirs"] @ feature
    joints = regressor @ template
    world = np.zeros((24, 4, 4))
    for j in range(24):
        local = np.eye(4)
        local[:3, :3] = rotations[j]
        local[:3, 3] = joints[j] - (joints[PARENTS[j]] if j else 0.0)
        world[j] = world[PARENTS[j]] @ local if j else local
    skinning = world.copy()
    skinning[:, :3, 3] -= np.einsum("jab,jb->ja", world[:, :3, :3], joints)
    blended = np.einsum("vj,jab->vab", weights, skinning)
    return np.einsum("vab,vb->va", blended[:, :3, :3], posed) + blended[:, :3, 3]


def test_pose_blend_shapes_follow_smpls_convention(body: BodyModel) -> None:
    data = build_open_body_model(seed=0)
    pose = np.zeros((24, 3))
    pose[4] = [np.radians(70.0), 0.0, 0.0]  # left knee bent
    pose[16] = [0.0, 0.0, -np.radians(80.0)]  # left arm lowered
    vertices, _ = body.forward(np.zeros((1, 10)), pose[None, 0], pose[None, 1:].reshape(1, 69), np.zeros((1, 3)))
    np.testing.assert_allclose(vertices[0], _numpy_lbs(data, pose), atol=2e-5)

    rotations = np.stack([cv2.Rodrigues(p)[0] for p in pose])
    offsets = data["posedirs"] @ (rotations[1:] - np.eye(3)).reshape(-1)
    magnitude = np.linalg.norm(offsets, axis=1)
    knee = data["J_regressor"][4] @ data["v_template"]
    near_knee = np.linalg.norm(data["v_template"] - knee, axis=1) < 0.06
    assert magnitude[near_knee].max() > 0.003  # a bulge of millimetres at the bent knee ...
    head = body.part_of_vertex == 15
    assert magnitude[head].max() == 0.0  # ... and nothing far away
    outward = np.einsum("vc,vc->v", offsets[near_knee], data["v_template"][near_knee] - knee)
    assert (outward >= -1e-9).all()


def test_walking_signs(body: BodyModel) -> None:
    frames = 50
    vertices, joints = _walk(body, seed=5, frames=frames, phase_zero=True)
    pelvis = joints[:, 0]
    assert np.all(np.diff(pelvis[:, 2]) > 0)  # progression along +z
    assert abs(pelvis[frames // 2 - 1 : frames // 2 + 1, 2].mean()) < 0.1  # path centred on z = 0
    assert 0.8 < (pelvis[-1, 2] - pelvis[0, 2]) / (frames / 25.0) < 1.8  # a walking speed in m/s
    # phase 0 = left heel strike: the left foot ahead, the right arm forward (arms swing with the opposite leg)
    assert joints[0, 7, 2] - joints[0, 8, 2] > 0.2
    assert joints[0, 21, 2] - joints[0, 20, 2] > 0.05
    # half a cycle later the right foot leads: find the frame where the ankle order flips back the most
    lead = joints[:, 7, 2] - joints[:, 8, 2]
    assert lead.min() < -0.2
    # arms hang down from the T-pose: wrists well below the shoulders, close to the trunk sideways
    drop = joints[:, [16, 17], 1] - joints[:, [20, 21], 1]
    assert (drop > 0.3).all() and drop.mean() > 0.4
    assert (np.abs(joints[:, [20, 21], 0] - pelvis[:, None, 0]) < 0.35).all()
    # toes point forward (the foot only pitches down to near vertical after toe-off) and the head stays on top
    toes_ahead = joints[:, [10, 11], 2] - joints[:, [7, 8], 2]
    assert toes_ahead.mean() > 0.08 and (toes_ahead > 0).mean() > 0.85 and toes_ahead.min() > -0.05
    assert (joints[:, 15, 1] > joints[:, 0, 1] + 0.5).all()
    # one foot is always on the floor (the lowest point of each frame within 2 cm of the floor)
    assert vertices[..., 1].min(axis=1).max() < 0.02


def test_axis_angle_helpers_agree_with_rodrigues() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 3)) * rng.uniform(0.0, 3.0, size=(50, 1))
    matrices = axis_angle_to_matrix(vectors)
    expected = np.stack([cv2.Rodrigues(v)[0] for v in vectors])
    np.testing.assert_allclose(matrices, expected, atol=1e-10)
    np.testing.assert_allclose(axis_angle_to_matrix(matrix_to_axis_angle(matrices)), matrices, atol=1e-8)


def test_virtual_markers_and_marker_interpolation(body: BodyModel) -> None:
    markers = virtual_marker_ids(body)
    assert markers.shape == (64,) and len(set(markers.tolist())) == 64
    assert markers[0] == np.argmax(body.template_vertices[:, 1])  # starts on top of the head
    np.testing.assert_array_equal(markers, virtual_marker_ids(body))
    spread = np.linalg.norm(body.template_vertices[markers, None] - body.template_vertices[None, markers], axis=-1)
    assert spread[~np.eye(64, dtype=bool)].min() > 0.08  # spread over the surface, metres

    train = np.concatenate([_walk(body, seed, frames=30, condition=c)[0][::3]
                            for seed in range(10, 18) for c in ("nm", "cl")])
    held_out = np.concatenate([_walk(body, seed, frames=30, condition=c)[0][::3]
                               for seed in (40, 41) for c in ("nm", "cl")])
    interpolation = fit_marker_interpolation(train, markers)
    assert interpolation.shape == (body.num_vertices, 64) and interpolation.dtype == np.float32
    np.testing.assert_allclose(interpolation.sum(axis=1), 1.0, atol=1e-5)
    rebuilt = np.einsum("vm,tmc->tvc", interpolation, held_out[:, markers])
    error_mm = np.linalg.norm(rebuilt - held_out, axis=-1).mean() * 1000
    assert error_mm < 5.0, f"held-out mean vertex error {error_mm:.1f} mm"  # measured about 2 mm
    shifted = held_out + np.array([1.0, -2.0, 3.0])  # affine: commutes with translation
    np.testing.assert_allclose(np.einsum("vm,tmc->tvc", interpolation, shifted[:, markers]),
                               rebuilt + np.array([1.0, -2.0, 3.0]), atol=1e-4)


def test_mirror_maps_swap_left_and_right(body: BodyModel) -> None:
    joints = mirror_joint_ids()
    names = [JOINT_NAMES[j] for j in joints]
    assert names[JOINT_NAMES.index("left_knee")] == "right_knee" and names[JOINT_NAMES.index("head")] == "head"
    np.testing.assert_array_equal(joints[joints], np.arange(24))
    vertices = mirror_vertex_ids(body)
    np.testing.assert_array_equal(vertices[vertices], np.arange(body.num_vertices))  # an involution
    template = body.template_vertices
    np.testing.assert_allclose(template[vertices], template * [-1.0, 1.0, 1.0], atol=1e-6)  # built symmetric
    assert (template[vertices[template[:, 0] > 0.05], 0] < -0.05).all()  # a left vertex's twin is on the right
    np.testing.assert_array_equal(body.part_of_vertex[vertices], joints[body.part_of_vertex])  # skinning too

    class Lopsided:  # only what mirror_vertex_ids reads
        path = Path("lopsided.pkl")
        part_of_vertex = body.part_of_vertex
        template_vertices = template + np.where(template[:, :1] > 0.1, [0.05, 0.0, 0.0], 0.0)

    with pytest.raises(CheckpointError, match="lopsided.pkl: template is not left/right symmetric"):
        mirror_vertex_ids(Lopsided())  # type: ignore[arg-type]


def test_open_model_is_deterministic_per_seed(tmp_path: Path) -> None:
    write_body_model(build_open_body_model(seed=0), tmp_path / "a.pkl")
    write_body_model(build_open_body_model(seed=0), tmp_path / "b.pkl")
    write_body_model(build_open_body_model(seed=1), tmp_path / "c.pkl")
    assert (tmp_path / "a.pkl").read_bytes() == (tmp_path / "b.pkl").read_bytes()
    assert (tmp_path / "a.pkl").read_bytes() != (tmp_path / "c.pkl").read_bytes()


def test_body_model_errors_name_the_file_and_the_problem(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFound, match="missing.pkl: body model file not found"):
        BodyModel.load(tmp_path / "missing.pkl")
    (tmp_path / "list.pkl").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(CheckpointError, match="holds a list"):
        BodyModel.load(tmp_path / "list.pkl")
    data = build_open_body_model(seed=0)
    del data["posedirs"]
    write_body_model(data, tmp_path / "partial.pkl")
    with pytest.raises(CheckpointError, match="missing posedirs"):
        BodyModel.load(tmp_path / "partial.pkl")
    # what an original SMPL file needs: chumpy objects (and scipy.sparse), which this project does not install
    (tmp_path / "chumpy.pkl").write_bytes(b"\x80\x02cchumpy.ch\nCh\nq\x00)\x81q\x01.")
    with pytest.raises(CheckpointError, match="needs the 'chumpy' package"):
        BodyModel.load(tmp_path / "chumpy.pkl")
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="cannot unpickle"):
        BodyModel.load(tmp_path / "junk.pkl")


def test_an_elevated_camera_looks_down_at_the_path_centre() -> None:
    from engines.body.render import camera_for_view, project

    level = camera_for_view(90.0, 6.5, 1.0)
    high = camera_for_view(90.0, 6.5, 1.0, elevation_deg=30.0)
    target = np.array([[0.0, 1.0, 0.0]])
    for camera in (level, high):
        uv, depth = project(target, camera)
        np.testing.assert_allclose(uv[0], [(320 - 1) / 2, (240 - 1) / 2], atol=1e-6)  # the image centre
    centre = -high.R.T @ high.t
    np.testing.assert_allclose(centre[1], 1.0 + 6.5 * np.tan(np.radians(30.0)), atol=1e-9)
    np.testing.assert_allclose(high.R @ high.R.T, np.eye(3), atol=1e-12)
    feet, head = project(np.array([[0.0, 0.0, 0.0], [0.0, 1.8, 0.0]]), high)[0]
    assert feet[1] > head[1]  # still upright in the image
