"""Mesh-Gait (arXiv 2510.10406): silhouettes -> 3D heatmaps -> fused 2D + 3D identity features.

What the paper states (its abstract; its body could not be read here): two branches, one on the silhouettes and one
on 3D heatmaps reconstructed from them; the heatmaps are supervised during training by 3D joints, virtual markers
and a 3D mesh; their features are fused with the silhouette features for recognition; mesh reconstruction is dropped
at inference. Everything below that is more specific is our choice, after the Virtual Markers design (Ma et al.,
CVPR 2023) as `shared/docs/ARCHITECTURE.md` section 4b suggests:

- **2D branch**: GaitBase, unchanged (`engines/gait/gaitbase.py`), so the two models compare like for like and a
  GaitBase checkpoint could initialise it.
- **Lifting**: the 3D branch taps the backbone after `layer3` (mid-level features at 1/4 resolution, 16x11 for a
  64x44 input) rather than the silhouettes, so it costs one light head rather than a second backbone. Per frame and
  per point (24 SMPL joints + 64 virtual markers) it predicts a 3D heatmap over (depth, 16, 11) cells, factorised as
  `p(d, h, w) = p(h, w) * p(d)`: a 2D heatmap (softmax over the image cells) times a depth distribution over
  `depth_bins` cells, read from the features under the point's own 2D heatmap (heatmap-weighted pooling, then a
  per-point linear layer). VM uses dense 64^3 volumes; the factorised volume (the "2.5D" heatmaps of Iqbal et al.,
  ECCV 2018) holds the same soft-argmax decoding at 1/depth_bins of the cost, which is what keeps this branch cheap
  on a CPU (a dense 8 x 16 x 11 volume per point doubled the training step here).
- **Decoding** (training and the 3D evaluation only): integral soft-argmax (Sun et al. 2018): x, y are the
  expectations under p(h, w), z under p(d), in the normalised frame of `engines/data/synthetic.py` (x, y
  image-aligned, 64 silhouette pixels = 2 units; z root-relative depth in the same units). Silhouettes carry no
  absolute scale, so none is predicted.
- **Mesh**: vertices = `marker_interpolation @ markers`, a fixed affine map (V x 64) fitted by least squares on
  synthetic meshes (`engines/body/smpl.py`), as VM recovers its mesh from markers; joints-from-mesh =
  `joint_regressor @ vertices`. Both matrices are buffers set from the body model by the trainer.
- **Mirror ambiguity**: under weak perspective a body and its mirror image through the pelvis' depth plane (left
  and right swapped, depth negated) cast the same silhouette, so no per-frame head can tell them apart. The 3D
  losses compare each frame with the nearer of the two (`mesh_losses(mirrored=...)`, `loss.mirror_invariant_3d`);
  with a plain loss our first run learnt their average, a flattened walk with left and right limbs pulled together.
- **Heatmap encoder**: each point's 2D heatmap and the same map weighted by its expected depth ("depth as channels",
  2 x points maps of 16x11, scaled so a uniform map is 1), a 1x1 conv, then a 3x3 conv, both with BN and ReLU: the
  "3D features", aligned with the silhouette features.
- **Fusion**: attention-gated residual, `f = f2d + sigmoid(W_a [f2d; f3d]) * W_p f3d` (after SkeletonGait++'s
  attention fusion): with the gate closed the model is GaitBase, so the 3D branch can only add information.
- **Head**: GaitBase's (temporal max pooling, HPP, separate FCs, BNNeck), so embeddings have the same layout and the
  pipeline, gallery and backends treat both models alike.

At inference (`eval()` or `with_3d=False`) the soft-argmax and mesh are skipped; only the embedding path runs and is
exported to ONNX. Must not import `pipeline` or `stages`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from engines.gait.gaitbase import EncoderOutput, GaitBase, GaitBaseConfig

SMPL_JOINTS = 24
VIRTUAL_MARKERS = 64
#: Half the width of the 64x44 silhouette in the normalised frame ((col - 22) / 32 at the outer pixel centres).
_HALF_WIDTH = 21.5 / 32


class MeshGaitConfig(GaitBaseConfig):
    """GaitBase (the 2D branch) plus the 3D branch's sizes."""

    joints: int = Field(SMPL_JOINTS, gt=0, description="3D joints decoded from heatmaps (SMPL's 24)")
    markers: int = Field(VIRTUAL_MARKERS, gt=0, description="virtual markers decoded from heatmaps")
    vertices: int = Field(gt=0, description="mesh vertices of the body model (the open model's, or SMPL's 6890)")
    depth_bins: int = Field(8, gt=1, description="depth resolution of each heatmap volume")
    heatmap_channels: int = Field(32, gt=0, description="width of the 3D head and heatmap encoder (the 3D features)")
    depth_context: bool = Field(False, description="each point's depth also reads the walk's mean head features: "
                                "the body's turn toward or away from the camera, one per walk, is not visible under a "
                                "single joint")

    @property
    def points(self) -> int:
        return self.joints + self.markers


