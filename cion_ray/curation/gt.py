"""Ground-truth identity of each crop, for quality figures.

A crop is matched to the ground-truth box of its frame with the highest IoU (>= 0.5,
one-to-one per frame). Its identity is the global identity of that gt track when an
identity map exists (the synthetic world's identities.json), else (video, gt track).
Unmatched crops (false positives) get a label of their own, so they pair with nothing.
"""
from __future__ import annotations

import json

import numpy as np
from scipy.optimize import linear_sum_assignment

from cion_ray.io import fs
from cion_ray.io.mot import read_gt
from cion_ray.tracking.stitch import box_iou


def gt_layout(root: str) -> tuple[str, dict[tuple[str, int], int] | None]:
    """(folder holding <video>/gt.txt, identity map or None) for a world folder or a MOT folder."""
    if fs.exists(fs.join(root, "mot")):
        ids_uri = fs.join(root, "identities.json")
        mapping = None
        if fs.exists(ids_uri):
            mapping = {(r["video_id"], int(r["track_id"])): int(r["identity"]) for r in json.loads(fs.read_text(ids_uri))}
        return fs.join(root, "mot"), mapping
    return root, None


def crop_identities(video_id: str, frames: np.ndarray, boxes: np.ndarray, gt: np.ndarray,
                    mapping: dict[tuple[str, int], int] | None, iou_min: float = 0.5) -> np.ndarray:
    """frames: (n,) 1-based; boxes: (n, 4); gt: read_gt rows. -> (n,) str labels: the global identity,
    else "<video>/<gt id>", and "<video>/fp<i>" (a label of its own) for unmatched crops."""
    out = np.array([f"{video_id}/fp{i}" for i in range(len(frames))], object)
    for f in np.unique(frames):
        ci = np.flatnonzero(frames == f)
        g = gt[gt[:, 0] == f]
        if not len(g):
            continue
        iou = box_iou(boxes[ci], g[:, 2:6])
        r, c = linear_sum_assignment(-iou)
        for i, j in zip(r, c):
            if iou[i, j] >= iou_min:
                tid = int(g[j, 1])
                key = (video_id, tid)
                out[ci[i]] = str(mapping[key]) if mapping and key in mapping else f"{video_id}/{tid}"
    return out


def load_gt(root: str, video_id: str) -> np.ndarray | None:
    folder, _ = gt_layout(root)
    uri = fs.join(folder, video_id, "gt.txt")
    if not fs.exists(uri):
        return None
    return read_gt(uri, fs.read_text(uri))[0]
