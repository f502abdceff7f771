"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017), in memory that grows with N x k, not N^2.

Over all N = Q + G images, with d the metric's distance (cion_ray.evaluate.distance) divided by
its row's largest value:
1. R(i, k): the k-reciprocal neighbours of i, the j among i's k+1 nearest whose k+1 nearest hold i.
2. R*(i): R(i, k1) joined with R(c, k1/2) of every c in R(i, k1) that shares more than 2/3 of
   it with R(i, k1).
3. V(i, j) = exp(-d(i, j)) on R*(i), normalised to sum 1 over j; 0 elsewhere.
4. Query expansion: V(i) becomes the mean of V over i's k2 nearest neighbours (i included).
5. Jaccard distance d_J(q, g) = 1 - sum_j min(V(q, j), V(g, j)) / sum_j max(V(q, j), V(g, j)),
   and the final distance (1 - lambda) d_J + lambda d. Defaults: k1 20, k2 6, lambda 0.3.

The published code holds N x N matrices (d, the full ranking, V): 35 GB in float32 for MSMT17's
94k images, what makes fast-reid / torchreid users run out of memory. Here: the nearest
neighbours come from row chunks of d (or faiss), V is a sparse matrix, and d_J is computed for a
chunk of queries at a time from V's gallery columns (its inverted index).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from cion_ray.evaluate.distance import distance_block, nearest_neighbours, prepare, rows_per_chunk, sq_norms


def reciprocal_sets(nn: np.ndarray, k: int, rows: int = 8192) -> np.ndarray:
    """nn: (N, >= k+1) nearest neighbours (self included) -> (N, k+1): R(i, k), as i's k+1
    nearest with -1 where the neighbour is not reciprocal."""
    kk = min(k + 1, nn.shape[1])
    out = np.empty((len(nn), kk), np.int64)
    for s in range(0, len(nn), rows):
        fwd = nn[s:s + rows, :kk]
        back = nn[fwd, :kk]  # (c, kk, kk): the neighbours of each neighbour
        ok = (back == np.arange(s, s + len(fwd))[:, None, None]).any(axis=2)
        out[s:s + rows] = np.where(ok, fwd, -1)
    return out


