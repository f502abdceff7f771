"""Embeddings from a timm / ReIDZoo backbone with user-given weights (path or s3:// URI), for
example a checkpoint produced by cion-ray's own pre-training.

Crops go through the shared extractor (cion_ray.zoo.features): PIL bicubic resize to
(height, width) and ImageNet MEAN / STD, the preprocessing of pre-training and evaluation.
"""
from __future__ import annotations

import numpy as np

from cion_ray.errors import CionError


class TimmEmbedder:
    """Callable: list of JPEG bytes -> (n, D) float32 L2-normalised features.
    Undecodable crops get rows of NaN (curation drops and counts them)."""

    def __init__(self, name: str | None, weights: str, device: str = "cpu", height: int | None = 256,
                 width: int | None = 128):
        """name None: the architecture the checkpoint records; height / width None: the input size
        it was trained at (a cion-ray pre-training run records both)."""
        from cion_ray.zoo.checkpoints import RANDOM, load_backbone
        from cion_ray.zoo.factory import feature_dim

        if not weights or weights == RANDOM:
            raise CionError(f"the timm:{name} embedder needs --weights (a checkpoint path or s3:// URI)")
        size = (height, width) if height and width else None
        self.model, info = load_backbone(name, weights, size)
        self.name = f"timm:{name}" if name else f"cion:{weights}"
        self.size = tuple(info.size)
        self.device = device
        self.model.eval()
        self.dim = feature_dim(self.model, self.size)

    def __call__(self, jpegs: list[bytes]) -> np.ndarray:
        from cion_ray.zoo.features import extract_features

        return extract_features(self.model, jpegs, self.size, batch=max(1, len(jpegs)), flip=False,
                                device=self.device, on_error="nan", normalize=True,
                                amp=str(self.device).startswith("cuda"))


def build_embedder(spec: str, weights: str = "", device: str = "cpu", height: int = 256, width: int = 128):
    """'handcrafted', 'timm:<name>' or 'cion:<pre-training run>' -> an embedder callable with `.dim`
    and `.name`. A cion run gives its own architecture and input size (height / width unused)."""
    if spec == "handcrafted":
        from cion_ray.embed.handcrafted import HandcraftedEmbedder
        return HandcraftedEmbedder()
    if spec.startswith("timm:"):
        return TimmEmbedder(spec[5:], weights, device, height, width)
    if spec.startswith("cion:"):
        return TimmEmbedder(None, spec[5:], device, None, None)
    raise CionError(f"unknown embedder {spec!r}: use 'handcrafted', 'timm:<name>' or 'cion:<pre-training run>'")
