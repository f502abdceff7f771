"""Distances, rankings and k-reciprocal re-ranking: the chunked and faiss paths against the dense
one, and the sparse re-ranking against a loop-by-loop transcription of the published algorithm."""
from __future__ import annotations

import numpy as np
import pytest

from cion_ray.evaluate.distance import (FaissSearch, distance_block, nearest_neighbours, prepare, smallest_k,
                                        sort_values)
from cion_ray.evaluate.rerank import KReciprocalReranker
from cion_ray.evaluate.retrieval import evaluate_ranking
from cion_ray.evaluate.search import RankingOptions, distance_chunks, evaluate_features


def reference_rerank(qf, gf, metric, k1=20, k2=6, lam=0.3):
    """Zhong et al. 2017's re_ranking, transcribed loop by loop on dense float64 matrices."""
    x = np.concatenate([qf, gf]).astype(np.float64)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    n, nq = len(x), len(qf)
    dist = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            dist[i, j] = 1 - x[i] @ x[j] if metric == "cosine" else np.sum((x[i] - x[j]) ** 2)
    original = np.transpose(dist / np.max(dist, axis=0))
    rank = np.argsort(original, axis=1, kind="stable")
    V = np.zeros((n, n))
    for i in range(n):
        forward = rank[i, :k1 + 1]
        backward = rank[forward, :k1 + 1]
        recip = forward[np.where(backward == i)[0]]
        expansion = recip
        for cand in recip:
            half = int(np.around(k1 / 2))
            c_forward = rank[cand, :half + 1]
            c_backward = rank[c_forward, :half + 1]
            c_recip = c_forward[np.where(c_backward == cand)[0]]
            if len(np.intersect1d(c_recip, recip)) > 2 / 3 * len(c_recip):
                expansion = np.append(expansion, c_recip)
        expansion = np.unique(expansion)
        w = np.exp(-original[i, expansion])
        V[i, expansion] = w / np.sum(w)
    if k2 != 1:
        V = np.stack([V[rank[i, :k2]].mean(axis=0) for i in range(n)])
    jaccard = np.zeros((nq, n))
    for i in range(nq):
        for j in range(n):
            shared = np.sum(np.minimum(V[i], V[j]))
            jaccard[i, j] = 1 - shared / (2 - shared)
    final = jaccard * (1 - lam) + original[:nq] * lam
    return final[:, nq:]


def clustered(seed, n_ids=12, per_id=8, dim=16, noise=0.6):
    rng = np.random.default_rng(seed)
    pids = np.repeat(np.arange(n_ids), per_id)
    cams = rng.integers(1, 4, len(pids))
    feats = rng.standard_normal((n_ids, dim))[pids] + noise * rng.standard_normal((len(pids), dim))
    q = rng.random(len(pids)) < 0.25
    return feats[q].astype(np.float32), feats[~q].astype(np.float32), pids[q], pids[~q], cams[q], cams[~q]


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("k1,k2", [(20, 6), (7, 3), (5, 1)])
def test_rerank_matches_the_published_loops(metric, k1, k2):
    qf, gf, *_ = clustered(k1 + k2)
    ref = reference_rerank(qf, gf, metric, k1, k2)
    rr = KReciprocalReranker(qf, gf, metric, k1, k2, 0.3, memory_mb=0.01)  # tiny budget: many chunks
    got = np.concatenate([rr.distances(s, min(len(qf), s + 5)) for s in range(0, len(qf), 5)])
    np.testing.assert_allclose(got, ref, atol=2e-5)
    assert not np.allclose(got, distance_block(prepare(qf, metric), prepare(gf, metric), metric)), "it re-ranks"


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_rerank_faiss_equals_dense_and_improves_clustered_data(metric):
    qf, gf, qp, gp, qc, gc = clustered(3, n_ids=20, per_id=10, noise=1.0)
    dense = KReciprocalReranker(qf, gf, metric, backend="dense")
    faiss = KReciprocalReranker(qf, gf, metric, backend="faiss")
    np.testing.assert_allclose(dense.distances(0, len(qf)), faiss.distances(0, len(qf)), atol=1e-5)
    plain = evaluate_features(qf, gf, qp, gp, qc, gc, RankingOptions(distance=metric))
    reranked = evaluate_features(qf, gf, qp, gp, qc, gc, RankingOptions(distance=metric, rerank=True))
    assert reranked.mAP > plain.mAP


