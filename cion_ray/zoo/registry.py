"""The ReIDZoo registry: the 32 backbone names of the released CION model zoo (same keys, so
checkpoints and commands carry over), extras for comparisons (`mobilenetv2`, the architecture of
the ImageNet weights of zoo/imagenet.py) and tiny variants for tests, each mapped to how it is built.

A name maps to either a timm model (created with pretrained=False, num_classes=0; ViT-style
models with img_size=(256, 128)) or one of our ResNet(-IBN-a) builds (zoo/resnet.py).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ZooEntry:
    name: str
    family: str
    timm: str | None = None  # timm model name, or None for our ResNets
    depth: int = 0  # our ResNets: 18 / 50 / 101 / 152
    ibn: bool = False
    width: int = 64
    large: bool = False  # slow to build and run on a CPU: kept out of the default test suite
    test: bool = False  # a tiny variant for tests, not a ReIDZoo model
    fixed_input: bool = False  # runs only at the size it was built for (local views are resized to it)
    extra: bool = False  # not a ReIDZoo model: a backbone for comparisons (e.g. one with ImageNet weights)


def _entries() -> list[ZooEntry]:
    e = []
    for size, t in (("tiny", "vit_tiny_patch16_224"), ("small", "vit_small_patch16_224"),
                    ("base", "vit_base_patch16_224")):
        e.append(ZooEntry(f"vit_{size}", "ViT", t, large=size == "base"))
    for size in ("tiny", "small", "base"):
        e.append(ZooEntry(f"swin_{size}", "Swin", f"swin_{size}_patch4_window7_224", large=size != "tiny"))
    for depth in (18, 50, 101, 152):
        e.append(ZooEntry(f"resnet{depth}", "ResNet", depth=depth, large=depth > 50))
    for depth in (18, 50, 101, 152):
        e.append(ZooEntry(f"resnet{depth}_ibn", "ResNet-IBN", depth=depth, ibn=True, large=depth > 50))
    for size in ("tiny", "small", "base"):
        e.append(ZooEntry(f"convnext_{size}", "ConvNeXt", f"convnext_{size}", large=size != "tiny"))
    for size in ("x_small", "small", "base"):
        e.append(ZooEntry(f"edgenext_{size}", "EdgeNeXt", f"edgenext_{size}", large=size == "base"))
    for mult, t in (("0_5", "ghostnet_050"), ("1_0", "ghostnet_100"), ("1_3", "ghostnet_130")):
        e.append(ZooEntry(f"ghostnet_{mult}", "GhostNet", t))
    for m in ("m0_9", "m1_0", "m1_5"):
        e.append(ZooEntry(f"repvit_{m}", "RepViT", f"repvit_{m}"))
    for v in ("s12", "sa12", "sa24"):
        e.append(ZooEntry(f"fastvit_{v}", "FastViT", f"fastvit_{v}", large=v == "sa24"))
    for d in ("d1", "d2", "d3"):
        e.append(ZooEntry(f"volo_{d}", "VOLO", f"volo_{d}_224", large=d != "d1", fixed_input=True))
    # extras, outside the ReIDZoo: MobileNetV2 loads the ImageNet weights of zoo/imagenet.py
    e.append(ZooEntry("mobilenetv2", "MobileNetV2", "mobilenetv2_100", extra=True))
    # tiny variants: the same code paths at a fraction of the cost
    e += [ZooEntry("test_vit", "ViT", "test_vit", test=True),
          ZooEntry("test_convnext", "ConvNeXt", "test_convnext", test=True),
          ZooEntry("test_resnet", "ResNet", depth=18, width=8, test=True),
          ZooEntry("test_resnet_ibn", "ResNet-IBN", depth=18, ibn=True, width=8, test=True)]
    return e


REGISTRY: dict[str, ZooEntry] = {x.name: x for x in _entries()}
REIDZOO: list[str] = [n for n, x in REGISTRY.items() if not x.test and not x.extra]


def zoo_names(include_test: bool = False) -> list[str]:
    return [n for n, x in REGISTRY.items() if include_test or not x.test]
