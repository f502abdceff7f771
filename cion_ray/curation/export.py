"""Exports of a curated set: a CION-AL style JSON and a Market-1501 style folder.

Both write one JPEG per kept crop: `images/<identity:06d>/<video>_<frame:06d>_<track>.jpg`
for the JSON ([{"file_path": relative path, "id": identity}]), and
`market/bounding_box_train/<pid:04d>_c1s<session>_<frame:06d>_<nn>.jpg` for fast-reid /
torchreid (Market-1501 names have a one-digit camera; the video's position in the order is
written as the session, and identities beyond 9999 are not representable there, so the
Market export stops with an error naming the count).
"""
from __future__ import annotations

import posixpath

from cion_ray.errors import CionError
from cion_ray.io import fs, runs


def cion_al_path(identity: int, video_id: str, frame: int, track_id: int) -> str:
    return posixpath.join("images", f"{identity:06d}", f"{video_id}_{frame:06d}_{track_id}.jpg")


def market_path(identity: int, video_pos: int, frame: int, index: int) -> str:
    if identity > 9999:
        raise CionError(f"Market-1501 names hold at most 9999 identities; this set has more (id {identity})")
    return posixpath.join("market", "bounding_box_train",
                          f"{identity:04d}_c1s{video_pos + 1}_{frame:06d}_{index % 100:02d}.jpg")


def write_images(out: str, items: list[tuple[str, bytes]]) -> None:
    """(relative path, JPEG bytes) -> files under out."""
    for rel, data in items:
        fs.write_bytes_atomic(fs.join(out, *rel.split("/")), data)


def market_export(out: str) -> str | None:
    """The Market-1501 training folder of the committed curation in `out` (its manifest names the
    export folder: exports/<run>/market), or None when `out` holds no curation with one."""
    m = runs.load_manifest(out, "curate") if fs.exists(fs.join(out, runs.MANIFEST)) else None
    if m is None or not m.get("exports"):
        return None
    uri = fs.join(out, m["exports"], "market", "bounding_box_train")
    return uri if fs.exists(uri) else None
