"""The world plan: who appears in which video, where, when and how fast.

Everything random about the world is decided here from the seed, before any
pixel is drawn, so that rendering a video is a pure function of its plan.
Seeds for each video come from `SeedSequence(seed).spawn`, so video i renders
the same whatever the number of worker processes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from cion_ray.synth.alt_appearance import sample_alt_identities
from cion_ray.synth.appearance import Identity, sample_identities
from cion_ray.synth.camera import (Camera, Conditions, person_height_px, sample_camera,
                                   sample_conditions)
from cion_ray.synth.config import SynthConfig

STRIDE = 0.8  # body heights per walking cycle (two steps)
SPEED = 0.032  # body heights per frame at speed factor 1 and 25 fps
PEOPLE = {"default": sample_identities, "alt": sample_alt_identities}  # who walks in a world of each style


@dataclass(frozen=True)
class Pass:
    """One walk through the frame: feet from (x0, y0) at `start` to (x1, y1) at `start + duration`."""

    start: int
    duration: int
    x0: float
    y0: float
    x1: float
    y1: float
    phase0: float

    @property
    def facing(self) -> int:
        return 1 if self.x1 >= self.x0 else -1

    def foot_at(self, t: int) -> tuple[float, float, float] | None:
        """(x, y, walked distance in px) at frame t, or None if not on this pass."""
        a = (t - self.start) / self.duration
        if a < 0.0 or a > 1.0:
            return None
        x = self.x0 + a * (self.x1 - self.x0)
        y = self.y0 + a * (self.y1 - self.y0)
        return x, y, math.hypot(x - self.x0, y - self.y0)


@dataclass
class Track:
    """A person in one video; `track_id` is the 1-based MOT gt id."""

    track_id: int
    identity: int
    passes: list[Pass]


@dataclass
class VideoPlan:
    index: int
    video_id: str
    camera: Camera
    session: int
    conditions: Conditions
    tracks: list[Track]
    seed: np.random.SeedSequence = field(repr=False)

    def render_seed(self) -> np.random.SeedSequence:
        return np.random.SeedSequence(self.seed.entropy, spawn_key=self.seed.spawn_key + (0,))

    def det_seed(self) -> np.random.SeedSequence:
        return np.random.SeedSequence(self.seed.entropy, spawn_key=self.seed.spawn_key + (1,))


@dataclass
class WorldPlan:
    config: SynthConfig
    cameras: list[Camera]
    people: dict[int, Identity]  # every identity, held-out ones included
    video_identities: list[int]
    reid_train: list[int]
    reid_test: list[int]
    videos: list[VideoPlan]
    reid_seed: np.random.SeedSequence = field(repr=False)


def video_id(index: int) -> str:
    return f"v{index:04d}"


def assign_videos(rng: np.random.Generator, cfg: SynthConfig) -> list[list[int]]:
    """For each identity, the sorted video indices it appears in.

    A home position h is drawn uniformly; further videos are drawn within
    `locality` of h, or with probability `far_prob` anywhere in the order.
    """
    n = cfg.videos
    out = []
    for _ in range(cfg.identities):
        k = int(rng.integers(cfg.min_videos_per_identity, cfg.max_videos_per_identity + 1))
        k = min(k, n)
        h = int(rng.integers(n))
        chosen = {h}
        near = [v for v in range(max(0, h - cfg.locality), min(n, h + cfg.locality + 1)) if v != h]
        while len(chosen) < k:
            if rng.random() < cfg.far_prob or not set(near) - chosen:
                v = int(rng.integers(n))
            else:
                cand = sorted(set(near) - chosen)
                v = cand[int(rng.integers(len(cand)))]
            chosen.add(v)
        out.append(sorted(chosen))
    return out


def assign_cameras(rng: np.random.Generator, n_videos: int, n_cameras: int) -> list[int]:
    """0-based camera per video: every camera once per block of `n_cameras` videos, shuffled in the block."""
    cams: list[int] = []
    while len(cams) < n_videos:
        cams.extend(int(c) for c in rng.permutation(n_cameras))
    return cams[:n_videos]


def plan_pass(rng: np.random.Generator, cfg: SynthConfig, cam: Camera, person: Identity,
              start_lo: float | None = None, facing: int | None = None) -> Pass:
    W, H = cfg.width, cfg.height
    hz = cam.horizon * H
    y0 = float(rng.uniform(hz + 0.3 * (H - hz), H - 2))
    y1 = float(np.clip(y0 + rng.normal(0, 0.06 * (H - hz)), hz + 0.25 * (H - hz), H - 2))
    bh = person_height_px(cam, 0.5 * (y0 + y1), H, person.height)
    margin = 0.45 * bh
    facing = facing if facing is not None else (1 if rng.random() < 0.5 else -1)
    x0, x1 = (-margin, W + margin) if facing > 0 else (W + margin, -margin)
    speed = SPEED * person.speed * bh * (25.0 / cfg.fps)
    duration = max(2, int(round(abs(x1 - x0) / speed)))
    if start_lo is None:
        start = int(rng.integers(int(-0.6 * duration), max(int(-0.6 * duration) + 1, int(cfg.frames - 0.4 * duration))))
    else:
        start = int(start_lo)
    return Pass(start=start, duration=duration, x0=x0, y0=y0, x1=x1, y1=y1,
                phase0=float(rng.uniform(0, 2 * math.pi)))


def make_plan(cfg: SynthConfig) -> WorldPlan:
    root = np.random.SeedSequence(cfg.seed)
    plan_ss, videos_ss, reid_ss = root.spawn(3)
    rng = np.random.default_rng(plan_ss)
    cameras = [sample_camera(rng, c + 1) for c in range(cfg.cameras)]
    n_ho = cfg.reid.train_identities + cfg.reid.test_identities
    all_people = PEOPLE[cfg.style](rng, cfg.identities + n_ho, first_id=1)
    people = {p.id: p for p in all_people}
    video_ids = [p.id for p in all_people[:cfg.identities]]
    reid_train = [p.id for p in all_people[cfg.identities:cfg.identities + cfg.reid.train_identities]]
    reid_test = [p.id for p in all_people[cfg.identities + cfg.reid.train_identities:]]

    appearances = assign_videos(rng, cfg)
    cam_of = assign_cameras(rng, cfg.videos, cfg.cameras)
    sessions: dict[int, int] = {}
    video_seeds = videos_ss.spawn(cfg.videos)
    per_video: list[list[int]] = [[] for _ in range(cfg.videos)]
    for pid, vids in zip(video_ids, appearances):
        for v in vids:
            per_video[v].append(pid)

    videos = []
    for v in range(cfg.videos):
        cam = cameras[cam_of[v]]
        sessions[cam.id] = sessions.get(cam.id, 0) + 1
        cond = sample_conditions(rng, cfg.style, cfg.cast)
        raw = []
        for pid in per_video[v]:
            person = people[pid]
            first = plan_pass(rng, cfg, cam, person)
            passes = [first]
            end = first.start + first.duration
            if rng.random() < cfg.reentry_prob and end + 10 < cfg.frames:
                passes.append(plan_pass(rng, cfg, cam, person, start_lo=end + int(rng.integers(10, 40)),
                                        facing=-first.facing))
            raw.append((max(first.start, 0), pid, passes))
        raw.sort(key=lambda r: (r[0], r[1]))
        tracks = [Track(track_id=i + 1, identity=pid, passes=passes) for i, (_, pid, passes) in enumerate(raw)]
        videos.append(VideoPlan(index=v, video_id=video_id(v), camera=cam, session=sessions[cam.id],
                                conditions=cond, tracks=tracks, seed=video_seeds[v]))
    return WorldPlan(config=cfg, cameras=cameras, people=people, video_identities=video_ids,
                     reid_train=reid_train, reid_test=reid_test, videos=videos, reid_seed=reid_ss)
