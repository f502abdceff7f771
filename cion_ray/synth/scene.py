"""Render frames of a planned video: people composited far-to-near over the camera's
background, a foreground pole on top, then the video's imaging conditions.

Ground truth comes from the same drawing: the amodal box of each person (the
box of their whole figure, clipped to the frame) and their visibility (the
fraction of their in-frame pixels that no nearer person or pole covers).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cion_ray.synth.alt_appearance import AltIdentity
from cion_ray.synth.alt_figure import render_alt_person
from cion_ray.synth.appearance import Identity
from cion_ray.synth.camera import finish_frame, person_height_px, pole_box, render_background
from cion_ray.synth.figure import PersonPatch, render_person
from cion_ray.synth.plan import STRIDE, VideoPlan

POLE_COLOUR = (70, 72, 78)


@dataclass
class GtBox:
    """One ground-truth person box in one frame; box corners in pixels, x2/y2 exclusive."""

    track_id: int
    identity: int
    x1: int
    y1: int
    x2: int
    y2: int
    visibility: float


@dataclass
class Frame:
    image: np.ndarray  # (H, W, 3) uint8 RGB, after imaging conditions
    labels: np.ndarray  # (H, W) int32: track id of the visible person, 0 for background
    boxes: list[GtBox]


def draw_person(person: Identity, body_height: float, phase: float, facing: int) -> PersonPatch:
    """The figure of `person` in its own style (`figure` or `alt_figure`)."""
    draw = render_alt_person if isinstance(person, AltIdentity) else render_person
    return draw(person, body_height, phase, facing)


def compose(background: np.ndarray, pole: tuple[int, int, int, int] | None,
            items: list[tuple[float, float, float, int, int, Identity, float]]
            ) -> tuple[np.ndarray, np.ndarray, list[GtBox]]:
    """Draw people over a copy of `background` (float32) in the given order (far first).

    items: (foot_y, foot_x, body_h, facing, label, identity, phase). Returns the
    float image, the label map and one `GtBox` per person with pixels in the frame.
    """
    H, W = background.shape[:2]
    img = background.copy()
    labels = np.zeros((H, W), np.int32)
    amodal: dict[int, tuple[int, int, int, int, int]] = {}
    ident: dict[int, int] = {}
    for y, x, bh, facing, tid, person, phase in items:
        patch = draw_person(person, bh, phase, facing)
        ph, pw = patch.alpha.shape
        ox = int(round(x - patch.foot[0]))
        oy = int(round(y - patch.foot[1]))
        fx1, fy1 = max(0, ox), max(0, oy)
        fx2, fy2 = min(W, ox + pw), min(H, oy + ph)
        if fx1 >= fx2 or fy1 >= fy2:
            continue
        a = patch.alpha[fy1 - oy:fy2 - oy, fx1 - ox:fx2 - ox]
        region = img[fy1:fy2, fx1:fx2]
        region *= (1.0 - a)[..., None]
        region += patch.rgb[fy1 - oy:fy2 - oy, fx1 - ox:fx2 - ox]
        solid = a > 0.5
        if not solid.any():
            continue
        labels[fy1:fy2, fx1:fx2][solid] = tid
        rows = np.flatnonzero(solid.any(axis=1))
        cols = np.flatnonzero(solid.any(axis=0))
        amodal[tid] = (fx1 + cols[0], fy1 + rows[0], fx1 + cols[-1] + 1, fy1 + rows[-1] + 1, int(solid.sum()))
        ident[tid] = person.id
    if pole is not None:
        x1, y1, x2, y2 = pole
        img[y1:y2, max(0, x1):min(W, x2)] = POLE_COLOUR
        labels[y1:y2, max(0, x1):min(W, x2)] = 0
    visible = np.bincount(labels.ravel(), minlength=max(amodal, default=0) + 1)
    boxes = [GtBox(tid, ident[tid], bx1, by1, bx2, by2, float(visible[tid]) / area)
             for tid, (bx1, by1, bx2, by2, area) in sorted(amodal.items())]
    return img, labels, boxes


class VideoRenderer:
    """Renders the frames of one `VideoPlan`, in order, deterministically."""

    def __init__(self, plan: VideoPlan, people: dict[int, Identity], width: int, height: int):
        self.plan, self.people, self.W, self.H = plan, people, width, height
        self.background = render_background(plan.camera, width, height)
        self.pole = pole_box(plan.camera, width, height)
        self.rng = np.random.default_rng(plan.render_seed())

    def layout(self, t: int) -> list[tuple[float, float, float, int, int, Identity, float]]:
        """People on screen at frame t (0-based) as `compose` items, far first."""
        out = []
        for tr in self.plan.tracks:
            for ps in tr.passes:
                pos = ps.foot_at(t)
                if pos is None:
                    continue
                x, y, walked = pos
                person = self.people[tr.identity]
                bh = person_height_px(self.plan.camera, y, self.H, person.height)
                phase = ps.phase0 + 2 * math.pi * walked / (STRIDE * bh)
                out.append((y, x, bh, ps.facing, tr.track_id, person, phase))
                break
        out.sort(key=lambda r: (r[0], r[4]))
        return out

    def render(self, t: int) -> Frame:
        """Frame t (0-based). Frames must be rendered in order for the noise to match a full pass."""
        img, labels, boxes = compose(self.background, self.pole, self.layout(t))
        return Frame(image=finish_frame(img, self.plan.conditions, self.rng), labels=labels, boxes=boxes)

    def render_empty(self) -> np.ndarray:
        """The scene without people, under this video's conditions (fixed noise draw)."""
        img, _, _ = compose(self.background, self.pole, [])
        return finish_frame(img, self.plan.conditions, np.random.default_rng(0))
