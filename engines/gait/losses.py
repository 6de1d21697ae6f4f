"""Identity losses of OpenGait's GaitBase: batch-all triplet on the embeddings, cross-entropy on BNNeck logits.

Must not import `pipeline` or `stages`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class TripletStats:
    """Per-batch diagnostics of the triplet loss (means over parts)."""

    loss: torch.Tensor
    active_fraction: float  # share of triplets that still violate the margin
    mean_distance: float


def pairwise_part_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Euclidean distance per part: x `[p, n_x, c]`, y `[p, n_y, c]` -> `[p, n_x, n_y]`."""
    x2 = x.pow(2).sum(-1).unsqueeze(2)
    y2 = y.pow(2).sum(-1).unsqueeze(1)
    return torch.sqrt(F.relu(x2 + y2 - 2 * x.matmul(y.transpose(1, 2))))


def triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.2) -> TripletStats:
    """OpenGait's `TripletLoss`: every (anchor, positive, negative) triplet of the batch, per part.

    embeddings `[n, p, c]`, labels `[n]` int. For each part, the hinge `relu(d(a,p) - d(a,n) + margin)` over all
    triplets is averaged over the non-zero ones only ("batch-all, hard-sample mining"): easy triplets do not dilute
    the gradient. The loss is then the mean over parts. Computed in float32 even under autocast. Unlike OpenGait's,
    identities may have different numbers of sequences in the batch (real and synthetic P x K batches mixed), so
    triplets are selected by mask rather than by reshaping.
    """
    x = embeddings.float().transpose(0, 1)
    dist = pairwise_part_distances(x, x)
    parts = dist.shape[0]
    same = labels.unsqueeze(1) == labels.unsqueeze(0)
    valid = same.unsqueeze(2) & ~same.unsqueeze(1)  # [anchor, positive, negative]
    hinge = (F.relu(dist.unsqueeze(3) - dist.unsqueeze(2) + margin) * valid).reshape(parts, -1)
    active = (hinge > 0).sum(-1).float()
    per_part = hinge.sum(-1) / active.clamp(min=1.0)
    return TripletStats(
        loss=per_part.mean(),
        active_fraction=float(active.mean() / valid.sum().clamp(min=1)),
        mean_distance=float(dist.detach().mean()),
    )


def cross_entropy_loss(
    logits: torch.Tensor, labels: torch.Tensor, scale: float = 16.0, label_smoothing: float = 0.1
) -> torch.Tensor:
    """OpenGait's `CrossEntropyLoss` on BNNeck cosine logits `[n, p, k]`: each part classifies, losses averaged.

    The cosines are multiplied by `scale` (OpenGait: 16) because a softmax over values in [-1, 1] cannot get sharp.
    """
    n, p, k = logits.shape
    flat = (scale * logits.float()).reshape(n * p, k)
    return F.cross_entropy(flat, labels.repeat_interleave(p), label_smoothing=label_smoothing)
