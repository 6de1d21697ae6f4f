"""Binary silhouettes of posed body meshes seen by a fixed CASIA-B-like camera, with exact projections.

Rendering fills, per vertex group (the joint with the largest skinning weight), the convex hull of the group's
projected vertices: every piece of the open model is convex and SMPL's per-joint groups are nearly so, which makes
a silhouette a few dozen `cv2.fillConvexPoly` calls instead of a rasteriser. Bags and coat tails are convex
shapes from points attached to the body, filled the same way.

World frame: y up, the walker heading +z along x = 0, the path centred on z = 0. Camera frame: OpenCV (x right,
y down, z forward). Pixel coordinates have pixel centres on integers, as OpenCV's drawing and resizing use them.

Must not import `pipeline` or `stages`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

from engines.body.smpl import BodyModel
from engines.body.walking import Outfit

CASIA_B_VIEWS_DEG = tuple(range(0, 181, 18))
_SHIFT = 4  # fillConvexPoly's fractional bits: vertices placed to 1/16 pixel
_COAT_MARGIN_M = 0.03


@dataclass(frozen=True)
class Camera:
    """A pinhole camera: `K` (3, 3) intrinsics in pixels, `R` (3, 3) and `t` (3,) metres map world to camera."""

    K: NDArray[np.float64]
    R: NDArray[np.float64]
    t: NDArray[np.float64]
    image_hw: tuple[int, int]

    def to_camera(self, points: NDArray[np.floating]) -> NDArray[np.float64]:
        """(..., 3) world points -> (..., 3) camera-frame points, metres."""
        return np.asarray(points, np.float64) @ self.R.T + self.t


def camera_for_view(view_deg: float, distance_m: float = 6.5, height_m: float = 1.0,
                    image_hw: tuple[int, int] = (240, 320), focal_px: float = 380.0,
                    elevation_deg: float = 0.0) -> Camera:
    """A camera `distance_m` (horizontally) from the path centre at CASIA-B view `view_deg`, looking at the path.

    0 deg: the walker comes towards the camera; 90 deg: side view, the walker's left side towards the camera and
    walking right to left in the image (as in CASIA-B); 180 deg: walking away. `elevation_deg` raises the camera
    and tilts it down by that angle towards the point `height_m` above the path centre (0: level, as CASIA-B;
    surveillance cameras look down 10-45 deg). The principal point is the image centre.
    """
    angle, tilt = np.radians(view_deg), np.radians(elevation_deg)
    centre = np.array([distance_m * np.sin(angle), height_m + distance_m * np.tan(tilt), distance_m * np.cos(angle)])
    forward = np.array([-np.sin(angle) * np.cos(tilt), -np.sin(tilt), -np.cos(angle) * np.cos(tilt)])
    right = np.cross(np.array([0.0, -1.0, 0.0]), forward)
    right /= np.linalg.norm(right)
    rotation = np.stack([right, np.cross(forward, right), forward])
    height, width = image_hw
    intrinsics = np.array([[focal_px, 0.0, (width - 1) / 2], [0.0, focal_px, (height - 1) / 2], [0.0, 0.0, 1.0]])
    return Camera(K=intrinsics, R=rotation, t=-rotation @ centre, image_hw=(int(height), int(width)))


def camera_to_pixels(points_cam: NDArray[np.floating], intrinsics: NDArray[np.floating]) -> NDArray[np.float64]:
    """(..., 3) camera-frame points (metres, z > 0) -> (..., 2) pixel positions (u = column, v = row)."""
    points_cam = np.asarray(points_cam, np.float64)
    intrinsics = np.asarray(intrinsics, np.float64)
    return points_cam[..., :2] / points_cam[..., 2:3] * np.diag(intrinsics)[:2] + intrinsics[:2, 2]


def project(points: NDArray[np.floating], camera: Camera) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(..., 3) world points -> pixel positions (..., 2) as (u = column, v = row) and depths (...,) in metres."""
    cam = camera.to_camera(points)
    return camera_to_pixels(cam, camera.K), cam[..., 2]


def _vertex_groups(part_of_vertex: NDArray[np.int64]) -> list[NDArray[np.int64]]:
    order = np.argsort(part_of_vertex, kind="stable")
    bounds = np.flatnonzero(np.diff(part_of_vertex[order])) + 1
    return [group for group in np.split(order, bounds) if len(group) >= 3]


def _fill_hulls(mask: NDArray[np.uint8], point_sets: Sequence[NDArray[np.float64]]) -> None:
    for points in point_sets:
        hull = cv2.convexHull(points.astype(np.float32))
        cv2.fillConvexPoly(mask, np.round(hull * (1 << _SHIFT)).astype(np.int32), 255, cv2.LINE_8, _SHIFT)


