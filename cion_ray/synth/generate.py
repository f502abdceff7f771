"""Write a synthetic world to disk: videos, MOT files, identity map, ReID split, preview.

Layout under `out`:
  videos/<video_id>.mp4            H.264 (or MPEG-4) video
  mot/<video_id>/gt.txt, det.txt, seqinfo.ini   MOTChallenge files (1-based frames)
  identities.json                  [{"video_id", "track_id", "identity"}] for every gt track
  reid/{bounding_box_train,query,bounding_box_test}/   Market-1501 style split (held-out identities)
  preview.png                      contact sheet: identities as rows of crops from different videos
  world.json                       the config, the video encoder and the plan; written last, it marks
                                   the world complete
"""
from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from cion_ray.config import to_dict
from cion_ray.errors import CionError
from cion_ray.io.files import atomic_write_json, atomic_write_text, ensure_writable_dir
from cion_ray.io.mot import SeqInfo, format_det, format_gt, write_seqinfo
from cion_ray.io.video import encoder_id, write_video
from cion_ray.synth.config import SynthConfig
from cion_ray.synth.detections import noisy_detections
from cion_ray.synth.plan import make_plan
from cion_ray.synth.preview import write_preview
from cion_ray.synth.reid_split import render_reid_split
from cion_ray.synth.scene import VideoRenderer

FORMAT = "cion-ray-synth/1"


@dataclass
class WorldSummary:
    out: Path
    videos: int
    frames: int
    gt_boxes: int
    detections: int
    tracks: int
    identities: int
    reid: dict
    seconds: float
    reused: bool = False


def _log(msg: str) -> None:
    print(f"[synth] {msg}", file=sys.stderr, flush=True)


def render_video(cfg: SynthConfig, index: int, out: Path) -> dict:
    """Render video `index` of the world: its mp4 and MOT files. Returns counts and per-track preview crops."""
    cv2.setNumThreads(1)
    plan = make_plan(cfg)
    v = plan.videos[index]
    W, H = cfg.width, cfg.height
    renderer = VideoRenderer(v, plan.people, W, H)
    det_rng = np.random.default_rng(v.det_seed())
    gt_rows: list = []
    det_rows: list = []
    best: dict[int, tuple[float, np.ndarray]] = {}

    def frames():
        for t in range(cfg.frames):
            fr = renderer.render(t)
            for b in fr.boxes:
                gt_rows.append((t + 1, b.track_id, b.x1, b.y1, b.x2, b.y2, b.visibility))
                inside = b.x1 > 0 and b.y1 > 0 and b.x2 < W and b.y2 < H
                quality = b.visibility * (b.y2 - b.y1) * (1.0 if inside else 0.3)
                if quality > best.get(b.track_id, (-1.0, None))[0]:
                    crop = cv2.resize(fr.image[b.y1:b.y2, b.x1:b.x2], (64, 128), interpolation=cv2.INTER_AREA)
                    best[b.track_id] = (quality, crop)
            for d in noisy_detections(det_rng, cfg.det, fr.boxes, W, H):
                det_rows.append((t + 1, *(float(x) for x in d)))
            yield fr.image

    write_video(out / "videos" / f"{v.video_id}.mp4", frames(), fps=cfg.fps)
    mot = out / "mot" / v.video_id
    mot.mkdir(parents=True, exist_ok=True)
    atomic_write_text(mot / "gt.txt", format_gt(gt_rows))
    atomic_write_text(mot / "det.txt", format_det(det_rows))
    write_seqinfo(mot / "seqinfo.ini", SeqInfo(v.video_id, cfg.fps, cfg.frames, W, H,
                                               video=f"../../videos/{v.video_id}.mp4"))
    seen = sorted({r[1] for r in gt_rows})
    identity_of = {tr.track_id: tr.identity for tr in v.tracks}
    return {
        "video_id": v.video_id, "index": index, "camera": v.camera.id, "session": v.session,
        "frames": cfg.frames, "gt_boxes": len(gt_rows), "detections": len(det_rows),
        "tracks": {tid: identity_of[tid] for tid in seen},
        "crops": {tid: best[tid][1] for tid in seen},
    }


# keys added after worlds were first written, with their defaults: world.json leaves them out at
# these values, so that a world written before they existed is still the same world (and file)
LATER_KEYS = {"style": "default", "cast": 1.0}


