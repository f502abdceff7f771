"""`create_backbone(name)`: a feature extractor (no classifier) for a timm model name.

Created with pretrained=False (nothing is ever downloaded) and num_classes=0; ViT-style models
get img_size=(256, 128). The feature size is measured with a dummy forward, not read from
num_features, since some models pool differently.
"""
from __future__ import annotations

from cion_ray.errors import CionError

INPUT_SIZE = (256, 128)


def create_backbone(name: str, img_size: tuple[int, int] = INPUT_SIZE):
    import timm

    if not timm.is_model(name):
        raise CionError(f"unknown backbone {name!r} (not a timm model name)")
    try:
        return timm.create_model(name, pretrained=False, num_classes=0, img_size=img_size)
    except TypeError:  # models without an img_size argument (CNNs)
        return timm.create_model(name, pretrained=False, num_classes=0)


def feature_dim(model, img_size: tuple[int, int] = INPUT_SIZE) -> int:
    import torch

    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, *img_size))
    model.train(was_training)
    return int(out.shape[-1])