def lattice(seed, metric="cosine", nq=40, ng=300, dim=16):
    """Features whose distances float32 computes exactly in any order (many exact ties): +-1
    entries for cosine (a norm of 4), small integers for squared Euclidean."""
    rng = np.random.default_rng(seed)
    values = [-1.0, 1.0] if metric == "cosine" else [-2.0, -1.0, 0.0, 1.0, 2.0]
    q = rng.choice(values, (nq, dim)).astype(np.float32)
    g = rng.choice(values, (ng, dim)).astype(np.float32)
    return q, g, rng.integers(0, 15, nq), rng.integers(0, 15, ng), rng.integers(1, 4, nq), rng.integers(1, 4, ng)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_faiss_distances_equal_dense_ones_ties_included(metric):
    q, g, qp, gp, qc, gc = lattice(0, metric)
    pq_, pg = prepare(q, metric), prepare(g, metric)
    d = distance_block(pq_, pg, metric)
    assert (np.sort(d, axis=1)[:, 1:] == np.sort(d, axis=1)[:, :-1]).any(), "the case must hold ties"
    dist, sorted_d = FaissSearch(pg, metric).ranked(pq_)
    np.testing.assert_array_equal(dist, d)
    np.testing.assert_array_equal(sorted_d, sort_values(d, threads=3))
    a = evaluate_features(q, g, qp, gp, qc, gc, RankingOptions(distance=metric, backend="dense"))
    b = evaluate_features(q, g, qp, gp, qc, gc, RankingOptions(distance=metric, backend="faiss"))
    np.testing.assert_array_equal(a.ap, b.ap)
    np.testing.assert_array_equal(a.cmc, b.cmc)


def test_ties_rank_by_gallery_index_like_a_stable_sort():
    q, g, qp, gp, qc, gc = lattice(4, nq=60, ng=500)
    d = distance_block(prepare(q, "cosine"), prepare(g, "cosine"), "cosine")
    order = np.argsort(d, axis=1, kind="stable")
    cmc, aps = np.zeros(50), []
    for i in range(len(q)):  # the ranking written out: stable order, junk removed, hits listed
        ranked = [j for j in order[i] if not (gp[j] == qp[i] and gc[j] == qc[i])]
        hits = np.array([r for r, j in enumerate(ranked) if gp[j] == qp[i]])
        if len(hits):
            cmc[hits[0]:] += hits[0] < 50
            aps.append(np.mean(np.arange(1, len(hits) + 1) / (hits + 1)))
    r = evaluate_ranking(d, qp, gp, qc, gc, chunk=7)
    np.testing.assert_allclose(r.ap, aps, rtol=1e-12)
    np.testing.assert_allclose(r.cmc, cmc / len(aps), rtol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_chunked_and_faiss_evaluation_equal_the_dense_matrix(seed):
    q, g, qp, gp, qc, gc = lattice(seed)
    whole = evaluate_ranking(distance_block(prepare(q, "cosine"), prepare(g, "cosine"), "cosine"), qp, gp, qc, gc)
    for opts in (RankingOptions(backend="dense", memory_mb=0.05), RankingOptions(backend="faiss", memory_mb=0.05),
                 RankingOptions(backend="auto", faiss_above=10)):
        r = evaluate_features(q, g, qp, gp, qc, gc, opts)
        np.testing.assert_array_equal(r.cmc, whole.cmc)
        np.testing.assert_array_equal(r.ap, whole.ap)
        assert (r.mINP, r.queries, r.skipped) == (whole.mINP, whole.queries, whole.skipped)
    chunks = [len(d) for _, d, _ in distance_chunks(q, g, RankingOptions(memory_mb=0.05))]
    assert len(chunks) > 1 and sum(chunks) == len(q), "a 50 KiB budget splits 40 x 300 into chunks"


def test_auto_engines():
    opts = RankingOptions(faiss_above=1000)
    assert opts.engines(100, 800) == ("dense", "dense") and opts.engines(300, 800) == ("dense", "faiss")
    assert RankingOptions(backend="faiss").engines(1, 1) == ("faiss", "faiss")


def test_nearest_neighbours_and_smallest_k_break_ties_by_index():
    d = np.array([[0.5, 0.1, 0.1, 0.3, 0.1], [0.2, 0.2, 0.2, 0.2, 0.0]], np.float32)
    np.testing.assert_array_equal(smallest_k(d, 2), [[1, 2], [4, 0]])
    np.testing.assert_array_equal(smallest_k(d, 4), [[1, 2, 4, 3], [4, 0, 1, 2]])
    x = prepare(lattice(2)[1], "cosine")
    for backend in ("dense", "faiss"):
        idx, far = nearest_neighbours(x, 9, "cosine", backend, memory_mb=0.05)
        full = distance_block(x, x, "cosine")
        np.testing.assert_allclose(far, full.max(axis=1), atol=1e-6)
        if backend == "dense":
            np.testing.assert_array_equal(idx, np.argsort(full, axis=1, kind="stable")[:, :9])
        else:  # faiss may break a tie at the 9th place differently: same distances
            np.testing.assert_allclose(np.take_along_axis(full, idx, 1), np.sort(full, axis=1)[:, :9], atol=1e-6)