@dataclass
class Heatmaps3D:
    """Factorised 3D heatmaps of `m` frames: `p(d, h, w) = maps_2d[..., h, w] * depth[..., d]` per point."""

    maps_2d: torch.Tensor  # [m, k, h, w], each map sums to 1
    depth: torch.Tensor  # [m, k, d], each distribution sums to 1

    def expected_depth(self) -> torch.Tensor:
        """`[m, k]` z of each point in the normalised frame (depth cells span [-1, 1])."""
        zs = torch.linspace(-1.0, 1.0, self.depth.shape[-1], device=self.depth.device, dtype=self.depth.dtype)
        return (self.depth * zs).sum(-1)


class HeatmapHead3D(nn.Module):
    """Mid-level frame features `[m, c, h, w]` -> factorised per-point 3D heatmaps (`Heatmaps3D`)."""

    def __init__(self, in_channels: int, channels: int, points: int, depth_bins: int, context: bool = False) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
                                      nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
        self.heatmap_logits = nn.Conv2d(channels, points, 1)
        self.depth_fc = nn.Parameter(nn.init.xavier_uniform_(torch.zeros(points, channels, depth_bins)))
        self.depth_bias = nn.Parameter(torch.zeros(points, depth_bins))
        # Zero at the start: a head given context begins as the one without it (and can start from its weights).
        self.context_fc = nn.Parameter(torch.zeros(points, channels, depth_bins)) if context else None

    def forward(self, mid_features: torch.Tensor, frames_per_walk: int = 1) -> Heatmaps3D:
        """`frames_per_walk`: consecutive frames of one walk, whose mean features are the depth's context."""
        features = self.features(mid_features)
        logits = self.heatmap_logits(features).float()
        m, k, h, w = logits.shape
        maps_2d = logits.reshape(m, k, h * w).softmax(-1)
        pooled = torch.bmm(maps_2d, features.float().reshape(m, -1, h * w).transpose(1, 2))  # [m, k, c]
        depth_logits = torch.einsum("mkc,kcd->mkd", pooled, self.depth_fc.float()) + self.depth_bias.float()
        if self.context_fc is not None:
            walk = features.float().mean((2, 3)).reshape(-1, frames_per_walk, features.shape[1]).mean(1)
            context = walk.repeat_interleave(frames_per_walk, dim=0)  # [m, c]
            depth_logits = depth_logits + torch.einsum("mc,kcd->mkd", context, self.context_fc.float())
        return Heatmaps3D(maps_2d=maps_2d.reshape(m, k, h, w), depth=depth_logits.softmax(-1))


def soft_argmax_3d(heatmaps: Heatmaps3D) -> torch.Tensor:
    """Integral regression: `[m, k, 3]` expected (x, y, z) in the normalised frame.

    Grid: x spans the silhouette's pixel centres ((col - 22) / 32), y the full height [-1, 1] so the head top and the
    soles are reachable, z [-1, 1] (root-relative depth in half body heights).
    """
    maps = heatmaps.maps_2d
    h, w = maps.shape[2], maps.shape[3]
    like = {"device": maps.device, "dtype": maps.dtype}
    x = (maps.sum(2) * torch.linspace(-_HALF_WIDTH, _HALF_WIDTH, w, **like)).sum(-1)
    y = (maps.sum(3) * torch.linspace(-1.0, 1.0, h, **like)).sum(-1)
    return torch.stack((x, y, heatmaps.expected_depth()), dim=-1)


