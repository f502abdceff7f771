"""Cameras: a fixed scene (background, perspective, occluding pole) per camera,
and per-video imaging conditions (gain, colour cast, blur, noise; in the "alt" style
also saturation, a tone curve and haze).

Images here are float32 RGB in [0, 255] until `finish_frame` quantises them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Camera:
    """One physical camera: its scene and geometry. `id` is 1-based (Market-1501 `cC`)."""

    id: int
    seed: int
    horizon: float  # horizon row as a fraction of the frame height
    scale: float  # person size factor at this camera
    facade: tuple[int, int, int]
    ground: tuple[int, int, int]
    window: tuple[int, int, int]
    pole_x: float  # x of a foreground pole as a fraction of the width, < 0 for none

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Conditions:
    """Imaging conditions of one video (illumination, colour cast, optics, sensor)."""

    gain: float
    cast: tuple[float, float, float]
    blur: float  # Gaussian sigma in pixels
    noise: float  # Gaussian noise std in grey levels

    def to_json(self) -> dict:
        return asdict(self)


def sample_camera(rng: np.random.Generator, cam_id: int) -> Camera:
    def colour(lo, hi):
        return tuple(int(c) for c in rng.integers(lo, hi, size=3))

    return Camera(
        id=cam_id,
        seed=int(rng.integers(1 << 31)),
        horizon=float(rng.uniform(0.28, 0.42)),
        scale=float(rng.uniform(0.85, 1.15)),
        facade=colour(70, 200),
        ground=colour(80, 150),
        window=colour(20, 110),
        pole_x=float(rng.uniform(0.15, 0.85)) if rng.random() < 0.5 else -1.0,
    )


@dataclass(frozen=True)
class AltConditions(Conditions):
    """Imaging of the "alt" style: besides gain and cast, colour saturation, a tone curve and haze."""

    saturation: float  # 1 keeps the colours, 0 is grey
    gamma: float  # tone curve exponent on [0, 1] intensities
    haze: float  # grey level the blacks are lifted to


def _scaled_cast(cast: np.ndarray, strength: float) -> tuple[float, float, float]:
    if strength != 1.0:  # the default draw stays bit for bit as it was
        cast = np.maximum(0.0, 1.0 + strength * (cast - 1.0))
    return tuple(float(c) for c in cast)


def sample_conditions(rng: np.random.Generator, style: str = "default", cast: float = 1.0) -> Conditions:
    """One video's imaging conditions; `cast` scales how far the colour cast is from neutral."""
    if style == "alt":
        return _sample_alt_conditions(rng, cast)
    return Conditions(
        gain=float(rng.uniform(0.75, 1.2)),
        cast=_scaled_cast(rng.uniform(0.88, 1.12, size=3), cast),
        blur=float(rng.uniform(0.0, 1.0)),
        noise=float(rng.uniform(1.5, 6.0)),
    )


def _sample_alt_conditions(rng: np.random.Generator, cast: float) -> AltConditions:
    # a clear colour temperature (warm: more red, less blue; or cool), a green-magenta tint and a
    # little per channel: red / blue ratios of about 1.15 to 1.7, where default casts stay near 1.1
    temp = rng.choice([-1.0, 1.0]) * rng.uniform(0.25, 1.0)
    tint = rng.uniform(-0.12, 0.12)
    raw = np.array([1.0 + 0.25 * temp, 1.0 + tint, 1.0 - 0.25 * temp]) * rng.uniform(0.95, 1.05, size=3)
    return AltConditions(
        gain=float(rng.uniform(0.55, 1.45)),
        cast=_scaled_cast(raw, cast),
        blur=float(rng.uniform(0.3, 1.8)),
        noise=float(rng.uniform(3.0, 10.0)),
        saturation=float(rng.uniform(0.55, 1.25)),
        gamma=float(rng.uniform(0.75, 1.35)),
        haze=float(rng.uniform(0.0, 28.0)),
    )


def render_background(cam: Camera, width: int, height: int) -> np.ndarray:
    """The empty scene of `cam`: a facade with windows above the horizon, textured ground below."""
    rng = np.random.default_rng(cam.seed)
    img = np.empty((height, width, 3), np.float32)
    hz = int(cam.horizon * height)
    img[:hz] = cam.facade
    img[hz:] = cam.ground
    # windows on the facade
    ww, wh = max(4, width // 14), max(4, hz // 4)
    for y in range(wh // 2, hz - wh, int(wh * 1.6)):
        for x in range(ww // 2, width - ww, int(ww * 1.7)):
            cv2.rectangle(img, (x, y), (x + ww, y + wh), cam.window, -1)
    # low-frequency texture over the whole scene, stronger on the ground
    tex = cv2.resize(rng.normal(0, 1, size=(max(2, height // 16), max(2, width // 16))).astype(np.float32),
                     (width, height), interpolation=cv2.INTER_CUBIC)
    img += (tex * 10.0)[..., None]
    fine = rng.normal(0, 4.0, size=(height, width)).astype(np.float32)
    img[hz:] += fine[hz:, :, None]
    # kerb line and a few ground markings
    cv2.line(img, (0, hz + 2), (width, hz + 2), (200, 200, 195), max(1, height // 120))
    for _ in range(3):
        x = int(rng.integers(0, width))
        cv2.line(img, (x, hz), (int(x + rng.integers(-width // 3, width // 3)), height),
                 tuple(float(c) * 0.85 for c in cam.ground), max(1, width // 160))
    return np.clip(img, 0, 255)


def pole_box(cam: Camera, width: int, height: int) -> tuple[int, int, int, int] | None:
    """(x1, y1, x2, y2) of the foreground pole, or None. It occludes people."""
    if cam.pole_x < 0:
        return None
    pw = max(3, width // 40)
    x = int(cam.pole_x * width)
    return (x - pw // 2, 0, x - pw // 2 + pw, height)


def person_height_px(cam: Camera, foot_y: float, frame_h: int, person_height: float) -> float:
    """Body height in pixels of a person with feet at row `foot_y` (perspective from the horizon)."""
    hz = cam.horizon * frame_h
    depth = np.clip((foot_y - hz) / max(1.0, frame_h - hz), 0.0, 1.2)
    return float(cam.scale * person_height * frame_h * 0.62 * (0.3 + 0.7 * depth))


def finish_frame(img: np.ndarray, cond: Conditions, rng: np.random.Generator) -> np.ndarray:
    """Apply illumination gain, colour cast, optical blur and sensor noise; quantise to uint8."""
    out = img * (cond.gain * np.asarray(cond.cast, np.float32))
    if isinstance(cond, AltConditions):
        grey = out.mean(axis=-1, keepdims=True)
        out = grey + np.float32(cond.saturation) * (out - grey)
        out = 255.0 * np.power(np.clip(out / 255.0, 0.0, None), np.float32(cond.gamma))
        out = np.float32(cond.haze) + out * np.float32(1.0 - cond.haze / 255.0)
    if cond.blur > 0.05:
        out = cv2.GaussianBlur(out, (0, 0), cond.blur)
    out = out + rng.normal(0.0, cond.noise, size=out.shape).astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
