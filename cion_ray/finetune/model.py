"""The ReID baseline model of fine-tuning: backbone -> global feature -> BNNeck -> classifier
(the "Bag of Tricks" strong baseline, Luo et al., 2019).

The BNNeck is a BatchNorm1d over the global feature whose bias is frozen at 0 (so the normalised
feature stays centred for the cosine metric), followed by a bias-free linear classifier over the
training identities. The triplet loss sees the feature before the BNNeck, the ID loss the logits;
retrieval uses the feature after it (`neck_feat="after"`), or before (`"before"`). `neck="none"`
is the plain ID-classification baseline instead: a linear classifier (with bias) straight on the
backbone feature, which is also the retrieval feature.

In training mode `forward` returns (feature (N, D), logits (N, C)); in eval mode the retrieval
feature (N, D), so the model plugs into any feature extractor that calls model(x).
"""
from __future__ import annotations

import torch
from torch import nn



class BNNeck(nn.BatchNorm1d):
    """BatchNorm1d(D) with weight 1, bias 0 and the bias frozen."""

    def __init__(self, dim: int):
        super().__init__(dim)
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)
        self.bias.requires_grad_(False)


class ReIDModel(nn.Module):
    def __init__(self, backbone: nn.Module, feat_dim: int, num_classes: int, neck_feat: str = "after",
                 neck: str = "bnneck"):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"a classifier needs at least one identity, got {num_classes}")
        if neck not in ("bnneck", "none"):
            raise ValueError(f"neck must be 'bnneck' or 'none', got {neck!r}")
        self.backbone = backbone
        self.neck = BNNeck(feat_dim) if neck == "bnneck" else nn.Identity()
        self.classifier = nn.Linear(feat_dim, num_classes, bias=neck == "none")
        nn.init.normal_(self.classifier.weight, std=0.001)
        if self.classifier.bias is not None:
            nn.init.zeros_(self.classifier.bias)
        self.neck_kind = neck
        self.neck_feat = neck_feat
        self.feat_dim = feat_dim

    def forward(self, x: torch.Tensor):
        """x: (N, 3, H, W) normalised images -> training: (feature (N, D), logits (N, C));
        eval: the retrieval feature (N, D)."""
        feat = self.backbone(x)
        if feat.ndim != 2:
            raise ValueError(f"the backbone gave features of shape {tuple(feat.shape)}, expected (N, D)")
        bn = self.neck(feat)
        if self.training:
            return feat, self.classifier(bn)
        return bn if self.neck_feat == "after" else feat


def build_reid_model(arch: str, num_classes: int, size: tuple[int, int], weights: str = "", seed: int = 0,
                     neck_feat: str = "after", neck: str = "bnneck", log=print) -> ReIDModel:
    """A ReIDZoo / timm backbone at input `size` (H, W) with the weights of a checkpoint (file or
    run folder, local or s3://, any layout zoo.checkpoints reads) or, with `weights` "", a random
    initialisation from torch seed `seed`, wrapped in the BNNeck baseline (classifier drawn after
    torch.manual_seed(seed), so every worker builds the same model)."""
    from cion_ray.zoo.checkpoints import RANDOM, load_backbone
    from cion_ray.zoo.factory import feature_dim

    backbone, info = load_backbone(arch, weights or RANDOM, tuple(size), seed)
    log(f"init: {arch}, " + (f"random (seed {seed})" if not weights else f"from {info.file}"))
    torch.manual_seed(seed)
    return ReIDModel(backbone, feature_dim(backbone, tuple(size)), num_classes, neck_feat, neck)
