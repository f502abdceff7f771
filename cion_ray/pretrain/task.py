"""The CION task: student and EMA teacher (backbone + DINO head) and the identity-guided loss.

It owns forward + loss + teacher update; distribution comes in from outside: the cross-worker
sum for the loss centre is injected, and `wrap_student` takes the caller's DDP wrapper.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from cion_ray.pretrain.config import PretrainConfig
from cion_ray.pretrain.head import DINOHead, MultiCropWrapper
from cion_ray.pretrain.loss import IdentityDINOLoss, koleo_loss
from cion_ray.zoo.factory import create_backbone, feature_dim
from cion_ray.zoo.registry import REGISTRY


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class CIONTask(nn.Module):
    def __init__(self, cfg: PretrainConfig, all_reduce_sum: Callable | None = None, world_size: int = 1):
        super().__init__()
        self.cfg = cfg
        size = tuple(cfg.views.global_size)
        backbone = create_backbone(cfg.model.arch, size)
        self.feature_dim = feature_dim(backbone, size)
        entry = REGISTRY.get(cfg.model.arch)
        self.fixed_input = bool(entry and entry.fixed_input)
        m = cfg.model

        def wrapper(b):
            head = DINOHead(self.feature_dim, m.out_dim, m.hidden_dim, m.bottleneck_dim, m.norm_last_layer, m.head_bn)
            return MultiCropWrapper(b, head)

        self.student = wrapper(backbone)
        self.teacher = copy.deepcopy(self.student)  # starts as a copy; never trained by gradients
        for p in self.teacher.parameters():
            p.requires_grad = False
        n_views = 2 + cfg.views.local_crops
        o = cfg.optim
        kwargs = {} if all_reduce_sum is None else {"all_reduce_sum": all_reduce_sum}
        self.loss = IdentityDINOLoss(m.out_dim, n_views, o.student_temp, o.teacher_temp, o.center_momentum,
                                     world_size=world_size, centering=o.centering, sinkhorn_iters=o.sinkhorn_iters,
                                     **kwargs)
        self._student_fwd: nn.Module = self.student
        # of the last step (detached): the distillation loss and the KoLeo term (0 when off); the
        # mean pairwise cosine of the teacher's backbone features over the batch (-> 1: the
        # representation collapses to one point, whatever the head does)
        self.last_terms = torch.zeros(2)
        self.last_similarity = torch.zeros(())

    # -- distribution hooks -------------------------------------------------------------------
    def convert_sync_batchnorm(self) -> None:
        self.student = nn.SyncBatchNorm.convert_sync_batchnorm(self.student)
        self.teacher = nn.SyncBatchNorm.convert_sync_batchnorm(self.teacher)
        self._student_fwd = self.student

    def wrap_student(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        """Use wrap(student) (e.g. DDP) for the forward pass; parameters and state stay unwrapped."""
        self._student_fwd = wrap(self.student)

    # -- the step ------------------------------------------------------------------------------
    def _views(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        if not self.fixed_input:
            return views
        size = tuple(self.cfg.views.global_size)
        return [v if tuple(v.shape[-2:]) == size else
                F.interpolate(v, size=size, mode="bilinear", align_corners=False) for v in views]

    def forward(self, views: list[torch.Tensor], k: int, teacher_temp: float | None = None) -> torch.Tensor:
        """views: [global1, global2, local...], each (B, 3, H, W) with B = P * K rows -> loss:
        the identity-guided distillation loss, plus optim.koleo x the KoLeo term on the student's
        backbone features of each global view. teacher_temp: this step's (warm-up schedule)."""
        views = self._views(views)
        with torch.no_grad():
            teacher_out, teacher_feats = self.teacher(views[:2], return_features=True)
            self.last_similarity = mean_pairwise_cosine(teacher_feats[:views[0].shape[0]])
        w = self.cfg.optim.koleo
        if w > 0:
            student_out, feats = self._student_fwd(views, return_features=True)
            b = views[0].shape[0]
            koleo = (koleo_loss(feats[:b], k) + koleo_loss(feats[b:2 * b], k)) / 2
        else:
            student_out, koleo = self._student_fwd(views), torch.zeros((), device=teacher_out.device)
        dino = self.loss(student_out, teacher_out, k, teacher_temp)
        self.last_terms = torch.stack([dino.detach(), koleo.detach().float()])
        return dino + w * koleo if w > 0 else dino

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        for ps, pt in zip(self.student.parameters(), self.teacher.parameters()):
            pt.mul_(momentum).add_(ps.detach(), alpha=1 - momentum)

    def cancel_last_layer_grad(self, epoch: int) -> None:
        if epoch >= self.cfg.optim.freeze_last_layer:
            return
        for p in self.student.head.last_layer.parameters():
            p.grad = None

    def param_groups(self) -> list[dict]:
        """Weight decay on weights only; none on biases and norm parameters (1-d tensors)."""
        decay, no_decay = [], []
        for name, p in self.student.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if name.endswith(".bias") or p.ndim <= 1 else decay).append(p)
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def mean_pairwise_cosine(feats: torch.Tensor) -> torch.Tensor:
    """feats: (B, F) -> the mean cosine similarity over the B (B - 1) ordered pairs of rows."""
    x = F.normalize(feats.float(), dim=-1)
    b = x.shape[0]
    if b < 2:
        return torch.ones((), device=x.device)
    s = x.sum(0)
    return ((s @ s) - b) / (b * (b - 1))


def clip_gradients(model: nn.Module, clip: float) -> None:
    """Per-parameter gradient norm clipping, as the released code (and DINO) do it."""
    for p in model.parameters():
        if p.grad is not None:
            norm = p.grad.detach().norm(2)
            coef = clip / (norm + 1e-6)
            if coef < 1:
                p.grad.mul_(coef)
