"""MOTChallenge files: gt.txt, det.txt and seqinfo.ini.

In files, frames are 1-based and boxes are (left, top, width, height). In
memory, arrays hold 1-based frames and corner boxes (x1, y1, x2, y2).
  gt.txt:  frame, id, left, top, width, height, consider(1), class(1 = pedestrian), visibility
  det.txt: frame, -1, left, top, width, height, score, -1, -1, -1
"""
from __future__ import annotations

import configparser
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from cion_ray.errors import CionError


@dataclass(frozen=True)
class SeqInfo:
    name: str
    frame_rate: float
    length: int
    width: int
    height: int
    video: str = ""


def write_seqinfo(path: str | Path, info: SeqInfo) -> None:
    fr = int(info.frame_rate) if float(info.frame_rate).is_integer() else info.frame_rate
    lines = ["[Sequence]", f"name={info.name}", "imDir=img1", f"frameRate={fr}",
             f"seqLength={info.length}", f"imWidth={info.width}", f"imHeight={info.height}", "imExt=.jpg"]
    if info.video:
        lines.append(f"video={info.video}")
    Path(path).write_text("\n".join(lines) + "\n")


def read_seqinfo(path: str | Path) -> SeqInfo:
    cp = configparser.ConfigParser()
    try:
        cp.read_string(Path(path).read_text())
        s = cp["Sequence"]
        return SeqInfo(name=s["name"], frame_rate=float(s["frameRate"]), length=int(s["seqLength"]),
                       width=int(s["imWidth"]), height=int(s["imHeight"]), video=s.get("video", ""))
    except (OSError, KeyError, ValueError, configparser.Error) as e:
        raise CionError(f"{path}: not a valid seqinfo.ini ({e})") from None


def format_gt(rows: list[tuple[int, int, float, float, float, float, float]]) -> str:
    """rows: (frame, id, x1, y1, x2, y2, visibility) -> gt.txt text, sorted by frame then id."""
    buf = io.StringIO()
    for f, tid, x1, y1, x2, y2, vis in sorted(rows, key=lambda r: (r[0], r[1])):
        buf.write(f"{f},{tid},{x1:g},{y1:g},{x2 - x1:g},{y2 - y1:g},1,1,{vis:.4f}\n")
    return buf.getvalue()


def format_det(rows: list[tuple[int, float, float, float, float, float]]) -> str:
    """rows: (frame, x1, y1, x2, y2, score) -> det.txt text, in the given order."""
    buf = io.StringIO()
    for f, x1, y1, x2, y2, s in rows:
        buf.write(f"{f},-1,{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},{s:.4f},-1,-1,-1\n")
    return buf.getvalue()


# Frames beyond this cannot be a video's (2^31 frames is over two years at 30 fps); larger values
# would also wrap when frames become int64 indices.
MAX_FRAME = 2 ** 31 - 1


def _check_row(vals: list[float], min_cols: int) -> None:
    """Raise ValueError (the reason) unless the first `min_cols` values make a usable row:
    finite, frame a positive integer, box of positive width and height whose far corner,
    computed in float64, is finite and beyond its origin."""
    if len(vals) < min_cols:
        raise ValueError(f"{len(vals)} fields, need >= {min_cols}")
    if not np.all(np.isfinite(vals[:min_cols])):
        raise ValueError("non-finite value")
    if not 1 <= vals[0] <= MAX_FRAME or vals[0] != int(vals[0]):
        raise ValueError("frame is not a positive integer")
    if vals[4] <= 0 or vals[5] <= 0:
        raise ValueError("box width/height must be > 0")
    x2, y2 = vals[2] + vals[4], vals[3] + vals[5]
    if not (np.isfinite(x2) and np.isfinite(y2) and x2 > vals[2] and y2 > vals[3]):
        raise ValueError("box corner overflows or equals its origin")  # e.g. left=1e308, or 1e20 + 1


def _parse(path: str | Path, text: str, min_cols: int,
           check: Callable[[list[float]], None] | None = None) -> tuple[list[list[float]], list[str]]:
    """Parse comma-separated rows; malformed lines (unparsable, or refused by `_check_row` or
    `check`, which raise ValueError with the reason) are returned as messages naming file and line."""
    good, bad = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            vals = [float(p) for p in line.split(",")]
            _check_row(vals, min_cols)
            if check is not None:
                check(vals)
        except ValueError as e:
            bad.append(f"{path}:{lineno}: {e}: {line[:80]!r}")
            continue
        good.append(vals)
    return good, bad


def _check_det(vals: list[float]) -> None:
    if not 0.0 <= vals[6] <= 1.0:
        raise ValueError(f"score {vals[6]:g} outside [0, 1]")


def _check_gt(vals: list[float]) -> None:
    """Flags and class must be finite; a pedestrian's visibility lies in [0, 1]. Rows of other
    classes are ignored, so their visibility is not checked (MOT15 files carry -1 there)."""
    extra = vals[6:9]
    if not np.all(np.isfinite(extra)):
        raise ValueError("non-finite value")
    cls = vals[7] if len(vals) > 7 else 1.0
    if cls == 1 and len(vals) > 8 and not 0.0 <= vals[8] <= 1.0:
        raise ValueError(f"visibility {vals[8]:g} outside [0, 1]")
    if vals[1] != int(vals[1]):
        raise ValueError("track id is not an integer")


def _read_text(path: str | Path, text: str | None, what: str) -> str:
    if text is not None:
        return text
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise CionError(f"{path}: cannot read {what} ({e})") from None


def read_detections(path: str | Path, text: str | None = None) -> tuple[np.ndarray, list[str]]:
    """det.txt -> ((n, 6) float64 [frame, x1, y1, x2, y2, score], malformed-line messages).

    A line is malformed (reported and skipped) when it does not parse, has fewer than 7 fields,
    a non-finite value, a frame that is not a positive integer, a box without positive width and
    height, or a score outside [0, 1]."""
    rows, bad = _parse(path, _read_text(path, text, "detections"), 7, _check_det)
    out = np.array([[r[0], r[2], r[3], r[2] + r[4], r[3] + r[5], r[6]] for r in rows], np.float64)
    return out.reshape(-1, 6), bad


def read_gt(path: str | Path, text: str | None = None) -> tuple[np.ndarray, list[str]]:
    """gt.txt -> ((n, 8) float64 [frame, id, x1, y1, x2, y2, consider, visibility], bad lines).

    Only pedestrians are kept (class 1, or rows without a class column). Malformed lines (as in
    `read_detections`, plus a non-integer track id or a pedestrian's visibility outside [0, 1])
    are reported and skipped."""
    rows, bad = _parse(path, _read_text(path, text, "ground truth"), 6, _check_gt)
    out = []
    for r in rows:
        consider = r[6] if len(r) > 6 else 1.0
        cls = r[7] if len(r) > 7 else 1.0
        vis = r[8] if len(r) > 8 else 1.0
        if cls == 1:
            out.append([r[0], r[1], r[2], r[3], r[2] + r[4], r[3] + r[5], consider, vis])
    return np.array(out, np.float64).reshape(-1, 8), bad
