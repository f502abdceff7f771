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
    (-1 where fewer exist) and (n, k) cosine similarities."""
    import faiss

    n, d = centroids.shape
    x = np.ascontiguousarray(centroids, np.float32)
    per_video = np.bincount(np.unique(videos, return_inverse=True)[1]).max() if n else 0
    kk = int(min(n, k + per_video))
    index = faiss.IndexFlatIP(d)
    if use_gpu and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(x)
    sims, idx = index.search(x, kk) if kk else (np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64))
    out_i = np.full((n, k), -1, np.int64)
    out_s = np.full((n, k), -np.inf, np.float32)
    for r in range(n):
        ok = (idx[r] >= 0) & (videos[np.maximum(idx[r], 0)] != videos[r])
        cand_i, cand_s = idx[r][ok][:k], sims[r][ok][:k]
        out_i[r, :len(cand_i)] = cand_i
        out_s[r, :len(cand_s)] = cand_s
    return out_i, out_s


def linking_relations(centroids: np.ndarray, videos: np.ndarray, k: int, threshold: float,
                      use_gpu: bool = False) -> np.ndarray:
    """(m, 3) float64 rows (a, b, distance) with a < b: mutual kNN across videos, distance < threshold."""
    n = len(centroids)
    if n < 2:
        return np.zeros((0, 3))
    nn, sim = knn_other_videos(centroids, videos, k, use_gpu)
    neigh = [set(r[r >= 0].tolist()) for r in nn]
    rows = []
    for a in range(n):
        for b, s in zip(nn[a], sim[a]):
            if b > a and a in neigh[b] and 1.0 - s < threshold:
                rows.append((a, int(b), 1.0 - float(s)))
    return np.array(rows, np.float64).reshape(-1, 3)
