"""A validation split carved from the training data itself: no labelled data needed.

A seeded fraction of the identities is held out (never trained on), and the teacher's kNN
retrieval among their images is measured at every checkpoint (val_mAP, val_rank1, val_mINP), the
metric hyperparameter searches (`cion-ray tune pretrain`) optimise.

The protocol is Market's (cion_ray.evaluate.retrieval): gallery images of the query's identity
and camera are dropped. On a curated or tracking output the "camera" is the tracklet (crop ids
are "<video>/<frame>/<track>", a tracklet is (video, track)): a query must find its person in
other tracklets, not in near-duplicate frames of its own. A CION-AL JSON has no tracklets: each
image is its own camera, so every other image of the identity counts as a match.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cion_ray.errors import CionError

QUERIES_PER_IDENTITY = 4  # at most this many queries (each from another tracklet) per held-out identity


def holdout_identities(identity: np.ndarray, fraction: float, seed: int, source: str = "the data") -> np.ndarray:
    """The identity ids held out for validation, sorted: a seeded prefix of a permutation (a seed
    sequence of its own, so it does not follow select_identities' order), so a smaller fraction is
    a subset of a larger one. At least 2 identities when fraction > 0 (retrieval among one identity
    means nothing), never all of them: too few is a CionError naming `source`.
    identity: (N,) int64 identity per image; fraction in [0, 1)."""
    ids = np.unique(identity)
    if fraction <= 0:
        return ids[:0]
    n = max(2, math.ceil(fraction * len(ids) - 1e-9))
    if n >= len(ids):
        raise CionError(f"{source}: {len(ids)} identities are too few to hold out {n} for validation "
                        f"(fraction {fraction}) and still train on the rest; lower the validation fraction "
                        "or use more data")
    perm = np.random.default_rng([seed, 23]).permutation(len(ids))
    return np.sort(ids[perm[:n]])


def tracklet_cameras(keys: np.ndarray, kind: str) -> np.ndarray:
    """(N,) int64 "camera" per image for the retrieval protocol: its tracklet for crop ids
    ("<video>/<frame>/<track>", kind "parquet"), the image itself for files (kind "files": a
    CION-AL JSON has no tracklets)."""
    if kind == "files":
        return np.arange(len(keys), dtype=np.int64)
    video_track = np.asarray([k.rsplit("/", 2)[0] + "/" + k.rsplit("/", 1)[1] for k in map(str, keys)], dtype=str)
    if len(video_track) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(video_track, return_inverse=True)[1].reshape(-1).astype(np.int64)


@dataclass
class ValidationSplit:
    """query / gallery: row indices into the held-out images; pids, cams: (N,) per held-out image."""

    query: np.ndarray
    gallery: np.ndarray
    pids: np.ndarray
    cams: np.ndarray


def validation_split(identity: np.ndarray, cameras: np.ndarray, seed: int, source: str = "the data",
                     per_identity: int = QUERIES_PER_IDENTITY) -> ValidationSplit:
    """Queries and gallery among the held-out images (identity, cameras: (N,) per image, in a
    canonical row order). Per identity seen in c >= 2 cameras: one seeded image from each of
    min(per_identity, c - 1) seeded cameras is a query, so at least one camera stays whole in
    the gallery and every query has a true match. Every other image is in the gallery (those of
    identities seen in one camera only as distractors). No query at all is a CionError naming
    `source` (e.g. labels=tracklet or instance: no identity spans two tracklets)."""
    identity, cameras = np.asarray(identity), np.asarray(cameras)
    rng = np.random.default_rng([seed, 29])
    queries: list[int] = []
    for pid in np.unique(identity):
        rows = np.flatnonzero(identity == pid)
        cams = np.unique(cameras[rows])
        if len(cams) < 2:
            continue
        for cam in rng.permutation(cams)[:min(per_identity, len(cams) - 1)]:
            queries.append(int(rng.choice(rows[cameras[rows] == cam])))
    if not queries:
        raise CionError(f"{source}: the validation split has no query: none of its {len(np.unique(identity))} "
                        "held-out identities is seen in two tracklets (labels=tracklet or instance make every "
                        "identity one tracklet); use labels=identity or more data")
    query = np.sort(np.asarray(queries, dtype=np.int64))
    gallery = np.setdiff1d(np.arange(len(identity)), query)
    return ValidationSplit(query, gallery, identity, cameras)


def score_split(feats: np.ndarray, split: ValidationSplit, max_rank: int = 50):
    """-> RetrievalResult (CMC / mAP / mINP, cosine distance) of the split; feats: (N, D) float32
    features of every held-out image, in row order."""
    from cion_ray.evaluate.search import RankingOptions, evaluate_features

    q, g = split.query, split.gallery
    return evaluate_features(feats[q], feats[g], split.pids[q], split.pids[g], split.cams[q], split.cams[g],
                             RankingOptions(max_rank=max_rank, backend="dense"))


def val_metrics(result, prefix: str = "val_") -> dict:
    """val_mAP, val_rank1, val_mINP, val_queries of a RetrievalResult."""
    s = result.summary()
    return {f"{prefix}{k}": s[k] for k in ("mAP", "rank1", "mINP", "queries") if k in s}
