"""Curation, step by step, as plain functions over numpy arrays.

  per video:  L1 (tracklets) and L2 (identities within the video)       -> `denoise_video_levels`
  per range:  linking relations between identities of different videos  -> `range_relations`
  reducer:    union-find + anti-chaining guard + minimum size           -> `reduce_identities`

`curate_local` runs them in one process (tests, small corpora); the Ray runtime runs the
per-video and per-range steps as tasks and the reducer on the driver.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from cion_ray.curation.config import DenoiseConfig, LinkConfig
from cion_ray.denoise.tracklet import normalize
from cion_ray.denoise.video import cannot_link_pairs, l1_labels, video_denoise
from cion_ray.errors import CionError
from cion_ray.linking.ranges import range_key, sliding_ranges
from cion_ray.linking.reduce import ReduceStats, reduce_relations
from cion_ray.linking.relations import global_relations, linking_relations
from cion_ray.linking.union_find import UnionFind, tree_reduce


@dataclass
class VideoCrops:
    """The embedded crops of one video. feats: (n, D) float32, L2-normalised."""

    video_id: str
    crop_id: np.ndarray
    track_id: np.ndarray
    frame: np.ndarray
    feats: np.ndarray


@dataclass
class VideoLevels:
    """Per-sample labels after L1 (tracklet index) and L2 (video-local identity); -1 = dropped.
    sums: (k, D) float64 feature sums of the k L2 identities, counts: (k,) their sizes."""

    video_id: str
    crop_id: np.ndarray
    track_id: np.ndarray
    l1: np.ndarray
    l2: np.ndarray
    sums: np.ndarray
    counts: np.ndarray
    stats: dict = field(default_factory=dict)


def clean_features(v: VideoCrops) -> tuple[VideoCrops, int]:
    """Drop samples whose embedding has NaN/inf or zero norm; returns the cleaned video and the count."""
    ok = np.isfinite(v.feats).all(axis=1) & (np.linalg.norm(v.feats, axis=1) > 1e-6)
    bad = int((~ok).sum())
    if bad:
        v = VideoCrops(v.video_id, v.crop_id[ok], v.track_id[ok], v.frame[ok], v.feats[ok])
    return VideoCrops(v.video_id, v.crop_id, v.track_id, v.frame, normalize(v.feats.astype(np.float32))), bad


def check_unique(crop_ids: np.ndarray, where: str) -> None:
    u, c = np.unique(crop_ids, return_counts=True)
    if (c > 1).any():
        dup = u[c > 1]
        raise CionError(f"{where}: {len(dup)} duplicate crop id(s), e.g. {', '.join(map(str, dup[:3]))}; "
                        "the input holds some crops twice")


def denoise_video_levels(v: VideoCrops, cfg: DenoiseConfig) -> VideoLevels:
    """L1 and L2 of one video (invalid embeddings dropped and counted first).

    The cannot-link between tracklets is read from every crop of the video, before invalid
    embeddings and L1 drop any: tracklets seen in one frame are two people regardless."""
    cannot = cannot_link_pairs(v.track_id, v.frame)
    v, invalid = clean_features(v)
    l1 = l1_labels(v.feats, v.track_id, cfg.radius, cfg.min_len)
    res = video_denoise(v.feats, v.track_id, v.frame, cfg.radius, cfg.min_len, cfg.merge, cfg.margin, cannot)
    k = int(res.labels.max()) + 1 if len(res.labels) and res.labels.max() >= 0 else 0
    sums = np.zeros((k, v.feats.shape[1] if v.feats.ndim == 2 else 0), np.float64)
    counts = np.zeros(k, np.int64)
    kept = res.labels >= 0
    if k:
        np.add.at(sums, res.labels[kept], v.feats[kept])
        counts = np.bincount(res.labels[kept], minlength=k)
    stats = {**res.stats, "invalid_embeddings": invalid}
    return VideoLevels(v.video_id, v.crop_id, v.track_id, l1, res.labels, sums, counts, stats)


@dataclass
class IdentityTable:
    """Every L2 identity of the corpus: its video's position in the order, feature sum and size."""

    video_pos: np.ndarray  # (n,)
    sums: np.ndarray  # (n, D) float64
    counts: np.ndarray  # (n,)
    offsets: np.ndarray  # (n_videos + 1,) identities of video i are offsets[i]:offsets[i+1]
    video_ids: list[str]

    @cached_property
    def centroids(self) -> np.ndarray:
        """(n, D) float32, L2-normalised (computed once)."""
        return normalize(self.sums).astype(np.float32)


def identity_table(levels: list[VideoLevels]) -> IdentityTable:
    """Levels must be in the videos' natural order."""
    dim = next((lv.sums.shape[1] for lv in levels if lv.sums.size), 0)
    sizes = [len(lv.counts) for lv in levels]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    sums = np.concatenate([lv.sums for lv in levels if len(lv.counts)] or [np.zeros((0, dim))])
    counts = np.concatenate([lv.counts for lv in levels] or [np.zeros(0, np.int64)])
    pos = np.repeat(np.arange(len(levels)), sizes)
    return IdentityTable(pos, sums, counts, offsets, [lv.video_id for lv in levels])


