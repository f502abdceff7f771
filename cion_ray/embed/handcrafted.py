"""A weights-free ReID descriptor: colour and texture histograms over horizontal stripes.

A crop is resized to 128x64 and cut into 8 horizontal stripes (head, shoulders, torso ...,
legs, shoes). Pixels are weighted by a Gaussian across the width, so the person in the middle
counts more than the background at the sides. Per stripe:
- colour: saturated pixels vote into 12 hue x 3 saturation bins, unsaturated ones into 4
  brightness bins (hue survives illumination gain; brightness bins are coarse);
- texture: 8 gradient-orientation bins weighted by gradient magnitude.
Each block is L1-normalised and square-rooted (Hellinger), blocks are concatenated and the whole
vector L2-normalised: 8 stripes x (48 + 8) = 448 dimensions, float32.
"""
from __future__ import annotations

import cv2
import numpy as np

H, W = 128, 64
STRIPES = 8
HUE_BINS, SAT_BINS, GREY_BINS, ORI_BINS = 12, 3, 4, 8
COLOUR_BINS = HUE_BINS * SAT_BINS + GREY_BINS
SAT_MIN = 45
TEXTURE_WEIGHT = 0.5
DIM = STRIPES * (COLOUR_BINS + ORI_BINS)

_wx = np.exp(-0.5 * ((np.arange(W) - (W - 1) / 2) / (0.28 * W)) ** 2)
WEIGHT = np.tile(_wx, (H, 1)).astype(np.float32)
STRIPE_OF = (np.arange(H) * STRIPES // H)[:, None].repeat(W, axis=1)


def decode(jpeg: bytes) -> np.ndarray:
    """JPEG bytes -> (128, 64, 3) BGR uint8."""
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("not a decodable image")
    return cv2.resize(img, (W, H), interpolation=cv2.INTER_AREA)


def describe_bgr(img: np.ndarray) -> np.ndarray:
    """(128, 64, 3) BGR uint8 -> (DIM,) float32, L2-normalised."""
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    h = hsv[..., 0].astype(np.int64) * HUE_BINS // 180
    s = hsv[..., 1].astype(np.int64)
    v = hsv[..., 2].astype(np.int64)
    sat_bin = np.clip((s - SAT_MIN) * SAT_BINS // (256 - SAT_MIN), 0, SAT_BINS - 1)
    colour = np.where(s >= SAT_MIN, h * SAT_BINS + sat_bin, HUE_BINS * SAT_BINS + v * GREY_BINS // 256)
    col_hist = np.bincount((STRIPE_OF * COLOUR_BINS + colour).ravel(), weights=WEIGHT.ravel(),
                           minlength=STRIPES * COLOUR_BINS).reshape(STRIPES, COLOUR_BINS)
    grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32)
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    mag = np.sqrt(gx * gx + gy * gy) * WEIGHT
    ori = ((np.arctan2(gy, gx) % np.pi) / np.pi * ORI_BINS).astype(np.int64) % ORI_BINS
    tex_hist = np.bincount((STRIPE_OF * ORI_BINS + ori).ravel(), weights=mag.ravel(),
                           minlength=STRIPES * ORI_BINS).reshape(STRIPES, ORI_BINS)
    col = np.sqrt(col_hist / np.maximum(col_hist.sum(axis=1, keepdims=True), 1e-9))
    tex = np.sqrt(tex_hist / np.maximum(tex_hist.sum(axis=1, keepdims=True), 1e-9)) * np.sqrt(TEXTURE_WEIGHT)
    vec = np.concatenate([col, tex], axis=1).ravel().astype(np.float32)
    return vec / max(float(np.linalg.norm(vec)), 1e-12)


class HandcraftedEmbedder:
    """Callable: list of JPEG bytes -> (n, DIM) float32 L2-normalised embeddings."""

    name = "handcrafted"
    dim = DIM

    def __call__(self, jpegs: list[bytes]) -> np.ndarray:
        out = np.empty((len(jpegs), DIM), np.float32)
        for i, b in enumerate(jpegs):
            out[i] = describe_bgr(decode(b))
        return out
