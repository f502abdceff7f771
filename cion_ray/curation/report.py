"""The curation report: counts per level, and quality per level where ground truth exists.

Levels: the tracker's tracklets, after L1, after L2, after L3. Quality is measured over the
samples each level keeps (pairwise precision / recall / F1 and NMI against the ground-truth
identity of each crop; see `cion_ray.curation.gt`), so it says how clean the kept data is;
`samples` says how much is kept.
"""
from __future__ import annotations

import numpy as np

from cion_ray.evaluate.clustering import assignment_quality

LEVELS = ("tracker", "L1", "L2", "L3")
COUNT_KEYS = ("samples_in", "tracklets_in", "invalid_embeddings", "l1_samples_dropped", "l1_tracklets_dropped",
              "merged", "reallocated", "l2_samples_dropped")


def level_labels(videos: list[dict], final: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Per level, (n_total,) string labels over all samples ("" where the level dropped the sample)."""
    out = {k: [] for k in LEVELS}
    for v, lab3 in zip(videos, final):
        vid = v["video_id"]
        tr = np.char.add(f"{vid}/", v["track_id"].astype(str))
        out["tracker"].append(tr)
        out["L1"].append(np.where(v["l1"] >= 0, np.char.add(f"{vid}/", v["l1"].astype(str)), ""))
        out["L2"].append(np.where(v["l2"] >= 0, np.char.add(f"{vid}/", v["l2"].astype(str)), ""))
        out["L3"].append(np.where(lab3 >= 0, lab3.astype(str), ""))
    return {k: (np.concatenate(v) if v else np.zeros(0, str)) for k, v in out.items()}


def build_report(videos: list[dict], final: list[np.ndarray], link: dict) -> dict:
    """videos: per-video result dicts (store.load_levels plus video_id); final: per video, (n,) global
    identity per sample (-1 dropped); link: counts of the linking step."""
    counts = {k: int(sum(v["stats"].get(k, 0) for v in videos)) for k in COUNT_KEYS}
    counts["identities_after_l2"] = int(sum(len(v["counts"]) for v in videos))
    counts.update(link)
    kept = np.concatenate(final) if final else np.zeros(0, np.int64)
    counts["identities_out"] = int(len(np.unique(kept[kept >= 0])))
    counts["samples_out"] = int((kept >= 0).sum())
    labels = level_labels(videos, final)
    levels = {}
    has_gt = bool(videos) and all(len(v["gt"]) == len(v["l2"]) for v in videos) and len(labels["tracker"]) > 0
    gt = np.concatenate([v["gt"] for v in videos]) if has_gt else None
    for name in LEVELS:
        lab = labels[name]
        keep = lab != ""
        row = {"samples": int(keep.sum()), "identities": int(len(np.unique(lab[keep])))}
        if has_gt and keep.any():
            row.update({k: v for k, v in assignment_quality(gt[keep], lab[keep]).items()
                        if k in ("precision", "recall", "f1", "nmi")})
        levels[name] = row
    return {"videos": len(videos), "counts": counts, "levels": levels, "ground_truth": has_gt}


def report_text(r: dict) -> str:
    c = r["counts"]
    lines = [f"curation of {r['videos']} videos",
             "",
             f"{'level':<9}{'samples':>9}{'identities':>12}" + (f"{'P':>8}{'R':>8}{'F1':>8}{'NMI':>8}"
                                                                 if r["ground_truth"] else "")]
    for name, row in r["levels"].items():
        q = (f"{row['precision']:>8.3f}{row['recall']:>8.3f}{row['f1']:>8.3f}{row['nmi']:>8.3f}"
             if r["ground_truth"] and "f1" in row else "")
        lines.append(f"{name:<9}{row['samples']:>9d}{row['identities']:>12d}{q}")
    lines += ["",
              f"tracklets in {c['tracklets_in']}, samples in {c['samples_in']}"
              f" (invalid embeddings dropped: {c['invalid_embeddings']})",
              f"L1: {c['l1_samples_dropped']} samples dropped, {c['l1_tracklets_dropped']} tracklets dropped",
              f"L2: {c['merged']} tracklet merges, {c['reallocated']} samples reallocated, "
              f"{c['l2_samples_dropped']} samples dropped; {c['identities_after_l2']} identities",
              f"L3: {c.get('ranges', 0)} ranges ({c.get('ranges_reused', 0)} reused), {c.get('links', 0)} links, "
              f"{c.get('components_split', 0)} components split, {c.get('unions_refused', 0)} unions refused, "
              f"{c.get('identities_dropped_small', 0)} identities under the minimum size dropped",
              f"out: {c['identities_out']} identities, {c['samples_out']} samples"]
    if r.get("notes"):
        lines += [""] + [f"note: {n}" for n in r["notes"]]
    return "\n".join(lines) + "\n"
