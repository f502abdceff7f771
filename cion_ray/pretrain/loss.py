"""The identity-guided self-distillation loss of the released CION code.

Batch layout: P identities x K images, contiguous: row p * K + i is image i of identity p.
For every teacher view q (global views) and every student view v != q:
    term = [CE(q, s_v) over all rows + sum_{i != j} CE(q rows of image i, s_v rows of image j)]
           / (K (K - 1) + 1)
where CE(a, b) = mean over rows of sum_d -a_d log b_d, teacher probabilities
softmax((t - center) / teacher_temp), student log-probabilities log_softmax(s / student_temp).
The loss is the mean of the terms. K = 1 leaves only the first part: the DINO loss.
The centre follows the batch-mean teacher output by EMA; the mean is taken over every worker
through an injected sum-reduction, so the loss runs (and is tested) without a process group.

Every teacher row carries total weight 1/B across the terms, so the loss splits exactly into
    loss = mean over teacher rows of H(q)  +  the weighted mean of KL(q_i || s_j),
the teacher's entropy, which the student's gradients cannot change, and the divergence they
lower. Monitoring both tells learning from collapse (DINO, Caron et al. 2021, section 5.3):
uniform collapse drives the entropy to ln(out_dim) with KL -> 0; one dominating dimension
drives the entropy of the batch-mean teacher distribution toward 0.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F


def teacher_log_probs(teacher_out: torch.Tensor, center: torch.Tensor, teacher_temp: float = 0.04) -> torch.Tensor:
    """log q: the centred, sharpened teacher distributions (no gradient)."""
    return F.log_softmax((teacher_out.float() - center) / teacher_temp, dim=-1).detach()


def identity_dino_loss(student_out: torch.Tensor, teacher_out: torch.Tensor, center: torch.Tensor, k: int,
                       n_student_views: int, student_temp: float = 0.1, teacher_temp: float = 0.04) -> torch.Tensor:
    """student_out: (V * B, D) logits, view-major; teacher_out: (2 * B, D) logits of the global views;
    center: (1, D); B = P * K. Returns the scalar loss (float32)."""
    return _loss_from_teacher_probs(student_out, teacher_log_probs(teacher_out, center, teacher_temp).exp(), k,
                                    n_student_views, student_temp)


def _loss_from_teacher_probs(student_out: torch.Tensor, q: torch.Tensor, k: int, n_student_views: int,
                             student_temp: float) -> torch.Tensor:
    n_teacher = 2
    b = q.shape[0] // n_teacher
    if b * n_teacher != q.shape[0] or student_out.shape[0] != n_student_views * b:
        raise ValueError(f"outputs do not split into views: teacher {tuple(q.shape)}, "
                         f"student {tuple(student_out.shape)}, {n_student_views} student views")
    if b % k:
        raise ValueError(f"batch of {b} rows is not P x K with K = {k}")
    p = b // k
    log_s = F.log_softmax(student_out.float() / student_temp, dim=-1).chunk(n_student_views)
    total, terms = 0.0, 0
    for iq, q in enumerate(q.chunk(n_teacher)):
        qk = q.view(p, k, -1)
        q_sum = qk.sum(1)  # (P, D): sum over the images of each identity
        for v, ls in enumerate(log_s):
            if v == iq:
                continue
            lk = ls.view(p, k, -1)
            same = (qk * lk).sum(-1)  # (P, K): same-image q . log s
            # sum_{i != j} q_i . log s_j = (sum_i q_i) . (sum_j log s_j) - sum_i q_i . log s_i
            cross = (q_sum * lk.sum(1)).sum(-1) - same.sum(1)  # (P,)
            loss = -same.mean() - cross.mean() if k > 1 else -same.mean()
            total = total + loss / (k * (k - 1) + 1)
            terms += 1
    return total / terms


def _entropies(log_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    q = log_q.exp()
    m = q.mean(0)
    return -(q * log_q).sum(-1).mean(), -(m * torch.log(m.clamp_min(1e-30))).sum()


@torch.no_grad()
def teacher_entropies(teacher_out: torch.Tensor, center: torch.Tensor, teacher_temp: float = 0.04
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean over rows of H(q), H(mean over rows of q)) in nats, q the centred, sharpened teacher
    distributions of a batch."""
    return _entropies(teacher_log_probs(teacher_out, center, teacher_temp))


def _sum_identity(t: torch.Tensor) -> torch.Tensor:
    return t


class IdentityDINOLoss(nn.Module):
    """The loss with its teacher centre (a buffer, saved in checkpoints).

    all_reduce_sum: sums a tensor over the workers in place and returns it (identity on one
    worker); world_size: number of workers it sums over."""

    def __init__(self, out_dim: int, n_student_views: int, student_temp: float = 0.1, teacher_temp: float = 0.04,
                 center_momentum: float = 0.9, all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] = _sum_identity,
                 world_size: int = 1):
        super().__init__()
        self.n_student_views = n_student_views
        self.student_temp = student_temp
        self.teacher_temp = teacher_temp
        self.center_momentum = center_momentum
        self.all_reduce_sum = all_reduce_sum
        self.world_size = world_size
        self.register_buffer("center", torch.zeros(1, out_dim))
        # of the last batch (detached): mean teacher row entropy, entropy of the batch-mean teacher
        self.last_entropy = torch.zeros(2)

    def forward(self, student_out: torch.Tensor, teacher_out: torch.Tensor, k: int) -> torch.Tensor:
        log_q = teacher_log_probs(teacher_out, self.center, self.teacher_temp)  # once, for loss and entropies
        loss = _loss_from_teacher_probs(student_out, log_q.exp(), k, self.n_student_views, self.student_temp)
        with torch.no_grad():
            self.last_entropy = torch.stack(_entropies(log_q))
        self.update_center(teacher_out)
        return loss

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        batch_center = self.all_reduce_sum(teacher_out.float().sum(dim=0, keepdim=True))
        batch_center = batch_center / (teacher_out.shape[0] * self.world_size)
        self.center.mul_(self.center_momentum).add_(batch_center * (1 - self.center_momentum))
