"""The P x K identity sampler (as in the released CION code, per worker).

Each epoch, every identity's images are shuffled and cut into groups of K (an identity with
fewer than K images is drawn with replacement up to K; an incomplete last group is dropped);
batches are P = batch // K groups of distinct identities, stored contiguously (row p * K + i
is image i of identity p), which is the layout the loss expects. Everything is a function of
(seed, epoch, rank), so a resumed run sees the same batches.
"""
from __future__ import annotations

import numpy as np


def identity_order(ids: np.ndarray) -> np.ndarray:
    """(N,) uint64 sort key of identity ids: splitmix64's finaliser, a bijection of 64-bit
    integers, so distinct ids never tie and sorting by it is a shuffle that is a function of the id
    alone (not of the seed, the data fraction or the number of workers). The pre-training pack
    (pretrain/pack.py) stores identities in this order, and shard_identities cuts it into blocks."""
    z = np.asarray(ids, dtype=np.int64).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def shard_identities(identities: np.ndarray, world_size: int, rank: int, seed: int = 0) -> np.ndarray:
    """The identity ids (a sorted subset of np.unique(identities)) this rank trains on: whole
    identities per rank, so an identity's P x K groups never straddle workers; rank r gets the
    r-th of `world_size` contiguous, equal (+-1) blocks of the ids in identity_order. Contiguous
    in that order means contiguous in the pre-training pack, so a worker reads only its part of it.
    `seed` does not change the blocks (one pack serves every seed; the sampler's batches still
    follow the seed); it stays in the signature for the callers that pass it."""
    ids = np.unique(identities)
    order = ids[np.argsort(identity_order(ids), kind="stable")]
    return np.sort(np.array_split(order, world_size)[rank])


def identities_per_batch(batch_size: int, k: int) -> int:
    """P: how many identities a batch of `batch_size` images holds at K images each."""
    return max(1, batch_size // k)


def identities_short(n_identities: int, batch_size: int, k: int) -> int:
    """How many distinct identities a worker holding `n_identities` lacks to draw a batch at K:
    the sampler's one requirement (an identity with fewer than K images is drawn with replacement,
    so each fills a group, and P of them fill a batch). 0: none."""
    return max(0, identities_per_batch(batch_size, k) - n_identities)


def worker_shortfall(identities: np.ndarray, world_size: int, seed: int, batch_size: int,
                     ks: list[int]) -> tuple[int, int, int, int] | None:
    """The sampler's requirement checked before any worker starts: every rank's shard
    (shard_identities of `identities`, the identity ids kept) at every K in `ks`.
    -> (rank, K, P, identities of that rank) of the first shortfall, smallest K first; None when
    every worker can draw its batches at every K."""
    held = [len(shard_identities(identities, world_size, rank, seed)) for rank in range(world_size)]
    for k in sorted(ks):
        for rank, n in enumerate(held):
            if identities_short(n, batch_size, k):
                return rank, k, identities_per_batch(batch_size, k), n
    return None


class IdentitySampler:
    """labels: (N,) identity of each local image. batches(epoch, k, n) -> n lists of B = P * K
    local image indices."""

    def __init__(self, labels: np.ndarray, batch_size: int, seed: int = 0, rank: int = 0):
        labels = np.asarray(labels)
        if len(labels) == 0:
            raise ValueError("the identity sampler got no images")
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        order = np.argsort(labels, kind="stable")
        ids, starts = np.unique(labels[order], return_index=True)
        self.groups = np.split(order, starts[1:])  # image indices per identity
        self.identities = ids

    def _pass(self, rng: np.random.Generator, k: int) -> list[list[int]]:
        p = identities_per_batch(self.batch_size, k)
        if identities_short(len(self.groups), self.batch_size, k):
            raise ValueError(f"a batch needs {p} distinct identities (batch {self.batch_size}, K {k}) "
                             f"but this worker has {len(self.groups)}: lower the batch size or use fewer workers")
        pools: list[list[np.ndarray]] = []
        for g in self.groups:
            idx = rng.permutation(g) if len(g) >= k else rng.choice(g, size=k, replace=True)
            pools.append([idx[i:i + k] for i in range(0, len(idx) - k + 1, k)])
        for pool in pools:
            pool.reverse()  # pop() takes them in shuffled order
        avail = [i for i, pool in enumerate(pools) if pool]
        batches = []
        while len(avail) >= p:
            chosen = rng.choice(len(avail), size=p, replace=False)
            picked = [avail[c] for c in chosen]
            batches.append([int(x) for i in picked for x in pools[i].pop()])
            avail = [i for i in avail if pools[i]]
        return batches

    def batches(self, epoch: int, k: int, n: int) -> list[list[int]]:
        """Exactly n batches for this epoch: passes over the identities are repeated (each with its
        own shuffle) until n are drawn, so every worker steps the same number of times."""
        out: list[list[int]] = []
        rep = 0
        while len(out) < n:
            rng = np.random.default_rng([self.seed, epoch, self.rank, rep])
            got = self._pass(rng, k)
            if not got:
                raise ValueError("the identity sampler produced no batch")
            out += got
            rep += 1
        return out[:n]
