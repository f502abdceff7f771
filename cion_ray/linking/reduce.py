"""The reducer: linking relations -> global identities, with the anti-chaining guard.

Union-find is transitive, so a chain of individually plausible links can join different
people. Components are therefore checked: two identities from the same video never share a
component (the L2 cannot-link carries over), and no member's centroid may lie farther than
`drift` from the component's centroid. A component that breaks either rule is rebuilt from its
own relations, most similar first, admitting only the unions that keep both rules.

A component's centroid is sample-weighted (the normalised sum of its members' feature sums),
what an identity's embedding means everywhere else; the check and the rebuild both use it.
"""
from __future__ import annotations

import time
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
    guard_seconds: float = 0.0  # time spent rebuilding components (the anti-chaining guard)
    largest_component: int = 0  # members of the largest component before the guard
    largest_rebuilt: int = 0  # members of the largest component the guard rebuilt
    largest_rebuild_seconds: float = 0.0  # time the guard spent rebuilding that one


def violating_components(labels: np.ndarray, videos: np.ndarray, sums: np.ndarray, cent: np.ndarray,
                         drift: float) -> np.ndarray:
    """Component labels (of `labels`, (n,) ints) that hold two identities of one video or a member
    farther than `drift` from the component's sample-weighted centroid. sums: (n, D) feature sums
    of the identities, cent: (n, D) their normalised centroids. Vectorised over all components."""
    n = len(labels)
    if n == 0:
        return np.zeros(0, np.int64)
    k = int(labels.max()) + 1
    size = np.bincount(labels, minlength=k)
    pairs = np.unique(labels.astype(np.int64) * (int(videos.max()) + 1) + videos)
    distinct_videos = np.bincount(pairs // (int(videos.max()) + 1), minlength=k)
    bad = size != distinct_videos
    total = np.zeros((k, sums.shape[1]), np.float64)
    np.add.at(total, labels, sums)
    c = normalize(total)
    far = np.zeros(k)
    np.maximum.at(far, labels, 1.0 - np.einsum("nd,nd->n", cent, c[labels]))
    bad |= (far > drift) & (size > 1)
    return np.flatnonzero(bad)


# A union whose members provably all stay within drift is admitted without looking at them; the
# margin covers the rounding of the bound (about 1e-13), so decisions are those of the exact check.
_MARGIN = 1e-9


def constrained_components(members: np.ndarray, edges: np.ndarray, videos: np.ndarray, sums: np.ndarray,
                           cent: np.ndarray, drift: float) -> tuple[dict[int, int], int]:
    """Rebuild one component: edges (a, b, d) sorted by d; -> ({member: root}, refused unions).

    Unions are tried most similar first; one is refused when the two sides share a video or when
    a member of the union would lie farther than `drift` from the union's centroid. Checking every
    member costs O(m D) per union, O(m^2 D) per component; instead each set keeps a reference
    direction and a lower bound on its members' similarity to it, and since members are unit
    vectors, cos(x, c) >= cos(x, ref) - |c - ref|. Members are read only when the bound cannot
    prove the union safe (then the bound becomes exact again), so on a tight component the rebuild
    is O(m D), and its unions, refusals and roots are the same as checking every member each time."""
    local = {int(m): i for i, m in enumerate(members)}
    uf = UnionFind(len(members))
    vids = [{int(videos[m])} for m in members]
    acc = [sums[m].astype(np.float64).copy() for m in members]
    groups = [[int(m)] for m in members]
    ref = [cent[m] for m in members]  # a member's own direction ...
    low = [1.0 - _MARGIN] * len(members)  # ... and its similarity to it (1 up to rounding)
    limit = 1.0 - drift
    refused = 0
    for a, b, _ in edges[np.argsort(edges[:, 2], kind="stable")]:
        ra, rb = uf.find(local[int(a)]), uf.find(local[int(b)])
        if ra == rb:
            continue
        if not vids[ra].isdisjoint(vids[rb]):
            refused += 1
            continue
        s = acc[ra] + acc[rb]
        c = normalize(s)
        g = groups[ra] + groups[rb]
        bound = min(low[ra] - float(np.linalg.norm(c - ref[ra])), low[rb] - float(np.linalg.norm(c - ref[rb])))
        if bound - _MARGIN <= limit:
            dots = cent[g] @ c
            if (1.0 - dots).max() > drift:
                refused += 1
                continue
            bound = float(dots.min())
        r = uf.union(ra, rb)
        big, small = (vids[ra], vids[rb]) if len(vids[ra]) >= len(vids[rb]) else (vids[rb], vids[ra])
        big |= small
        vids[r], acc[r], groups[r], ref[r], low[r] = big, s, g, c, bound
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
    comp = np.unique(roots, return_inverse=True)[1]
    bad = violating_components(comp, videos, sums, cent, drift)
    checked = int((np.bincount(comp) > 1).sum()) if n else 0
    refused = 0
    guard, largest, largest_s = 0.0, 0, 0.0
    if len(bad):
        rel_comp = comp[relations[:, 0].astype(np.int64)] if len(relations) else np.zeros(0, np.int64)
        order = np.argsort(comp, kind="stable")
        starts = np.searchsorted(comp[order], bad)
        ends = np.searchsorted(comp[order], bad, side="right")
        rel_order = np.argsort(rel_comp, kind="stable")
        rel_sorted, rel_keys = relations[rel_order], rel_comp[rel_order]
        for c, s, e in zip(bad, starts, ends):
            t0 = time.perf_counter()
            members = order[s:e]
            lo, hi = np.searchsorted(rel_keys, c), np.searchsorted(rel_keys, c, side="right")
            mapping, ref = constrained_components(members, rel_sorted[lo:hi], videos, sums, cent, drift)
            refused += ref
            for m, root in mapping.items():
                labels[m] = root
            dt = time.perf_counter() - t0
            guard += dt
            if e - s > largest:
                largest, largest_s = int(e - s), dt
    # name each component by its smallest member, so labels do not depend on union order
    smallest = np.full(n, n, np.int64)
    np.minimum.at(smallest, labels, np.arange(n))
    _, compact = np.unique(smallest[labels], return_inverse=True)
    biggest = int(np.bincount(comp).max()) if n else 0
    return compact.astype(np.int64), ReduceStats(len(relations), checked, len(bad), refused, guard, biggest,
                                                 largest, largest_s)
