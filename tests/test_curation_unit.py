"""Curation algorithms on small hand-built feature sets where the right answer is known (no Ray)."""
from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from cion_ray.curation.config import DenoiseConfig, LinkConfig
from cion_ray.curation.core import (IdentityTable, VideoCrops, check_unique, curate_local, denoise_video_levels,
                                    global_pass, identity_table, relations_for_range)
from cion_ray.denoise.tracklet import normalize, single_tracklet_denoise
from cion_ray.denoise.video import merge_tracklets, reallocate, video_denoise
from cion_ray.embed.handcrafted import DIM, HandcraftedEmbedder, describe_bgr
from cion_ray.errors import CionError
from cion_ray.evaluate.clustering import nmi, pairwise_prf
from cion_ray.linking.ranges import sliding_ranges
from cion_ray.linking.reduce import reduce_relations
from cion_ray.linking.relations import clear_mutual_pairs, global_candidates, global_relations, linking_relations
from cion_ray.linking.union_find import UnionFind, tree_reduce

D = 16
RNG = np.random.default_rng(0)
BASES = normalize(RNG.normal(size=(8, D)))  # 8 well-separated "people"


def samples(person: int, n: int, noise: float = 0.05, rng=RNG) -> np.ndarray:
    return normalize(BASES[person] + rng.normal(0, noise, size=(n, D))).astype(np.float32)


# --- L1 --------------------------------------------------------------------------------------------

def test_l1_removes_outlier_and_keeps_the_rest():
    f = np.concatenate([samples(0, 12), samples(1, 1)])
    keep = single_tracklet_denoise(f, radius=0.2, min_len=3)
    assert keep[:12].all() and not keep[12]


def test_l1_drops_short_tracklets_and_keeps_majority_of_a_switch():
    assert not single_tracklet_denoise(samples(0, 2), radius=0.2, min_len=3).any()
    f = np.concatenate([samples(0, 9), samples(1, 4)])  # an identity switch: the minority goes
    keep = single_tracklet_denoise(f, radius=0.2, min_len=3)
    assert keep[:9].all() and not keep[9:].any()


# --- L2 --------------------------------------------------------------------------------------------

def test_l2_merges_one_person_but_never_cooccurring_tracklets():
    f = np.concatenate([samples(0, 6), samples(0, 6), samples(0, 6)])
    groups = np.repeat([0, 1, 2], 6)
    # tracklet 2 is on screen together with 0 and with 1; 0 and 1 never meet
    frames = np.concatenate([np.arange(1, 7), np.arange(20, 26), [3, 4, 5, 21, 22, 23]])
    merged, n = merge_tracklets(f, groups, frames, threshold=0.1)
    assert merged[0] == merged[6]  # tracklets 0 and 1: same person, never together -> one identity
    assert merged[12] != merged[0]  # tracklet 2 co-occurs with 0: never the same person
    assert n == 1


def test_l2_does_not_merge_different_people():
    f = np.concatenate([samples(0, 6), samples(1, 6)])
    merged, n = merge_tracklets(f, np.repeat([0, 1], 6), np.concatenate([np.arange(6), np.arange(10, 16)]), 0.1)
    assert n == 0 and merged[0] != merged[6]


def test_l2_reallocates_misassigned_sample_unless_frame_taken():
    f = np.concatenate([samples(0, 6), samples(1, 1), samples(1, 6)])
    labels = np.array([0] * 7 + [1] * 6)
    frames = np.array([1, 2, 3, 4, 5, 6, 7] + [10, 11, 12, 13, 14, 15])
    out, moved = reallocate(f, labels, frames, margin=0.05)
    assert moved == 1 and out[6] == 1 and (out[:6] == 0).all()
    frames_taken = frames.copy()
    frames_taken[7] = 7  # identity 1 already has a sample in frame 7
    out2, moved2 = reallocate(f, labels, frames_taken, margin=0.05)
    assert moved2 == 0 and out2[6] == 0


def test_video_denoise_full_level():
    f = np.concatenate([samples(0, 8), samples(0, 8), samples(2, 8), samples(5, 1)])
    tracks = np.repeat([1, 2, 3, 4], [8, 8, 8, 1])
    frames = np.concatenate([np.arange(8), np.arange(30, 38), np.arange(8), [50]])
    r = video_denoise(f, tracks, frames, radius=0.2, min_len=3, merge=0.1, margin=0.05)
    assert r.labels[0] == r.labels[8] != r.labels[16] and r.labels[-1] == -1
    assert r.stats["merged"] == 1 and r.stats["identities_out"] == 2 and r.stats["l1_tracklets_dropped"] == 1


