"""L2, short-range single-video denoising.

Within one video: (1) L1 on every tracklet; (2) tracklets whose centroids are closer than
`merge` are merged, closest pair first (centroid linkage), except that two tracklets present in
the same frame can never be one person (cannot-link, carried by merged groups); (3) each sample
moves to the identity whose centroid it is closer to by more than `margin`, if that identity
has no sample in its frame; (4) L1 again on the resulting identities.

The cannot-link comes from every sample the tracker produced, before L1: two tracklets seen in
one frame are two people even when L1 later drops the sample that showed it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cion_ray.denoise.tracklet import denoise_groups, normalize


@dataclass
class VideoDenoiseResult:
    """labels: (n,) video-local identity per sample (0..k-1), -1 for dropped samples."""

    labels: np.ndarray
    stats: dict = field(default_factory=dict)


def cooccurrence(groups: np.ndarray, frames: np.ndarray, k: int) -> np.ndarray:
    """(k, k) bool: groups i and j both have a sample in some frame."""
    co = np.zeros((k, k), bool)
    order = np.lexsort((groups, frames))
    f, g = frames[order], groups[order]
    cuts = np.flatnonzero(np.diff(f)) + 1
    for block in np.split(np.arange(len(f)), cuts):
        present = np.unique(g[block])
        if len(present) > 1:
            co[np.ix_(present, present)] = True
    np.fill_diagonal(co, False)
    return co


def cannot_link_pairs(tracks: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """(r, 2) int64 pairs (a < b) of track ids present together in some frame. tracks, frames: (n,)."""
    ids, tr = np.unique(tracks, return_inverse=True)
    co = cooccurrence(tr, frames, len(ids))
    a, b = np.nonzero(np.triu(co, 1))
    return np.stack([ids[a], ids[b]], axis=1).astype(np.int64)


def cannot_link_matrix(pairs: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(k, k) bool over `ids` (sorted track ids) from (r, 2) track-id pairs; pairs naming other ids are ignored."""
    k = len(ids)
    co = np.zeros((k, k), bool)
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    if k == 0 or not len(pairs):
        return co
    pos = np.searchsorted(ids, pairs).clip(0, k - 1)
    ok = (ids[pos] == pairs).all(axis=1)
    a, b = pos[ok, 0], pos[ok, 1]
    co[a, b] = co[b, a] = True
    np.fill_diagonal(co, False)
    return co


