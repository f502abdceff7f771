"""Stitch the tracks of a video's chunks, drop short tracklets, number what is left.

Adjacent chunks overlap: chunk c decodes a lead-in of frames that chunk c-1
owns. A track of chunk c continues a track of chunk c-1 when their boxes
overlap (IoU >= min_iou) on enough lead-in frames; pairs are chosen by a
maximum-weight assignment on those frame counts.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
from scipy.optimize import linear_sum_assignment


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a: (n, 4), b: (m, 4) corner boxes -> (n, m) IoU."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def match_overlap(prev: tuple[np.ndarray, np.ndarray, np.ndarray], cur: tuple[np.ndarray, np.ndarray, np.ndarray],
                  min_iou: float = 0.5, min_frames: int = 2) -> dict[int, int]:
    """prev/cur: (frames, track ids, boxes) on the shared frames -> {cur id: prev id}."""
    pf, pid, pb = prev
    cf, cid, cb = cur
    counts: dict[tuple[int, int], int] = defaultdict(int)
    for f in np.intersect1d(pf, cf):
        pm, cm = pf == f, cf == f
        iou = box_iou(pb[pm], cb[cm])
        for i, j in zip(*np.nonzero(iou >= min_iou)):
            counts[(int(pid[pm][i]), int(cid[cm][j]))] += 1
    if not counts:
        return {}
    p_ids = sorted({a for a, _ in counts})
    c_ids = sorted({b for _, b in counts})
    w = np.zeros((len(p_ids), len(c_ids)))
    for (a, b), n in counts.items():
        w[p_ids.index(a), c_ids.index(b)] = n
    rows, cols = linear_sum_assignment(-w)
    return {c_ids[j]: p_ids[i] for i, j in zip(rows, cols) if w[i, j] >= min_frames}


def stitch_video(chunk_of: np.ndarray, frame: np.ndarray, track_id: np.ndarray, boxes: np.ndarray,
                 own_start: dict[int, int], min_iou: float = 0.5, min_frames: int = 2) -> np.ndarray:
    """Video-level ids for every row of one video's chunks.

    chunk_of, frame (1-based), track_id (chunk-local): (n,); boxes: (n, 4);
    own_start: chunk -> first owned 0-based frame. Returns (n,) int64 ids, equal for
    rows of stitched tracks (not yet numbered compactly; see `renumber`).
    """
    out = np.zeros(len(frame), np.int64)
    key_to_id: dict[tuple[int, int], int] = {}
    next_id = 1
    chunks = sorted(int(c) for c in np.unique(chunk_of))
    for c in chunks:
        m = chunk_of == c
        links: dict[int, int] = {}
        if c - 1 in chunks:
            lo = own_start[c]  # shared frames: lead-in of c, owned by c - 1 (1-based: frame <= own_start)
            pm = (chunk_of == c - 1) & (frame <= lo)
            cm = m & (frame <= lo)
            links = match_overlap((frame[pm], track_id[pm], boxes[pm]), (frame[cm], track_id[cm], boxes[cm]),
                                  min_iou, min_frames)
        for t in np.unique(track_id[m]):
            t = int(t)
            if t in links:
                key_to_id[(c, t)] = key_to_id[(c - 1, links[t])]
            else:
                key_to_id[(c, t)] = next_id
                next_id += 1
        out[m] = [key_to_id[(c, int(t))] for t in track_id[m]]
    return out


def renumber(frame: np.ndarray, ids: np.ndarray, keep: np.ndarray, min_len: int) -> np.ndarray:
    """Ids 1..k by first appearance for tracks with >= min_len kept rows; 0 for everything else.

    keep: (n,) bool, the rows that will be output (owned frames)."""
    out = np.zeros(len(ids), np.int64)
    if not keep.any():
        return out
    k_ids, k_frames = ids[keep], frame[keep]
    uniq, counts = np.unique(k_ids, return_counts=True)
    long_enough = set(uniq[counts >= min_len].tolist())
    first: dict[int, int] = {}
    for f, t in sorted(zip(k_frames.tolist(), k_ids.tolist())):
        if t in long_enough and t not in first:
            first[t] = len(first) + 1
    mapped = np.array([first.get(int(t), 0) for t in ids], np.int64)
    out[keep] = mapped[keep]
    return out


def stitch_group(video_id: str, chunk_of: np.ndarray, frame: np.ndarray, track_id: np.ndarray, boxes: np.ndarray,
                 own_start: dict[int, int], min_track_len: int, min_iou: float = 0.5, min_frames: int = 2
                 ) -> dict[str, np.ndarray]:
    """All raw rows of one multi-chunk video -> one row per (chunk, raw track id) with its final id
    (0 = dropped), plus the video's kept crop and tracklet counts (repeated on each row)."""
    vid_ids = stitch_video(chunk_of, frame, track_id, boxes, own_start, min_iou, min_frames)
    owned = np.array([f > own_start[int(c)] for c, f in zip(chunk_of, frame)], bool)
    final = renumber(frame, vid_ids, owned, min_track_len)
    # a raw track's final id: its stitched id's number (renumber gives 0 on non-owned rows)
    by_vid: dict[int, int] = {}
    for v, f in zip(vid_ids, final):
        if f > 0:
            by_vid[int(v)] = int(f)
    keys = sorted({(int(c), int(t), int(v)) for c, t, v in zip(chunk_of, track_id, vid_ids)})
    n = len(keys)
    return {
        "video_id": np.array([video_id] * n, object),
        "chunk": np.array([k[0] for k in keys], np.int32),
        "track_id": np.array([k[1] for k in keys], np.int64),
        "final_id": np.array([by_vid.get(k[2], 0) for k in keys], np.int64),
        "crops": np.full(n, int((final > 0).sum()), np.int64),
        "tracklets": np.full(n, len(set(by_vid.values())), np.int64),
    }
