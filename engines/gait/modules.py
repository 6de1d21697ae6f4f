"""Small network modules named as in the gait papers, composed by `gaitbase.py` (and later Mesh-Gait's 2D branch).

Shapes follow OpenGait's contract: a batch of silhouette sequences is `[n, c, s, h, w]` (sequences, channels,
frames, height, width); part features are `[n, p, c]` (sequences, horizontal parts, channels). Every reshape reads
its sizes from the input at run time, so an ONNX export keeps the batch and frame axes dynamic.

Must not import `pipeline` or `stages`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs + identity or 1x1 projection), as torchvision's, for `[n, c, h, w]`."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet9(nn.Module):
    """OpenGait's ResNet9 frame backbone: 3x3 stem conv + BN + ReLU, then four stages of `BasicBlock`s.

    `[m, 1, 64, 44] -> [m, channels[-1], 64 / prod(strides), 44 / prod(strides)]` (ceil), where m = frames of all
    sequences. GaitBase uses channels [64, 128, 256, 512], layers [1, 1, 1, 1], strides [1, 2, 2, 1] and no max-pool
    after the stem (OpenGait `configs/gaitbase/gaitbase_da_casiab.yaml`).
    """

    def __init__(self, channels: Sequence[int], layers: Sequence[int], strides: Sequence[int]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0])
        self.relu = nn.ReLU(inplace=True)
        stages: list[nn.Module] = []
        in_channels = channels[0]
        for out_channels, blocks, stride in zip(channels, layers, strides, strict=True):
            stage = [BasicBlock(in_channels, out_channels, stride)]
            stage += [BasicBlock(out_channels, out_channels) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            in_channels = out_channels
        self.layer1, self.layer2, self.layer3, self.layer4 = stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class SetBlockWrapper(nn.Module):
    """Runs a per-frame 2D block on every frame of every sequence: `[n, c, s, h, w] -> [n, c', s, h', w']`."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, s, h, w = x.shape
        frames = self.block(x.transpose(1, 2).reshape(n * s, c, h, w))
        out = frames.reshape(n, s, frames.shape[1], frames.shape[2], frames.shape[3])
        return out.transpose(1, 2).contiguous()


class TemporalMaxPooling(nn.Module):
    """Set pooling over frames (GaitSet/GaitBase "TP"): `[n, c, s, h, w] -> [n, c, h, w]`.

    The max is order-invariant, so the frames of a sequence may come in any order and in any number >= 1.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=2)


class HorizontalPyramidPooling(nn.Module):
    """Horizontal Pyramid Matching (Fu et al. 2019): `[n, c, h, w] -> [n, p, c]`, p = sum(bin_num).

    Each of the `b` horizontal strips is pooled as mean + max (OpenGait `HorizontalPoolingPyramid`); `h` must be a
    multiple of every bin count.
    """

    def __init__(self, bin_num: Sequence[int] = (16,)) -> None:
        super().__init__()
        self.bin_num = tuple(bin_num)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[0], x.shape[1]
        strips = []
        for bins in self.bin_num:
            z = x.reshape(n, c, bins, -1)
            strips.append(z.mean(-1) + z.amax(-1))
        return torch.cat(strips, dim=-1).transpose(1, 2).contiguous()


class SeparateFCs(nn.Module):
    """One fully connected layer per horizontal part (no bias): `[n, p, c_in] -> [n, p, c_out]`."""

    def __init__(self, parts_num: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.fc_bin = nn.Parameter(nn.init.xavier_uniform_(torch.zeros(parts_num, in_channels, out_channels)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(0, 1).matmul(self.fc_bin).transpose(0, 1).contiguous()


class SeparateBNNecks(nn.Module):
    """BNNeck (Luo et al. 2019) per part: BatchNorm over all part channels, then cosine logits per part.

    `[n, p, c] -> (features [n, p, c] after the BatchNorm, logits [n, p, class_num])`. The logits are cosines in
    [-1, 1] between the L2-normalised features and class weights (OpenGait `norm=True`); the cross-entropy loss
    scales them. The batch-normalised features are what inference compares (see `gaitbase.py`).
    """

    def __init__(self, parts_num: int, in_channels: int, class_num: int) -> None:
        super().__init__()
        self.bn1d = nn.BatchNorm1d(in_channels * parts_num)
        self.fc_bin = nn.Parameter(nn.init.xavier_uniform_(torch.zeros(parts_num, in_channels, class_num)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, p, c = x.shape
        feature = self.bn1d(x.reshape(n, p * c)).reshape(n, p, c)
        normalised = F.normalize(feature, dim=-1)
        logits = normalised.transpose(0, 1).matmul(F.normalize(self.fc_bin, dim=1)).transpose(0, 1)
        return feature, logits.contiguous()