def recorded_config(cfg: SynthConfig) -> dict:
    """`cfg` as world.json records it."""
    out = to_dict(cfg)
    for key, default in LATER_KEYS.items():
        if out[key] == default:
            del out[key]
    return out


def _existing(out: Path, cfg: SynthConfig, log: Callable[[str], None]) -> dict | None:
    meta = out / "world.json"
    if not meta.is_file():
        return None
    try:
        world = json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if world.get("format") != FORMAT:
        return None
    if world.get("config") != json.loads(json.dumps(recorded_config(cfg))):
        raise CionError(f"{out} already holds a synthetic world with a different configuration; "
                        "use --force to overwrite it or choose another --out")
    if world.get("encoder") != encoder_id():
        # same config, other bytes: the videos came from another encoder recipe or build
        log(f"{out} holds this world encoded by {world.get('encoder') or 'an older video encoder'}; "
            f"regenerating it with {encoder_id()}")
        return None
    missing = [v["video_id"] for v in world["videos"] if not (out / "videos" / f"{v['video_id']}.mp4").is_file()]
    return None if missing else world


def generate_world(cfg: SynthConfig, out: str | Path, workers: int = 0, force: bool = False,
                   log: Callable[[str], None] = _log) -> WorldSummary:
    """Generate the world described by `cfg` into directory `out`.

    Deterministic: the same config gives the same files, whatever `workers` is, on any x86
    machine with the same PyAV build. A complete world with the same config and the same
    video encoder (`io.video.encoder_id`) already in `out` is reused unless `force`.
    """
    t0 = time.perf_counter()
    out = ensure_writable_dir(out)
    if force:
        (out / "world.json").unlink(missing_ok=True)
    world = _existing(out, cfg, log)
    if world is not None:
        log(f"reusing the complete world in {out} (same configuration); --force regenerates it")
        s = world["summary"]
        return WorldSummary(out=out, reused=True, seconds=time.perf_counter() - t0, **s)
    (out / "world.json").unlink(missing_ok=True)
    (out / "videos").mkdir(exist_ok=True)
    plan = make_plan(cfg)
    workers = workers or os.cpu_count() or 1
    workers = max(1, min(workers, cfg.videos))
    log(f"rendering {cfg.videos} videos x {cfg.frames} frames at {cfg.width}x{cfg.height} "
        f"with {workers} worker(s) into {out}")
    results: list[dict] = []

    def done(r: dict):
        results.append(r)
        log(f"{r['video_id']}: {r['frames']} frames, {len(r['tracks'])} tracks, {r['gt_boxes']} gt boxes, "
            f"{r['detections']} detections ({len(results)}/{cfg.videos})")

    if workers == 1:
        for i in range(cfg.videos):
            done(render_video(cfg, i, out))
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            futs = [pool.submit(render_video, cfg, i, out) for i in range(cfg.videos)]
            for f in as_completed(futs):
                done(f.result())
    results.sort(key=lambda r: r["index"])

    log("rendering the Market-1501 style split of held-out identities")
    reid = render_reid_split(plan, out / "reid")
    id_rows = [{"video_id": r["video_id"], "track_id": int(t), "identity": int(p)}
               for r in results for t, p in sorted(r["tracks"].items())]
    atomic_write_json(out / "identities.json", id_rows)
    write_preview(out / "preview.png", results, cfg)
    summary = dict(videos=cfg.videos, frames=cfg.videos * cfg.frames,
                   gt_boxes=sum(r["gt_boxes"] for r in results),
                   detections=sum(r["detections"] for r in results),
                   tracks=len(id_rows), identities=len({r["identity"] for r in id_rows}), reid=reid)
    atomic_write_json(out / "world.json", {
        "format": FORMAT,
        "config": recorded_config(cfg),
        "encoder": encoder_id(),
        "summary": summary,
        "cameras": [c.to_json() for c in plan.cameras],
        "videos": [{"video_id": v.video_id, "index": v.index, "camera": v.camera.id, "session": v.session,
                    "frames": cfg.frames, "fps": cfg.fps, "width": cfg.width, "height": cfg.height,
                    "conditions": v.conditions.to_json(), "tracks": len(results[v.index]["tracks"])}
                   for v in plan.videos],
        "identities": {"videos": plan.video_identities, "reid_train": plan.reid_train, "reid_test": plan.reid_test},
        "people": [plan.people[p].to_json() for p in sorted(plan.people)],
    })
    return WorldSummary(out=out, seconds=time.perf_counter() - t0, **summary)
