"""A linking corpus with realistic noise, look-alike people and ground truth (for bench_link.py).

Every person has a centroid; look-alike groups share a group centre and sit close to it (small
local groups, and a few large "uniform" groups, e.g. staff in one outfit, whose members appear all
along the video order and so tempt chaining across the whole corpus). A person appears in 2-5
videos, mostly within 3 positions of a home video (10% anywhere), once per video or, 10% of the
time, as two L2 identities (a fragment L2 did not merge). A tracklet's centroid is its person's
plus isotropic noise of scale sigma times a per-tracklet quality factor (log-normal), and its
sample count is 5..60. Videos are 10-minute clips in time order; a tracklet has a start time.

The noise scale is calibrated (bisection) so that the descriptor quality matches the one
measured on the synthetic world (RESULTS.md, tune_curation: 0.922 / 0.930): the fraction of
identities whose nearest identity from another video of the same sliding range is the same
person, over identities that have one there.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cion_ray.curation.core import IdentityTable
from cion_ray.linking.ranges import sliding_ranges
from cion_ray.linking.relations import knn_other_videos

DIM = 256
PER_VIDEO = 100
CLIP_SECONDS = 600.0
SPREAD = 0.2


@dataclass
class LinkCorpus:
    table: IdentityTable
    person: np.ndarray  # (n,) ground-truth person of each identity
    time: np.ndarray  # (n,) start time of each tracklet, seconds from the first video
    sigma: float  # noise scale used


@dataclass
class _People:
    video_of: np.ndarray
    person_of: np.ndarray
    centres: np.ndarray  # (p, D) unit person centroids


def _people(n_tracklets: int, rng: np.random.Generator, lookalike: float) -> _People:
    n_videos = max(2, n_tracklets // PER_VIDEO)
    video_of, person_of = [], []
    p = 0
    while len(video_of) < n_tracklets:
        home = int(rng.integers(n_videos))
        vids = {home}
        k = int(rng.integers(2, 6))
        while len(vids) < k:
            vids.add(int(np.clip(home + rng.integers(-3, 4), 0, n_videos - 1)) if rng.random() > 0.1
                     else int(rng.integers(n_videos)))
        for v in sorted(vids):
            for _ in range(2 if rng.random() < 0.1 else 1):
                video_of.append(v)
                person_of.append(p)
        p += 1
    # look-alike groups: 30% of people in local groups of 2-5 (consecutive person numbers, whose
    # homes are independent, so groups span the order anyway); 5% in uniform groups of ~1% of people
    group = np.arange(p)
    perm = rng.permutation(p)
    n_local, n_uniform = int(0.30 * p), int(0.05 * p)
    i = 0
    while i < n_local:
        size = int(rng.integers(2, 6))
        group[perm[i:i + size]] = perm[i]
        i += size
    usize = max(5, p // 100)
    for j in range(n_local, n_local + n_uniform, usize):
        group[perm[j:j + usize]] = perm[j]
    # people share a common direction (descriptors of people are not spread over the whole
    # sphere): different people lie about SPREAD**2 / (1 + SPREAD**2) apart in cosine distance
    mean = rng.standard_normal(DIM)
    centres = mean / np.linalg.norm(mean) + SPREAD * rng.standard_normal((p, DIM)) / np.sqrt(DIM)
    own = rng.standard_normal((p, DIM)) / np.sqrt(DIM)
    grouped = group != np.arange(p)
    centres[grouped] = centres[group[grouped]] + lookalike * SPREAD * own[grouped]
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    video_of, person_of = np.array(video_of[:n_tracklets]), np.array(person_of[:n_tracklets])
    order = np.argsort(video_of, kind="stable")
    return _People(video_of[order], person_of[order], centres)


def _tracklets(people: _People, sigma: float, rng: np.random.Generator, rows: np.ndarray | None = None) -> np.ndarray:
    """(len(rows), D) float32 L2-normalised tracklet centroids (all rows when None)."""
    person = people.person_of if rows is None else people.person_of[rows]
    n = len(person)
    quality = np.exp(0.25 * rng.standard_normal(n))[:, None]
    x = people.centres[person] + sigma * quality * rng.standard_normal((n, DIM)) / np.sqrt(DIM)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _spans(videos: np.ndarray, window: int, stride: int, max_ranges: int) -> list[tuple[int, int]]:
    """Row spans of up to max_ranges sliding ranges spread over the order (videos sorted)."""
    offsets = np.searchsorted(videos, np.arange(int(videos.max()) + 2))
    ranges = sliding_ranges(int(videos.max()) + 1, window, stride)
    pick = np.unique(np.linspace(0, len(ranges) - 1, min(max_ranges, len(ranges))).astype(int))
    return [(int(offsets[ranges[i][0]]), int(offsets[ranges[i][1]])) for i in pick]


def _range_hits(cent: np.ndarray, v: np.ndarray, pp: np.ndarray) -> tuple[int, int]:
    """Inside one range: (identities whose nearest other-video identity is the same person,
    identities whose person is in another video of the range)."""
    nn, _ = knn_other_videos(cent, v, 1)
    key = pp.astype(np.int64) * (int(v.max()) + 1) + v
    _, first = np.unique(key, return_index=True)
    seen_in = np.bincount(np.unique(pp[first], return_inverse=True)[1])  # videos per person
    has = (seen_in[np.unique(pp, return_inverse=True)[1]] > 1) & (nn[:, 0] >= 0)
    return int((pp[nn[has, 0]] == pp[has]).sum()), int(has.sum())


def nearest_other_video_precision(cent: np.ndarray, videos: np.ndarray, person: np.ndarray, window: int,
                                  stride: int, max_ranges: int = 64) -> float:
    """Fraction of identities whose nearest identity from another video of the range is the same
    person, over identities that have the same person in another video of the range; measured on up
    to max_ranges sliding ranges spread over the order. cent: (n, D) float32 L2-normalised."""
    hit = total = 0
    for lo, hi in _spans(videos, window, stride, max_ranges):
        h, t = _range_hits(cent[lo:hi], videos[lo:hi], person[lo:hi])
        hit, total = hit + h, total + t
    return hit / max(1, total)


def calibrate_sigma(target: float, seed: int, lookalike: float, window: int, stride: int,
                    n_tracklets: int, steps: int = 8, max_ranges: int = 32) -> float:
    """The noise scale whose corpus (of n_tracklets, same structure, another seed) has `target`
    precision; the precision depends on the size (uniform groups grow with it), hence per size.
    Only the tracklets of the measured ranges are drawn."""
    people = _people(n_tracklets, np.random.default_rng(seed + 1000), lookalike)
    spans = _spans(people.video_of, window, stride, max_ranges)
    lo, hi = 0.0, 1.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        rng = np.random.default_rng(seed + 2000)
        hit = total = 0
        for a, b in spans:
            h, t = _range_hits(_tracklets(people, mid, rng, np.arange(a, b)), people.video_of[a:b],
                               people.person_of[a:b])
            hit, total = hit + h, total + t
        lo, hi = (mid, hi) if hit / max(1, total) > target else (lo, mid)
    return (lo + hi) / 2


def make_realistic(n_tracklets: int, sigma: float, seed: int = 0, lookalike: float = 0.3) -> LinkCorpus:
    rng = np.random.default_rng(seed)
    people = _people(n_tracklets, rng, lookalike)
    cent = _tracklets(people, sigma, rng)
    n = len(cent)
    counts = rng.integers(5, 61, n)
    n_videos = int(people.video_of.max()) + 1
    offsets = np.searchsorted(people.video_of, np.arange(n_videos + 1))
    time = people.video_of * CLIP_SECONDS + rng.uniform(0, CLIP_SECONDS, n)
    table = IdentityTable(people.video_of, cent.astype(np.float64) * counts[:, None], counts, offsets,
                          [f"v{i:06d}" for i in range(n_videos)])
    return LinkCorpus(table, people.person_of, time, sigma)
