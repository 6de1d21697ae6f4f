"""Procedural walking in SMPL's pose parameters: per-identity gait styles, CASIA-B's conditions, joint angle curves.

The angle curves follow textbook sagittal-plane gait kinematics (hip flexion a cosine over the cycle, two knee
flexion peaks at loading and in swing, ankle plantarflexion at toe-off) plus pelvic rotation, list and sway,
counter-rotating thorax and arm swing. Poses are SMPL local rotations relative to the T-pose (arms lowered by
shoulder rotations), so they drive any SMPL-format model. World: y up, the walker heading +z, the path centred on
z = 0 at the middle frame; `transl` carries sway, bob and progression but no ground offset, which depends on the
body (the dataset generator puts the feet on the floor).

Signs, with SMPL axes (x = the body's left, y up, z forward): a negative rotation about x swings a hanging limb
forward (hip and shoulder flexion), a positive one bends the knee; the left shoulder lowers the T-pose arm by a
negative rotation about z, the right one by a positive one.

Must not import `pipeline` or `stages`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, TypeAlias

import numpy as np
from numpy.typing import NDArray

BodyShape: TypeAlias = NDArray[np.float64]
"""SMPL betas (10,): standard deviations of the body model's shape components."""

CONDITION_TYPES = ("nm", "bg", "cl")
# Nominal leg geometry (metres) for the step length and the pelvis height; a body whose legs differ gets feet that
# slide or lift by a few millimetres.
_NOMINAL_LEG_M = 0.9
_THIGH_M, _SHIN_M = 0.40, 0.415
_HIP_HALF_WIDTH_M = 0.085
_STANDING_M = _THIGH_M + _SHIN_M + 0.085  # hip to floor in the rest pose
# Sole points (below the ankle, ahead of it): heel bottom and back, ball, toe tip.
_SOLE_M = np.array([[0.085, -0.045], [0.045, -0.08], [0.085, 0.115], [0.083, 0.19]])
_GIRTH, _BELLY, _CHEST = 1, 8, 9  # the open model's shape components a coat inflates
BagKind = Literal["none", "shoulder", "backpack", "hand"]


@dataclass(frozen=True)
class GaitStyle:
    """How one person walks; angles in degrees, lengths in metres, `cadence_steps_per_s` in steps per second."""

    hip_flexion_deg: float  # half the hip flexion-extension range (sets the stride)
    knee_flexion_deg: float  # peak knee flexion in swing
    cadence_steps_per_s: float
    arm_swing_deg: float  # half the shoulder flexion-extension range
    elbow_bend_deg: float
    torso_lean_deg: float  # forward lean of the trunk
    pelvic_rotation_deg: float  # yaw amplitude of the pelvis about the vertical
    pelvic_tilt_deg: float  # list: the swing side drops
    lateral_sway_m: float
    vertical_bob_m: float  # bounce on top of what the legs' geometry gives
    toe_out_deg: float
    head_bob_deg: float
    asymmetry: float  # left leg and arm amplitudes x (1 + asymmetry), right x (1 - asymmetry)
    arm_abduction_deg: float  # how far the hanging arms stay away from the body
    left_arm_swing_scale: float = 1.0  # < 1 for the arm that carries a bag
    right_arm_swing_scale: float = 1.0


@dataclass(frozen=True)
class Outfit:
    """What a sequence's walker carries or wears beyond the body mesh (rendered as extra convex shapes)."""

    bag: BagKind = "none"
    bag_side: Literal["left", "right"] = "right"
    bag_size_m: tuple[float, float, float] = (0.3, 0.25, 0.1)  # length (along the walk), height, thickness
    coat: bool = False


