"""Any SMPL-format body model (our open one or a real `SMPL_NEUTRAL.pkl`) behind one numpy interface, via smplx.

Also the two fixed linear maps Mesh-Gait (arXiv 2510.10406) builds on, after Virtual Markers (Ma et al., CVPR
2023): 64 marker vertices and the affine interpolation matrix that rebuilds the whole mesh from them.

Must not import `pipeline` or `stages`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import smplx
import torch
from numpy.typing import NDArray

from engines.body.open_model import mirror_joint_ids
from engines.errors import CheckpointError, WeightsNotFound

log = logging.getLogger(__name__)

NUM_JOINTS = 24
NUM_BETAS = 10
_BATCH = 512  # poses per smplx call: bounds memory for a 6890-vertex model
_EXPECTED = (
    "an SMPL-format pkl: v_template (V, 3), f (F, 3), J_regressor (24, V), weights (V, 24), "
    "shapedirs (V, 3, >=10), posedirs (V, 3, 207), kintree_table (2, 24)"
)


def _read_model_file(path: Path) -> dict[str, Any]:
    """The pickled dict, checked against SMPL's layout; errors name the file and what was expected."""
    if not path.is_file():
        raise WeightsNotFound(
            f"{path}: body model file not found (expected {_EXPECTED}; make the open one with "
            "`python tools/make_synthetic.py`, which writes body_model.pkl, or point to a real SMPL file)"
        )
    try:
        with path.open("rb") as handle:
            data = pickle.load(handle, encoding="latin1")  # trusted local model files, as smplx itself does
    except ModuleNotFoundError as exc:
        raise CheckpointError(
            f"{path}: unpickling needs the '{exc.name}' package, which this project does not install (the original "
            "SMPL files hold chumpy arrays and a scipy.sparse J_regressor); convert it once to plain numpy arrays "
            "(e.g. with smplx's tools/clean_ch.py where chumpy is installed, and J_regressor.toarray()) and retry"
        ) from exc
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: cannot unpickle body model ({exc}); expected {_EXPECTED}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: holds a {type(data).__name__}, expected {_EXPECTED}")
    missing = [k for k in ("v_template", "f", "J_regressor", "weights", "shapedirs", "posedirs", "kintree_table")
               if k not in data]
    if missing:
        raise CheckpointError(f"{path}: missing {', '.join(missing)}; expected {_EXPECTED}")
    num_vertices = np.shape(data["v_template"])[0]
    shapes = {
        "v_template": ((num_vertices, 3), np.shape(data["v_template"])),
        "J_regressor": ((NUM_JOINTS, num_vertices), np.shape(data["J_regressor"])),
        "weights": ((num_vertices, NUM_JOINTS), np.shape(data["weights"])),
        "posedirs": ((num_vertices, 3, 9 * (NUM_JOINTS - 1)), np.shape(data["posedirs"])),
        "kintree_table": ((2, NUM_JOINTS), np.shape(data["kintree_table"])),
    }
    wrong = [f"{k} {got} (expected {want})" for k, (want, got) in shapes.items() if tuple(got) != want]
    shapedirs = np.shape(data["shapedirs"])
    if len(shapedirs) != 3 or shapedirs[:2] != (num_vertices, 3) or shapedirs[2] < NUM_BETAS:
        wrong.append(f"shapedirs {shapedirs} (expected ({num_vertices}, 3, >={NUM_BETAS}))")
    if len(np.shape(data["f"])) != 2 or np.shape(data["f"])[1] != 3:
        wrong.append(f"f {np.shape(data['f'])} (expected (F, 3))")
    if wrong:
        raise CheckpointError(f"{path}: wrong shapes: {'; '.join(wrong)}")
    return data


