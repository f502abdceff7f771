"""Distances between features, rankings and nearest neighbours, in bounded memory.

Metrics: `cosine` (1 - cos of the L2-normalised features, in [0, 2]) and `euclidean` (squared
Euclidean distance: the same ranking as the Euclidean distance, and the distance k-reciprocal
re-ranking is defined on). Everything works on row chunks sized from a memory budget, so a
query x gallery matrix is never held whole.

Two engines give the same results: `dense` (numpy matrix products, sorts on a thread per core,
argpartition) and `faiss` (exact flat index search, parallel over all cores). Rankings order
ties by gallery index in both. faiss computes the distances in another order of floating-point
operations, so its ranking equals the dense one wherever the distances are computed exactly, and
may swap near-ties (differences of ~1e-7) otherwise.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

METRICS = ("cosine", "euclidean")
BACKENDS = ("dense", "faiss")


def check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown distance {metric!r}: use {' or '.join(METRICS)}")


def prepare(x: np.ndarray, metric: str) -> np.ndarray:
    """(N, D) features -> float32 C-contiguous; L2-normalised rows for cosine (zero rows stay 0)."""
    from cion_ray.denoise.tracklet import normalize

    check_metric(metric)
    x = np.ascontiguousarray(x, np.float32)
    return np.ascontiguousarray(normalize(x), np.float32) if metric == "cosine" else x


def sq_norms(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x)


def distance_block(q: np.ndarray, g: np.ndarray, metric: str, g_sq: np.ndarray | None = None) -> np.ndarray:
    """(nq, ng) float32 distances of prepared features (see `prepare`); g_sq: sq_norms(g) if known."""
    ip = q @ g.T
    if metric == "cosine":
        return np.subtract(1.0, ip, out=ip)
    g_sq = sq_norms(g) if g_sq is None else g_sq
    d = sq_norms(q)[:, None] + g_sq[None, :] - 2.0 * ip
    return np.maximum(d, 0.0, out=d)


def rows_per_chunk(n_cols: int, bytes_per_cell: int, memory_mb: float) -> int:
    """How many rows of `n_cols` cells of `bytes_per_cell` fit in `memory_mb` MiB (at least 1)."""
    return max(1, int(memory_mb * 2**20 // max(1, n_cols * bytes_per_cell)))


def _ties_by_index(key: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Rows of `idx` ordered by `key` (sorted along each row): within runs of equal keys, put
    the indices in increasing order. Only rows that hold ties are touched."""
    tied = np.flatnonzero((key[:, 1:] == key[:, :-1]).any(axis=1))
    for r in tied:
        idx[r] = idx[r][np.lexsort((idx[r], key[r]))]
    return idx


def sort_values(dist: np.ndarray, threads: int | None = None) -> np.ndarray:
    """(n, G) distances -> each row sorted ascending, row blocks sorted on `threads` threads
    (numpy's sort releases the GIL; default: one per core)."""
    threads = max(1, min(threads or os.cpu_count() or 1, len(dist)))
    if threads == 1:
        return np.sort(dist, axis=1)
    out = np.empty_like(dist)
    bounds = np.linspace(0, len(dist), threads + 1).astype(int)

    def one(k: int) -> None:
        out[bounds[k]:bounds[k + 1]] = np.sort(dist[bounds[k]:bounds[k + 1]], axis=1)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(threads)))
    return out


def smallest_k(dist: np.ndarray, k: int) -> np.ndarray:
    """(n, G) distances -> (n, k) indices of the k smallest per row, ascending, ties by index
    (at the k-th place too)."""
    k = min(k, dist.shape[1])
    part = np.argpartition(dist, k - 1, axis=1)[:, :k] if k < dist.shape[1] else np.tile(
        np.arange(dist.shape[1]), (len(dist), 1))
    vals = np.take_along_axis(dist, part, axis=1)
    over = np.flatnonzero((dist <= vals.max(axis=1, keepdims=True)).sum(axis=1) > k)
    for r in over:  # several columns tie with the k-th: take the lowest indices
        part[r] = np.argsort(dist[r], kind="stable")[:k]
        vals[r] = dist[r, part[r]]
    order = np.lexsort((part, vals), axis=1)
    return np.take_along_axis(part, order, axis=1)