def sample_identity(rng: np.random.Generator) -> tuple[BodyShape, GaitStyle]:
    """One person's betas (10,) ~ N(0, 1) clipped to ±2.5, and a gait style drawn from adult ranges."""
    betas = np.clip(rng.standard_normal(10), -2.5, 2.5)
    u = rng.uniform
    style = GaitStyle(
        hip_flexion_deg=u(16.0, 24.0), knee_flexion_deg=u(50.0, 66.0), cadence_steps_per_s=u(1.7, 2.1),
        arm_swing_deg=u(8.0, 22.0), elbow_bend_deg=u(8.0, 20.0), torso_lean_deg=u(0.0, 7.0),
        pelvic_rotation_deg=u(2.0, 8.0), pelvic_tilt_deg=u(2.0, 7.0), lateral_sway_m=u(0.01, 0.035),
        vertical_bob_m=u(0.0, 0.01), toe_out_deg=u(2.0, 12.0), head_bob_deg=u(0.0, 3.0),
        asymmetry=u(-0.08, 0.08), arm_abduction_deg=u(5.0, 12.0),
    )
    return betas, style


def dress_for_condition(style: GaitStyle, betas: BodyShape, condition: str, rng: np.random.Generator
                        ) -> tuple[GaitStyle, BodyShape, Outfit]:
    """CASIA-B's conditions: `nm` as is; `bg` a bag (the carrying arm swings less); `cl` a coat.

    `condition` is the type ("cl") or a sequence name ("cl-01"). The coat inflates girth, belly and chest depth
    through the open model's shape components (with a real SMPL file those betas mean something else) and adds
    a coat tail from the pelvis to mid-thigh when rendered.
    """
    kind = condition.split("-")[0]
    if kind == "nm":
        return style, betas, Outfit()
    if kind == "bg":
        bag: BagKind = ("shoulder", "backpack", "hand")[int(rng.integers(3))]
        side: Literal["left", "right"] = "left" if rng.random() < 0.5 else "right"
        size = (float(rng.uniform(0.25, 0.4)), float(rng.uniform(0.2, 0.4)), float(rng.uniform(0.08, 0.16)))
        carrying = {"shoulder": 0.35, "backpack": 0.8, "hand": 0.2}[bag]
        scales = {"left_arm_swing_scale": carrying} if side == "left" else {"right_arm_swing_scale": carrying}
        if bag == "backpack":
            scales = {"left_arm_swing_scale": carrying, "right_arm_swing_scale": carrying}
            style = replace(style, torso_lean_deg=style.torso_lean_deg + 3.0)
        return replace(style, **scales), betas, Outfit(bag=bag, bag_side=side, bag_size_m=size)
    if kind == "cl":
        dressed = np.array(betas, dtype=np.float64)
        dressed[_GIRTH] += rng.uniform(0.8, 1.5)
        dressed[_BELLY] += rng.uniform(0.2, 0.6)
        dressed[_CHEST] += rng.uniform(0.3, 0.8)
        return replace(style, arm_swing_deg=style.arm_swing_deg * 0.85), dressed, Outfit(coat=True)
    raise ValueError(f"unknown condition {condition!r}: expected one of {', '.join(CONDITION_TYPES)}")


def rotation_about(axis: Literal["x", "y", "z"], angle_rad: NDArray[np.floating]) -> NDArray[np.float64]:
    """(..., 3, 3) right-handed rotations by `angle_rad` (...) about a coordinate axis."""
    angle = np.asarray(angle_rad, dtype=np.float64)
    c, s = np.cos(angle), np.sin(angle)
    one, zero = np.ones_like(angle), np.zeros_like(angle)
    rows = {
        "x": ((one, zero, zero), (zero, c, -s), (zero, s, c)),
        "y": ((c, zero, s), (zero, one, zero), (-s, zero, c)),
        "z": ((c, -s, zero), (s, c, zero), (zero, zero, one)),
    }[axis]
    return np.stack([np.stack(row, axis=-1) for row in rows], axis=-2)


def matrix_to_axis_angle(rotations: NDArray[np.floating]) -> NDArray[np.float64]:
    """(..., 3, 3) rotations -> (..., 3) axis-angle vectors (radians); angles below pi, as walking needs."""
    rotations = np.asarray(rotations, dtype=np.float64)
    cos = np.clip((np.trace(rotations, axis1=-2, axis2=-1) - 1.0) / 2.0, -1.0, 1.0)
    angle = np.arccos(cos)
    skew = np.stack([rotations[..., 2, 1] - rotations[..., 1, 2], rotations[..., 0, 2] - rotations[..., 2, 0],
                     rotations[..., 1, 0] - rotations[..., 0, 1]], axis=-1)
    sin = np.sin(angle)
    small = sin < 1e-8
    factor = np.where(small, 0.5, angle / (2.0 * np.where(small, 1.0, sin)))
    return skew * factor[..., None]


