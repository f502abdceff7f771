"""Public detections for the synthetic world: ground truth turned into what a
person detector would output (misses, jitter, false positives, scores).
See `DetNoiseConfig` for the model and its parameters."""
from __future__ import annotations

import numpy as np

from cion_ray.synth.config import DetNoiseConfig
from cion_ray.synth.scene import GtBox


def miss_probability(cfg: DetNoiseConfig, visibility: np.ndarray, height: np.ndarray) -> np.ndarray:
    p = np.clip(cfg.miss_rate + cfg.occlusion_miss * (1.0 - visibility), 0.0, 1.0)
    return np.where(height < cfg.min_height, 1.0, p)


def noisy_detections(rng: np.random.Generator, cfg: DetNoiseConfig, boxes: list[GtBox],
                     width: int, height: int) -> np.ndarray:
    """Detections for one frame: (n, 5) float32 rows x1, y1, x2, y2, score, clipped to the frame."""
    rows = []
    if boxes:
        b = np.array([[g.x1, g.y1, g.x2, g.y2] for g in boxes], np.float64)
        vis = np.array([g.visibility for g in boxes])
        w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        keep = rng.random(len(boxes)) >= miss_probability(cfg, vis, h)
        noise = rng.normal(0.0, cfg.jitter, size=(len(boxes), 4)) * np.stack([w, h, w, h], axis=1)
        scores = rng.normal(cfg.score_mean - 0.3 * (1.0 - vis), cfg.score_std)
        jb = b + noise
        for i in np.flatnonzero(keep):
            rows.append([*jb[i], scores[i]])
    n_fp = rng.poisson(cfg.fp_per_frame)
    for _ in range(n_fp):
        bh = rng.uniform(0.12, 0.45) * height
        bw = bh * rng.uniform(0.3, 0.5)
        x1 = rng.uniform(0, width - bw)
        y1 = rng.uniform(0.2 * height, height - bh)
        rows.append([x1, y1, x1 + bw, y1 + bh, rng.uniform(cfg.fp_score_min, cfg.fp_score_max)])
    if not rows:
        return np.zeros((0, 5), np.float32)
    out = np.array(rows, np.float64)
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, width)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, height)
    out[:, 4] = np.clip(out[:, 4], 0.05, 1.0)
    valid = (out[:, 2] - out[:, 0] >= 2) & (out[:, 3] - out[:, 1] >= 2)
    return out[valid].astype(np.float32)
