"""`create_backbone(name)`: a feature extractor (no classifier) for a ReIDZoo name or a timm name.

ReIDZoo names (zoo/registry.py) build the registered model; any other name is tried as a timm
model. timm models are created with pretrained=False (nothing is ever downloaded) and
num_classes=0; ViT-style models get img_size=(256, 128). The feature size is measured with a
dummy forward, not read from num_features, since some models pool differently.
"""
from __future__ import annotations

from cion_ray.errors import CionError
from cion_ray.zoo.registry import REGISTRY, zoo_names

INPUT_SIZE = (256, 128)


def _timm(name: str, img_size: tuple[int, int]):
    import timm

    # dynamic_img_size lets ViT / Swin also run the smaller local views of pre-training
    for kwargs in ({"img_size": img_size, "dynamic_img_size": True}, {"img_size": img_size}, {}):
        try:
            return timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
        except TypeError:  # the model has no such argument (CNNs have neither)
            continue
    raise CionError(f"timm cannot build {name!r}")


def check_backbone(name: str) -> None:
    """Raise CionError unless `name` is a ReIDZoo name or a timm model name (builds nothing)."""
    if name in REGISTRY:
        return
    import timm

    if not timm.is_model(name):
        raise CionError(f"unknown backbone {name!r}: not a ReIDZoo name ({', '.join(zoo_names())}) "
                        "nor a timm model name")


def create_backbone(name: str, img_size: tuple[int, int] = INPUT_SIZE):
    """A feature extractor: (N, 3, H, W) -> (N, feature_dim)."""
    check_backbone(name)
    entry = REGISTRY.get(name)
    if entry is not None and entry.timm is None:
        from cion_ray.zoo.resnet import resnet

        return resnet(entry.depth, ibn=entry.ibn, width=entry.width)
    return _timm(entry.timm if entry is not None else name, img_size)


def feature_dim(model, img_size: tuple[int, int] = INPUT_SIZE) -> int:
    import torch

    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, *img_size))
    model.train(was_training)
    return int(out.shape[-1])


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
