"""The Market-1501 style evaluation split, made from held-out identities.

Held-out identities never walk through the videos. Each is photographed by
2..4 cameras (the cameras of the videos, with the imaging conditions of one of
that camera's videos), a few detector-like crops per camera, sometimes with
another person overlapping. Train identities go to bounding_box_train; for
test identities one image per camera goes to query and the rest to
bounding_box_test, as in Market-1501.
"""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from cion_ray.io.market import market_name
from cion_ray.synth.camera import finish_frame, person_height_px, pole_box, render_background, sample_conditions
from cion_ray.synth.plan import WorldPlan
from cion_ray.synth.scene import compose

SPLITS = ("bounding_box_train", "query", "bounding_box_test")


def _crop(rng: np.random.Generator, img: np.ndarray, box: tuple[int, int, int, int], jitter: float = 0.04) -> np.ndarray:
    H, W = img.shape[:2]
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    d = rng.normal(0, jitter, 4) * np.array([w, h, w, h])
    x1, y1, x2, y2 = (int(round(v)) for v in (x1 + d[0], y1 + d[1], x2 + d[2], y2 + d[3]))
    x1, y1 = max(0, x1), max(0, y1)
    x2, y2 = min(W, max(x2, x1 + 2)), min(H, max(y2, y1 + 2))
    return cv2.resize(img[y1:y2, x1:x2], (64, 128), interpolation=cv2.INTER_AREA)


def render_reid_split(plan: WorldPlan, out_dir: str | Path) -> dict[str, dict[str, int]]:
    """Write `out_dir/{bounding_box_train,query,bounding_box_test}/*.jpg`.

    Returns per split: number of images, identities and cameras."""
    cfg = plan.config
    out_dir = Path(out_dir)
    for s in SPLITS:
        (out_dir / s).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(plan.reid_seed)
    W, H = cfg.width, cfg.height
    backgrounds = {c.id: render_background(c, W, H) for c in plan.cameras}
    videos_of = {c.id: [v for v in plan.videos if v.camera.id == c.id] for c in plan.cameras}
    pool = plan.reid_train + plan.reid_test
    stats = {s: {"images": 0, "identities": set(), "cameras": set()} for s in SPLITS}
    for split_ids, is_test in ((plan.reid_train, False), (plan.reid_test, True)):
        for pid in split_ids:
            person = plan.people[pid]
            k = int(rng.integers(cfg.reid.min_cameras, min(cfg.reid.max_cameras, cfg.cameras) + 1))
            cams = sorted(int(c) + 1 for c in rng.choice(cfg.cameras, size=k, replace=False))
            for cam_id in cams:
                cam = plan.cameras[cam_id - 1]
                vids = videos_of[cam_id]
                # a test identity needs a gallery image beside its query in each camera
                n_img = max(2, cfg.reid.images_per_camera) if is_test else cfg.reid.images_per_camera
                for j in range(n_img):
                    if vids:
                        v = vids[int(rng.integers(len(vids)))]
                        cond, session = v.conditions, v.session
                    else:
                        cond, session = sample_conditions(rng, cfg.style, cfg.cast), 1
                    hz = cam.horizon * H
                    y = float(rng.uniform(hz + 0.45 * (H - hz), H - 2))
                    x = float(rng.uniform(0.25 * W, 0.75 * W))
                    bh = person_height_px(cam, y, H, person.height)
                    items = [(y, x, bh, 1 if rng.random() < 0.5 else -1, 1, person,
                              float(rng.uniform(0, 2 * math.pi)))]
                    if rng.random() < 0.25:  # a passer-by overlapping the subject
                        other = plan.people[pool[int(rng.integers(len(pool)))]]
                        if other.id != pid:
                            oy = float(np.clip(y + rng.normal(0, 0.08 * (H - hz)), hz + 0.3 * (H - hz), H - 2))
                            obh = person_height_px(cam, oy, H, other.height)
                            ox = x + float(rng.choice([-1, 1]) * rng.uniform(0.25, 0.5) * bh)
                            items.append((oy, ox, obh, 1 if rng.random() < 0.5 else -1, 2, other,
                                          float(rng.uniform(0, 2 * math.pi))))
                            items.sort(key=lambda it: it[0])
                    img, _, boxes = compose(backgrounds[cam_id], pole_box(cam, W, H), items)
                    frame = finish_frame(img, cond, rng)
                    target = next((b for b in boxes if b.track_id == 1), None)
                    if target is None:
                        continue
                    crop = _crop(rng, frame, (target.x1, target.y1, target.x2, target.y2))
                    split = "bounding_box_train" if not is_test else ("query" if j == 0 else "bounding_box_test")
                    fnum = int(rng.integers(1, cfg.frames + 1))
                    name = market_name(pid, cam_id, session, fnum, j + 1)
                    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR),
                                           [cv2.IMWRITE_JPEG_QUALITY, 95])
                    (out_dir / split / name).write_bytes(buf.tobytes())
                    st = stats[split]
                    st["images"] += 1
                    st["identities"].add(pid)
                    st["cameras"].add(cam_id)
    return {s: {"images": v["images"], "identities": len(v["identities"]), "cameras": len(v["cameras"])}
            for s, v in stats.items()}