def expansion_pairs(r1: np.ndarray, rh: np.ndarray, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """R*(i) for rows start..stop: (row, column) pairs, unique, sorted. r1 = R(., k1),
    rh = R(., round(k1 / 2)) (from reciprocal_sets)."""
    r = r1[start:stop]  # (c, a)
    cand = np.where(r >= 0, r, 0)
    h = np.where((r >= 0)[:, :, None], rh[cand], -1)  # (c, a, b): each candidate's half set
    size = (h >= 0).sum(axis=2)
    shared = ((h[:, :, :, None] == r[:, None, None, :]) & (h >= 0)[:, :, :, None]).any(axis=3).sum(axis=2)
    accept = (r >= 0) & (shared > 2.0 / 3.0 * size)
    rows = np.arange(start, stop)
    row_ids = [np.broadcast_to(rows[:, None], r.shape)[r >= 0]]
    col_ids = [r[r >= 0]]
    hh = np.where(accept[:, :, None], h, -1)
    row_ids.append(np.broadcast_to(rows[:, None, None], hh.shape)[hh >= 0])
    col_ids.append(hh[hh >= 0])
    n = len(r1)
    key = np.unique(np.concatenate(row_ids) * n + np.concatenate(col_ids))
    return key // n, key % n


def pair_distances(x: np.ndarray, x_sq: np.ndarray, rows: np.ndarray, cols: np.ndarray, metric: str,
                   memory_mb: float) -> np.ndarray:
    """(P,) float32 distances between x[rows] and x[cols], computed a bounded number at a time."""
    out = np.empty(len(rows), np.float32)
    step = rows_per_chunk(x.shape[1], 8, memory_mb)
    for s in range(0, len(rows), step):
        a, b = rows[s:s + step], cols[s:s + step]
        ip = np.einsum("ij,ij->i", x[a], x[b])
        d = 1.0 - ip if metric == "cosine" else x_sq[a] + x_sq[b] - 2.0 * ip
        out[s:s + step] = np.maximum(d, 0.0)
    return out


class KReciprocalReranker:
    """Re-ranked query x gallery distances, a chunk of queries at a time.

    qf: (Q, D), gf: (G, D) features; metric 'cosine' | 'euclidean'; backend 'dense' | 'faiss'
    for the nearest neighbours; memory_mb: the budget of each chunked step."""

    def __init__(self, qf: np.ndarray, gf: np.ndarray, metric: str = "cosine", k1: int = 20, k2: int = 6,
                 lambda_value: float = 0.3, backend: str = "dense", memory_mb: float = 512):
        if k1 < 1 or k2 < 1 or not 0.0 <= lambda_value <= 1.0:
            raise ValueError(f"re-ranking needs k1 >= 1, k2 >= 1 and 0 <= lambda <= 1 (got {k1}, {k2}, {lambda_value})")
        self.metric, self.lambda_value, self.memory_mb = metric, lambda_value, memory_mb
        self.nq = len(qf)
        x = prepare(np.concatenate([qf, gf]), metric)
        self.x, self.x_sq = x, sq_norms(x)
        nn, far = nearest_neighbours(x, max(k1 + 1, k2), metric, backend, memory_mb)
        self.scale = np.where(far > 0, far, 1.0).astype(np.float32)  # each row's largest distance
        v = self._encode(nn, k1)
        if k2 > 1:  # query expansion: mean of the k2 nearest neighbours' vectors
            n, k = len(x), min(k2, nn.shape[1])
            avg = sp.csr_matrix((np.full(n * k, 1.0 / k, np.float32), (np.repeat(np.arange(n), k), nn[:, :k].ravel())),
                                shape=(n, n))
            v = (avg @ v).tocsr()
        self.v_query = v[:self.nq]
        self.v_gallery = v[self.nq:].tocsc()  # column j: the gallery images whose R* holds j

    def _encode(self, nn: np.ndarray, k1: int) -> sp.csr_matrix:
        """The sparse (N, N) float32 V of steps 1-3."""
        n = len(self.x)
        r1, rh = reciprocal_sets(nn, k1), reciprocal_sets(nn, int(np.around(k1 / 2)))
        rows_all, cols_all, w_all = [], [], []
        step = max(1, rows_per_chunk(r1.shape[1] * rh.shape[1] * r1.shape[1], 10, self.memory_mb))
        for s in range(0, n, step):
            rows, cols = expansion_pairs(r1, rh, s, min(n, s + step))
            d = pair_distances(self.x, self.x_sq, rows, cols, self.metric, self.memory_mb) / self.scale[rows]
            w = np.exp(-d)
            w /= np.bincount(rows - s, weights=w, minlength=min(n, s + step) - s)[rows - s]
            rows_all.append(rows)
            cols_all.append(cols)
            w_all.append(w.astype(np.float32))
        return sp.csr_matrix((np.concatenate(w_all), (np.concatenate(rows_all), np.concatenate(cols_all))),
                             shape=(n, n))

    @property
    def n_gallery(self) -> int:
        return len(self.x) - self.nq

    def rows_per_chunk(self) -> int:
        """Queries per `distances` call within the memory budget."""
        return rows_per_chunk(self.n_gallery, 48, self.memory_mb)

    def distances(self, start: int, stop: int) -> np.ndarray:
        """(stop - start, G) float32 re-ranked distances of queries start..stop to the gallery."""
        g = self.n_gallery
        c = stop - start
        vq = self.v_query[start:stop].tocoo()
        cols = self.v_gallery
        lengths = np.diff(cols.indptr)[vq.col]  # gallery entries sharing each query entry's column
        shared = np.zeros(c * g)
        ends = np.cumsum(lengths)
        budget = rows_per_chunk(1, 32, self.memory_mb)  # entries expanded at once
        lo = 0
        while lo < len(lengths):
            hi = max(lo + 1, int(np.searchsorted(ends, (ends[lo - 1] if lo else 0) + budget, side="right")))
            ln = lengths[lo:hi]
            first = cols.indptr[vq.col[lo:hi]]
            pos = np.repeat(first - np.concatenate([[0], np.cumsum(ln)[:-1]]), ln) + np.arange(ln.sum())
            mins = np.minimum(np.repeat(vq.data[lo:hi], ln), cols.data[pos])
            shared += np.bincount(np.repeat(vq.row[lo:hi], ln) * g + cols.indices[pos], weights=mins,
                                  minlength=c * g)
            lo = hi
        shared = shared.reshape(c, g)
        jaccard = 1.0 - shared / (2.0 - shared)
        d = distance_block(self.x[start:stop], self.x[self.nq:], self.metric, self.x_sq[self.nq:])
        d /= self.scale[start:stop, None]
        return ((1.0 - self.lambda_value) * jaccard + self.lambda_value * d).astype(np.float32)
