"""The reducer's anti-chaining guard reports what it did and how long it took (no Ray)."""
from __future__ import annotations

import numpy as np
import pytest

from cion_ray.denoise.tracklet import normalize
from cion_ray.linking.reduce import constrained_components, reduce_relations
from cion_ray.linking.union_find import UnionFind

D = 16


def _chain_and_cluster(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Identities 0-3: a chain from person a to person b (drifts, so the guard rebuilds it);
    4-8: five tight views of person c in five videos (a valid component, larger)."""
    a, b, c = normalize(rng.normal(size=(3, D)))
    chain = normalize(np.stack([a, 0.7 * a + 0.3 * b, 0.3 * a + 0.7 * b, b]))
    tight = normalize(c + 0.01 * rng.normal(size=(5, D)))
    cent = np.concatenate([chain, tight])
    rel = np.array([[0, 1, 0.05], [1, 2, 0.06], [2, 3, 0.05]] + [[4, j, 0.01] for j in range(5, 9)])
    return cent, rel, np.arange(9)


def test_guard_stats_name_the_largest_component_and_the_largest_rebuilt_one():
    cent, rel, videos = _chain_and_cluster(np.random.default_rng(0))
    uf = UnionFind(len(cent)).union_many(rel[:, :2])
    labels, stats = reduce_relations(uf, rel, videos, cent, drift=0.15)
    assert stats.components_split == 1 and stats.components_checked == 2
    assert stats.largest_component == 5  # the tight cluster, before the guard
    assert stats.largest_rebuilt == 4  # the chain, the only one rebuilt
    assert 0 < stats.largest_rebuild_seconds <= stats.guard_seconds
    assert len(set(labels[:4].tolist())) >= 2 and len(set(labels[4:].tolist())) == 1


def test_guard_time_is_zero_when_nothing_breaks_a_rule():
    cent, rel, videos = _chain_and_cluster(np.random.default_rng(1))
    keep = rel[:, 0] == 4  # only the tight cluster's relations
    uf = UnionFind(len(cent)).union_many(rel[keep, :2])
    _, stats = reduce_relations(uf, rel[keep], videos, cent, drift=0.15)
    assert stats.components_split == 0 and stats.largest_rebuilt == 0
    assert stats.guard_seconds == 0.0 and stats.largest_component == 5


# --- the rebuild: the bounded check decides exactly as checking every member each time -------------

def _rebuild_checking_every_member(members, edges, videos, sums, cent, drift):
    """The guard's rebuild as first written (every member read at every union): the reference."""
    local = {int(m): i for i, m in enumerate(members)}
    uf = UnionFind(len(members))
    vids = [{int(videos[m])} for m in members]
    acc = [sums[m].astype(np.float64).copy() for m in members]
    groups = [[int(m)] for m in members]
    refused = 0
    for a, b, _ in edges[np.argsort(edges[:, 2], kind="stable")]:
        ra, rb = uf.find(local[int(a)]), uf.find(local[int(b)])
        if ra == rb:
            continue
        if vids[ra] & vids[rb]:
            refused += 1
            continue
        s = acc[ra] + acc[rb]
        c = normalize(s)
        g = groups[ra] + groups[rb]
        if (1.0 - cent[g] @ c).max() > drift:
            refused += 1
            continue
        r = uf.union(ra, rb)
        vids[r] = vids[ra] | vids[rb]
        acc[r], groups[r] = s, g
    return {int(m): int(members[uf.find(i)]) for i, m in enumerate(members)}, refused


def _edges(x: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    return np.stack([pairs[:, 0], pairs[:, 1], 1.0 - (x[pairs[:, 0]] * x[pairs[:, 1]]).sum(1)], axis=1)


def _case(kind: str, seed: int, m: int = 300, dim: int = 32):
    rng = np.random.default_rng(seed)
    w = rng.integers(1, 40, m).astype(np.float64)[:, None]  # sample counts weigh the centroids
    if kind == "random":  # a few people, noisy, random relations, repeated videos
        x = normalize(normalize(rng.normal(size=(4, dim)))[rng.integers(0, 4, m)] + 0.08 * rng.normal(size=(m, dim)))
        videos = rng.integers(0, m // 3, m)
        pairs = rng.integers(0, m, (3 * m, 2))
    elif kind == "chain":  # members along an arc from one person to another, linked to their neighbours
        a, b = normalize(rng.normal(size=(2, dim)))
        t = np.sort(rng.uniform(0, 1, m))[:, None]
        x = normalize((1 - t) * a + t * b + 0.01 * rng.normal(size=(m, dim)))
        videos = np.arange(m)
        i = np.arange(m - 1)
        pairs = np.concatenate([np.stack([i, i + 1], 1), np.stack([i[:-1], i[:-1] + 2], 1)])
    else:  # "tight": one person everywhere, two views per video (the cannot-link forces the rebuild)
        x = normalize(normalize(rng.normal(size=dim)) + 0.02 * rng.normal(size=(m, dim)))
        videos = np.arange(m) // 2
        pairs = np.concatenate([np.stack([np.arange(m - 1), np.arange(1, m)], 1), rng.integers(0, m, (2 * m, 2))])
    sums = x * w
    return np.arange(m), _edges(x, pairs), videos, sums, normalize(sums)


@pytest.mark.parametrize("kind", ["random", "chain", "tight"])
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("drift", [0.002, 0.02, 0.08, 0.3])
def test_rebuild_matches_checking_every_member(kind, seed, drift):
    members, edges, videos, sums, cent = _case(kind, seed)
    got = constrained_components(members, edges, videos, sums, cent, drift)
    want = _rebuild_checking_every_member(members, edges, videos, sums, cent, drift)
    assert got == want


def test_rebuild_cases_exercise_both_rules_and_large_unions():
    # the comparison above is only worth something if the cases refuse and admit a lot
    members, edges, videos, sums, cent = _case("chain", 0)
    mapping, refused = constrained_components(members, edges, videos, sums, cent, 0.02)
    assert refused > 10 and 1 < len(set(mapping.values())) < len(members) // 4
    members, edges, videos, sums, cent = _case("tight", 0)
    mapping, refused = constrained_components(members, edges, videos, sums, cent, 0.08)
    sizes = np.bincount(np.unique(list(mapping.values()), return_inverse=True)[1])
    assert refused > 0 and sizes.max() >= len(members) // 5


def test_rebuild_with_the_drift_exactly_at_a_members_distance():
    # a union whose farthest member lies exactly at the drift is admitted by both (not > drift)
    members, edges, videos, sums, cent = _case("chain", 1, m=40)
    c = normalize(sums[:2].sum(0))
    drift = float((1.0 - cent[[0, 1]] @ c).max())
    two = np.array([[0, 1, 0.0]])
    assert constrained_components(members[:2], two, videos, sums, cent, drift) == \
        _rebuild_checking_every_member(members[:2], two, videos, sums, cent, drift)
    assert len(set(constrained_components(members[:2], two, videos, sums, cent, drift)[0].values())) == 1
