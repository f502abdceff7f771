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

import math
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


def sinkhorn_log_probs(teacher_out: torch.Tensor, teacher_temp: float = 0.04, n_iters: int = 3,
                       all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
                       world_size: int = 1) -> torch.Tensor:
    """log q from Sinkhorn-Knopp centring (SwAV; DINOv2's alternative to the EMA centre).

    teacher_out: (N, D) logits of this worker's rows. The matrix exp(teacher_out / temp) is scaled
    alternately so that every dimension receives the same total mass over the whole batch (all
    workers: the per-dimension sums go through all_reduce_sum) and every row sums to 1. With a
    batch smaller than D a row must spread over at least D / N_total dimensions, so the targets
    can neither collapse onto one dimension nor flatten to uniform unless the inputs are
    identical. Returns (N, D) log-probabilities, rows summing to 1 (no gradient).

    The iterations are SwAV's (dimensions first, then rows), in log space so that no exp() can
    overflow or underflow at a low temperature. Nothing may rescale the rows before the first
    dimension step: it would change the result of a finite number of iterations (a per-dimension
    shift of the logits, such as a centre, changes nothing)."""
    reduce = all_reduce_sum or _sum_identity
    with torch.no_grad():
        log_q = teacher_out.float() / teacher_temp
        n_total = float(teacher_out.shape[0] * world_size)
        d = teacher_out.shape[1]
        for _ in range(n_iters):
            # every dimension: total mass n_total / d over the whole batch
            log_q = log_q - _log_column_sums(log_q, reduce, world_size) + math.log(n_total / d)
            # every row: mass 1
            log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True)
        return log_q


def _log_column_sums(log_q: torch.Tensor, reduce: Callable[[torch.Tensor], torch.Tensor],
                     world_size: int) -> torch.Tensor:
    """(1, D): log of sum over every worker's rows of exp(log_q). Each worker's column logsumexp,
    combined around their mean over the workers (the same shift on every worker) in float64."""
    local = torch.logsumexp(log_q, dim=0, keepdim=True).double()
    shift = reduce(local.clone()) / world_size
    return (shift + reduce((local - shift).exp()).log()).float()


def koleo_loss(feats: torch.Tensor, k: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Kozachenko-Leonenko entropy regulariser (Sablayrolles et al. 2019, as DINOv2 uses it):
    -mean log distance of each L2-normalised row to its nearest neighbour in the batch.

    feats: (B, F), B = P * K rows in the sampler's layout; rows of the same identity (the same
    block of K) are not counted as neighbours, so identities are spread apart while the images of
    one identity may still meet. Returns a scalar (float32)."""
    x = F.normalize(feats.float(), dim=-1)
    b = x.shape[0]
    if b < 2 * k or b % k:
        raise ValueError(f"KoLeo needs a P x K batch with P >= 2, got {b} rows with K = {k}")
    sim = x @ x.t()
    same = torch.arange(b, device=x.device) // k
    sim = sim.masked_fill(same[:, None] == same[None, :], -2.0)
    nn_idx = sim.argmax(dim=1)
    return -torch.log((x - x[nn_idx]).norm(dim=1) + eps).mean()


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

    centering: "center" (the EMA centre of the released recipe) or "sinkhorn" (Sinkhorn-Knopp
    targets; the centre is still tracked, for a later switch and for the checkpoint format).
    all_reduce_sum: sums a tensor over the workers in place and returns it (identity on one
    worker); world_size: number of workers it sums over."""

    def __init__(self, out_dim: int, n_student_views: int, student_temp: float = 0.1, teacher_temp: float = 0.04,
                 center_momentum: float = 0.9, all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] = _sum_identity,
                 world_size: int = 1, centering: str = "center", sinkhorn_iters: int = 3):
        super().__init__()
        if centering not in ("center", "sinkhorn"):
            raise ValueError(f"centering must be center or sinkhorn, got {centering!r}")
        self.centering = centering
        self.sinkhorn_iters = sinkhorn_iters
        self.n_student_views = n_student_views
        self.student_temp = student_temp
        self.teacher_temp = teacher_temp
        self.center_momentum = center_momentum
        self.all_reduce_sum = all_reduce_sum
        self.world_size = world_size
        self.register_buffer("center", torch.zeros(1, out_dim))
        # of the last batch (detached): mean teacher row entropy, entropy of the batch-mean teacher
        self.last_entropy = torch.zeros(2)

    def forward(self, student_out: torch.Tensor, teacher_out: torch.Tensor, k: int,
                teacher_temp: float | None = None) -> torch.Tensor:
        """teacher_temp: this step's temperature (a warm-up schedule); default the constructor's."""
        temp = self.teacher_temp if teacher_temp is None else teacher_temp
        if self.centering == "sinkhorn":
            log_q = sinkhorn_log_probs(teacher_out, temp, self.sinkhorn_iters, self.all_reduce_sum, self.world_size)
        else:  # once, for the loss and the entropies
            log_q = teacher_log_probs(teacher_out, self.center, temp)
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
