"""The curation report: counts per level, and quality per level where ground truth exists.

Levels: the tracker's tracklets, after L1, after L2, after L3. Quality is measured over the
samples each level keeps (pairwise precision / recall / F1 and NMI against the ground-truth
identity of each crop; see `cion_ray.curation.gt`), so it says how clean the kept data is;
`samples` says how much is kept. Each level is also measured over the common sample set, the
samples every level keeps (`common`), so that levels are compared on the same samples.
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
    common = np.logical_and.reduce([labels[name] != "" for name in LEVELS])
    for name in LEVELS:
        lab = labels[name]
        keep = lab != ""
        row = {"samples": int(keep.sum()), "identities": int(len(np.unique(lab[keep])))}
        if has_gt and keep.any():
            row.update(_quality(gt[keep], lab[keep]))
        if has_gt and common.any():
            row["common"] = _quality(gt[common], lab[common])
        levels[name] = row
    return {"videos": len(videos), "counts": counts, "levels": levels, "ground_truth": has_gt,
            "common_samples": int(common.sum())}


def _quality(gt: np.ndarray, lab: np.ndarray) -> dict:
    return {k: v for k, v in assignment_quality(gt, lab).items() if k in ("precision", "recall", "f1", "nmi")}


def report_text(r: dict) -> str:
    c = r["counts"]
    common = r.get("common_samples") if r["ground_truth"] else None
    quality = f"{'P':>8}{'R':>8}{'F1':>8}{'NMI':>8}" if r["ground_truth"] else ""
    lines = [f"curation of {r['videos']} videos", ""]
    if common:
        lines.append(f"{'':<30}{'over the samples each level keeps':>32}    {'over the ' + str(common) + ' samples all keep':>28}")
    lines.append(f"{'level':<9}{'samples':>9}{'identities':>12}{quality}" + (f"    {quality}" if common else ""))

    def cells(q: dict) -> str:
        return f"{q['precision']:>8.3f}{q['recall']:>8.3f}{q['f1']:>8.3f}{q['nmi']:>8.3f}"

    for name, row in r["levels"].items():
        q = cells(row) if r["ground_truth"] and "f1" in row else ""
        if common and "common" in row:
            q = f"{q:<32}    {cells(row['common'])}"
        lines.append(f"{name:<9}{row['samples']:>9d}{row['identities']:>12d}{q}")
    lines += ["",
              f"tracklets in {c['tracklets_in']}, samples in {c['samples_in']}"
              f" (invalid embeddings dropped: {c['invalid_embeddings']})",
              f"L1: {c['l1_samples_dropped']} samples dropped, {c['l1_tracklets_dropped']} tracklets dropped",
              f"L2: {c['merged']} tracklet merges, {c['reallocated']} samples reallocated, "
              f"{c['l2_samples_dropped']} samples dropped; {c['identities_after_l2']} identities",
              f"L3: {c.get('ranges', 0)} ranges ({c.get('ranges_reused', 0)} reused), {c.get('links', 0)} links "
              f"({c.get('global_links', 0)} found by the global pass{_limit(c)}), "
              f"{c.get('components_split', 0)} components split, {c.get('unions_refused', 0)} unions refused, "
              f"{c.get('identities_dropped_small', 0)} identities under the minimum size dropped",
              f"out: {c['identities_out']} identities, {c['samples_out']} samples"]
    cal = r.get("calibration")
    if cal:
        lines += ["", calibration_text(cal)]
    if r.get("notes"):
        lines += [""] + [f"note: {n}" for n in r["notes"]]
    return "\n".join(lines) + "\n"


def _limit(counts: dict) -> str:
    """The global pass's distance limit (link.global_scale x the link threshold), where recorded."""
    return f", closer than {counts['global_limit']:.3f}" if "global_limit" in counts else ""


def calibration_text(cal: dict) -> str:
    """The thresholds a run used, and where they came from (calibrate.Calibration.to_json())."""
    t, f = cal["thresholds"], cal["fixed"]
    vals = ", ".join(f"{k} {t[k]:.3f}" + (f" (configured {f[k]:.3f})" if abs(t[k] - f[k]) > 1e-9 else "")
                     for k in t)
    counts = cal.get("counts", {})
    pairs = (f"from {counts.get('same_sample', 0)} same-person and {counts.get('diff_sample', 0)} different-person "
             f"sample distances, {counts.get('same_centroid', 0)} and {counts.get('diff_centroid', 0)} centroid "
             "distances (calibration.png)")
    if not cal["applied"]:
        return f"thresholds: {vals}\n  {cal['reason']}; {pairs}"
    s = cal["stats"]
    bounded = (f"; held down by the different-person distances: {', '.join(cal['bounded'])}"
               if cal.get("bounded") else "")
    return (f"thresholds calibrated: {vals}\n  against the tuning worlds: same-person spread {s['spread']:.3f} "
            f"({s['s']:.2f}x), other people's samples from {s['diff_sample']:.3f} ({s['ds']:.2f}x), other "
            f"people's centroids from {s['diff_centroid']:.3f} ({s['dc']:.2f}x){bounded}; {pairs}")
