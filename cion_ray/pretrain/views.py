"""Multi-crop views (the released CION augmentations): 2 global views (256x128) and N local
views (128x64) of one person image, as normalised float tensors.

Global: RandomResizedCrop scale (0.8, 1.0), ratio (0.4, 0.6); flip 0.5; colour jitter
(0.4, 0.4, 0.2, 0.1) p 0.8; grayscale p 0.2; Gaussian blur p 1.0 (first) / 0.1 (second);
solarize p 0.2 (second only). Local: scale (0.05, 0.8), blur p 0.5. Blur radii 0.1 to 2.0
pixels at those sizes, scaled with the view height at other sizes. Every probability and the
jitter strengths are ViewsConfig fields (the defaults above).
"""
from __future__ import annotations

import random

from PIL import Image, ImageFilter, ImageOps

from cion_ray.io.images import MEAN, STD, decode_jpeg  # noqa: F401 (decode_jpeg: re-exported)
from cion_ray.pretrain.config import ViewsConfig


# the view heights the released blur radii (0.1 to 2.0 pixels) were chosen for
RELEASED_HEIGHT = {"global": 256, "local": 128}


class RandomBlur:
    """PIL Gaussian blur with a radius drawn from radius (pixels), applied with probability p."""

    def __init__(self, p: float, radius: tuple[float, float] = (0.1, 2.0)):
        self.p = p
        self.radius = radius

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.random() >= self.p:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.radius)))


def blur_radius(cfg: ViewsConfig, kind: str) -> tuple[float, float]:
    """The blur radius range for global or local views: cfg.blur_radius is in pixels at the
    released view heights (global 256, local 128) and shrinks with the view, so that a 64x32 view
    is blurred as much, relative to its size, as a 256x128 one (a fixed 2-pixel radius would
    wash out a 32-pixel-wide person)."""
    height = (cfg.global_size if kind == "global" else cfg.local_size)[0]
    f = height / RELEASED_HEIGHT[kind]
    return (cfg.blur_radius[0] * f, cfg.blur_radius[1] * f)


class RandomSolarize:
    def __init__(self, p: float):
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        return ImageOps.solarize(img) if random.random() < self.p else img


class MultiCropViews:
    """image (PIL RGB) -> [global1, global2, local1 .. localN], (3, H, W) float32 tensors."""

    def __init__(self, cfg: ViewsConfig | None = None):
        from torchvision import transforms as T

        cfg = cfg or ViewsConfig()
        self.cfg = cfg
        colour = T.Compose([T.RandomHorizontalFlip(0.5),
                            T.RandomApply([T.ColorJitter(*cfg.colour_jitter)], p=cfg.colour_p),
                            T.RandomGrayscale(p=cfg.grayscale_p)])
        norm = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])
        bicubic = T.InterpolationMode.BICUBIC

        def crop(size, scale):
            return T.RandomResizedCrop(tuple(size), scale=tuple(scale), ratio=tuple(cfg.ratio),
                                       interpolation=bicubic)

        b1, b2, bl = cfg.blur_p
        rg, rl = blur_radius(cfg, "global"), blur_radius(cfg, "local")
        self.global1 = T.Compose([crop(cfg.global_size, cfg.global_scale), colour, RandomBlur(b1, rg), norm])
        self.global2 = T.Compose([crop(cfg.global_size, cfg.global_scale), colour, RandomBlur(b2, rg),
                                  RandomSolarize(cfg.solarize_p), norm])
        self.local = T.Compose([crop(cfg.local_size, cfg.local_scale), colour, RandomBlur(bl, rl), norm])

    @property
    def n_views(self) -> int:
        return 2 + self.cfg.local_crops

    def __call__(self, img: Image.Image) -> list:
        return [self.global1(img), self.global2(img)] + [self.local(img) for _ in range(self.cfg.local_crops)]
