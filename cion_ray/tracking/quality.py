"""Tracking quality against MOT ground truth: MOTA, IDF1, ID switches (motmetrics).

Distances are computed here (1 - IoU, no match below IoU 0.5), then the
counts motmetrics returns per video are summed for an exact overall figure.
"""
from __future__ import annotations

import numpy as np

from cion_ray.tracking.stitch import box_iou

COUNTS = ("num_frames", "num_objects", "num_predictions", "num_matches", "num_misses", "num_false_positives",
          "num_switches", "idtp", "idfp", "idfn", "num_unique_objects")


def mot_quality(gt: np.ndarray, hyp: np.ndarray, iou_threshold: float = 0.5) -> dict[str, float]:
    """gt: (n, >=6) [frame, id, x1, y1, x2, y2, ...] (consider flag in column 6 if present);
    hyp: (m, 6) [frame, id, x1, y1, x2, y2]. Returns counts plus mota, idf1."""
    import motmetrics as mm

    if gt.shape[1] > 6:
        gt = gt[gt[:, 6] > 0]
    acc = mm.MOTAccumulator(auto_id=False)
    frames = np.union1d(gt[:, 0], hyp[:, 0]).astype(int) if len(gt) or len(hyp) else np.zeros(0, int)
    for f in frames:
        g = gt[gt[:, 0] == f]
        h = hyp[hyp[:, 0] == f]
        d = 1.0 - box_iou(g[:, 2:6], h[:, 2:6])
        d[d > 1.0 - iou_threshold] = np.nan
        acc.update(g[:, 1].astype(int).tolist(), h[:, 1].astype(int).tolist(), d, frameid=int(f))
    mh = mm.metrics.create()
    s = mh.compute(acc, metrics=list(COUNTS), name="v")
    out = {k: float(s[k].iloc[0]) for k in COUNTS}
    return with_rates(out)


def with_rates(c: dict[str, float]) -> dict[str, float]:
    """Add mota and idf1 to a dict of counts (also valid for sums of counts over videos)."""
    out = dict(c)
    n = c["num_objects"]
    out["mota"] = 1.0 - (c["num_misses"] + c["num_false_positives"] + c["num_switches"]) / n if n else float("nan")
    denom = 2 * c["idtp"] + c["idfp"] + c["idfn"]
    out["idf1"] = 2 * c["idtp"] / denom if denom else float("nan")
    return out


def combine(per_video: list[dict[str, float]]) -> dict[str, float]:
    total = {k: float(sum(v[k] for v in per_video)) for k in COUNTS}
    return with_rates(total)
