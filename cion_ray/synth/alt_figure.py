"""Draw an "alt" style walking figure (`AltIdentity`) as a premultiplied RGB patch with alpha.

Same body units and canvas as `figure` (u along the walking direction, v up from the
feet, in body heights; drawn at 2-3x and area-downsampled), but another figure: the hip
height, head size and shoulder width come from the person, the elbows bend, clothes carry
checks, diagonal stripes, a big print or an open jacket, and scarves, caps, glasses and
carried items are drawn. The finished figure is shaded as a rounded body lit from above
and outlined, which the flat-filled default figures are not.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from cion_ray.synth.alt_appearance import AltIdentity
from cion_ray.synth.figure import Canvas, PersonPatch, shade_rgb

SHOULDER = 0.80  # neck base height in body units
OUTLINE = (28, 26, 30)


class _ClippedCanvas(Canvas):
    def clipped(self, region_uv, draw) -> None:
        """Run `draw()` and keep what it painted only inside polygon `region_uv` (a garment's pattern)."""
        region = np.zeros_like(self.mask)
        cv2.fillPoly(region, [np.array([self.p(u, v) for u, v in region_uv], np.int32)], 255)
        img, mask = self.img, self.mask
        self.img, self.mask = img.copy(), np.zeros_like(mask)
        draw()
        inside = region > 0
        img[inside] = self.img[inside]
        self.img, self.mask = img, mask


def _finish(cv: Canvas, ss: int) -> PersonPatch:
    """Body shading (rounded across, lit from above), a dark outline, then downsampling."""
    ys, xs = np.mgrid[0:cv.h, 0:cv.w].astype(np.float32)
    across = np.clip(1.0 - 0.35 * ((xs - cv.cx) / (0.17 * cv.S)) ** 2, 0.65, 1.0)
    down = 1.08 - 0.2 * (ys / cv.h)
    img = cv.img.astype(np.float32) * (across * down)[..., None]
    th = max(1, ss)
    inner = cv2.erode(cv.mask, np.ones((2 * th + 1, 2 * th + 1), np.uint8))
    edge = (cv.mask > 0) & (inner == 0)
    img[edge] = OUTLINE
    img = np.clip(img, 0, 255) * (cv.mask[..., None] > 0)
    out_w = max(1, int(round(cv.w / ss)))
    out_h = max(1, int(round(cv.h / ss)))
    rgb = cv2.resize(img, (out_w, out_h), interpolation=cv2.INTER_AREA)
    alpha = cv2.resize(cv.mask.astype(np.float32) / 255.0, (out_w, out_h), interpolation=cv2.INTER_AREA)
    return PersonPatch(rgb=rgb, alpha=alpha, foot=(cv.cx / ss, cv.base / ss))


def render_alt_person(person: AltIdentity, body_height: float, phase: float, facing: int) -> PersonPatch:
    """Render `person` with body height `body_height` pixels at walking `phase` (radians),
    facing +1 (walking right) or -1 (left)."""
    ss = 3 if body_height < 70 else 2
    cv = _ClippedCanvas(body_height * ss, 1 if facing >= 0 else -1, width_units=0.9, height_units=1.12)
    b, L = person.build, person.legs
    sw = math.sin(phase)
    bob = 0.01 * abs(math.cos(phase))
    top = SHOULDER + bob
    shoulder_w = 0.115 * person.shoulders * b
    waist_w, hip_w = 0.085 * b, 0.095 * b
    leg_th, arm_th = 0.07 * b, 0.05 * b
    hip = (0.0, L + bob)
    r = 0.06 * person.head
    head = (0.015, top + 0.035 + r)
    sleeve = person.secondary if person.pattern == "contrast_sleeves" else person.top

    def leg(k: int, f: float):
        foot = (k * 0.16 * sw, 0.035 + 0.025 * max(0.0, -k * sw))
        knee = (k * 0.08 * sw + 0.03, 0.53 * L + bob)
        upper = shade_rgb(person.bottom, f)
        lower = shade_rgb(person.skin, f) if person.bottom_style == "shorts" else upper
        if person.bottom_style == "long_skirt":
            lower = shade_rgb((40, 38, 42), f)  # dark tights below the skirt
        cv.limb(hip, knee, leg_th, upper)
        if person.bottom_style == "wide":  # flared trousers: a trapezoid from knee to ankle
            d = 0.5 * leg_th
            cv.poly([(knee[0] - d, knee[1]), (knee[0] + d, knee[1]),
                     (foot[0] + 1.8 * d, foot[1] + 0.01), (foot[0] - 1.8 * d, foot[1] + 0.01)], upper)
        else:
            cv.limb(knee, foot, leg_th * 0.85, lower)
        cv.poly([(foot[0] - 0.035, foot[1] + 0.025), (foot[0] + 0.075, foot[1] + 0.005),
                 (foot[0] + 0.08, foot[1] - 0.03), (foot[0] - 0.035, foot[1] - 0.03)], shade_rgb(person.shoes, f))

    def arm(k: int, f: float, carried: bool = False):
        sh = (0.0, top - 0.015)
        elbow = (-k * 0.08 * sw - 0.01, top - 0.165)
        hand = (-k * 0.07 * sw + 0.07, top - 0.3)  # the forearm bends forward
        skin = shade_rgb(person.skin, f)
        cloth = shade_rgb(sleeve, f)
        if person.sleeves == "none":
            cv.limb(sh, elbow, arm_th, skin)
        elif person.sleeves == "short":
            cv.limb(sh, elbow, arm_th, skin)
            cv.limb(sh, (0.5 * (sh[0] + elbow[0]), 0.5 * (sh[1] + elbow[1])), arm_th * 1.15, cloth)
        else:
            cv.limb(sh, elbow, arm_th, cloth)
        cv.limb(elbow, hand, arm_th * 0.85, cloth if person.sleeves == "long" else skin)
        cv.disc(hand, arm_th * 0.6, skin)
        if carried:  # a bag or box hanging from the hand
            hx, hv = hand
            cv.limb((hx, hv), (hx, hv - 0.05), 0.012, shade_rgb(person.accent, 0.6 * f))
            cv.poly([(hx - 0.05, hv - 0.05), (hx + 0.05, hv - 0.05), (hx + 0.055, hv - 0.17),
                     (hx - 0.055, hv - 0.17)], shade_rgb(person.accent, f))

    def torso(hem: float):
        return [(-hip_w, hem + bob), (hip_w, hem + bob), (waist_w, L + 0.1 + bob),
                (shoulder_w, top - 0.03), (0.75 * shoulder_w, top + 0.012),
                (-0.75 * shoulder_w, top + 0.012), (-shoulder_w, top - 0.03), (-waist_w, L + 0.1 + bob)]

    carried = "carried" in person.accessories
    leg(-1, 0.75)
    arm(-1, 0.75)
    if person.bag == "backpack":
        cv.poly([(-shoulder_w - 0.09, L + 0.08 + bob), (-shoulder_w + 0.02, L + 0.08 + bob),
                 (-shoulder_w + 0.02, top - 0.01), (-shoulder_w - 0.07, top - 0.03)], person.bag_colour)
    if person.hair_style == "long":
        cv.poly([(-0.9 * r - 0.02, head[1] + 0.3 * r), (0.2 * r, head[1] + 0.3 * r),
                 (0.1 * r, top - 0.07), (-r - 0.03, top - 0.07)], person.hair)
    leg(1, 1.0)

    # the top: jackets are longer than shirts
    hem = L - 0.07 if person.pattern == "open_jacket" else L - 0.02
    cv.poly(torso(hem), person.top)
    if person.pattern == "checks":
        c = 0.045

        def checks():
            for i, v in enumerate(np.arange(hem, top + c, c)):
                for j, u in enumerate(np.arange(-shoulder_w - c, shoulder_w + c, c)):
                    if (i + j) % 2 == 0:
                        cv.poly([(u, v + bob), (u + c, v + bob), (u + c, v + c + bob), (u, v + c + bob)],
                                person.secondary)
        cv.clipped(torso(hem), checks)
    elif person.pattern == "diagonal":
        def diagonal():
            for u in np.arange(-0.5, 0.3, 0.065):
                cv.limb((u, hem + bob), (u + 0.35, hem + 0.35 + bob), 0.022, person.secondary)
        cv.clipped(torso(hem), diagonal)
    elif person.pattern == "print":
        def big_print():
            cv.disc((0.01, top - 0.14), 0.085 * b, person.secondary)
            cv.disc((0.01, top - 0.14), 0.035 * b, person.accent)
        cv.clipped(torso(hem), big_print)
    elif person.pattern == "open_jacket":  # the shirt between the open fronts, a V at the neck
        cv.poly([(-0.03, hem + bob), (0.03, hem + bob), (0.055, top - 0.01), (0.0, top - 0.09),
                 (-0.055, top - 0.01)], person.secondary)
        cv.limb((0.055, top - 0.01), (0.03, hem + bob), 0.012, shade_rgb(person.top, 0.6))
        cv.limb((-0.055, top - 0.01), (-0.03, hem + bob), 0.012, shade_rgb(person.top, 0.6))
    if person.bottom_style == "long_skirt":
        cv.poly([(-0.09 * b, L + 0.03 + bob), (0.09 * b, L + 0.03 + bob), (0.17 * b, 0.14 + bob),
                 (-0.17 * b, 0.14 + bob)], person.bottom)
    elif person.pattern != "open_jacket":  # a belt joins the legs to the top
        cv.poly([(-hip_w, L - 0.035 + bob), (hip_w, L - 0.035 + bob), (hip_w, L + bob), (-hip_w, L + bob)],
                shade_rgb(person.bottom, 0.7))
    if person.bag == "crossbody":
        cv.limb((-0.7 * shoulder_w, top - 0.01), (0.06, L + 0.03 + bob), 0.016, shade_rgb(person.bag_colour, 0.8))
        cv.poly([(0.02, L - 0.03 + bob), (0.12, L - 0.03 + bob), (0.12, L + 0.06 + bob), (0.02, L + 0.06 + bob)],
                person.bag_colour)
    elif person.bag == "backpack":
        cv.limb((0.03, top - 0.005), (0.06, top - 0.2), 0.02, shade_rgb(person.bag_colour, 0.7))
    # neck, head, hair, accessories
    cv.poly([(-0.022, top - 0.01), (0.028, top - 0.01), (0.028, top + 0.045), (-0.022, top + 0.045)], person.skin)
    cv.disc(head, r, person.skin)
    if person.hair_style == "shaved":
        cv.half_disc((head[0] - 0.004, head[1] + 0.006), r * 0.98, shade_rgb(person.hair, 1.0), 190, 350)
    else:
        cv.half_disc((head[0] - 0.008, head[1] + 0.005), r * 1.06, person.hair, 170, 370)
    if person.hair_style == "bun":
        cv.disc((head[0] - 0.75 * r, head[1] + 0.75 * r), 0.42 * r, person.hair)
    if "glasses" in person.accessories:
        eye = (head[0] + 0.55 * r, head[1] + 0.1 * r)
        cv.limb((head[0] - 0.1 * r, eye[1]), (head[0] + 0.95 * r, eye[1]), 0.01, (25, 25, 28))
        cv.disc(eye, 0.28 * r, (35, 35, 40))
    if "cap" in person.accessories:  # crown and a brim pointing forward
        cv.half_disc((head[0], head[1] + 0.2 * r), r * 1.05, person.accent)
        cv.limb((head[0] + 0.2 * r, head[1] + 0.22 * r), (head[0] + 1.9 * r, head[1] + 0.15 * r), 0.016,
                shade_rgb(person.accent, 0.8))
    if "scarf" in person.accessories:
        cv.limb((-0.04, top + 0.015), (0.05, top + 0.015), 0.045, person.accent)
        cv.limb((0.035, top + 0.01), (0.055, top - 0.15), 0.035, shade_rgb(person.accent, 0.9))
    arm(1, 1.0, carried)
    return _finish(cv, ss)
