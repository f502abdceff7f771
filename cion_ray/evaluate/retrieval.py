"""ReID retrieval metrics: CMC, mAP and mINP over a query x gallery distance matrix.

The standard single-query protocol: for each query, gallery images of the same identity seen
by the same camera are left out (they are too easy); a query with no true match left is not
scored. CMC@r: fraction of queries whose first true match ranks within r. AP: mean precision
at the ranks of the true matches. INP (Ye et al., 2021): (number of true matches) / (rank of
the last true match), i.e. how far one must look to find them all. mAP / mINP: their means.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class RetrievalResult:
    cmc: np.ndarray  # (max_rank,) CMC@1..max_rank
    mAP: float
    mINP: float
    queries: int  # queries scored (with at least one true match left)
    skipped: int  # queries without one
    ap: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))  # per scored query

    def rank(self, r: int) -> float:
        return float(self.cmc[r - 1])

    def summary(self) -> dict:
        d = {"mAP": self.mAP, "mINP": self.mINP, "queries": self.queries, "skipped": self.skipped}
        for r in (1, 5, 10):
            if r <= len(self.cmc):
                d[f"rank{r}"] = self.rank(r)
        return d


def evaluate_ranking(dist: np.ndarray, q_pids, g_pids, q_cams, g_cams, max_rank: int = 50,
                     chunk: int = 1024) -> RetrievalResult:
    """dist: (Q, G), smaller = more alike. Queries are ranked `chunk` at a time (memory Q x G
    floats for the matrix itself, chunk x G for the work)."""
    dist = np.asarray(dist)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_cams, g_cams = np.asarray(q_cams), np.asarray(g_cams)
    nq, ng = dist.shape
    if len(q_pids) != nq or len(q_cams) != nq or len(g_pids) != ng or len(g_cams) != ng:
        raise ValueError(f"distance matrix {dist.shape} does not match {len(q_pids)} query and "
                         f"{len(g_pids)} gallery labels")
    if ng == 0:
        raise ValueError("the gallery is empty")
    max_rank = min(max_rank, ng)
    cmc_sum = np.zeros(max_rank)
    aps, inps = [], []
    for s in range(0, nq, chunk):
        e = min(nq, s + chunk)
        order = np.argsort(dist[s:e], axis=1, kind="stable")
        gp, gc = g_pids[order], g_cams[order]
        match = gp == q_pids[s:e, None]
        keep = ~(match & (gc == q_cams[s:e, None]))
        for i in range(e - s):
            m = match[i][keep[i]]
            n_pos = int(m.sum())
            if n_pos == 0:
                continue
            hits = np.flatnonzero(m)  # 0-based ranks of the true matches
            first = hits[0]
            if first < max_rank:
                cmc_sum[first:] += 1
            precision = np.arange(1, n_pos + 1) / (hits + 1)
            aps.append(precision.mean())
            inps.append(n_pos / (hits[-1] + 1))
    n = len(aps)
    if n == 0:
        raise ValueError("no query has a true match in the gallery from another camera")
    return RetrievalResult(cmc=cmc_sum / n, mAP=float(np.mean(aps)), mINP=float(np.mean(inps)), queries=n,
                           skipped=nq - n, ap=np.asarray(aps))


def cosine_distance(q: np.ndarray, g: np.ndarray) -> np.ndarray:
    """1 - cosine similarity of the rows (features are L2-normalised here)."""
    from cion_ray.denoise.tracklet import normalize

    q, g = normalize(q), normalize(g)
    return 1.0 - q.astype(np.float32) @ g.astype(np.float32).T