def render_sequence(vertices: NDArray[np.floating], camera: Camera, part_of_vertex: NDArray[np.int64],
                    extras: Sequence[NDArray[np.floating]] = ()) -> NDArray[np.uint8]:
    """(T, V, 3) world meshes (+ extras, each (T, P, 3) world points) -> (T, H, W) uint8 masks in {0, 255}."""
    vertices = np.asarray(vertices)
    uv, depth = project(vertices, camera)
    extra_uv = [project(points, camera) for points in extras]
    if (depth <= 0).any() or any((d <= 0).any() for _, d in extra_uv):
        raise ValueError("some points are behind the camera: move the camera further from the path")
    groups = _vertex_groups(np.asarray(part_of_vertex))
    masks = np.zeros((len(vertices), *camera.image_hw), np.uint8)
    for frame in range(len(vertices)):
        _fill_hulls(masks[frame], [uv[frame, group] for group in groups] + [e[frame] for e, _ in extra_uv])
    return masks


def render_silhouette(vertices: NDArray[np.floating], camera: Camera, part_of_vertex: NDArray[np.int64],
                      extras: Sequence[NDArray[np.floating]] = ()) -> NDArray[np.uint8]:
    """One (V, 3) world mesh (+ extras, each (P, 3) world points) -> (H, W) uint8 mask in {0, 255}."""
    return render_sequence(np.asarray(vertices)[None], camera, part_of_vertex,
                           [np.asarray(points)[None] for points in extras])[0]


def _box(centre: NDArray[np.float64], rotation: NDArray[np.float64], size_xyz: Sequence[float]) -> NDArray[np.float64]:
    """(T, 8, 3) corners of boxes of `size_xyz` (metres, along the local axes) at `centre` (T, 3)."""
    signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)
    corners = signs * np.asarray(size_xyz) / 2
    return centre[:, None] + np.einsum("tij,kj->tki", rotation, corners)


def outfit_extras(outfit: Outfit, model: BodyModel, vertices: NDArray[np.floating], joints: NDArray[np.floating],
                  rotations: NDArray[np.floating]) -> list[NDArray[np.float32]]:
    """World points (T, P, 3) of each convex extra shape the outfit adds, following the posed body.

    `vertices` (T, V, 3) and `joints` (T, 24, 3) from `BodyModel.forward`, `rotations` (T, 24, 3, 3) from
    `walking.global_rotations`. Sizes come from the model's template, so the shapes fit any SMPL-format body.
    """
    vertices, joints = np.asarray(vertices, np.float64), np.asarray(joints, np.float64)
    template, parts = model.template_vertices, model.part_of_vertex
    rest_joints = model.joint_regressor.astype(np.float64) @ template
    extras = []
    if outfit.coat:
        mid_thigh = (rest_joints[1, 1] + rest_joints[4, 1]) / 2
        ids = np.flatnonzero(np.isin(parts, (0, 1, 2)) & (template[:, 1] >= mid_thigh))
        tail = vertices[:, ids]
        outward = tail - joints[:, None, 0]
        outward[..., 1] = 0.0
        outward /= np.maximum(np.linalg.norm(outward, axis=-1, keepdims=True), 1e-6)
        extras.append(tail + _COAT_MARGIN_M * outward)
    if outfit.bag != "none":
        length, height, thickness = outfit.bag_size_m
        side = 1.0 if outfit.bag_side == "left" else -1.0  # the body's left is +x
        pelvis = rotations[:, 0]
        if outfit.bag == "shoulder":
            hip_reach = float(np.abs(template[parts == 0, 0]).max())
            local = np.array([side * (hip_reach + thickness / 2 + 0.01), rest_joints[1, 1] - rest_joints[0, 1], 0.0])
            centre = joints[:, 0] + pelvis @ local
            extras.append(_box(centre, pelvis, (thickness, height, length)))
        elif outfit.bag == "backpack":
            chest = rotations[:, 9]
            back = float(template[np.isin(parts, (6, 9)), 2].min() - rest_joints[9, 2])
            centre = joints[:, 9] + chest @ np.array([0.0, -0.08, back - thickness / 2 - 0.005])
            extras.append(_box(centre, chest, (length, height + 0.1, thickness)))
        else:
            hand = joints[:, 22 if side > 0 else 23]
            centre = hand + np.array([0.0, -height / 2 - 0.02, 0.0])
            extras.append(_box(centre, pelvis, (thickness, height, length)))
    return [points.astype(np.float32) for points in extras]
