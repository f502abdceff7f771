"""The reducer's anti-chaining guard reports what it did and how long it took (no Ray)."""
from __future__ import annotations

import numpy as np

from cion_ray.denoise.tracklet import normalize
from cion_ray.linking.reduce import reduce_relations
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