class HeatmapEncoder(nn.Module):
    """`Heatmaps3D` -> 3D features `[m, c, h, w]`: 2D maps and depth-weighted maps, 1x1 then 3x3 conv."""

    def __init__(self, points: int, channels: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(2 * points, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
        )

    def forward(self, heatmaps: Heatmaps3D) -> torch.Tensor:
        maps = heatmaps.maps_2d * (heatmaps.maps_2d.shape[2] * heatmaps.maps_2d.shape[3])
        depth = heatmaps.expected_depth()[:, :, None, None]
        return self.layers(torch.cat((maps, maps * depth), dim=1))


class AttentionFusion(nn.Module):
    """`f2d + sigmoid(W_a [f2d; f3d]) * W_p f3d`: the 3D features enter where, and as much as, the gate lets them."""

    def __init__(self, channels_2d: int, channels_3d: int) -> None:
        super().__init__()
        self.gate = nn.Conv2d(channels_2d + channels_3d, channels_2d, 1)
        self.project = nn.Sequential(nn.Conv2d(channels_3d, channels_2d, 1, bias=False), nn.BatchNorm2d(channels_2d))

    def forward(self, features_2d: torch.Tensor, features_3d: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.gate(torch.cat((features_2d, features_3d), dim=1)))
        return features_2d + gate * self.project(features_3d)


class MeshGait(nn.Module):
    """`forward((N, T, 64, 44) float in [0, 1], with_3d) -> EncoderOutput` with embeddings as GaitBase's.

    With `with_3d` (default: in training mode) the output also holds `joints_3d` `[N, T, joints, 3]`, `markers_3d`
    `[N, T, markers, 3]`, `vertices_3d` `[N, T, V, 3]` and `joints_from_mesh` `[N, T, joints, 3]` in the normalised
    frame; `decode_3d_for` limits that decoding to some sequences of the batch (those with 3D ground truth).
    """

    def __init__(self, config: MeshGaitConfig) -> None:
        super().__init__()
        self.config = config
        self.silhouette_branch = GaitBase(GaitBaseConfig(**{k: v for k, v in config.model_dump().items()
                                                            if k in GaitBaseConfig.model_fields}))
        self.heatmap_head = HeatmapHead3D(config.channels[2], config.heatmap_channels, config.points,
                                          config.depth_bins, config.depth_context)
        self.heatmap_encoder = HeatmapEncoder(config.points, config.heatmap_channels)
        self.fusion = AttentionFusion(config.channels[-1], config.heatmap_channels)
        self.register_buffer("marker_interpolation", torch.full((config.vertices, config.markers), 1 / config.markers))
        self.register_buffer("joint_regressor", torch.full((config.joints, config.vertices), 1 / config.vertices))

    def start_from(self, gaitbase: GaitBase) -> None:
        """Take a trained GaitBase of this silhouette branch's config as that branch, with the fusion's projection
        at zero: the embeddings are the GaitBase's until training opens the fusion to the (fresh) 3D features."""
        self.silhouette_branch.load_state_dict(gaitbase.state_dict())
        nn.init.zeros_(self.fusion.project[1].weight)

    def set_body_model(self, marker_interpolation: torch.Tensor, joint_regressor: torch.Tensor) -> None:
        """Fix the mesh decoder: (V, markers) marker-to-vertex map and (joints, V) joint regressor of the body model."""
        if tuple(marker_interpolation.shape) != tuple(self.marker_interpolation.shape) or \
                tuple(joint_regressor.shape) != tuple(self.joint_regressor.shape):
            raise ValueError(f"body model matrices {tuple(marker_interpolation.shape)}, {tuple(joint_regressor.shape)}"
                             f" do not fit the config ({self.config.vertices} vertices, {self.config.markers} "
                             f"markers, {self.config.joints} joints)")
        self.marker_interpolation.copy_(marker_interpolation)
        self.joint_regressor.copy_(joint_regressor)

    def forward(self, silhouettes: torch.Tensor, with_3d: bool | None = None,
                decode_3d_for: slice | None = None, heatmaps_from_3d_only: bool = False) -> EncoderOutput:
        """`heatmaps_from_3d_only` (training): the identity losses' gradients stop at the 3D heatmaps, so the heatmap
        head learns from the 3D losses alone while the heatmap encoder and fusion still learn to use its output."""
        n, s, h, w = silhouettes.shape
        resnet = self.silhouette_branch.backbone.block
        frames = silhouettes.reshape(n * s, 1, h, w)
        mid = resnet.layer3(resnet.layer2(resnet.layer1(resnet.relu(resnet.bn1(resnet.conv1(frames))))))
        features_2d = resnet.layer4(mid)
        heatmaps = self.heatmap_head(mid, s)
        read = Heatmaps3D(heatmaps.maps_2d.detach(), heatmaps.depth.detach()) if heatmaps_from_3d_only else heatmaps
        fused = self.fusion(features_2d, self.heatmap_encoder(read))
        c, fh, fw = fused.shape[1], fused.shape[2], fused.shape[3]
        output = self.silhouette_branch.head(fused.reshape(n, s, c, fh, fw).transpose(1, 2))
        if self.training if with_3d is None else with_3d:
            points = soft_argmax_3d(heatmaps).reshape(n, s, -1, 3)
            if decode_3d_for is not None:
                points = points[decode_3d_for]
            joints, markers = points[:, :, : self.config.joints], points[:, :, self.config.joints:]
            vertices = torch.matmul(self.marker_interpolation.float(), markers)
            output.joints_3d, output.markers_3d, output.vertices_3d = joints, markers, vertices
            output.joints_from_mesh = torch.matmul(self.joint_regressor.float(), vertices)
        return output


def mesh_losses(output: EncoderOutput, points: torch.Tensor, vertices: torch.Tensor, joints: int = SMPL_JOINTS,
                mirrored: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """L1 losses of the decoded 3D against ground truth, all in the normalised frame (1 = half the body's height).

    `points` `[n, t, joints + markers, 3]` and `vertices` `[n, t, V, 3]` are the targets of the sequences the output
    decoded. "reprojection" compares the image-plane (x, y) of the joints, i.e. their 2D projection under the weak
    perspective the normalised frame assumes; the others compare full 3D.

    `mirrored` (the same targets of the mirror body, `Targets3D.mirrored`) makes the losses mirror-invariant: each
    frame is compared with whichever of the two bodies its decoded points are nearer. One silhouette cannot tell
    them apart, so a plain loss pulls left and right limbs to their average and depth to zero, which is what our
    first Mesh-Gait run learnt (README, "Mesh-Gait").
    """
    assert output.joints_3d is not None and output.markers_3d is not None and output.vertices_3d is not None
    assert output.joints_from_mesh is not None
    if mirrored is not None:
        decoded = torch.cat((output.joints_3d, output.markers_3d), dim=2).detach()
        nearer_mirror = (decoded - mirrored[0]).abs().mean((2, 3)) < (decoded - points).abs().mean((2, 3))
        points = torch.where(nearer_mirror[:, :, None, None], mirrored[0], points)
        vertices = torch.where(nearer_mirror[:, :, None, None], mirrored[1], vertices)
    target_joints, target_markers = points[:, :, :joints], points[:, :, joints:]
    return {
        "joints": F.l1_loss(output.joints_3d, target_joints),
        "markers": F.l1_loss(output.markers_3d, target_markers),
        "vertices": F.l1_loss(output.vertices_3d, vertices),
        "joints_from_mesh": F.l1_loss(output.joints_from_mesh, target_joints),
        "reprojection": F.l1_loss(output.joints_3d[..., :2], target_joints[..., :2]),
    }
