"""Contact sheets: one row of person crops per identity, captioned.

Used for the synthetic world's preview and for curated identities, so a person
can judge at a glance whether a row really is one person across videos.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

CROP_H, CROP_W = 128, 64
CAPTION_H = 14
HEADER_W = 96
BG = (245, 245, 245)
INK = (30, 30, 30)


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.36) -> None:
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, INK, 1, cv2.LINE_AA)


def contact_sheet(rows: list[tuple[str, list[tuple[str, np.ndarray]]]], title: str = "",
                  max_cols: int | None = None) -> np.ndarray:
    """rows: (row label, [(caption, crop RGB uint8 of any size), ...]) -> RGB uint8 image.

    Crops are resized to 128x64; each gets its caption underneath."""
    n_cols = max((len(r[1]) for r in rows), default=1)
    if max_cols:
        n_cols = min(n_cols, max_cols)
    n_cols = max(1, n_cols)
    title_h = 22 if title else 0
    cell_h, cell_w = CROP_H + CAPTION_H + 4, CROP_W + 6
    H = title_h + max(1, len(rows)) * cell_h + 4
    W = HEADER_W + n_cols * cell_w + 4
    if title:
        (tw, _), _ = cv2.getTextSize(title, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
        W = max(W, tw + 12)
    sheet = np.full((H, W, 3), BG, np.uint8)
    if title:
        _text(sheet, title, (6, 15), 0.45)
    for r, (label, cells) in enumerate(rows):
        y = title_h + r * cell_h + 2
        for i, line in enumerate(label.split("\n")[:4]):
            _text(sheet, line, (6, y + 20 + 14 * i))
        for c, (caption, crop) in enumerate(cells[:n_cols]):
            x = HEADER_W + c * cell_w
            if crop.size:
                tile = cv2.resize(crop, (CROP_W, CROP_H), interpolation=cv2.INTER_AREA)
                sheet[y:y + CROP_H, x:x + CROP_W] = tile
            _text(sheet, caption[:11], (x, y + CROP_H + CAPTION_H - 3), 0.32)
    return sheet


def save_png(path: str | Path, rgb: np.ndarray) -> None:
    path = Path(path)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"{path}: PNG encoding failed")
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_bytes(buf.tobytes())
    tmp.replace(path)