class FaissSearch:
    """Exact search over gallery features with a faiss flat inner-product index. Euclidean
    distance becomes an inner product of augmented vectors: |q - g|^2 = |q|^2 - (2q, -1).(g, |g|^2),
    and the farthest item is the nearest of -q."""

    def __init__(self, g: np.ndarray, metric: str):
        import faiss

        self.metric = metric
        self.n = len(g)
        base = g if metric == "cosine" else np.hstack([g, sq_norms(g)[:, None]])
        self.index = faiss.IndexFlatIP(base.shape[1])
        self.index.add(np.ascontiguousarray(base, np.float32))

    def _query(self, q: np.ndarray, sign: float) -> np.ndarray:
        q = sign * q
        if self.metric == "euclidean":
            q = np.hstack([2.0 * q, np.full((len(q), 1), -sign, np.float32)])
        return np.ascontiguousarray(q, np.float32)

    def _to_distance(self, q: np.ndarray, ip: np.ndarray, sign: float) -> np.ndarray:
        base = 1.0 if self.metric == "cosine" else sq_norms(q)[:, None]
        return np.maximum(base - sign * ip, 0.0).astype(np.float32)

    def nearest(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """((n, k) int64 indices, (n, k) float32 distances), ascending; all ties by index when
        k is the gallery size."""
        k = min(k, self.n)
        ip, idx = self.index.search(self._query(q, 1.0), k)
        idx = _ties_by_index(-ip, idx.astype(np.int64))
        return idx, self._to_distance(q, ip, 1.0)  # ip is sorted: reordering ties keeps it so

    def ranked(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """((n, G) float32 distances in gallery order, the same rows sorted ascending): one
        search over the whole gallery, scattered back."""
        ip, idx = self.index.search(self._query(q, 1.0), self.n)
        d_sorted = self._to_distance(q, ip, 1.0)
        dist = np.empty_like(d_sorted)
        np.put_along_axis(dist, idx, d_sorted, axis=1)
        return dist, d_sorted

    def farthest(self, q: np.ndarray) -> np.ndarray:
        """(n,) float32 distance to the farthest gallery item."""
        ip, _ = self.index.search(self._query(q, -1.0), 1)
        return self._to_distance(q, ip, -1.0)[:, 0]


def nearest_neighbours(x: np.ndarray, k: int, metric: str, backend: str = "dense",
                       memory_mb: float = 512) -> tuple[np.ndarray, np.ndarray]:
    """Neighbours of every row of prepared features x (N, D) among all rows, itself included:
    ((N, k) int64 indices, ascending distance, ties by index; (N,) float32 distance to the
    farthest row). Dense: chunks of rows x N distances within `memory_mb`."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: use {' or '.join(BACKENDS)}")
    n = len(x)
    k = min(k, n)
    idx = np.empty((n, k), np.int64)
    far = np.empty(n, np.float32)
    if backend == "faiss":
        search = FaissSearch(x, metric)
        step = rows_per_chunk(k, 16, memory_mb)
        for s in range(0, n, step):
            idx[s:s + step] = search.nearest(x[s:s + step], k)[0]
            far[s:s + step] = search.farthest(x[s:s + step])
        return idx, far
    x_sq = sq_norms(x)
    step = rows_per_chunk(n, 24, memory_mb)  # the block (4 B), argpartition (8 B) and a mask, per cell
    for s in range(0, n, step):
        d = distance_block(x[s:s + step], x, metric, x_sq)
        idx[s:s + step] = smallest_k(d, k)
        far[s:s + step] = d.max(axis=1)
    return idx, far
