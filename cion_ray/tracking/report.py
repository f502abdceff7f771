"""The tracking stage's report: what was tracked, what was skipped and why, and, where MOT
ground truth exists, MOTA / IDF1 / ID switches per video and overall (report.json, report.txt)."""
from __future__ import annotations

from typing import Callable

import numpy as np
import pyarrow.parquet as pq

from cion_ray.io import fs
from cion_ray.io.mot import read_gt
from cion_ray.tracking.quality import combine, mot_quality

BOX_COLUMNS = ["video_id", "frame", "track_id", "x1", "y1", "x2", "y2"]


def read_boxes(files: list[str], video_ids: list[str]) -> dict[str, np.ndarray]:
    """Boxes of the given videos from crops Parquet files -> {video_id: (n, 6) [frame, id, x1, y1, x2, y2]}."""
    parts: dict[str, list[np.ndarray]] = {v: [] for v in video_ids}
    if not video_ids:
        return {}
    for uri in files:
        pa_fs, path = fs.arrow_fs(uri)
        t = pq.read_table(path, filesystem=pa_fs, columns=BOX_COLUMNS, filters=[("video_id", "in", video_ids)])
        if not t.num_rows:
            continue
        vids = np.array(t.column("video_id").to_pylist(), object)
        arr = np.stack([t.column(c).to_numpy().astype(np.float64) for c in BOX_COLUMNS[1:]], axis=1)
        for v in np.unique(vids):
            parts[v].append(arr[vids == v])
    return {v: (np.concatenate(p) if p else np.zeros((0, 6))) for v, p in parts.items()}


def quality_table(report: dict) -> str:
    lines = [f"{'video':<14}{'frames':>8}{'tracklets':>11}{'crops':>9}{'MOTA':>8}{'IDF1':>8}{'IDsw':>6}"]
    for r in report["videos"]:
        q = r.get("quality")
        qs = f"{q['mota']:>8.3f}{q['idf1']:>8.3f}{int(q['num_switches']):>6d}" if q else f"{'-':>8}{'-':>8}{'-':>6}"
        lines.append(f"{r['video_id']:<14}{r['frames']:>8d}{r['tracklets']:>11d}{r['crops']:>9d}{qs}")
    o = report.get("overall")
    if o:
        lines.append(f"{'overall':<14}{report['frames']:>8d}{report['tracklets']:>11d}{report['crops']:>9d}"
                     f"{o['mota']:>8.3f}{o['idf1']:>8.3f}{int(o['num_switches']):>6d}")
    if report["skipped"]:
        lines.append("")
        lines.append(f"skipped ({len(report['skipped'])}):")
        lines += [f"  {s['video_id']}: {s['reason']}" for s in report["skipped"]]
    if report["no_persons"]:
        lines.append(f"no persons found in: {', '.join(report['no_persons'])}")
    if report["warnings"]:
        lines.append(f"warnings ({len(report['warnings'])}):")
        lines += [f"  {w}" for w in report["warnings"][:50]]
    return "\n".join(lines) + "\n"


def write_quality_report(out: str, manifest: dict, gt_root: str, skipped: list[dict], warnings: list[str],
                         log: Callable[[str], None] = print) -> dict:
    units = manifest["units"]
    files = [fs.join(out, f) for r in manifest["runs"] for f in r["files"]]
    with_gt = []
    gt: dict[str, np.ndarray] = {}
    if gt_root:
        for vid in sorted(units):
            uri = fs.join(gt_root, vid, "gt.txt")
            if fs.exists(uri):
                g, _ = read_gt(uri, fs.read_text(uri))
                gt[vid] = g
                with_gt.append(vid)
    hyp = read_boxes(files, with_gt)
    rows, quals = [], []
    for vid in sorted(units):
        u = units[vid]
        row = {"video_id": vid, "frames": u["frames"], "tracklets": u["tracklets"], "crops": u["crops"]}
        if vid in gt:
            q = mot_quality(gt[vid], hyp.get(vid, np.zeros((0, 6))))
            row["quality"] = q
            quals.append(q)
        rows.append(row)
    report = {
        "videos": rows,
        "frames": sum(r["frames"] for r in rows),
        "tracklets": sum(r["tracklets"] for r in rows),
        "crops": sum(r["crops"] for r in rows),
        "overall": combine(quals) if quals else None,
        "skipped": skipped,
        "no_persons": [r["video_id"] for r in rows if r["crops"] == 0],
        "warnings": warnings,
    }
    fs.write_json(fs.join(out, "report.json"), report)
    text = quality_table(report)
    fs.write_bytes_atomic(fs.join(out, "report.txt"), text.encode())
    log("report:\n" + text.rstrip())
    return report
