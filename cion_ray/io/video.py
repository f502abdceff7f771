"""Video encoding, probing and frame-range decoding with PyAV.

Frames are RGB `uint8` arrays of shape (H, W, 3). Frame indices are 0-based in
this module (MOT files are 1-based; `io.mot` converts).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

import av
import numpy as np

from cion_ray.errors import CionError


@dataclass(frozen=True)
class VideoInfo:
    fps: float
    frames: int
    width: int
    height: int
    codec: str


def _pick_codec(preferred: str) -> str:
    for name in (preferred, "libx264", "h264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # codec missing from this FFmpeg build
            continue
    raise CionError("no usable video encoder (tried libx264, h264, mpeg4) in this PyAV build")


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: float = 25.0,
                codec: str = "libx264", crf: int = 18, faststart: bool = False) -> int:
    """Encode RGB frames to `path` (mp4). Writes to a temporary name, then renames.

    Encoding is single-threaded so the same frames give the same bytes. `faststart`
    puts the index first (streamable). Returns the number of frames written.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    codec = _pick_codec(codec)
    n = 0
    opts = {"movflags": "faststart"} if faststart else {}
    with av.open(str(tmp), mode="w", format="mp4", options=opts) as container:
        stream = None
        for img in frames:
            if stream is None:
                h, w = img.shape[:2]
                stream = container.add_stream(codec, rate=int(round(fps)))
                stream.width, stream.height = w, h
                stream.pix_fmt = "yuv420p"
                stream.codec_context.thread_count = 1
                if codec == "libx264":
                    stream.options = {"crf": str(crf), "preset": "veryfast", "threads": "1"}
                else:
                    stream.codec_context.bit_rate = 4_000_000
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            for pkt in stream.encode(vf):
                container.mux(pkt)
            n += 1
        if stream is not None:
            for pkt in stream.encode(None):
                container.mux(pkt)
    if n == 0:
        tmp.unlink(missing_ok=True)
        raise CionError(f"{path}: no frames to write")
    os.replace(tmp, path)
    return n


def _open(source: str | Path | BinaryIO, name: str):
    try:
        return av.open(source if not isinstance(source, Path) else str(source), mode="r")
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise CionError(f"{name}: cannot open video ({e})") from None


def probe_video(source: str | Path | BinaryIO, name: str | None = None) -> VideoInfo:
    """Read fps, frame count and size. Counts packets when the container has no frame count."""
    name = name or str(source)
    with _open(source, name) as c:
        if not c.streams.video:
            raise CionError(f"{name}: no video stream (an empty or zero-frame file)")
        s = c.streams.video[0]
        fps = float(s.average_rate or s.guessed_rate or 0) or 25.0
        frames = int(s.frames or 0)
        if frames <= 0:
            try:
                frames = sum(1 for p in c.demux(s) if p.size > 0)
            except av.error.FFmpegError as e:
                raise CionError(f"{name}: unreadable video ({e})") from None
        w, h = s.codec_context.width, s.codec_context.height
        if not w or not h:
            raise CionError(f"{name}: video stream has no size")
        return VideoInfo(fps=fps, frames=frames, width=w, height=h, codec=s.codec_context.name)


def iter_frames(source: str | Path | BinaryIO, start: int = 0, stop: int | None = None,
                step: int = 1, name: str | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (frame_index, rgb) for frames start, start+step, ... < stop.

    Seeks to the keyframe before `start` and decodes forward; frame indices come
    from presentation timestamps, so a chunk decodes to the same frames as a full
    pass. A decode error mid-stream raises CionError naming the video.
    """
    name = name or str(source)
    if step < 1:
        raise ValueError("step must be >= 1")
    with _open(source, name) as c:
        if not c.streams.video:
            raise CionError(f"{name}: no video stream")
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        tb = s.time_base
        fps = float(s.average_rate or s.guessed_rate or 25)
        t0 = s.start_time or 0
        if start > 0:
            target = int(t0 + start / fps / tb)
            try:
                c.seek(target, stream=s, backward=True, any_frame=False)
            except av.error.FFmpegError:
                c.seek(0, stream=s)
        try:
            seq = 0
            for frame in c.decode(s):
                if frame.pts is None:
                    idx = seq if start == 0 else None
                    if idx is None:
                        raise CionError(f"{name}: frames carry no timestamps; cannot seek")
                else:
                    idx = int(round(float((frame.pts - t0) * tb) * fps))
                seq += 1
                if idx < start:
                    continue
                if stop is not None and idx >= stop:
                    break
                if (idx - start) % step == 0:
                    yield idx, frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as e:
            raise CionError(f"{name}: decode error ({e})") from None
