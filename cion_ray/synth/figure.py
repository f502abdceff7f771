"""Draw one articulated walking figure as a premultiplied RGB patch with alpha.

The figure is built from simple primitives (polygons, thick limbs, circles) in
body units: u along the walking direction, v up from the feet, both in
multiples of the body height. Limbs swing with the walking phase; limbs on the
far side are drawn first and slightly darker. Drawing is done at 2-3x and
area-downsampled, which gives anti-aliased edges and a fractional alpha.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from cion_ray.synth.appearance import Identity


@dataclass
class PersonPatch:
    """`rgb`: (h, w, 3) float32 premultiplied by alpha; `alpha`: (h, w) float32 in [0, 1];
    `foot`: (x, y) position of the feet centre inside the patch, in pixels."""

    rgb: np.ndarray
    alpha: np.ndarray
    foot: tuple[float, float]


def shade_rgb(c, f: float) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, round(x * f)))) for x in c)


class Canvas:
    def __init__(self, S: float, facing: int, width_units: float = 0.8, height_units: float = 1.08):
        self.S = S
        self.facing = facing
        self.h = int(math.ceil(S * height_units)) + 4
        self.w = int(math.ceil(S * width_units)) + 4
        self.cx = self.w / 2.0
        self.base = self.h - 2.0
        self.img = np.zeros((self.h, self.w, 3), np.uint8)
        self.mask = np.zeros((self.h, self.w), np.uint8)

    def p(self, u: float, v: float) -> tuple[int, int]:
        return (int(round(self.cx + self.facing * u * self.S)), int(round(self.base - v * self.S)))

    def t(self, units: float) -> int:
        return max(1, int(round(units * self.S)))

    def poly(self, pts_uv, colour):
        pts = np.array([self.p(u, v) for u, v in pts_uv], np.int32)
        cv2.fillPoly(self.img, [pts], colour)
        cv2.fillPoly(self.mask, [pts], 255)

    def limb(self, a, b, thick: float, colour):
        pa, pb = self.p(*a), self.p(*b)
        th = self.t(thick)
        cv2.line(self.img, pa, pb, colour, th)
        cv2.line(self.mask, pa, pb, 255, th)
        r = max(1, th // 2)
        for q in (pa, pb):  # round joints
            cv2.circle(self.img, q, r, colour, -1)
            cv2.circle(self.mask, q, r, 255, -1)

    def disc(self, c, r: float, colour):
        q, rr = self.p(*c), self.t(r)
        cv2.circle(self.img, q, rr, colour, -1)
        cv2.circle(self.mask, q, rr, 255, -1)

    def half_disc(self, c, r: float, colour, start: int = 180, end: int = 360):
        q, rr = self.p(*c), self.t(r)
        cv2.ellipse(self.img, q, (rr, rr), 0, start, end, colour, -1)
        cv2.ellipse(self.mask, q, (rr, rr), 0, start, end, 255, -1)


def _torso_half_width(v: float, build: float) -> float:
    # linear from the waist (v=0.50, 0.095) to the shoulders (v=0.81, 0.12)
    t = (v - 0.50) / 0.31
    return build * (0.095 + 0.025 * t)


def render_person(person: Identity, body_height: float, phase: float, facing: int) -> PersonPatch:
    """Render `person` with body height `body_height` pixels at walking `phase` (radians),
    facing +1 (walking right) or -1 (left)."""
    ss = 3 if body_height < 70 else 2
    S = body_height * ss
    cv = Canvas(S, 1 if facing >= 0 else -1)
    b = person.build
    sw = math.sin(phase)
    bob = 0.008 * abs(math.cos(phase))
    leg_th, arm_th = 0.085 * b, 0.058 * b
    hip = (0.0, 0.50 + bob)

    def leg(k: int, shade: float):
        foot = (k * 0.15 * sw, 0.035 + 0.02 * max(0.0, -k * sw))
        knee = (k * 0.075 * sw + 0.025, 0.27 + bob)
        upper = shade_rgb(person.bottom, shade)
        lower = upper if person.bottom_style == "trousers" else shade_rgb(person.skin, shade)
        cv.limb(hip, knee, leg_th, upper)
        cv.limb(knee, foot, leg_th * 0.9, lower)
        cv.poly([(foot[0] - 0.03, foot[1] + 0.02), (foot[0] + 0.07, foot[1] + 0.01),
                 (foot[0] + 0.07, foot[1] - 0.03), (foot[0] - 0.03, foot[1] - 0.03)], shade_rgb(person.shoes, shade))

    def arm(k: int, shade: float):
        sh = (0.0, 0.785 + bob)
        elbow = (-k * 0.07 * sw, 0.635 + bob)
        hand = (-k * 0.14 * sw + 0.02, 0.48 + bob)
        sleeve = shade_rgb(person.top, shade)
        fore = sleeve if person.sleeves == "long" else shade_rgb(person.skin, shade)
        cv.limb(sh, elbow, arm_th, sleeve)
        cv.limb(elbow, hand, arm_th * 0.9, fore)
        cv.disc(hand, arm_th * 0.55, shade_rgb(person.skin, shade))

    leg(-1, 0.78)
    arm(-1, 0.78)
    if person.bag == "backpack":
        bw = _torso_half_width(0.7, b)
        cv.poly([(-bw - 0.075, 0.55 + bob), (-bw + 0.01, 0.55 + bob), (-bw + 0.01, 0.785 + bob),
                 (-bw - 0.065, 0.775 + bob)], person.bag_colour)
    if person.hair_style == "long":
        cv.poly([(-0.075, 0.93 + bob), (0.02, 0.93 + bob), (0.0, 0.76 + bob), (-0.085, 0.76 + bob)], person.hair)
    leg(1, 1.0)

    # torso and its pattern
    def band(v0: float, v1: float, colour, u_max: float | None = None):
        w0, w1 = _torso_half_width(v0, b), _torso_half_width(v1, b)
        if u_max is not None:
            w0, w1 = min(w0, u_max), min(w1, u_max)
        cv.poly([(-w0, v0 + bob), (w0, v0 + bob), (w1, v1 + bob), (-w1, v1 + bob)], colour)

    band(0.49, 0.81, person.top)
    if person.pattern == "hstripes":
        for v in (0.57, 0.65, 0.73):
            band(v, v + 0.032, person.secondary)
    elif person.pattern == "vstripe":
        band(0.49, 0.81, person.secondary, u_max=0.03 * b)
    elif person.pattern == "logo":
        cv.poly([(-0.045, 0.66 + bob), (0.045, 0.66 + bob), (0.045, 0.75 + bob), (-0.045, 0.75 + bob)],
                person.secondary)
    elif person.pattern == "two_tone":
        band(0.49, 0.64, person.secondary)
    if person.bottom_style == "skirt":
        cv.poly([(-0.10 * b, 0.52 + bob), (0.10 * b, 0.52 + bob), (0.15 * b, 0.30 + bob), (-0.15 * b, 0.30 + bob)],
                person.bottom)
    else:  # waistband joins the legs to the torso
        band(0.47, 0.52, person.bottom)
    if person.bag == "shoulder":
        cv.limb((0.06, 0.80 + bob), (-0.08, 0.52 + bob), 0.018, shade_rgb(person.bag_colour, 0.7))
        cv.poly([(-0.16, 0.44 + bob), (-0.04, 0.44 + bob), (-0.04, 0.55 + bob), (-0.16, 0.55 + bob)],
                person.bag_colour)
    elif person.bag == "backpack":
        cv.limb((0.02, 0.80 + bob), (0.05, 0.62 + bob), 0.018, shade_rgb(person.bag_colour, 0.7))
    # neck, head, hair
    cv.poly([(-0.025, 0.80 + bob), (0.025, 0.80 + bob), (0.025, 0.86 + bob), (-0.025, 0.86 + bob)], person.skin)
    head = (0.012, 0.915 + bob)
    cv.disc(head, 0.066, person.skin)
    if person.hair_style in ("short", "long"):
        cv.half_disc((head[0] - 0.006, head[1] + 0.004), 0.07, person.hair)
    else:  # hat: crown plus a brim towards the walking direction
        cv.half_disc((head[0], head[1] + 0.01), 0.072, person.secondary)
        cv.limb((head[0] - 0.05, head[1] + 0.012), (head[0] + 0.11, head[1] + 0.012), 0.018, person.secondary)
    arm(1, 1.0)

    out_w = max(1, int(round(cv.w / ss)))
    out_h = max(1, int(round(cv.h / ss)))
    rgb = cv2.resize(cv.img.astype(np.float32), (out_w, out_h), interpolation=cv2.INTER_AREA)
    alpha = cv2.resize(cv.mask.astype(np.float32) / 255.0, (out_w, out_h), interpolation=cv2.INTER_AREA)
    return PersonPatch(rgb=rgb, alpha=alpha, foot=(cv.cx / ss, cv.base / ss))
