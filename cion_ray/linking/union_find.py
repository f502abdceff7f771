"""Union-find (disjoint sets) over integer keys 0..n-1.

`union` is the classic one (path compression + union by size). `union_many` joins a whole edge
list at once with vectorised hooking and pointer jumping (each root hooks under the smallest
root it is linked to, then paths are halved until flat; O(log n) rounds), which is what a
reducer over millions of relations needs from Python. Both give the same partition.

Two union-finds over the same keys merge into the partition of the union of their edge sets;
`merge` is associative and commutative, so partial results can be reduced as a tree.
"""
from __future__ import annotations

import numpy as np


def _flatten(p: np.ndarray) -> np.ndarray:
    while True:
        q = p[p]
        if np.array_equal(q, p):
            return p
        p = q


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
        """Join every (a, b) row of `edges`, vectorised."""
        e = np.asarray(edges, np.int64).reshape(-1, 2)
        if not len(e):
            return self
        p = self.parent
        a, b = e[:, 0], e[:, 1]
        while True:
            p = _flatten(p)
            ra, rb = p[a], p[b]
            diff = ra != rb
            if not diff.any():
                break
            np.minimum.at(p, np.maximum(ra[diff], rb[diff]), np.minimum(ra[diff], rb[diff]))
        self.parent = p
        self.size = np.bincount(p, minlength=len(p))  # meaningful at roots
        return self

    def roots(self) -> np.ndarray:
        """(n,) root of every key; compresses every path."""
        self.parent = _flatten(self.parent)
        return self.parent.copy()

    def labels(self) -> np.ndarray:
        """(n,) component labels 0..k-1, numbered by each component's smallest key."""
        r = self.roots()
        smallest = np.full(len(r), len(r), np.int64)
        np.minimum.at(smallest, r, np.arange(len(r)))
        return np.unique(smallest[r], return_inverse=True)[1].astype(np.int64)

    def merge(self, other: "UnionFind") -> "UnionFind":
        """A new union-find whose sets are those of the union of both edge sets."""
        if len(other) != len(self):
            raise ValueError("union-finds over different key sets")
        out = UnionFind(len(self))
        out.parent, out.size = self.parent.copy(), self.size.copy()
        r = other.roots()
        moved = np.flatnonzero(r != np.arange(len(r)))
        return out.union_many(np.stack([moved, r[moved]], axis=1))


def tree_reduce(parts: list[UnionFind]) -> UnionFind:
    """Merge union-finds pairwise, level by level (the shape a distributed reduction takes)."""
    if not parts:
        raise ValueError("nothing to reduce")
    while len(parts) > 1:
        parts = [parts[i].merge(parts[i + 1]) if i + 1 < len(parts) else parts[i] for i in range(0, len(parts), 2)]
    return parts[0]
