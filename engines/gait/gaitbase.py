"""GaitBase: OpenGait's strong baseline (Fan et al., "OpenGait", CVPR 2023), built from `modules.py`.

Silhouettes `[n, s, 64, 44]` float in [0, 1] -> ResNet9 on every frame (`SetBlockWrapper`) -> temporal max pooling
-> horizontal pyramid pooling (16 strips) -> separate FCs (the embeddings) -> separate BNNecks (the logits).
As in OpenGait's `Baseline`, the triplet loss uses the separate-FC output and the cross-entropy loss the BNNeck
logits. For inference we take the BNNeck's batch-normalised features instead (`inference_embeddings`), as the
BNNeck paper (Luo et al. 2019) recommends for cosine matching: the separate-FC output carries a large direction
common to everyone, which squeezes cosine distances (our compact model: genuine 0.003 vs impostor 0.009 on
CASIA-B, EER 12 %); after the BN the same embeddings spread over [0, 1] (EER 8 %, part-cosine Rank-1 85.6 -> 89.2)
while OpenGait's Euclidean protocol scores the same (NM 88.8 either way). Measured with `tools/eval.py --open-set`.
`backbone_features` and `head` are separate so Mesh-Gait can reuse the 2D branch.

Must not import `pipeline` or `stages`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from engines.gait.modules import (
    HorizontalPyramidPooling,
    ResNet9,
    SeparateBNNecks,
    SeparateFCs,
    SetBlockWrapper,
    TemporalMaxPooling,
)


class GaitBaseArchitecture(BaseModel):
    """Widths and depths of GaitBase; the defaults are OpenGait's full-width CASIA-B model (about 6.8 M params)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channels: tuple[int, int, int, int] = Field((64, 128, 256, 512), description="ResNet9 stage widths")
    layers: tuple[int, int, int, int] = Field((1, 1, 1, 1), description="BasicBlocks per stage")
    strides: tuple[int, int, int, int] = Field((1, 2, 2, 1), description="first-block stride per stage")
    bin_num: tuple[int, ...] = Field((16,), description="horizontal pyramid strip counts; parts = sum")
    part_dim: int = Field(256, gt=0, description="embedding channels per part (SeparateFCs output)")

    @model_validator(mode="after")
    def _check_shapes(self) -> GaitBaseArchitecture:
        if any(c <= 0 for c in self.channels) or any(n <= 0 for n in self.layers):
            raise ValueError("channels and layers must be > 0")
        height = 64
        for stride in self.strides:
            height = -(-height // stride)
        for bins in self.bin_num:
            if bins <= 0 or height % bins:
                raise ValueError(f"feature map height {height} is not divisible by bin_num {bins}")
        return self

    @property
    def parts(self) -> int:
        return sum(self.bin_num)


class GaitBaseConfig(GaitBaseArchitecture):
    """A GaitBase architecture plus its classifier width, which training derives from the training split."""

    num_classes: int = Field(74, gt=0, description="training identities (BNNeck classifier width)")

    def extends(self, trained: GaitBaseConfig) -> bool:
        """The same network as `trained` with at least its classes: what `GaitBase.start_from` can start from."""
        return trained.model_copy(update={"num_classes": self.num_classes}) == self and \
            trained.num_classes <= self.num_classes


@dataclass
class EncoderOutput:
    """What a gait network returns.

    `embeddings` (N, P, C) float: the separate-FC features the triplet loss shapes; `inference_embeddings` the same
    after the BNNeck's BatchNorm, which the gallery and the evaluation compare (per-part distances averaged).
    `logits` (N, P, num_classes): cosine logits in [-1, 1] for the cross-entropy loss, None when the network has no
    classifier. The 3D fields are Mesh-Gait's decoded points `[N, T, K, 3]` in the normalised
    frame of `engines/data/synthetic.py`; they stay None for GaitBase and at inference.
    """

    embeddings: torch.Tensor
    logits: torch.Tensor | None = None
    inference_embeddings: torch.Tensor | None = None
    joints_3d: torch.Tensor | None = None
    markers_3d: torch.Tensor | None = None
    vertices_3d: torch.Tensor | None = None
    joints_from_mesh: torch.Tensor | None = None


class GaitBase(nn.Module):
    """OpenGait's GaitBase; `forward((N, T, 64, 44) float in [0, 1]) -> EncoderOutput`."""

    def __init__(self, config: GaitBaseConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = SetBlockWrapper(ResNet9(config.channels, config.layers, config.strides))
        self.temporal_pooling = TemporalMaxPooling()
        self.horizontal_pooling = HorizontalPyramidPooling(config.bin_num)
        self.separate_fcs = SeparateFCs(config.parts, config.channels[-1], config.part_dim)
        self.bn_necks = SeparateBNNecks(config.parts, config.part_dim, config.num_classes)
        self._init_parameters()

    def _init_parameters(self) -> None:
        """OpenGait's `BaseModel.init_parameters`: Xavier-uniform convs, BN weights around 1."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
            elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.constant_(module.bias, 0.0)

    def start_from(self, trained: GaitBase) -> None:
        """Take a trained GaitBase whose classes are the first of this one's (a fine-tune that adds identities, e.g.
        more synthetic walkers): every parameter is copied, and only the added classes' weights start fresh."""
        if not self.config.extends(trained.config):
            raise ValueError(f"a GaitBase with {trained.config} cannot start one with {self.config}")
        state = trained.state_dict()
        fc_bin = self.bn_necks.fc_bin.detach().clone()
        fc_bin[..., : trained.config.num_classes] = state.pop("bn_necks.fc_bin")
        self.load_state_dict(state | {"bn_necks.fc_bin": fc_bin})

    def backbone_features(self, silhouettes: torch.Tensor) -> torch.Tensor:
        """(N, T, 64, 44) float in [0, 1] -> frame feature maps `[n, c, s, h, w]` (c = channels[-1], h=16, w=11)."""
        return self.backbone(silhouettes.unsqueeze(1))

    def head(self, features: torch.Tensor) -> EncoderOutput:
        """Frame feature maps `[n, c, s, h, w]` -> embeddings `[n, p, part_dim]`, BNNeck features and logits."""
        parts = self.horizontal_pooling(self.temporal_pooling(features))
        embeddings = self.separate_fcs(parts)
        bn_features, logits = self.bn_necks(embeddings)
        return EncoderOutput(embeddings=embeddings, logits=logits, inference_embeddings=bn_features)

    def forward(self, silhouettes: torch.Tensor) -> EncoderOutput:
        return self.head(self.backbone_features(silhouettes))


class EmbeddingOnly(nn.Module):
    """Export wrapper (GaitBase or Mesh-Gait): uint8-range input in, only the embeddings out, so nothing else enters
    the ONNX graph.

    `(N, T, 64, 44) float32 in [0, 255] -> (N, P, C) float32`. The /255 lives here so every backend gets the same
    raw input and normalises identically.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, silhouettes: torch.Tensor) -> torch.Tensor:
        return self.model(silhouettes / 255.0).inference_embeddings
