"""ReID retrieval metrics: CMC, mAP and mINP over rankings of the gallery for each query.

The standard single-query protocol: for each query, gallery images of the same identity seen
by the same camera are left out (they are too easy); a query with no true match left is not
scored. CMC@r: fraction of queries whose first true match ranks within r. AP: mean precision
at the ranks of the true matches. INP (Ye et al., 2021): (number of true matches) / (rank of
the last true match), i.e. how far one must look to find them all. mAP / mINP: their means.
Equal distances rank by gallery index.

`RankingScorer` takes the distances a chunk of queries at a time, so the query x gallery
distance matrix is never needed whole (cion_ray.evaluate.search feeds it chunks).
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
    gallery: int = 0  # gallery images ranked

    def rank(self, r: int) -> float:
        return float(self.cmc[r - 1])

    def summary(self) -> dict:
        d = {"mAP": self.mAP, "mINP": self.mINP, "queries": self.queries, "skipped": self.skipped,
             "gallery": self.gallery}
        for r in (1, 5, 10):
            if r <= len(self.cmc):
                d[f"rank{r}"] = self.rank(r)
        return d


class RankingScorer:
    """Accumulates CMC / AP / INP over chunks of queries.

    g_pids, g_cams: (G,) gallery identities and cameras. `add(dist, q_pids, q_cams)` takes the
    (c, G) distances of c queries; optionally `sorted_dist`, the same rows sorted ascending
    (cion_ray.evaluate.distance.sort_values). The gallery is never reordered: a true match's rank
    is the number of kept images before it, those at a smaller distance or at the same distance
    with a smaller gallery index, found by binary search in the sorted row."""

    def __init__(self, g_pids, g_cams, max_rank: int = 50):
        self.g_pids, self.g_cams = np.asarray(g_pids), np.asarray(g_cams)
        if len(self.g_pids) != len(self.g_cams):
            raise ValueError(f"{len(self.g_pids)} gallery identities but {len(self.g_cams)} cameras")
        if len(self.g_pids) == 0:
            raise ValueError("the gallery is empty")
        self.max_rank = min(max_rank, len(self.g_pids))
        self.cmc_sum = np.zeros(self.max_rank)
        self.aps: list[float] = []
        self.inps: list[float] = []
        self.seen = 0

    def add(self, dist: np.ndarray, q_pids, q_cams, sorted_dist: np.ndarray | None = None) -> None:
        q_pids, q_cams = np.asarray(q_pids), np.asarray(q_cams)
        if dist.shape != (len(q_pids), len(self.g_pids)) or len(q_cams) != len(q_pids):
            raise ValueError(f"distances {dist.shape} do not match {len(q_pids)} query and "
                             f"{len(self.g_pids)} gallery labels")
        if sorted_dist is None:
            sorted_dist = np.sort(dist, axis=1)
        self.seen += len(q_pids)
        same = self.g_pids[None, :] == q_pids[:, None]
        junk = same & (self.g_cams[None, :] == q_cams[:, None])  # same identity, same camera: left out
        for i in range(len(q_pids)):
            hits = self._hit_ranks(dist[i], sorted_dist[i], np.flatnonzero(same[i] & ~junk[i]),
                                   np.flatnonzero(junk[i]))
            if len(hits) == 0:
                continue
            if hits[0] < self.max_rank:
                self.cmc_sum[hits[0]:] += 1
            self.aps.append(float(np.mean(np.arange(1, len(hits) + 1) / (hits + 1))))
            self.inps.append(len(hits) / (hits[-1] + 1))

    @staticmethod
    def _hit_ranks(row: np.ndarray, srow: np.ndarray, matches: np.ndarray, junk: np.ndarray) -> np.ndarray:
        """Sorted 0-based ranks of the true matches among the kept gallery images."""
        if len(matches) == 0:
            return matches
        dm = row[matches]
        ranks = np.searchsorted(srow, dm, side="left")  # images strictly closer
        for t in np.flatnonzero(np.searchsorted(srow, dm, side="right") - ranks > 1):
            ranks[t] += np.count_nonzero(row[:matches[t]] == dm[t])  # ties: smaller gallery index first
        if len(junk):
            dj = row[junk]
            ranks -= ((dj[None, :] < dm[:, None]) | ((dj[None, :] == dm[:, None]) & (junk[None, :] < matches[:, None]))
                      ).sum(axis=1)
        return np.sort(ranks)

    def result(self) -> RetrievalResult:
        n = len(self.aps)
        if n == 0:
            raise ValueError("no query has a true match in the gallery from another camera")
        return RetrievalResult(cmc=self.cmc_sum / n, mAP=float(np.mean(self.aps)), mINP=float(np.mean(self.inps)),
                               queries=n, skipped=self.seen - n, ap=np.asarray(self.aps), gallery=len(self.g_pids))


def evaluate_ranking(dist: np.ndarray, q_pids, g_pids, q_cams, g_cams, max_rank: int = 50,
                     chunk: int = 1024) -> RetrievalResult:
    """dist: (Q, G), smaller = more alike. Queries are ranked `chunk` at a time (memory Q x G
    floats for the matrix itself, about 12 x chunk x G bytes for the work)."""
    from cion_ray.evaluate.distance import sort_values

    dist = np.asarray(dist)
    q_pids, q_cams = np.asarray(q_pids), np.asarray(q_cams)
    if len(q_pids) != dist.shape[0] or len(q_cams) != dist.shape[0] or len(g_pids) != dist.shape[1]:
        raise ValueError(f"distance matrix {dist.shape} does not match {len(q_pids)} query and "
                         f"{len(g_pids)} gallery labels")
    scorer = RankingScorer(g_pids, g_cams, max_rank)
    for s in range(0, len(q_pids), chunk):
        block = dist[s:s + chunk]
        scorer.add(block, q_pids[s:s + chunk], q_cams[s:s + chunk], sort_values(block))
    return scorer.result()


def cosine_distance(q: np.ndarray, g: np.ndarray) -> np.ndarray:
    """(Q, G) float32: 1 - cosine similarity of the rows (features are L2-normalised here)."""
    from cion_ray.evaluate.distance import distance_block, prepare

    return distance_block(prepare(q, "cosine"), prepare(g, "cosine"), "cosine")
