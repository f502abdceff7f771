"""The curation's contact sheet: which crops show each identity, and the PNG of them."""
from __future__ import annotations

import numpy as np

from cion_ray.io import fs
from cion_ray.io.crops import read_crop_images


def sheet_picks(levels: list[dict], final: list[np.ndarray], rows: int = 10, cols: int = 8
                ) -> list[tuple[int, int, int, list[tuple[str, str]]]]:
    """The identities seen in the most videos (then the lowest ids), at most `rows`, each with up
    to `cols` crops taken round-robin over its videos (the middle remaining crop of each video in
    turn). -> [(identity, crops, videos, [(video, crop_id), ...])]."""
    members: dict[int, list[tuple[str, str]]] = {}
    for d, lab in zip(levels, final):
        for cid, g in zip(d["crop_id"].tolist(), lab.tolist()):
            if g >= 0:
                members.setdefault(g, []).append((d["video_id"], cid))
    order = sorted(members, key=lambda g: (-len({v for v, _ in members[g]}), g))[:rows]
    out = []
    for g in order:
        by_video: dict[str, list[str]] = {}
        for v, cid in members[g]:
            by_video.setdefault(v, []).append(cid)
        n_videos = len(by_video)
        chosen: list[tuple[str, str]] = []
        while len(chosen) < cols and any(by_video.values()):
            for v in sorted(by_video):
                if by_video[v] and len(chosen) < cols:
                    lst = by_video[v]
                    chosen.append((v, lst.pop(len(lst) // 2)))
        out.append((g, len(members[g]), n_videos, chosen))
    return out


def write_sheet(uri: str, crop_files: list[str], levels: list[dict], final: list[np.ndarray],
                rows: int = 10, cols: int = 8) -> None:
    """A row of crops per identity (most videos first), mixing videos, captioned with the video."""
    import cv2

    from cion_ray.viz.sheet import contact_sheet

    picks = sheet_picks(levels, final, rows, cols)
    images = read_crop_images(crop_files, [cid for *_, ch in picks for _, cid in ch])
    sheet_rows = []
    for g, n, n_videos, chosen in picks:
        cells = []
        for v, cid in chosen:
            img = cv2.imdecode(np.frombuffer(images.get(cid, b""), np.uint8), cv2.IMREAD_COLOR)
            cells.append((v, img[..., ::-1] if img is not None else np.zeros((128, 64, 3), np.uint8)))
        sheet_rows.append((f"identity {g}\n{n} crops\n{n_videos} videos", cells))
    img = contact_sheet(sheet_rows, title="curated identities: each row should be one person across videos",
                        max_cols=cols)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"{uri}: PNG encoding failed")
    fs.write_bytes_atomic(uri, buf.tobytes())