# --- L3 --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,w,s", [(n, w, s) for n in (1, 2, 5, 9, 17, 30) for w in (2, 3, 6, 8) for s in range(1, w)])
def test_sliding_ranges_cover_every_pair_at_most_w_minus_s_apart(n, w, s):
    ranges = sliding_ranges(n, w, s)
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(e - b <= w for b, e in ranges)
    for i, j in itertools.combinations(range(n), 2):
        if j - i <= w - s:
            assert any(b <= i and j < e for b, e in ranges), (i, j)


def test_sliding_ranges_rejects_bad_parameters():
    with pytest.raises(ValueError):
        sliding_ranges(10, 4, 4)


def _videos_with(people_per_video: list[list[int]]) -> list[VideoCrops]:
    out = []
    rng = np.random.default_rng(1)
    for v, people in enumerate(people_per_video):
        feats, tracks, frames = [], [], []
        for t, p in enumerate(people):
            feats.append(samples(p, 10, 0.03, rng))
            tracks += [t + 1] * 10
            frames += list(range(1, 11))  # everyone present at the same time: no L2 merges
        out.append(VideoCrops(f"v{v:04d}", np.array([f"v{v:04d}/{i:06d}/{t}" for i, t in enumerate(tracks)], object),
                              np.array(tracks), np.array(frames), np.concatenate(feats)))
    return out


@pytest.mark.parametrize("global_ratio, global_max, linked", [(0.0, 100, False), (0.8, 100, True), (0.8, 5, False)])
def test_l3_links_within_a_range_or_globally_and_never_inside_a_video(global_ratio, global_max, linked):
    # person 0 in videos 0 and 1 (near: linked); person 1 in videos 0 and 7 (far: linked only by
    # the global pass); video 3 shows person 2 twice (two tracklets at once): never one identity
    layout = [[0, 1], [0, 3], [4], [2, 2], [5], [6], [7], [1]]
    videos = _videos_with(layout)
    # global_max 5: more identities than that, the global pass does not run
    cfg = LinkConfig(window=4, stride=2, k=2, threshold=0.1, drift=0.1, min_images=1, global_ratio=global_ratio,
                     global_max=global_max)
    res = curate_local(videos, DenoiseConfig(radius=0.3, min_len=3, merge=0.1), cfg)
    lab = res.sample_labels()
    assert lab[0][0] == lab[1][0]  # person 0 across videos 0 and 1
    # person 1: videos 0 and 7 never share a range
    assert (lab[0][10] == lab[7][0]) == linked
    assert lab[3][0] != lab[3][10]  # two tracklets of one video co-occurring
    for rel in res.relations:
        a, b = rel[:, 0].astype(int), rel[:, 1].astype(int)
        assert (res.table.video_pos[a] != res.table.video_pos[b]).all()


def _near(person: int, distance: float, rng) -> np.ndarray:
    """A unit vector at about `distance` (cosine) from BASES[person]."""
    step = rng.normal(size=D)
    step -= (step @ BASES[person]) * BASES[person]
    step /= np.linalg.norm(step)
    angle = np.arccos(1.0 - distance)
    return BASES[person] * np.cos(angle) + step * np.sin(angle)


def test_global_pass_links_a_clear_match_anywhere_and_refuses_an_ambiguous_one():
    rng = np.random.default_rng(3)
    # identity 0 (video 0) and 1 (video 9) are one person, 0.02 apart; identity 2 (video 5) is a
    # look-alike of that person at `look` from identity 0; identities 3.. are other people
    def relations(look: float, ratio: float = 0.8) -> set:
        cent = np.stack([BASES[0], _near(0, 0.02, rng), _near(0, look, rng)] + [BASES[p] for p in range(1, 8)])
        videos = np.array([0, 9, 5, 1, 2, 3, 4, 6, 7, 8])
        rel = global_relations(normalize(cent).astype(np.float32), videos, threshold=0.1, ratio=ratio)
        assert (rel[:, 0] < rel[:, 1]).all()
        return {(int(a), int(b)) for a, b, _ in rel}

    assert relations(look=0.2) == {(0, 1)}  # the runner-up is far: a clear match, 9 videos apart
    assert relations(look=0.022) == set()  # a look-alike nearly as close: refused ...
    assert relations(look=0.022, ratio=1.0) == {(0, 1)}  # ... by the ratio test alone
    assert relations(look=0.2, ratio=0.0) == set()  # ratio 0: the pass is off