def ranges_with_keys(video_ids: list[str], cfg: LinkConfig) -> list[tuple[int, int, str]]:
    return [(s, e, range_key(video_ids[s:e])) for s, e in sliding_ranges(len(video_ids), cfg.window, cfg.stride)]


def range_relations(centroids: np.ndarray, video_pos: np.ndarray, first: int, cfg: LinkConfig) -> np.ndarray:
    """Relations among the identities of one range. centroids: (m, D) of the range's identities,
    whose global indices are first .. first + m - 1. -> (r, 3) (global a, global b, distance)."""
    rel = linking_relations(centroids, video_pos, cfg.k, cfg.threshold, cfg.use_gpu)
    if len(rel):
        rel[:, :2] += first
    return rel


def relations_for_range(table: IdentityTable, start: int, end: int, cfg: LinkConfig) -> np.ndarray:
    lo, hi = int(table.offsets[start]), int(table.offsets[end])
    return range_relations(table.centroids[lo:hi], table.video_pos[lo:hi], lo, cfg)


def global_pass_runs(n_identities: int, cfg: LinkConfig) -> bool:
    """Whether the global pass runs on a corpus of this many identities."""
    return cfg.global_ratio > 0 and 1 < n_identities <= cfg.global_max


def global_pass(table: IdentityTable, cfg: LinkConfig) -> np.ndarray:
    """The global pass's relations over every identity of the table (none when it does not run)."""
    if not global_pass_runs(len(table.counts), cfg):
        return np.zeros((0, 3))
    return global_relations(table.centroids, table.video_pos, cfg.global_threshold, cfg.global_ratio,
                            cfg.use_gpu)


def link_table(table: IdentityTable, cfg: LinkConfig) -> list[np.ndarray]:
    """Every relation of the table: one array per sliding range, then the global pass's."""
    return ([relations_for_range(table, s, e, cfg) for s, e, _ in ranges_with_keys(table.video_ids, cfg)]
            + [global_pass(table, cfg)])


def union_of_relations(n: int, relations: list[np.ndarray], parts: int = 4) -> UnionFind:
    """Relations grouped into a few partial union-finds, reduced as a tree (the shape a
    distributed reduction takes; each part is O(n) memory, so there are only a few)."""
    nonempty = [r for r in relations if len(r)]
    if not nonempty:
        return UnionFind(n)
    bounds = np.linspace(0, len(nonempty), min(parts, len(nonempty)) + 1).astype(int)
    groups = [np.concatenate(nonempty[a:b])[:, :2] for a, b in zip(bounds, bounds[1:])]
    return tree_reduce([UnionFind(n).union_many(g) for g in groups])


def reduce_identities(table: IdentityTable, relations: list[np.ndarray], cfg: LinkConfig
                      ) -> tuple[np.ndarray, ReduceStats, int]:
    """-> ((n,) global identity per L2 identity, -1 for those in identities under min_images; stats;
    number of identities dropped by the size filter)."""
    n = len(table.counts)
    allrel = np.concatenate([r for r in relations if len(r)] or [np.zeros((0, 3))])
    # identical relations found by overlapping ranges are counted once
    if len(allrel):
        _, first = np.unique(allrel[:, :2].astype(np.int64), axis=0, return_index=True)
        allrel = allrel[np.sort(first)]
    uf = union_of_relations(n, relations)
    labels, stats = reduce_relations(uf, allrel, table.video_pos, table.sums, cfg.drift)
    stats.relations = len(allrel)
    if n == 0:
        return labels, stats, 0
    sizes = np.bincount(labels, weights=table.counts)
    small = sizes < cfg.min_images
    out = labels.copy()
    out[small[labels]] = -1
    _, compact = np.unique(out[out >= 0], return_inverse=True)
    out[out >= 0] = compact
    return out, stats, int(small.sum())


@dataclass
class CurationResult:
    levels: list[VideoLevels]
    table: IdentityTable
    identity_of: np.ndarray  # (n_l2_identities,) global identity, -1 dropped
    relations: list[np.ndarray]
    reduce_stats: ReduceStats
    dropped_small: int

    def sample_labels(self) -> list[np.ndarray]:
        """Per video, (n,) global identity of each sample, -1 for dropped ones."""
        out = []
        for i, lv in enumerate(self.levels):
            lab = np.full(len(lv.l2), -1, np.int64)
            kept = lv.l2 >= 0
            lab[kept] = self.identity_of[self.table.offsets[i] + lv.l2[kept]]
            out.append(lab)
        return out


def curate_local(videos: list[VideoCrops], denoise: DenoiseConfig, link: LinkConfig) -> CurationResult:
    """The whole curation in this process. `videos` in their natural order."""
    for v in videos:
        check_unique(v.crop_id, v.video_id)
    levels = [denoise_video_levels(v, denoise) for v in videos]
    table = identity_table(levels)
    relations = link_table(table, link)
    identity_of, stats, small = reduce_identities(table, relations, link)
    return CurationResult(levels, table, identity_of, relations, stats, small)