def axis_angle_to_matrix(axis_angle: NDArray[np.floating]) -> NDArray[np.float64]:
    """(..., 3) axis-angle vectors (radians) -> (..., 3, 3) rotations (Rodrigues)."""
    vectors = np.asarray(axis_angle, dtype=np.float64)
    angle = np.linalg.norm(vectors, axis=-1, keepdims=True)
    axis = vectors / np.where(angle > 1e-12, angle, 1.0)
    x, y, z = axis[..., 0], axis[..., 1], axis[..., 2]
    zero = np.zeros_like(x)
    skew = np.stack([np.stack([zero, -z, y], -1), np.stack([z, zero, -x], -1), np.stack([-y, x, zero], -1)], -2)
    sin, cos = np.sin(angle)[..., None], np.cos(angle)[..., None]
    return np.eye(3) + sin * skew + (1.0 - cos) * (skew @ skew)


def global_rotations(global_orient: NDArray[np.floating], body_pose: NDArray[np.floating],
                     parents: NDArray[np.int64]) -> NDArray[np.float64]:
    """(T, 24, 3, 3) world orientation of each joint's frame: forward kinematics of SMPL's local rotations."""
    local = axis_angle_to_matrix(np.concatenate([np.asarray(global_orient).reshape(-1, 1, 3),
                                                 np.asarray(body_pose).reshape(-1, 23, 3)], axis=1))
    world = np.empty_like(local)
    world[:, 0] = local[:, 0]
    for joint in range(1, local.shape[1]):
        world[:, joint] = world[:, parents[joint]] @ local[:, joint]
    return world


def _bump(phase: NDArray[np.float64], centre: float, width: float) -> NDArray[np.float64]:
    """A periodic bump of height 1 at `centre` with about Gaussian `width` (both in gait-cycle fractions)."""
    kappa = 2.0 / (2.0 * np.pi * width) ** 2
    return np.exp(kappa * (np.cos(2.0 * np.pi * (phase - centre)) - 1.0))


def _leg_angles(phase: NDArray[np.float64], style: GaitStyle, gain: float) -> dict[str, NDArray[np.float64]]:
    """Hip flexion, knee flexion and ankle dorsiflexion (degrees) over one leg's cycle (0 = its heel strike)."""
    hip = 8.0 + gain * style.hip_flexion_deg * np.cos(2.0 * np.pi * (phase - 0.03))
    knee = 4.0 + 14.0 * _bump(phase, 0.15, 0.06) + gain * style.knee_flexion_deg * _bump(phase, 0.72, 0.12)
    ankle = 2.0 + 9.0 * _bump(phase, 0.45, 0.12) - 20.0 * _bump(phase, 0.63, 0.06) - 5.0 * _bump(phase, 0.06, 0.04)
    return {"hip": hip, "knee": knee, "ankle": ankle}


def _leg_reach(angles: dict[str, NDArray[np.float64]], hip_lift_m: NDArray[np.float64]) -> NDArray[np.float64]:
    """How far (metres) below the pelvis the leg's lowest sole point is, for nominal leg proportions."""
    thigh = -np.radians(angles["hip"])  # global sagittal rotation about x of each segment
    shin = thigh + np.radians(angles["knee"])
    foot = shin - np.radians(angles["ankle"])
    sole_y = -_SOLE_M[:, 0] * np.cos(foot)[:, None] - _SOLE_M[:, 1] * np.sin(foot)[:, None]
    return _THIGH_M * np.cos(thigh) + _SHIN_M * np.cos(shin) - sole_y.min(axis=1) - hip_lift_m


