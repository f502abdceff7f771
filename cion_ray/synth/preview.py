"""The world's contact sheet: identities seen in several videos, one row each."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from cion_ray.synth.config import SynthConfig
from cion_ray.viz.sheet import contact_sheet, save_png


def write_preview(path: str | Path, results: list[dict], cfg: SynthConfig, rows: int = 8, cols: int = 6) -> None:
    """results: per-video dicts from `render_video` (video_id, tracks: {tid: identity}, crops: {tid: crop})."""
    by_identity: dict[int, list[tuple[str, object]]] = defaultdict(list)
    for r in results:
        for tid, pid in r["tracks"].items():
            by_identity[pid].append((r["video_id"], r["crops"][tid]))
    order = sorted(by_identity, key=lambda p: (-len({v for v, _ in by_identity[p]}), p))[:rows]
    sheet_rows = []
    for pid in order:
        cells = sorted(by_identity[pid], key=lambda c: c[0])[:cols]
        n_videos = len({v for v, _ in by_identity[pid]})
        sheet_rows.append((f"id {pid:04d}\n{n_videos} videos", cells))
    title = (f"synthetic world: seed {cfg.seed}, {cfg.videos} videos, {cfg.identities} identities "
             f"- each row is one person across videos")
    if cfg.style != "default":
        title = title.replace("synthetic world:", f"synthetic world ({cfg.style} style):")
    save_png(path, contact_sheet(sheet_rows, title=title, max_cols=cols))
