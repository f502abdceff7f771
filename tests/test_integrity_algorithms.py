"""Algorithm integrity (issue 11, item 9), no Ray: the L2 cannot-link sees every sample the tracker
produced, the anti-chaining guard tests and rebuilds with one (sample-weighted) centroid, and the
tracker's lost-track buffer is a duration whatever the frame step."""
from __future__ import annotations

import math

import numpy as np
import pytest

from cion_ray.curation.config import DenoiseConfig
from cion_ray.curation.core import VideoCrops, denoise_video_levels
from cion_ray.denoise.tracklet import normalize
from cion_ray.denoise.video import cannot_link_pairs, video_denoise
from cion_ray.linking.reduce import reduce_relations
from cion_ray.linking.union_find import UnionFind
from cion_ray.tracking.config import CropConfig, TrackerConfig
from cion_ray.tracking.manifest import Chunk
from cion_ray.tracking.tracker import make_tracker, process_chunk

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


# --- (b) the anti-chaining guard uses sample-weighted centroids throughout ----------------------------

def _component_ok(members: np.ndarray, videos: np.ndarray, sums: np.ndarray, drift: float) -> bool:
    c = normalize(sums[members].sum(0))
    cent = normalize(sums[members])
    return len(set(videos[members].tolist())) == len(members) and (1 - cent @ c).max() <= drift + 1e-9


def test_guard_splits_component_that_drifts_from_its_weighted_centroid():
    # a large identity and a small one 0.2 apart: each lies 0.05 from their unweighted midpoint, but
    # the component's embedding (sample-weighted) sits by the large one, ~0.18 from the small one
    a, b = BASES[0], BASES[1]
    u0 = normalize(a)
    t = 0.0
    while 1 - u0 @ normalize(a + t * b) < 0.2:
        t += 0.001
    u1 = normalize(a + t * b)
    sums = np.stack([100 * u0, 5 * u1])
    rel = np.array([[0, 1, 1 - u0 @ u1]])
    labels, stats = reduce_relations(UnionFind(2).union_many(rel[:, :2]), rel, np.array([0, 1]), sums, drift=0.1)
    assert labels[0] != labels[1]
    assert stats.components_split == 1 and stats.unions_refused == 1


def test_guard_does_not_flag_component_whose_weighted_centroid_holds_it():
    # two large identities either side of the centre and a small one beside the right one: the
    # unweighted centroid leans right (the left one looks too far), the weighted one does not
    a, b = BASES[0], BASES[1]
    left, right = normalize(a - 0.3 * b), normalize(a + 0.3 * b)
    sums = np.stack([100 * left, 100 * right, 1 * right])
    c_w = normalize(sums.sum(0))
    c_u = normalize(normalize(sums).sum(0))
    drift = 0.5 * ((1 - left @ c_w) + (1 - left @ c_u))
    assert (1 - normalize(sums) @ c_w).max() < drift < 1 - left @ c_u
    rel = np.array([[1, 2, 0.0], [0, 1, 1 - left @ right]])
    labels, stats = reduce_relations(UnionFind(3).union_many(rel[:, :2]), rel, np.arange(3), sums, drift=drift)
    assert len(set(labels.tolist())) == 1
    assert stats.components_split == 0 and stats.unions_refused == 0


def test_every_reduced_component_keeps_both_rules_under_weighted_centroids():
    # random chains over identities of very different sizes (before the fix, 7 of these 100
    # ended with a component the weighted centroid does not hold)
    rng = np.random.default_rng(7)
    for trial in range(100):
        n = 12
        cent = normalize(BASES[0] + rng.normal(0, 0.15, size=(n, D)))
        sums = cent * np.exp(rng.uniform(0, np.log(500), size=(n, 1)))
        videos = rng.integers(0, 6, size=n)
        pairs = np.array([(i, j) for i in range(n) for j in range(i + 1, n) if videos[i] != videos[j]])
        pairs = pairs[rng.random(len(pairs)) < 0.3]
        rel = np.concatenate([pairs, (1 - np.einsum("nd,nd->n", cent[pairs[:, 0]], cent[pairs[:, 1]]))[:, None]],
                             axis=1)
        drift = 0.1
        labels, _ = reduce_relations(UnionFind(n).union_many(rel[:, :2]), rel, videos, sums, drift)
        for lab in np.unique(labels):
            assert _component_ok(np.flatnonzero(labels == lab), videos, sums, drift), trial


# --- (c) the lost-track buffer is a duration, whatever the frame step --------------------------------

@pytest.mark.parametrize("kind", ["bytetrack", "botsort"])
@pytest.mark.parametrize("step", [1, 2, 3, 4, 7])
def test_tracker_buffer_scales_with_frame_step(kind, step):
    tr = make_tracker(TrackerConfig(kind=kind, track_buffer=30), step)
    assert tr.max_frames_lost == math.ceil(30 / step)  # the tracker runs at fps / step


def _chunk(n: int, step: int) -> Chunk:
    return Chunk("v", "/x/v.mp4", 25.0, n, 320, 240, 0, 1, 0, 0, n, step)


@pytest.mark.parametrize("step", [1, 2, 4])
@pytest.mark.parametrize("gap,ids", [(60, 2), (20, 1)])
def test_lost_track_buffer_counts_source_frames(step, gap, ids):
    """One still person, out of sight for `gap` source frames. track_buffer=30 source frames: a
    60-frame absence ends the track, a 20-frame one does not, at every frame step."""
    n = 80 + gap
    box = np.array([[100, 60, 140, 180, 0.9]], np.float32)

    def detect(imgs, idx):
        return [box if not 40 <= i < 40 + gap else np.zeros((0, 5), np.float32) for i in idx]

    img = np.zeros((240, 320, 3), np.uint8)
    frames = ((i, img) for i in range(0, n, step))
    res = process_chunk(_chunk(n, step), frames, detect, TrackerConfig(track_buffer=30), CropConfig(min_track_len=1))
    assert len(set(res.track_id)) == ids, (step, gap, sorted(set(res.track_id)))