def merge_tracklets(feats: np.ndarray, groups: np.ndarray, frames: np.ndarray, threshold: float,
                    cannot: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Constrained centroid-linkage merging. groups: (n,) 0..k-1 -> ((n,) merged group ids 0..m-1, merges).

    cannot: optional (k, k) bool, groups that are never one person, on top of those that share a
    frame among the given samples."""
    k = int(groups.max()) + 1 if len(groups) else 0
    if k < 2:
        return groups.copy(), 0
    sums = np.zeros((k, feats.shape[1]), np.float64)
    np.add.at(sums, groups, feats)
    cent = normalize(sums)
    co = cooccurrence(groups, frames, k)
    if cannot is not None:
        co |= cannot
    dist = 1.0 - cent @ cent.T
    dist[co] = np.inf
    np.fill_diagonal(dist, np.inf)
    alive = np.ones(k, bool)
    parent = np.arange(k)
    merges = 0
    while True:
        i, j = np.unravel_index(np.argmin(dist), dist.shape)
        if not np.isfinite(dist[i, j]) or dist[i, j] >= threshold:
            break
        # merge j into i; the cannot-link of the new group is the union of both
        sums[i] += sums[j]
        co[i] |= co[j]
        co[:, i] |= co[:, j]
        alive[j] = False
        parent[parent == j] = i
        merges += 1
        cent[i] = normalize(sums[i])
        row = 1.0 - cent @ cent[i]
        row[co[i] | ~alive] = np.inf
        row[i] = np.inf
        dist[i, :] = row
        dist[:, i] = row
        dist[j, :] = np.inf
        dist[:, j] = np.inf
    _, merged = np.unique(parent[groups], return_inverse=True)
    return merged.astype(np.int64), merges


def reallocate(feats: np.ndarray, labels: np.ndarray, frames: np.ndarray, margin: float) -> tuple[np.ndarray, int]:
    """Move samples to a clearly closer identity (by `margin`) that has no sample in their frame."""
    k = int(labels.max()) + 1 if len(labels) else 0
    if k < 2:
        return labels.copy(), 0
    sums = np.zeros((k, feats.shape[1]), np.float64)
    np.add.at(sums, labels, feats)
    cent = normalize(sums).astype(np.float32)
    d = 1.0 - feats @ cent.T  # (n, k)
    own = d[np.arange(len(labels)), labels]
    d_other = d.copy()
    d_other[np.arange(len(labels)), labels] = np.inf
    best = np.argmin(d_other, axis=1)
    gain = own - d_other[np.arange(len(labels)), best]
    occupied = set(zip(labels.tolist(), frames.tolist()))
    out = labels.copy()
    moved = 0
    for s in np.argsort(-gain):
        if gain[s] <= margin:
            break
        target = int(best[s])
        if (target, int(frames[s])) in occupied:
            continue
        occupied.discard((int(out[s]), int(frames[s])))
        occupied.add((target, int(frames[s])))
        out[s] = target
        moved += 1
    return out, moved


def video_denoise(feats: np.ndarray, tracks: np.ndarray, frames: np.ndarray, radius: float, min_len: int,
                  merge: float, margin: float, cannot_link: np.ndarray | None = None) -> VideoDenoiseResult:
    """L1 + L2 for one video. feats: (n, D) L2-normalised; tracks, frames: (n,) ints.

    cannot_link: (r, 2) track-id pairs that are never one person; by default the pairs present
    together in a frame among all n samples (computed here, before L1 drops any)."""
    n = len(feats)
    if cannot_link is None:
        cannot_link = cannot_link_pairs(tracks, frames)
    stats = {"samples_in": n, "tracklets_in": int(len(np.unique(tracks)))}
    labels = np.full(n, -1, np.int64)
    _, tr = np.unique(tracks, return_inverse=True)
    keep1 = denoise_groups(feats, tr, radius, min_len)
    stats["l1_samples_dropped"] = int(n - keep1.sum())
    stats["l1_tracklets_dropped"] = int(stats["tracklets_in"] - len(np.unique(tr[keep1])))
    stats["l1_samples_out"] = int(keep1.sum())
    stats["l1_tracklets_out"] = int(len(np.unique(tr[keep1])))
    idx = np.flatnonzero(keep1)
    if len(idx) == 0:
        stats.update(merged=0, reallocated=0, l2_samples_dropped=0, identities_out=0, samples_out=0)
        return VideoDenoiseResult(labels, stats)
    f, fr = feats[idx], frames[idx]
    kept_tracks, g = np.unique(tracks[idx], return_inverse=True)
    g, merges = merge_tracklets(f, g, fr, merge, cannot_link_matrix(cannot_link, kept_tracks))
    g, moved = reallocate(f, g, fr, margin)
    keep2 = denoise_groups(f, g, radius, min_len)
    _, final = np.unique(g[keep2], return_inverse=True)
    labels[idx[keep2]] = final
    stats.update(merged=merges, reallocated=moved, l2_samples_dropped=int(len(idx) - keep2.sum()),
                 identities_out=int(final.max() + 1) if len(final) else 0, samples_out=int(keep2.sum()))
    return VideoDenoiseResult(labels, stats)


def l1_labels(feats: np.ndarray, tracks: np.ndarray, radius: float, min_len: int) -> np.ndarray:
    """The L1-only assignment (tracklets, cleaned): (n,) labels, -1 dropped. For per-level reports."""
    _, tr = np.unique(tracks, return_inverse=True)
    keep = denoise_groups(feats, tr, radius, min_len)
    out = np.full(len(feats), -1, np.int64)
    out[keep] = tr[keep]
    return out
