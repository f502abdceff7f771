"""Linking relations inside one range: mutual k-nearest identities from different videos.

Identity centroids are L2-normalised, so cosine distance d = 1 - <a, b>. A pair (a, b)
is a linking relation when each is among the other's k nearest identities from other
videos and d < threshold. Exact inner-product search with faiss (GPU index when asked).
"""
from __future__ import annotations

import numpy as np


def knn_other_videos(centroids: np.ndarray, videos: np.ndarray, k: int, use_gpu: bool = False
                     ) -> tuple[np.ndarray, np.ndarray]:
    """For each row, its k most similar rows from other videos.

    centroids: (n, D) float32, L2-normalised; videos: (n,) ints. Returns (n, k) indices
    (-1 where fewer exist) and (n, k) cosine similarities (-inf there)."""
    import faiss

    n, d = centroids.shape
    out_i = np.full((n, k), -1, np.int64)
    out_s = np.full((n, k), -np.inf, np.float32)
    if n < 2:
        return out_i, out_s
    x = np.ascontiguousarray(centroids, np.float32)
    per_video = int(np.bincount(np.unique(videos, return_inverse=True)[1]).max())
    kk = int(min(n, k + per_video))  # enough to find k neighbours outside the row's own video
    index = faiss.IndexFlatIP(d)
    if use_gpu and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(x)
    sims, idx = index.search(x, kk)
    ok = (idx >= 0) & (videos[np.maximum(idx, 0)] != videos[:, None])
    rank = np.cumsum(ok, axis=1)
    rows, cols = np.nonzero(ok & (rank <= k))
    pos = rank[rows, cols] - 1
    out_i[rows, pos] = idx[rows, cols]
    out_s[rows, pos] = sims[rows, cols]
    return out_i, out_s


def linking_relations(centroids: np.ndarray, videos: np.ndarray, k: int, threshold: float,
                      use_gpu: bool = False) -> np.ndarray:
    """(m, 3) float64 rows (a, b, distance) with a < b: mutual kNN across videos, distance < threshold."""
    n = len(centroids)
    if n < 2:
        return np.zeros((0, 3))
    nn, sim = knn_other_videos(centroids, videos, k, use_gpu)
    a = np.repeat(np.arange(n, dtype=np.int64), k)
    b, s = nn.ravel(), sim.ravel()
    valid = b >= 0
    a, b, s = a[valid], b[valid], s[valid]
    mutual = np.isin(b * n + a, a * n + b)  # b lists a too
    keep = mutual & (a < b) & (1.0 - s < threshold)
    return np.stack([a[keep], b[keep], 1.0 - s[keep].astype(np.float64)], axis=1).astype(np.float64).reshape(-1, 3)
