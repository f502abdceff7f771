"""Optimizer and learning-rate schedule of fine-tuning; the schedule is a precomputed array with
one value per iteration (pure, testable, resumable by index)."""
from __future__ import annotations

import numpy as np
import torch

from cion_ray.finetune.config import FTOptimConfig
from cion_ray.pretrain.schedules import cosine_schedule


def lr_schedule(o: FTOptimConfig, total: int) -> np.ndarray:
    """(total,) learning rate per iteration: linear warm-up from lr x warmup_start to lr over the
    first round(warmup x total) iterations, then either a half cosine down to min_lr or steps of
    x gamma at round(m x total) for each milestone fraction m."""
    if total < 1:
        raise ValueError(f"a schedule needs at least one iteration, got {total}")
    warm = min(total - 1, int(round(o.warmup * total)))
    if o.schedule == "cosine":
        return cosine_schedule(o.lr, o.min_lr, total, 1, warm, o.lr * o.warmup_start)
    it = np.arange(total)
    passed = np.zeros(total)
    for m in o.milestones:
        passed += it >= int(round(m * total))
    lr = np.full(total, o.lr, dtype=np.float64)
    lr[:warm] = np.linspace(o.lr * o.warmup_start, o.lr, warm)
    return lr * o.gamma ** passed


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weights only; none on biases and norm parameters (1-d tensors)."""
    decay, plain = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:  # the BNNeck's frozen bias is left out
            (decay if p.ndim > 1 and not name.endswith(".bias") else plain).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, o: FTOptimConfig) -> torch.optim.Optimizer:
    """Adam or AdamW over the trainable parameters; weight decay on weights only. (Adam's decay is
    the L2 term of the original strong baseline, AdamW's the decoupled one.)"""
    cls = torch.optim.AdamW if o.optimizer == "adamw" else torch.optim.Adam
    return cls(param_groups(model, o.weight_decay), lr=o.lr)
