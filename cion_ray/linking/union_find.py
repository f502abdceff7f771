"""Union-find (disjoint sets) over integer keys 0..n-1, with path compression and union by size.

Two union-finds over the same keys merge into the partition of the union of their edge
sets; `merge` is associative and commutative, so per-range results can be reduced as a tree.
"""
from __future__ import annotations

import numpy as np


class UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n, dtype=np.int64)
        self.size = np.ones(n, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.parent)

    def find(self, x: int) -> int:
        p = self.parent
        root = x
        while p[root] != root:
            root = p[root]
        while p[x] != root:  # path compression
            p[x], x = root, p[x]
        return int(root)

    def union(self, a: int, b: int) -> int:
        """Join the sets of a and b; returns the new root (the larger set's)."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]
        return ra

    def union_many(self, edges: np.ndarray) -> "UnionFind":
        for a, b in np.asarray(edges, np.int64).reshape(-1, 2):
            self.union(int(a), int(b))
        return self

    def roots(self) -> np.ndarray:
        """(n,) root of every key; compresses every path (vectorised pointer jumping)."""
        p = self.parent
        while True:
            q = p[p]
            if np.array_equal(q, p):
                break
            p = q
        self.parent = p
        return p.copy()

    def labels(self) -> np.ndarray:
        """(n,) component labels 0..k-1, numbered by each component's smallest key."""
        r = self.roots()
        _, first = np.unique(r, return_index=True)
        order = np.argsort(first)
        relabel = np.empty(len(order), np.int64)
        relabel[order] = np.arange(len(order))
        return relabel[np.unique(r, return_inverse=True)[1]]

    def merge(self, other: "UnionFind") -> "UnionFind":
        """A new union-find whose sets are those of the union of both edge sets."""
        if len(other) != len(self):
            raise ValueError("union-finds over different key sets")
        out = UnionFind(len(self))
        out.parent, out.size = self.parent.copy(), self.size.copy()
        r = other.roots()
        for i in np.flatnonzero(r != np.arange(len(r))):
            out.union(int(i), int(r[i]))
        return out


def tree_reduce(parts: list[UnionFind]) -> UnionFind:
    """Merge union-finds pairwise, level by level (the shape a distributed reduction takes)."""
    if not parts:
        raise ValueError("nothing to reduce")
    while len(parts) > 1:
        parts = [parts[i].merge(parts[i + 1]) if i + 1 < len(parts) else parts[i] for i in range(0, len(parts), 2)]
    return parts[0]