def test_global_pass_reaches_global_scale_times_the_threshold_and_ranges_do_not():
    rng = np.random.default_rng(5)
    # identities 0 (video 0) and 1 (video 1) are one person seen 0.15 apart by two cameras, over the
    # link threshold 0.1 and under 2 x it; identities 2.. are other people, one per video
    cent = normalize(np.stack([BASES[0], _near(0, 0.15, rng)] + [BASES[p] for p in range(1, 8)]))
    n = len(cent)
    table = IdentityTable(np.arange(n), cent.astype(np.float64), np.ones(n, np.int64), np.arange(n + 1),
                          [f"v{i}" for i in range(n)])

    def linked(**kw) -> bool:
        cfg = LinkConfig(window=4, stride=2, threshold=0.1, **kw)
        return (0, 1) in {(int(a), int(b)) for a, b, _ in global_pass(table, cfg)}

    assert linked()  # the default global_scale 2: the pass links a clear match up to 0.2
    assert linked(global_scale=1.8)
    assert not linked(global_scale=1.0)  # the pass bound by the threshold itself
    assert not linked(global_scale=1.4)  # 0.14 < 0.15
    assert len(relations_for_range(table, 0, 4, LinkConfig(window=4, stride=2, threshold=0.1))) == 0  # ranges: 0.1
    assert LinkConfig(threshold=0.05, global_scale=3).global_threshold == pytest.approx(0.15)
    with pytest.raises(CionError, match="link.global_scale"):
        LinkConfig(global_scale=0.5)


def test_global_pass_searched_in_chunks_equals_one_search():
    rng = np.random.default_rng(4)
    people = normalize(rng.normal(size=(300, D)))
    cent = normalize(np.concatenate([people, people + rng.normal(0, 0.02, size=people.shape)])).astype(np.float32)
    videos = np.concatenate([rng.integers(0, 10, 300), rng.integers(10, 20, 300)])
    whole = global_relations(cent, videos, threshold=0.1, ratio=0.8)
    parts = [global_candidates(cent, videos, (lo, min(lo + 250, 600))) for lo in range(0, 600, 250)]
    chunked = clear_mutual_pairs(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                                 videos, threshold=0.1, ratio=0.8)
    assert len(whole) > 250  # nearly every person links its two views
    np.testing.assert_array_equal(whole, chunked)


def test_reducer_splits_chains_through_one_video():
    # identities 0 and 2 from the same video, 1 from another: relations 0-1 and 1-2 chain them
    cent = normalize(np.stack([BASES[0], BASES[0] + 0.05 * BASES[1], BASES[0] + 0.1 * BASES[1]]))
    videos = np.array([0, 1, 0])
    rel = np.array([[0, 1, 0.01], [1, 2, 0.02]])
    uf = UnionFind(3).union_many(rel[:, :2])
    labels, stats = reduce_relations(uf, rel, videos, cent.astype(np.float64), drift=0.5)
    assert labels[0] == labels[1] != labels[2] and stats.components_split == 1 and stats.unions_refused == 1


def test_reducer_splits_drifting_components():
    a, b = BASES[0], BASES[1]
    cent = normalize(np.stack([a, 0.7 * a + 0.3 * b, 0.3 * a + 0.7 * b, b]))  # a chain from a to b
    rel = np.array([[0, 1, 0.05], [1, 2, 0.06], [2, 3, 0.05]])
    uf = UnionFind(4).union_many(rel[:, :2])
    labels, stats = reduce_relations(uf, rel, np.arange(4), cent, drift=0.15)
    assert len(set(labels.tolist())) >= 2 and stats.components_split == 1
    loose, _ = reduce_relations(UnionFind(4).union_many(rel[:, :2]), rel, np.arange(4), cent, drift=2.0)
    assert len(set(loose.tolist())) == 1


def test_mutual_knn_relations():
    cent = normalize(np.stack([BASES[0], BASES[0] + 0.01, BASES[3], BASES[3] + 0.01, BASES[5]])).astype(np.float32)
    videos = np.array([0, 1, 0, 1, 1])
    rel = linking_relations(cent, videos, k=1, threshold=0.1)
    assert sorted(map(tuple, rel[:, :2].astype(int).tolist())) == [(0, 1), (2, 3)]


@pytest.mark.parametrize("seed", range(5))
def test_union_find_matches_scipy_components(seed):
    rng = np.random.default_rng(seed)
    n = 200
    edges = rng.integers(0, n, size=(150, 2))
    uf = UnionFind(n).union_many(edges)
    _, cc = connected_components(coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n)),
                                 directed=False)
    ours = uf.labels()
    for i, j in itertools.combinations(range(0, n, 7), 2):
        assert (ours[i] == ours[j]) == (cc[i] == cc[j])
    # a tree of per-part union-finds gives the same partition, in any grouping
    parts = [UnionFind(n).union_many(e) for e in np.array_split(edges, 5)]
    assert np.array_equal(tree_reduce(parts).labels(), ours)
    assert np.array_equal(parts[0].merge(parts[1].merge(parts[2])).labels(),
                          parts[0].merge(parts[1]).merge(parts[2]).labels())


# --- metrics ---------------------------------------------------------------------------------------

