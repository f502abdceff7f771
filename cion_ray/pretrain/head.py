"""The DINO projection head and the multi-crop wrapper, with the released CION parameter names
(`head.mlp.*`, `head.last_layer.weight_g`, `head.last_layer.weight_v`, `backbone.*`)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class WeightNormLinear(nn.Module):
    """Linear without bias, weight = g * v / ||v|| per output row (Salimans & Kingma, 2016).

    Written out instead of torch's weight_norm so the parameters keep the names the released
    checkpoints use (weight_g: (out, 1), weight_v: (out, in))."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.kaiming_uniform_(self.weight_v, a=5 ** 0.5)
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)
        return F.linear(x, w)


class DINOHead(nn.Module):
    """MLP in -> hidden -> hidden -> bottleneck (GELU; BatchNorm after each hidden layer only with
    use_bn), L2-normalise, weight-normalised linear to out_dim. With norm_last_layer the norm g
    stays fixed at 1."""

    def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 norm_last_layer: bool = True, use_bn: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        for a, b in ((in_dim, hidden_dim), (hidden_dim, hidden_dim)):
            layers += [nn.Linear(a, b)] + ([nn.BatchNorm1d(b)] if use_bn else []) + [nn.GELU()]
        self.mlp = nn.Sequential(*layers, nn.Linear(hidden_dim, bottleneck_dim))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)
        self.last_layer.weight_g.requires_grad = not norm_last_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1, p=2))


class MultiCropWrapper(nn.Module):
    """Runs the backbone once per run of same-sized views, then the head on all features.

    views: list of (B, 3, H_v, W_v) tensors -> (len(views) * B, out_dim), view-major; with
    return_features also the backbone features (len(views) * B, feature_dim)."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, views: list[torch.Tensor] | torch.Tensor, return_features: bool = False):
        if isinstance(views, torch.Tensor):
            views = [views]
        feats, start = [], 0
        while start < len(views):
            end = start + 1
            while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
                end += 1
            feats.append(self.backbone(torch.cat(views[start:end])))
            start = end
        feats = torch.cat(feats)
        out = self.head(feats)
        return (out, feats) if return_features else out
