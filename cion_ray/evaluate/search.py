"""Query x gallery retrieval from features: distances (dense or faiss), optional k-reciprocal
re-ranking, and the metrics, a chunk of queries at a time.

Memory stays within about `memory_mb` MiB besides the features themselves (and, re-ranked, the
sparse neighbour encoding: tens of floats per image). Measured in benchmarks/bench_evaluate.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cion_ray.evaluate.distance import (BACKENDS, FaissSearch, check_metric, distance_block, prepare, rows_per_chunk,
                                        sort_values, sq_norms)
from cion_ray.evaluate.retrieval import RankingScorer, RetrievalResult


@dataclass
class RankingOptions:
    """How query x gallery features are compared.

    distance: cosine | euclidean (squared). rerank: k-reciprocal re-ranking with k1, k2 and
    lambda_value. backend: dense | faiss | auto (see `engines`; both give the same ranking).
    max_rank: CMC length. memory_mb: budget of each chunked step (MiB)."""
    distance: str = "cosine"  # cosine | euclidean (squared)
    rerank: bool = False  # k-reciprocal re-ranking
    k1: int = 20  # re-ranking: k-reciprocal neighbours
    k2: int = 6  # re-ranking: neighbours averaged in query expansion
    lambda_value: float = 0.3  # re-ranking: final distance = (1 - lambda) Jaccard + lambda original
    backend: str = "auto"  # dense | faiss | auto (dense ranking; faiss for re-ranking's neighbours above faiss_above)
    faiss_above: int = 50_000  # auto: re-ranking searches neighbours with faiss above this many images
    max_rank: int = 50  # CMC length
    memory_mb: float = 512.0  # budget of each chunked step (MiB)

    def __post_init__(self):
        from cion_ray.errors import ConfigError

        if self.distance not in ("cosine", "euclidean"):
            raise ConfigError(f"ranking.distance {self.distance!r}: use cosine or euclidean")
        if self.backend not in BACKENDS + ("auto",):
            raise ConfigError(f"ranking.backend {self.backend!r}: use auto, dense or faiss")
        if self.k1 < 1 or self.k2 < 1 or not 0.0 <= self.lambda_value <= 1.0:
            raise ConfigError(f"re-ranking needs ranking.k1 >= 1, ranking.k2 >= 1, 0 <= ranking.lambda_value <= 1 "
                              f"(got {self.k1}, {self.k2}, {self.lambda_value})")
        if self.max_rank < 1 or self.memory_mb <= 0 or self.faiss_above < 0:
            raise ConfigError(f"need ranking.max_rank >= 1, ranking.memory_mb > 0 and ranking.faiss_above >= 0 "
                              f"(got {self.max_rank}, {self.memory_mb}, {self.faiss_above})")

    def engines(self, n_query: int, n_gallery: int) -> tuple[str, str]:
        """(ranking engine, re-ranking's neighbour-search engine). `auto` ranks with dense (a full
        sort per query; faiss's whole-gallery search measured 7x slower at MSMT17 size on 2 cores)
        and searches re-ranking's neighbours among all Q + G images with faiss above faiss_above
        images (measured 8% faster there, benchmarks/RESULTS.md)."""
        if self.backend != "auto":
            return self.backend, self.backend
        return "dense", "faiss" if n_query + n_gallery > self.faiss_above else "dense"


def distance_chunks(qf: np.ndarray, gf: np.ndarray, opts: RankingOptions):
    """Yield (start, dist, sorted_dist) for consecutive chunks of queries: dist (c, G) float32
    query x gallery distances (re-ranked when asked), sorted_dist the same rows sorted."""
    check_metric(opts.distance)
    engine, neighbours = opts.engines(len(qf), len(gf))
    if opts.rerank:
        from cion_ray.evaluate.rerank import KReciprocalReranker

        rr = KReciprocalReranker(qf, gf, opts.distance, opts.k1, opts.k2, opts.lambda_value, neighbours,
                                 opts.memory_mb)
        step = rr.rows_per_chunk()
        for s in range(0, len(qf), step):
            d = rr.distances(s, min(len(qf), s + step))
            yield s, d, sort_values(d)
        return
    q, g = prepare(qf, opts.distance), prepare(gf, opts.distance)
    step = rows_per_chunk(len(g), 24, opts.memory_mb)  # per cell: distances, a sorted copy, masks
    if engine == "faiss":
        search = FaissSearch(g, opts.distance)
        step = rows_per_chunk(len(g), 48, opts.memory_mb)  # and faiss's inner products, indices, heaps
        for s in range(0, len(q), step):
            yield (s, *search.ranked(q[s:s + step]))
        return
    g_sq = sq_norms(g)
    for s in range(0, len(q), step):
        d = distance_block(q[s:s + step], g, opts.distance, g_sq)
        yield s, d, sort_values(d)


def evaluate_features(qf: np.ndarray, gf: np.ndarray, q_pids, g_pids, q_cams, g_cams,
                      opts: RankingOptions | None = None) -> RetrievalResult:
    """CMC / mAP / mINP of query features qf (Q, D) against gallery features gf (G, D) with
    their identities and cameras (Market protocol, see cion_ray.evaluate.retrieval)."""
    opts = opts or RankingOptions()
    q_pids, q_cams = np.asarray(q_pids), np.asarray(q_cams)
    if len(qf) != len(q_pids) or len(gf) != len(g_pids):
        raise ValueError(f"{len(qf)} query / {len(gf)} gallery features for {len(q_pids)} / {len(g_pids)} labels")
    scorer = RankingScorer(g_pids, g_cams, opts.max_rank)
    for s, d, sorted_d in distance_chunks(qf, gf, opts):
        scorer.add(d, q_pids[s:s + len(d)], q_cams[s:s + len(d)], sorted_d)
    return scorer.result()