def test_pairwise_prf_known_values():
    true = np.array([0, 0, 0, 1, 1])
    pred = np.array([0, 0, 1, 1, 1])
    q = pairwise_prf(true, pred)
    # predicted pairs: (0,1), (2,3), (2,4), (3,4) -> true pairs among them: (0,1), (3,4)
    assert q["precision"] == pytest.approx(2 / 4) and q["recall"] == pytest.approx(2 / 4)
    assert pairwise_prf(true, true)["f1"] == 1.0


def test_nmi_against_the_definition():
    rng = np.random.default_rng(3)
    t = rng.integers(0, 4, 300)
    p = np.where(rng.random(300) < 0.7, t, rng.integers(0, 5, 300))
    n = len(t)
    mi = 0.0
    for a in np.unique(t):
        for b in np.unique(p):
            nab = np.sum((t == a) & (p == b))
            if nab:
                mi += nab / n * np.log(n * nab / (np.sum(t == a) * np.sum(p == b)))
    h = lambda x: -sum(np.mean(x == v) * np.log(np.mean(x == v)) for v in np.unique(x))  # noqa: E731
    assert nmi(t, p) == pytest.approx(mi / ((h(t) + h(p)) / 2))
    assert nmi(t, t) == pytest.approx(1.0)


# --- the hand-crafted descriptor --------------------------------------------------------------------

def _person_crop(top=(40, 40, 200), bottom=(90, 60, 30), bg=(120, 160, 120)) -> np.ndarray:
    img = np.full((128, 64, 3), bg, np.uint8)
    cv2.rectangle(img, (20, 20), (44, 70), top, -1)
    cv2.rectangle(img, (22, 70), (42, 120), bottom, -1)
    cv2.circle(img, (32, 12), 8, (150, 180, 220), -1)
    return img


def test_descriptor_is_robust_to_camera_gain_and_cast_but_tells_clothes_apart():
    a = describe_bgr(_person_crop())
    cast = np.clip(_person_crop().astype(np.float32) * np.array([0.85, 1.0, 1.1]) * 1.2, 0, 255).astype(np.uint8)
    b = describe_bgr(cast)
    other = describe_bgr(_person_crop(top=(200, 60, 40)))
    assert a.shape == (DIM,) and abs(np.linalg.norm(a) - 1) < 1e-5
    assert 1 - a @ b < 0.5 * (1 - a @ other)


def test_descriptor_marks_undecodable_crops():
    ok = cv2.imencode(".jpg", _person_crop())[1].tobytes()
    out = HandcraftedEmbedder()([ok, b"not a jpeg", b""])
    assert np.isfinite(out[0]).all() and np.isnan(out[1]).all() and np.isnan(out[2]).all()


# --- bad input ---------------------------------------------------------------------------------------

def test_invalid_embeddings_are_dropped_and_counted():
    (v,) = _videos_with([[0, 1]])
    v.feats[3] = np.nan
    v.feats[15] = np.inf
    v.feats[16] = 0.0
    lv = denoise_video_levels(v, DenoiseConfig(radius=0.3, min_len=3))
    assert lv.stats["invalid_embeddings"] == 3 and len(lv.l2) == 17


def test_duplicate_crop_ids_are_an_error():
    with pytest.raises(CionError, match="duplicate crop id"):
        check_unique(np.array(["a", "b", "a"], object), "crops.parquet")


def test_single_video_corpus_and_empty_video():
    videos = _videos_with([[0, 1, 2]])
    res = curate_local(videos, DenoiseConfig(radius=0.3, min_len=3), LinkConfig(min_images=1))
    assert not any(len(r) for r in res.relations)
    assert len(set(res.sample_labels()[0].tolist())) == 3
    empty = VideoCrops("v9", np.zeros(0, object), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, D)))
    lv = denoise_video_levels(empty, DenoiseConfig())
    assert len(lv.counts) == 0 and lv.stats["samples_in"] == 0
    t = identity_table([lv])
    assert len(relations_for_range(t, 0, 1, LinkConfig())) == 0


def test_timm_embeddings_are_keyed_by_their_input_pipeline():
    """Embeddings cached by a timm embedder with another preprocessing are another feature space: the
    embed fingerprint names the pipeline for timm embedders, and leaves the hand-crafted one's as it was."""
    import hashlib
    import json
    from dataclasses import asdict

    from cion_ray.curation.config import TIMM_PREPROCESS, CurateConfig, EmbedConfig

    def plain(cfg):  # the fingerprint as it was before the pipeline was part of it
        d = asdict(cfg.embed)
        d.pop("batch")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    hand = CurateConfig()
    timm = CurateConfig(embed=EmbedConfig(embedder="timm:resnet18", weights="w.pth"))
    assert hand.embed_fingerprint() == plain(hand)
    assert timm.embed_fingerprint() != plain(timm) and TIMM_PREPROCESS
