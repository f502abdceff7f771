"""Linking relations: mutual nearest identities from different videos.

Identity centroids are L2-normalised, so cosine distance d = 1 - <a, b>.

  inside one range  a pair (a, b) is a linking relation when each is among the other's k
                    nearest identities from other videos and d < threshold;
  over the corpus   the global pass: a and b are each other's single nearest identity of
                    another video in the whole corpus, d < its threshold, and the match is
                    clear: for both ends, d < ratio x the distance to the nearest candidate
                    from a third video (neither end's own). A person seen in videos far apart
                    in the order links here, which no sliding range can do; the ratio test
                    keeps out look-alikes, whose runner-up is nearly as close (more of them in
                    a larger corpus, so the pass grows stricter as the corpus grows). Being
                    stricter than a range's mutual k-NN, it is given a looser distance limit
                    (`link.global_scale` x `link.threshold`, 2x by default): a person whose
                    views from two cameras differ more than the threshold still links when
                    nobody else is near.

Exact inner-product search with faiss (GPU index when asked). The global pass costs n^2 x D:
the runtime splits its queries into chunks, one Ray task each, and skips the pass (saying so)
above `link.global_max` identities.
"""
from __future__ import annotations

import numpy as np


RUNNERS_UP = 4  # candidates the global pass reads per identity: the nearest and its runners-up


def _index(x: np.ndarray, use_gpu: bool):
    """A faiss exact inner-product index holding x."""
    import faiss

    index = faiss.IndexFlatIP(x.shape[1])
    if use_gpu and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(x)
    return index


def knn_other_videos(centroids: np.ndarray, videos: np.ndarray, k: int, use_gpu: bool = False,
                     rows: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """For each row (or each of rows start..stop), its k most similar rows from other videos.

    centroids: (n, D) float32, L2-normalised; videos: (n,) ints. Returns (m, k) indices
    (-1 where fewer exist) and (m, k) cosine similarities (-inf there)."""
    n = len(centroids)
    lo, hi = rows or (0, n)
    out_i = np.full((hi - lo, k), -1, np.int64)
    out_s = np.full((hi - lo, k), -np.inf, np.float32)
    if n < 2 or hi <= lo:
        return out_i, out_s
    x = np.ascontiguousarray(centroids, np.float32)
    per_video = int(np.bincount(np.unique(videos, return_inverse=True)[1]).max())
    kk = int(min(n, k + per_video))  # enough to find k neighbours outside the row's own video
    sims, idx = _index(x, use_gpu).search(x[lo:hi], kk)
    ok = (idx >= 0) & (videos[np.maximum(idx, 0)] != videos[lo:hi, None])
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


def global_candidates(centroids: np.ndarray, videos: np.ndarray, rows: tuple[int, int] | None = None,
                      use_gpu: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The global pass's search, for rows start..stop (all by default) against every identity:
    -> ((m, RUNNERS_UP) indices, (m, RUNNERS_UP) cosine similarities), as knn_other_videos."""
    return knn_other_videos(centroids, videos, RUNNERS_UP, use_gpu, rows)


def clear_mutual_pairs(nn: np.ndarray, sim: np.ndarray, videos: np.ndarray, threshold: float,
                       ratio: float) -> np.ndarray:
    """The global pass's relations from every identity's candidates (global_candidates over all
    rows, in order): (m, 3) float64 rows (a, b, distance) with a < b. ratio 0: none."""
    n = len(nn)
    if n < 2 or ratio <= 0:
        return np.zeros((0, 3))
    dist = 1.0 - sim.astype(np.float64)  # inf where no candidate
    a = np.arange(n)
    b = nn[:, 0]
    partner = np.maximum(b, 0)
    mutual = (b >= 0) & (nn[partner, 0] == a)
    # the runner-up: the nearest candidate from a video other than the partner's; when the next
    # candidates are all from the partner's video, the farthest of them (a stricter test)
    later = nn[:, 1:]
    third = (later >= 0) & (videos[np.maximum(later, 0)] != videos[partner][:, None])
    col = np.where(third.any(axis=1), third.argmax(axis=1), later.shape[1] - 1) + 1
    clear = dist[:, 0] < ratio * dist[a, col]
    keep = mutual & (a < b) & (dist[:, 0] < threshold) & clear & clear[partner]
    return np.stack([a[keep], b[keep], dist[keep, 0]], axis=1).reshape(-1, 3)


def global_relations(centroids: np.ndarray, videos: np.ndarray, threshold: float, ratio: float,
                     use_gpu: bool = False) -> np.ndarray:
    """The global pass over every identity of the corpus, in this process (see the module's
    docstring): (m, 3) float64 rows (a, b, distance) with a < b. ratio 0: no relations."""
    if len(centroids) < 2 or ratio <= 0:
        return np.zeros((0, 3))
    nn, sim = global_candidates(centroids, videos, use_gpu=use_gpu)
    return clear_mutual_pairs(nn, sim, videos, threshold, ratio)
