"""Video manifest: probe videos, split long ones into overlapping chunks.

A chunk owns source frames [own_start, stop) and decodes from `start` =
own_start - overlap (the lead-in), so its tracker is warm when its own frames
begin and its tracks can be stitched to the previous chunk's on the lead-in.
Frame indices here are 0-based; crops tables store 1-based frames.
"""
from __future__ import annotations

import posixpath
from dataclasses import asdict, dataclass

from cion_ray.errors import CionError
from cion_ray.io import fs
from cion_ray.io.video import probe_video

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts")


@dataclass(frozen=True)
class VideoEntry:
    video_id: str
    uri: str
    fps: float
    frames: int
    width: int
    height: int

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Chunk:
    """One unit of tracking work: frames [start, stop) of a video, owning [own_start, stop)."""

    video_id: str
    uri: str
    fps: float
    frames: int
    width: int
    height: int
    chunk: int
    n_chunks: int
    start: int
    own_start: int
    stop: int
    step: int

    def to_row(self) -> dict:
        return asdict(self)


def video_id_of(uri: str) -> str:
    return posixpath.splitext(posixpath.basename(uri.rstrip("/")))[0]


def list_videos(uri: str) -> list[str]:
    """Video files under a folder / prefix (or the single file given), sorted: their natural order."""
    files = fs.list_files(uri, VIDEO_SUFFIXES)
    if not files:
        raise CionError(f"{uri}: no video files ({', '.join(VIDEO_SUFFIXES)})")
    ids = [video_id_of(f) for f in files]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise CionError(f"{uri}: several videos share the id(s) {', '.join(dup)} (ids are file stems)")
    return files


def probe_entry(uri: str) -> VideoEntry:
    """Probe one video; CionError (naming it) when it cannot be used."""
    with fs.open_input(uri) as f:
        info = probe_video(f, name=uri)
    if info.frames <= 0:
        raise CionError(f"{uri}: video has no frames")
    return VideoEntry(video_id=video_id_of(uri), uri=uri, fps=info.fps, frames=info.frames,
                      width=info.width, height=info.height)


def plan_chunks(entry: VideoEntry, chunk_frames: int, overlap: int, step: int) -> list[Chunk]:
    """Split a video into chunks of `chunk_frames` (0 = one chunk) overlapping by `overlap` frames."""
    n = entry.frames
    size = chunk_frames if chunk_frames > 0 else n
    bounds = list(range(0, n, size)) + [n]
    k = len(bounds) - 1
    out = []
    for c in range(k):
        own, stop = bounds[c], bounds[c + 1]
        start = max(0, own - overlap) if c > 0 else 0
        out.append(Chunk(video_id=entry.video_id, uri=entry.uri, fps=entry.fps, frames=n, width=entry.width,
                         height=entry.height, chunk=c, n_chunks=k, start=start, own_start=own, stop=stop, step=step))
    return out
