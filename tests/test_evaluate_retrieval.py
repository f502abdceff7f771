"""ReID retrieval metrics (CMC, mAP, mINP) against hand-worked cases and a loop-by-loop
reference, and a backbone's evaluation on the synthetic world's Market-style split."""
from __future__ import annotations

import numpy as np
import pytest

from cion_ray.errors import CionError
from cion_ray.evaluate.retrieval import cosine_distance, evaluate_ranking


def test_hand_worked_query():
    # gallery ranked by distance: g0 (id 1, cam 1: same camera as the query -> left out),
    # g1 (id 2), g2 (id 1, cam 2: hit at rank 2), g3 (id 3), g4 (id 1, cam 3: hit at rank 4)
    dist = np.array([[0.1, 0.2, 0.3, 0.4, 0.5]])
    r = evaluate_ranking(dist, [1], [1, 2, 1, 3, 1], [1], [1, 2, 2, 2, 3], max_rank=4)
    assert r.cmc.tolist() == [0.0, 1.0, 1.0, 1.0]
    assert r.mAP == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert r.mINP == pytest.approx(2 / 4)
    assert (r.queries, r.skipped) == (1, 0)


def test_query_without_a_match_from_another_camera_is_skipped():
    dist = np.array([[0.1, 0.2], [0.2, 0.1]])
    r = evaluate_ranking(dist, [1, 2], [1, 2], [1, 1], [1, 2])  # query 1's only match shares its camera
    assert (r.queries, r.skipped) == (1, 1)
    assert r.mAP == 1.0 and r.rank(1) == 1.0
    with pytest.raises(ValueError, match="no query has a true match"):
        evaluate_ranking(dist[:1], [1], [1, 2], [1], [1, 2])
    with pytest.raises(ValueError, match="does not match"):
        evaluate_ranking(dist, [1], [1, 2], [1, 1], [1, 2])


def test_ties_rank_by_gallery_index():
    # all four gallery images at the same distance: the order is g0, g1, g2, g3;
    # the query's matches (id 1, camera 2) are g1 and g3 -> ranks 2 and 4
    dist = np.array([[0.5, 0.5, 0.5, 0.5]])
    r = evaluate_ranking(dist, [1], [2, 1, 3, 1], [1], [2, 2, 2, 2], max_rank=4)
    assert r.cmc.tolist() == [0.0, 1.0, 1.0, 1.0]
    assert r.mAP == pytest.approx((1 / 2 + 2 / 4) / 2) and r.mINP == pytest.approx(2 / 4)
    # the same gallery listed in the other order: now the matches come first
    r = evaluate_ranking(dist, [1], [1, 1, 3, 2], [1], [2, 2, 2, 2], max_rank=4)
    assert r.cmc.tolist() == [1.0, 1.0, 1.0, 1.0] and r.mAP == 1.0 and r.mINP == 1.0


def test_max_rank_larger_than_the_gallery():
    dist = np.array([[0.3, 0.1, 0.2], [0.1, 0.2, 0.3]])
    r = evaluate_ranking(dist, [1, 2], [1, 2, 3], [1, 1], [2, 2, 2], max_rank=50)
    assert len(r.cmc) == 3 and r.gallery == 3
    # query 0: ranking g1 (id 2), g2 (id 3), g0 (id 1) -> first hit at rank 3; query 1: g0, g1 -> rank 2
    assert r.cmc.tolist() == [0.0, 0.5, 1.0]
    assert r.mAP == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert set(r.summary()) == {"mAP", "mINP", "queries", "skipped", "gallery", "rank1"}


def test_same_identity_same_camera_entries_do_not_count_or_take_a_place():
    # g0 and g1 are the query's identity from its own camera: removed, so g2 (another camera)
    # ranks first although two images of the same person come before it
    dist = np.array([[0.1, 0.2, 0.3, 0.4]])
    r = evaluate_ranking(dist, [7], [7, 7, 7, 8], [3], [3, 3, 1, 1])
    assert r.rank(1) == 1.0 and r.mAP == 1.0 and r.mINP == 1.0 and len(r.cmc) == 4


def reference(dist, qp, gp, qc, gc, max_rank):
    """Query by query, position by position."""
    cmc, aps, inps = np.zeros(max_rank), [], []
    for i in range(len(qp)):
        ranked = sorted(range(len(gp)), key=lambda j: (dist[i, j], j))
        ranked = [j for j in ranked if not (gp[j] == qp[i] and gc[j] == qc[i])]
        hits = [pos for pos, j in enumerate(ranked) if gp[j] == qp[i]]
        if not hits:
            continue
        for r in range(max_rank):
            cmc[r] += hits[0] <= r
        aps.append(np.mean([(n + 1) / (pos + 1) for n, pos in enumerate(hits)]))
        inps.append(len(hits) / (hits[-1] + 1))
    return cmc / len(aps), float(np.mean(aps)), float(np.mean(inps)), len(aps)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_a_loop_reference_on_random_data(seed):
    rng = np.random.default_rng(seed)
    nq, ng = 37, 120
    qp, gp = rng.integers(0, 12, nq), rng.integers(0, 12, ng)
    qc, gc = rng.integers(1, 4, nq), rng.integers(1, 4, ng)
    dist = rng.random((nq, ng))
    r = evaluate_ranking(dist, qp, gp, qc, gc, max_rank=20, chunk=8)  # several chunks
    cmc, m_ap, m_inp, n = reference(dist, qp, gp, qc, gc, 20)
    np.testing.assert_allclose(r.cmc, cmc)
    assert r.mAP == pytest.approx(m_ap) and r.mINP == pytest.approx(m_inp) and r.queries == n


def test_perfect_and_reversed_features():
    pids = np.repeat(np.arange(5), 4)
    cams = np.tile([1, 2, 3, 4], 5)
    feats = np.eye(5)[pids] + 0.01 * np.random.default_rng(0).random((20, 5))
    r = evaluate_ranking(cosine_distance(feats, feats), pids, pids, cams, cams)
    assert r.mAP == pytest.approx(1.0) and r.mINP == pytest.approx(1.0) and r.rank(1) == 1.0
    worst = evaluate_ranking(-cosine_distance(feats, feats), pids, pids, cams, cams)
    assert worst.mAP < 0.3 and worst.rank(1) == 0.0


def test_backbone_on_the_synthetic_split(tiny_world, tmp_path):
    import torch

    from cion_ray.evaluate.reid import evaluate_backbone, read_market_split
    from cion_ray.zoo.factory import create_backbone

    root = tiny_world / "reid"
    query, gallery = read_market_split(str(root))
    torch.manual_seed(0)
    r = evaluate_backbone(create_backbone("test_resnet_ibn"), str(root), size=(64, 32), batch=16)
    assert r.queries + r.skipped == len(query.files) and r.queries > 0
    assert 0 < r.mAP <= 1 and 0 < r.mINP <= 1 and 0 <= r.rank(1) <= r.rank(5) <= 1
    assert set(r.summary()) >= {"mAP", "mINP", "rank1", "rank5", "rank10"}
    assert len(gallery.files) == len(list((root / "bounding_box_test").glob("*.jpg")))

    bad = tmp_path / "bad"
    (bad / "query").mkdir(parents=True)
    (bad / "bounding_box_test").mkdir()
    (bad / "query" / "person.jpg").write_bytes(b"")
    with pytest.raises(CionError, match=r"query: 1 file names are not Market-style .*person\.jpg"):
        read_market_split(str(bad))
    with pytest.raises(CionError, match="no query/ folder"):
        read_market_split(str(tmp_path))