def walking_sequence(style: GaitStyle, frames: int, fps: float = 25.0, rng: np.random.Generator | None = None
                     ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
    """`frames` frames of walking at `fps`: global_orient (T, 3), body_pose (T, 69), transl (T, 3) float32.

    `rng` draws the starting phase and a per-sequence speed jitter (cadence x N(1, 0.03)); None gives phase 0
    and no jitter.
    """
    start = 0.0 if rng is None else float(rng.uniform())
    cadence = style.cadence_steps_per_s * (1.0 if rng is None else float(rng.normal(1.0, 0.03)))
    time_s = np.arange(frames) / fps
    phase = start + time_s * cadence / 2.0  # one gait cycle = two steps; 0 = left heel strike
    cycle = 2.0 * np.pi * phase
    rad = np.radians
    rotations = np.tile(np.eye(3), (frames, 24, 1, 1))

    yaw = -rad(style.pelvic_rotation_deg) * np.cos(cycle)  # the left hip leads at left heel strike
    tilt = rad(style.pelvic_tilt_deg) * np.sin(cycle + 0.6)  # the swing side drops
    rotations[:, 0] = rotation_about("y", yaw) @ rotation_about("z", tilt)

    lean = rad(style.torso_lean_deg) + rad(1.5) * np.cos(2.0 * cycle)
    thorax_yaw = -1.4 * yaw  # the thorax counter-rotates: about 0.4 x the pelvis, the other way round
    for joint in (3, 6, 9):
        rotations[:, joint] = rotation_about("y", thorax_yaw / 3) @ rotation_about("x", lean / 3)
    rotations[:, 3] = rotation_about("z", -0.8 * tilt) @ rotations[:, 3]  # the trunk stays upright over the list
    head_pitch = -0.7 * lean + rad(style.head_bob_deg) * np.sin(2.0 * cycle)
    rotations[:, 12] = rotation_about("y", 0.4 * yaw) @ rotation_about("x", head_pitch)  # gaze stays ahead

    reach = []
    for side, sign, offset, gain in (("left", 1.0, 0.0, 1.0 + style.asymmetry),
                                     ("right", -1.0, 0.5, 1.0 - style.asymmetry)):
        hip, knee, ankle = (1, 4, 7) if side == "left" else (2, 5, 8)
        angles = _leg_angles(np.mod(phase + offset, 1.0), style, gain)
        reach.append(_leg_reach(angles, sign * _HIP_HALF_WIDTH_M * np.sin(tilt)))
        rotations[:, hip] = (rotation_about("z", -tilt) @ rotation_about("x", -rad(angles["hip"]))
                             @ rotation_about("y", sign * rad(style.toe_out_deg)))
        rotations[:, knee] = rotation_about("x", rad(angles["knee"]))
        rotations[:, ankle] = rotation_about("x", -rad(angles["ankle"]))

        shoulder, elbow = (16, 18) if side == "left" else (17, 19)
        swing_scale = style.left_arm_swing_scale if side == "left" else style.right_arm_swing_scale
        # the arm swings with the opposite leg; leaning forward would carry a rigid arm backwards, so add the lean
        swing = -gain * swing_scale * rad(style.arm_swing_deg) * np.cos(cycle + 2.0 * np.pi * offset) \
            + lean + rad(3.0)
        lower = -sign * (np.pi / 2 - rad(style.arm_abduction_deg))
        rotations[:, shoulder] = rotation_about("x", -swing) @ rotation_about("z", np.full(frames, lower))
        bend = rad(style.elbow_bend_deg) + 0.3 * np.maximum(swing - lean, 0.0)
        rotations[:, elbow] = rotation_about("y", -sign * bend)

    speed = 2.0 * _NOMINAL_LEG_M * np.sin(rad(style.hip_flexion_deg)) * cadence
    transl = np.stack([
        style.lateral_sway_m * np.sin(cycle),
        # the longer-reaching leg stands on the floor; the style's bob adds a bounce, lowest at double support
        np.maximum(*reach) - _STANDING_M - style.vertical_bob_m * np.cos(2.0 * cycle),
        speed * (time_s - time_s[-1] / 2.0),
    ], axis=1)
    axis_angle = matrix_to_axis_angle(rotations)
    return (axis_angle[:, 0].astype(np.float32), axis_angle[:, 1:].reshape(frames, 69).astype(np.float32),
            transl.astype(np.float32))
