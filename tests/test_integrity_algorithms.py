"""Algorithm integrity (issue 11, item 9), no Ray: the L2 cannot-link sees every sample the tracker
produced, the anti-chaining guard tests and rebuilds with one (sample-weighted) centroid, and the
tracker's lost-track buffer is a duration whatever the frame step."""
from __future__ import annotations

import numpy as np

from cion_ray.curation.config import DenoiseConfig
from cion_ray.curation.core import VideoCrops, denoise_video_levels
from cion_ray.denoise.tracklet import normalize
from cion_ray.denoise.video import cannot_link_pairs, video_denoise

D = 16
BASES = normalize(np.random.default_rng(0).normal(size=(8, D)))


def samples(person: int, n: int, rng, noise: float = 0.02) -> np.ndarray:
    return normalize(BASES[person] + rng.normal(0, noise, size=(n, D))).astype(np.float32)


# --- (a) L2 cannot-link from all samples, before L1 ---------------------------------------------------

def _two_tracklets_meeting_once(rng):
    """Tracklets 1 (frames 1-8) and 2 (frames 8-15) of one look; they share frame 8 only, where
    tracklet 2's sample is an outlier (another person's look) that L1 drops."""
    f = np.concatenate([samples(0, 8, rng), samples(3, 1, rng), samples(0, 7, rng)])
    tracks = np.repeat([1, 2], 8)
    frames = np.concatenate([np.arange(1, 9), np.arange(8, 16)])
    return f, tracks, frames


def test_cannot_link_pairs_from_all_samples():
    tracks = np.array([5, 5, 9, 9, 7])
    frames = np.array([1, 2, 2, 3, 3])
    assert cannot_link_pairs(tracks, frames).tolist() == [[5, 9], [7, 9]]


def test_l2_never_merges_tracklets_that_met_where_l1_dropped_the_sample():
    f, tracks, frames = _two_tracklets_meeting_once(np.random.default_rng(1))
    r = video_denoise(f, tracks, frames, radius=0.2, min_len=3, merge=0.1, margin=0.05)
    assert r.labels[8] == -1  # L1 dropped the only shared-frame sample of tracklet 2
    assert r.stats["merged"] == 0
    assert r.labels[0] != r.labels[9] and r.labels[0] >= 0 and r.labels[9] >= 0


def test_l2_cannot_link_survives_invalid_embeddings():
    # the shared-frame sample has no usable embedding: dropped before L1, still a co-occurrence
    f, tracks, frames = _two_tracklets_meeting_once(np.random.default_rng(2))
    f[8] = np.nan
    v = VideoCrops("v", np.array([f"v/{i}" for i in range(len(f))], object), tracks, frames, f)
    lv = denoise_video_levels(v, DenoiseConfig(radius=0.2, min_len=3, merge=0.1, margin=0.05))
    assert lv.stats["invalid_embeddings"] == 1 and lv.stats["merged"] == 0
    assert lv.l2[0] != lv.l2[9] and len(lv.counts) == 2


def test_l2_cannot_link_carries_over_merges():
    # A (frames 1-6) and B (20-25) are one person; C (40-45) met A at frame 3 through a sample L1
    # drops. Whichever pair merges first, A and C never end up one identity.
    rng = np.random.default_rng(3)
    f = np.concatenate([samples(0, 6, rng), samples(0, 6, rng), samples(3, 1, rng), samples(0, 6, rng)])
    tracks = np.repeat([1, 2, 3], [6, 6, 7])
    frames = np.concatenate([np.arange(1, 7), np.arange(20, 26), [3], np.arange(40, 46)])
    r = video_denoise(f, tracks, frames, radius=0.2, min_len=3, merge=0.1, margin=0.05)
    assert r.labels[12] == -1
    assert r.stats["merged"] == 1
    assert r.labels[0] != r.labels[13]
