"""The reducer: linking relations -> global identities, with the anti-chaining guard.

Union-find is transitive, so a chain of individually plausible links can join different
people. Components are therefore checked: two identities from the same video never share a
component (the L2 cannot-link carries over), and no member's centroid may lie farther than
`drift` from the component's centroid. A component that breaks either rule is rebuilt from its
own relations, most similar first, admitting only the unions that keep both rules.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cion_ray.denoise.tracklet import normalize
from cion_ray.linking.union_find import UnionFind


@dataclass
class ReduceStats:
    relations: int
    components_checked: int
    components_split: int
    unions_refused: int


def _violates(members: np.ndarray, videos: np.ndarray, sums: np.ndarray, cent: np.ndarray, drift: float) -> bool:
    if len(np.unique(videos[members])) < len(members):
        return True
    c = normalize(sums[members].sum(axis=0))
    return bool((1.0 - cent[members] @ c).max() > drift)


def constrained_components(members: np.ndarray, edges: np.ndarray, videos: np.ndarray, sums: np.ndarray,
                           cent: np.ndarray, drift: float) -> tuple[dict[int, int], int]:
    """Rebuild one component: edges (a, b, d) sorted by d; -> ({member: root}, refused unions)."""
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


def reduce_relations(uf: UnionFind, relations: np.ndarray, videos: np.ndarray, sums: np.ndarray,
                     drift: float) -> tuple[np.ndarray, ReduceStats]:
    """uf: union-find over all identities with every relation applied (possibly tree-reduced);
    relations: (m, 3) (a, b, distance) in global identity indices; videos: (n,) video of each
    identity; sums: (n, D) sum of each identity's sample features. -> ((n,) labels 0..k-1, stats)."""
    n = len(videos)
    cent = normalize(sums.astype(np.float64))
    roots = uf.roots()
    labels = roots.copy()
    order = np.argsort(roots, kind="stable")
    cuts = np.flatnonzero(np.diff(roots[order])) + 1
    rel_root = roots[relations[:, 0].astype(np.int64)] if len(relations) else np.zeros(0, np.int64)
    rel_order = np.argsort(rel_root, kind="stable")
    rel_sorted = relations[rel_order]
    rel_keys = rel_root[rel_order]
    checked = split = refused = 0
    for block in np.split(order, cuts):
        if len(block) < 2:
            continue
        checked += 1
        if not _violates(block, videos, sums, cent, drift):
            continue
        split += 1
        r = roots[block[0]]
        lo, hi = np.searchsorted(rel_keys, r), np.searchsorted(rel_keys, r, side="right")
        mapping, ref = constrained_components(block, rel_sorted[lo:hi], videos, sums, cent, drift)
        refused += ref
        for m, root in mapping.items():
            labels[m] = root
    # name each component by its smallest member, so labels do not depend on union order
    smallest = np.full(n, n, np.int64)
    np.minimum.at(smallest, labels, np.arange(n))
    _, compact = np.unique(smallest[labels], return_inverse=True)
    return compact.astype(np.int64), ReduceStats(len(relations), checked, split, refused)
