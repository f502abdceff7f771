"""Training augmentation of the ReID strong baseline, seeded per image.

resize to (H, W) (bicubic, as evaluation) -> horizontal flip (p) -> zero-pad by `pad` pixels and
crop (H, W) at a random offset -> normalise (ImageNet mean / std) -> random erasing (Zhong et al.,
2020: with probability p, one box of area fraction in `area` and aspect ratio in [a, 1 / a] is
set to 0, the mean colour after normalisation).

Every random draw comes from a numpy Generator seeded by the caller, one per image, so the
augmented batch is a function of (seed, rank, iteration, position) whatever the number of
DataLoader processes, and a resumed run repeats it.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from cion_ray.finetune.config import AugmentConfig
from cion_ray.io.images import MEAN, STD


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB (W x H) -> (3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def random_erasing(x: torch.Tensor, rng: np.random.Generator, area: tuple[float, float], aspect: float,
                   tries: int = 100) -> torch.Tensor:
    """x: (3, H, W) -> x with one random box (area fraction in `area`, aspect ratio h / w in
    [aspect, 1 / aspect]) set to 0, in place; unchanged when no box fits in `tries` draws."""
    _, h, w = x.shape
    for _ in range(tries):
        target = rng.uniform(*area) * h * w
        ratio = math.exp(rng.uniform(math.log(aspect), -math.log(aspect)))
        eh, ew = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
        if 0 < eh < h and 0 < ew < w:
            top, left = int(rng.integers(0, h - eh + 1)), int(rng.integers(0, w - ew + 1))
            x[:, top:top + eh, left:left + ew] = 0.0
            return x
    return x


class TrainTransform:
    """(PIL RGB image, numpy Generator) -> (3, H, W) float32 normalised tensor."""

    def __init__(self, cfg: AugmentConfig | None = None):
        self.cfg = cfg or AugmentConfig()
        self.mean = torch.tensor(MEAN).view(3, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1)

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        c = self.cfg
        h, w = c.size
        x = to_tensor(img.resize((w, h), Image.BICUBIC))
        if rng.random() < c.flip:
            x = x.flip(-1)
        p = c.pad_pixels
        if p > 0:
            x = torch.nn.functional.pad(x, (p, p, p, p))
            top, left = int(rng.integers(0, 2 * p + 1)), int(rng.integers(0, 2 * p + 1))
            x = x[:, top:top + h, left:left + w]
        x = (x - self.mean) / self.std
        if rng.random() < c.erasing:
            x = random_erasing(x.contiguous(), rng, c.erasing_area, c.erasing_aspect)
        return x.contiguous()
