"""The fine-tuning losses of the ReID strong baseline (Luo et al., 2019), as plain functions.

- ID loss: cross-entropy against label-smoothed targets (Szegedy et al., 2016):
  q_c = (1 - eps) [c = y] + eps / C, loss = -sum_c q_c log p_c, averaged over the batch.
- Batch-hard triplet loss (Hermans et al., 2017): for every anchor, its farthest positive and
  nearest negative in the batch by Euclidean distance; hinge max(0, d_ap - d_an + margin), or the
  soft margin log(1 + exp(d_ap - d_an)); averaged over anchors that have both.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F


def label_smoothing_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, eps: float = 0.1) -> torch.Tensor:
    """logits: (N, C) float; targets: (N,) int64 in [0, C) -> scalar mean loss.

    eps = 0 is the plain cross-entropy."""
    if logits.ndim != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"logits (N, C) and targets (N,) expected, got {tuple(logits.shape)} and "
                         f"{tuple(targets.shape)}")
    logp = F.log_softmax(logits, dim=1)
    nll = -logp.gather(1, targets[:, None]).squeeze(1)
    uniform = -logp.mean(dim=1)  # = -(1 / C) sum_c log p_c
    return ((1 - eps) * nll + eps * uniform).mean()


def euclidean_distances(x: torch.Tensor) -> torch.Tensor:
    """x: (N, D) -> (N, N) Euclidean distances (clamped at 1e-12 under the root, so the gradient
    of a zero distance stays finite)."""
    sq = (x * x).sum(dim=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * x @ x.T
    return d2.clamp(min=1e-12).sqrt()


def batch_hard_triplet(feats: torch.Tensor, labels: torch.Tensor, margin: float = 0.3,
                       soft_margin: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """feats: (N, D) un-normalised features; labels: (N,) identities -> (loss, fraction of anchors
    whose nearest negative is farther than their farthest positive), both scalars.

    Anchors without a positive (another image of their identity) or without a negative are
    left out; a batch with no valid anchor gives a loss of 0 (connected to the graph)."""
    if feats.ndim != 2 or labels.shape != feats.shape[:1]:
        raise ValueError(f"feats (N, D) and labels (N,) expected, got {tuple(feats.shape)} and "
                         f"{tuple(labels.shape)}")
    dist = euclidean_distances(feats)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=feats.device)
    pos, neg = same & ~eye, ~same
    d_ap = torch.where(pos, dist, torch.full_like(dist, -1.0)).max(dim=1).values
    d_an = torch.where(neg, dist, torch.full_like(dist, float("inf"))).min(dim=1).values
    valid = pos.any(dim=1) & neg.any(dim=1)
    if not bool(valid.any()):
        return feats.sum() * 0.0, feats.new_zeros(())
    d_ap, d_an = d_ap[valid], d_an[valid]
    if soft_margin:
        loss = F.softplus(d_ap - d_an).mean()
    else:
        loss = F.relu(d_ap - d_an + margin).mean()
    return loss, (d_an > d_ap).float().mean().detach()


def reid_loss(feats: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, eps: float = 0.1,
              margin: float = 0.3, soft_margin: bool = False, id_weight: float = 1.0,
              triplet_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The BNNeck baseline's loss: triplet on the pre-BN features (N, D), label-smoothed CE on the
    classifier logits (N, C) -> (total loss, detached parts: id, triplet, triplet_acc, id_acc)."""
    ce = label_smoothing_cross_entropy(logits.float(), labels, eps)
    total = id_weight * ce
    parts = {"id": ce.detach(), "id_acc": (logits.argmax(dim=1) == labels).float().mean()}
    if triplet_weight > 0:
        tri, tri_acc = batch_hard_triplet(feats.float(), labels, margin, soft_margin)
        total = total + triplet_weight * tri
        parts.update(triplet=tri.detach(), triplet_acc=tri_acc)
    else:
        parts.update(triplet=feats.new_zeros(()), triplet_acc=feats.new_zeros(()))
    return total, parts
