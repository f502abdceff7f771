"""Person images as the backbones see them: decoding, and the evaluation transform.

One preprocessing for everything that turns an image into a feature (evaluation, the in-loop
evaluation of pre-training, the timm embedder of curation), the one pre-training's views end
with: PIL decode to RGB, PIL bicubic resize to (H, W) (torchvision's `Resize` on a PIL image
does the same), scale to [0, 1], normalise by the ImageNet MEAN / STD the released CION code
uses. A backbone is thus evaluated on inputs made the way its training inputs were made.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from cion_ray.errors import CionError

MEAN = (0.485, 0.456, 0.406)  # RGB, of pixel values in [0, 1]
STD = (0.229, 0.224, 0.225)

_MEAN = np.array(MEAN, np.float32)[:, None, None]
_STD = np.array(STD, np.float32)[:, None, None]


class ImageDecodeError(CionError, ValueError):
    """An image that cannot be decoded; the message names it. A CionError (one line, exit 2
    on the command line) and a ValueError (what callers of decode_jpeg caught before)."""


def decode_jpeg(data: bytes, name: str = "image") -> Image.Image:
    """JPEG (or PNG, or anything PIL reads) bytes -> an RGB PIL image; `name` goes in the error."""
    if not data:
        raise ImageDecodeError(f"{name}: cannot decode image (empty)")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
        return img.convert("RGB")
    except Exception as e:
        raise ImageDecodeError(f"{name}: cannot decode image ({type(e).__name__}: {e})") from None


def eval_array(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """RGB image -> the model input: (3, H, W) float32, resized (bicubic) to size = (H, W) and
    normalised by MEAN / STD."""
    h, w = int(size[0]), int(size[1])
    if img.size != (w, h):
        img = img.resize((w, h), Image.BICUBIC)
    x = np.asarray(img, np.float32).transpose(2, 0, 1) / 255.0
    return (x - _MEAN) / _STD