class BodyModel:
    """An SMPL-format model posed through smplx; arrays in and out are numpy, metres, SMPL axes (y up)."""

    def __init__(self, layer: smplx.SMPL, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self._layer = layer
        self._faces = np.asarray(data["f"], dtype=np.int64)
        self._template = np.asarray(data["v_template"], dtype=np.float64)
        self._weights = np.asarray(layer.lbs_weights.numpy(), dtype=np.float32)
        self._regressor = np.asarray(layer.J_regressor.numpy(), dtype=np.float32)
        self._parents = layer.parents.numpy().astype(np.int64)

    @classmethod
    def load(cls, path: Path) -> BodyModel:
        """Our open model (its `vertex_ids` go to smplx) or a real SMPL file (smplx's default landmark ids)."""
        path = Path(path)
        data = _read_model_file(path)
        vertex_ids = data.get("vertex_ids")
        if vertex_ids is None and len(data["v_template"]) != 6890:
            raise CheckpointError(f"{path}: a {len(data['v_template'])}-vertex model needs 'vertex_ids' (smplx's "
                                  "default landmark vertices only fit SMPL's 6890-vertex mesh)")
        captured = io.StringIO()
        try:
            with contextlib.redirect_stdout(captured):  # smplx prints a warning about having 10 shape coefficients
                layer = smplx.SMPL(model_path=str(path), vertex_ids=vertex_ids, num_betas=NUM_BETAS)
        except (KeyError, ValueError, RuntimeError, IndexError) as exc:
            raise CheckpointError(f"{path}: smplx cannot build an SMPL model from it ({exc}); expected {_EXPECTED}") \
                from exc
        if captured.getvalue().strip():
            log.debug("smplx said: %s", captured.getvalue().strip())
        layer.eval()
        model = cls(layer, path, data)
        log.info("loaded body model path=%s vertices=%d faces=%d", path, model.num_vertices, len(model.faces))
        return model

    @property
    def num_vertices(self) -> int:
        return int(self._template.shape[0])

    @property
    def faces(self) -> NDArray[np.int64]:
        """(F, 3) vertex indices."""
        return self._faces

    @property
    def parents(self) -> NDArray[np.int64]:
        """(24,) parent joint of each joint, -1 for the pelvis."""
        return self._parents

    @property
    def lbs_weights(self) -> NDArray[np.float32]:
        """(V, 24) skinning weights."""
        return self._weights

    @property
    def joint_regressor(self) -> NDArray[np.float32]:
        """(24, V): joints = regressor @ vertices for a rest-posed (shaped) mesh."""
        return self._regressor

    @property
    def template_vertices(self) -> NDArray[np.float64]:
        """(V, 3) the T-posed mean shape, metres."""
        return self._template

    @property
    def part_of_vertex(self) -> NDArray[np.int64]:
        """(V,) the joint with the largest skinning weight: vertex groups that stay nearly convex when posed."""
        return np.argmax(self._weights, axis=1).astype(np.int64)

    def forward(self, betas: NDArray[np.floating], global_orient: NDArray[np.floating],
                body_pose: NDArray[np.floating], transl: NDArray[np.floating]
                ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Posed vertices (N, V, 3) and the 24 SMPL joints (N, 24, 3), float32 metres.

        `betas` (N, 10) or (1, 10) shared by all poses, `global_orient` (N, 3) and `body_pose` (N, 69) axis-angle
        radians, `transl` (N, 3) metres added after posing, as smplx does.
        """
        global_orient = np.asarray(global_orient, np.float32).reshape(-1, 3)
        count = len(global_orient)
        body_pose = np.asarray(body_pose, np.float32).reshape(count, 69)
        transl = np.asarray(transl, np.float32).reshape(count, 3)
        betas = np.asarray(betas, np.float32).reshape(-1, NUM_BETAS)
        betas = np.repeat(betas, count, axis=0) if len(betas) == 1 else betas.reshape(count, NUM_BETAS)
        vertices, joints = [], []
        with torch.no_grad():
            for start in range(0, count, _BATCH):
                part = slice(start, start + _BATCH)
                out = self._layer(betas=torch.from_numpy(betas[part]),
                                  global_orient=torch.from_numpy(global_orient[part]),
                                  body_pose=torch.from_numpy(body_pose[part]),
                                  transl=torch.from_numpy(transl[part]))
                vertices.append(out.vertices.numpy())
                joints.append(out.joints[:, :NUM_JOINTS].numpy())
        return np.concatenate(vertices), np.concatenate(joints)


def virtual_marker_ids(model: BodyModel, count: int = 64) -> NDArray[np.int64]:
    """(count,) marker vertex ids: farthest-point sampling over the template from the vertex on top of the head.

    Virtual Markers learns its 64 markers; this deterministic choice is ours. It spreads the markers evenly over
    the T-posed surface and works for any SMPL-format mesh.
    """
    vertices = model.template_vertices
    chosen = [int(np.argmax(vertices[:, 1]))]
    distance = np.linalg.norm(vertices - vertices[chosen[0]], axis=1)
    for _ in range(count - 1):
        chosen.append(int(np.argmax(distance)))
        distance = np.minimum(distance, np.linalg.norm(vertices - vertices[chosen[-1]], axis=1))
    return np.asarray(chosen, dtype=np.int64)


def mirror_vertex_ids(model: BodyModel, tolerance_m: float = 0.01) -> NDArray[np.int64]:
    """(V,) each template vertex's twin across the sagittal plane (x -> -x): nearest neighbour of its reflection.

    Among vertices at the same place (where two pieces of our open model meet) the twin is the one bound to the
    mirrored joint, so the map is an involution that keeps skinning. Exact for our open model (its right side is
    built as the left side's reflection) and within millimetres for SMPL, whose template is symmetric; a model
    asymmetric beyond `tolerance_m` is refused, because mirrored targets built from it would be wrong.
    """
    template = model.template_vertices
    reflected = template * np.array([-1.0, 1.0, 1.0])
    part = model.part_of_vertex
    twin_part = mirror_joint_ids()[part]
    twins = np.empty(len(template), dtype=np.int64)
    worst = 0.0
    for start in range(0, len(template), 256):  # bounded memory for SMPL's 6890 vertices, no scipy needed
        block = slice(start, start + 256)
        distance = ((reflected[block, None, :] - template[None, :, :]) ** 2).sum(-1)
        other_part = part[None, :] != twin_part[block, None]
        nearest = np.argmin(distance + other_part * (tolerance_m ** 2), axis=1)  # same place: prefer the twin part
        twins[block] = nearest
        worst = max(worst, float(np.sqrt(distance[np.arange(len(nearest)), nearest].max())))
    if worst > tolerance_m:
        raise CheckpointError(f"{model.path}: template is not left/right symmetric (a reflected vertex lies "
                              f"{worst * 1000:.1f} mm from the nearest vertex; tolerance {tolerance_m * 1000:.0f} mm)")
    return twins


def fit_marker_interpolation(vertices: NDArray[np.floating], marker_ids: NDArray[np.int64],
                             ridge: float = 1e-4) -> NDArray[np.float32]:
    """A (V, M) with rows summing to 1 such that mesh ≈ A @ mesh[marker_ids], fitted over posed/shaped meshes.

    `vertices` (N, V, 3) in any frame; each mesh is centred first, which changes nothing for an affine map but
    keeps the normal equations well conditioned. Least squares with a small ridge (relative to the mean marker
    energy) and the affine constraint solved exactly (KKT), so A commutes with translation and scaling: the fixed
    marker-to-mesh map of Mesh-Gait's mesh decoder.
    """
    marker_ids = np.asarray(marker_ids, np.int64)
    count = len(marker_ids)
    gram = np.zeros((count, count))
    cross = np.zeros((count, np.shape(vertices)[1]))
    for mesh in vertices:  # one mesh at a time: thousands of 6890-vertex meshes would not fit in float64 at once
        centred = np.asarray(mesh, np.float64)
        centred = centred - centred.mean(axis=0)
        markers = centred[marker_ids]  # (M, 3)
        gram += markers @ markers.T
        cross += markers @ centred.T
    gram += ridge * np.trace(gram) / count * np.eye(count)
    kkt = np.zeros((count + 1, count + 1))
    kkt[:count, :count] = gram
    kkt[:count, count] = kkt[count, :count] = 1.0
    rhs = np.vstack([cross, np.ones((1, cross.shape[1]))])
    solution = np.linalg.solve(kkt, rhs)
    return np.ascontiguousarray(solution[:count].T, dtype=np.float32)
