"""L1, single-tracklet denoising.

Intra-identity consistency: the radius of the smallest hypersphere around the centroid that
holds the samples. While the farthest sample is farther than `radius` from the centroid it is
dropped and the centroid recomputed; a tracklet left with fewer than `min_len` samples is
dropped whole.
"""
from __future__ import annotations

import numpy as np


def normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    n = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(n, 1e-12)


def single_tracklet_denoise(feats: np.ndarray, radius: float, min_len: int) -> np.ndarray:
    """feats: (n, D) float32 L2-normalised samples of one tracklet -> (n,) bool, the kept samples."""
    n = len(feats)
    keep = np.ones(n, bool)
    if n == 0:
        return keep
    total = feats.sum(axis=0, dtype=np.float64)
    while keep.sum() >= 1:
        c = normalize(total)
        d = 1.0 - feats @ c
        d[~keep] = -np.inf
        worst = int(np.argmax(d))
        if d[worst] <= radius:
            break
        keep[worst] = False
        total -= feats[worst]
    if keep.sum() < min_len:
        keep[:] = False
    return keep


def denoise_groups(feats: np.ndarray, groups: np.ndarray, radius: float, min_len: int) -> np.ndarray:
    """L1 on every group (tracklet or identity) independently; groups < 0 are left dropped.

    feats: (n, D); groups: (n,) ints -> (n,) bool kept."""
    keep = np.zeros(len(feats), bool)
    order = np.argsort(groups, kind="stable")
    g_sorted = groups[order]
    cuts = np.flatnonzero(np.diff(g_sorted)) + 1
    for block in np.split(order, cuts):
        if len(block) == 0 or groups[block[0]] < 0:
            continue
        keep[block] = single_tracklet_denoise(feats[block], radius, min_len)
    return keep
