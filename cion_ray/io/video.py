"""Video encoding, probing and frame-range decoding with PyAV.

Frames are RGB `uint8` arrays of shape (H, W, 3). Frame indices are 0-based in
this module (MOT files are 1-based; `io.mot` converts).

Same frames, same bytes, on any x86 machine: the RGB <-> YUV 4:2:0 conversions are
done here in exact integer numpy, not by libswscale (whose output depends on the
CPU code path it picks), and x264 runs its plain C code (`asm=0`): its AVX-512 code
reads uninitialised memory in the macroblock-tree rate control, so with AVX-512 the
bytes changed with whatever the heap held (measured in issue 11), and its SIMD and
C paths do not agree bit for bit. The H.264 decoder itself is bit-exact.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

import av
import numpy as np

from cion_ray.errors import CionError


# What decides the bytes `write_video` produces from given frames; a stored world
# written under another recipe or encoder build is not the same world.
ENCODING = "x264 asm=0 veryfast threads=1; yuv420p BT.601 limited from numpy, 2x2-mean chroma; v2"


def encoder_id() -> dict:
    """The recipe, the codec `write_video` gets here and the PyAV / FFmpeg build (wheels bundle x264)."""
    return {"recipe": ENCODING, "codec": _pick_codec("libx264"), "pyav": av.__version__,
            "libavcodec": ".".join(map(str, av.library_versions["libavcodec"]))}


# --- colour: 8-bit Y'CbCr, 16-bit fixed point -------------------------------------------------

_S = 16  # fixed-point fraction bits
_KR_KB = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}


def _fx(x: float) -> int:
    return int(round(x * (1 << _S)))


def _rgb_to_yuv_coeffs(matrix: str = "bt601") -> tuple[tuple[int, int, int], ...]:
    """Limited range. Rows Y, Cb, Cr; each row's weights sum exactly to the range (Y) or 0 (Cb, Cr),
    so white is 235 and every grey has Cb = Cr = 128."""
    kr, kb = _KR_KB[matrix]
    ys, cs = 219 / 255, 224 / 255
    yr, yb = _fx(ys * kr), _fx(ys * kb)
    y = (yr, _fx(ys) - yr - yb, yb)
    cb_r, cb_b = _fx(-cs * kr / (2 - 2 * kb)), _fx(cs / 2)
    cr_r, cr_b = _fx(cs / 2), _fx(-cs * kb / (2 - 2 * kr))
    return y, (cb_r, -cb_r - cb_b, cb_b), (cr_r, -cr_r - cr_b, cr_b)


_Y, _CB, _CR = _rgb_to_yuv_coeffs("bt601")


def rgb_to_i420(img: np.ndarray) -> np.ndarray:
    """RGB (H, W, 3) uint8, H and W even -> planar Y'CbCr 4:2:0, BT.601 limited range, as the
    (H * 3 // 2, W) uint8 array `av.VideoFrame.from_ndarray(..., format="yuv420p")` takes:
    Y (H, W), then Cb and Cr (H/2, W/2 each) row after row. Chroma of a 2x2 block is the chroma
    of its mean colour, rounded half up; integer arithmetic only, so the same everywhere."""
    h, w = img.shape[:2]
    if h % 2 or w % 2:
        raise ValueError(f"4:2:0 needs an even frame size, got {w}x{h}")
    r, g, b = p = np.moveaxis(img, 2, 0).astype(np.int32, order="C")  # (3, H, W): contiguous planes
    y = _Y[0] * r
    y += _Y[1] * g
    y += _Y[2] * b
    y += (16 << _S) + (1 << (_S - 1))
    y >>= _S
    q = p[:, 0::2] + p[:, 1::2]
    rs, gs, bs = q[:, :, 0::2] + q[:, :, 1::2]  # 2x2 sums, 0..1020
    off = (128 << (_S + 2)) + (1 << (_S + 1))
    cb = _CB[0] * rs + _CB[1] * gs + _CB[2] * bs + off
    cb >>= _S + 2
    cr = _CR[0] * rs + _CR[1] * gs + _CR[2] * bs + off
    cr >>= _S + 2
    out = np.empty((h * 3 // 2, w), np.uint8)
    out[:h] = y
    flat = out.reshape(-1)
    n = (h // 2) * (w // 2)
    flat[h * w:h * w + n] = cb.reshape(-1)
    flat[h * w + n:] = cr.reshape(-1)
    return out


@dataclass(frozen=True)
class _YuvToRgb:
    """Lookup tables (int32, 256 entries each, 16-bit fixed point): R = Y + Vr, G = Y + Ug + Vg,
    B = Y + Ub; the rounding half is folded into the Y table."""
    y: np.ndarray
    vr: np.ndarray
    ug: np.ndarray
    vg: np.ndarray
    ub: np.ndarray


def _yuv_to_rgb_tables(matrix: str, full_range: bool) -> _YuvToRgb:
    kr, kb = _KR_KB[matrix]
    kg = 1.0 - kr - kb
    v = np.arange(256, dtype=np.float64)
    yn = v if full_range else (v - 16) * (255 / 219)
    cn = (v - 128) if full_range else (v - 128) * (255 / 224)
    fx = lambda a: np.round(a * (1 << _S)).astype(np.int32)  # noqa: E731
    return _YuvToRgb(y=fx(yn) + (1 << (_S - 1)), vr=fx(cn * (2 - 2 * kr)),
                     ug=fx(-cn * (2 - 2 * kb) * kb / kg), vg=fx(-cn * (2 - 2 * kr) * kr / kg),
                     ub=fx(cn * (2 - 2 * kb)))


_TABLES = {(m, f): _yuv_to_rgb_tables(m, f) for m in _KR_KB for f in (False, True)}


def i420_to_rgb(y: np.ndarray, u: np.ndarray, v: np.ndarray, matrix: str = "bt601",
                full_range: bool = False) -> np.ndarray:
    """Planes Y (H, W), Cb and Cr (ceil(H/2), ceil(W/2)) uint8 -> RGB (H, W, 3) uint8.

    Chroma is repeated over its 2x2 block (centred siting, as `rgb_to_i420` averages);
    integer arithmetic only, so every machine gets the same pixels."""
    t = _TABLES[(matrix, full_range)]
    h, w = y.shape
    hc, wc = u.shape
    if (hc, wc) != ((h + 1) // 2, (w + 1) // 2) or v.shape != u.shape:
        raise ValueError(f"chroma planes {u.shape}, {v.shape} do not fit a 4:2:0 luma plane {y.shape}")
    if h % 2 or w % 2:
        y = np.pad(y, ((0, h % 2), (0, w % 2)), mode="edge")
    # (row pair, 2, W) so the repeated chroma row broadcasts over a long contiguous last axis
    yy = np.take(t.y, y).reshape(hc, 2, 2 * wc)
    out = np.empty((hc, 2, 2 * wc, 3), np.uint8)
    for i, chroma in enumerate((np.take(t.vr, v), np.take(t.ug, u) + np.take(t.vg, v), np.take(t.ub, u))):
        c = yy + np.repeat(chroma, 2, axis=1)[:, None, :]
        c >>= _S
        np.clip(c, 0, 255, out=c)
        out[..., i] = c
    out = out.reshape(2 * hc, 2 * wc, 3)
    return out if out.shape[:2] == (h, w) else np.ascontiguousarray(out[:h, :w])


# AVColorSpace values whose matrix we convert (BT709, unspecified, BT470BG, SMPTE170M);
# swscale also reads "unspecified" as BT.601.
_MATRIX = {1: "bt709", 2: "bt601", 5: "bt601", 6: "bt601"}
_AVCOL_RANGE_JPEG = 2


def _plane(p) -> np.ndarray:
    return np.frombuffer(p, np.uint8)[:p.line_size * p.height].reshape(p.height, p.line_size)[:, :p.width]


def frame_to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """A decoded frame as RGB (H, W, 3) uint8. 8-bit 4:2:0 in BT.601 or BT.709 (what H.264 cameras
    and `write_video` produce) converts here, exactly; other formats go through libswscale."""
    fmt = frame.format.name
    matrix = _MATRIX.get(int(frame.colorspace))
    if fmt in ("yuv420p", "yuvj420p") and matrix is not None and frame.planes[0].line_size > 0:
        full = fmt == "yuvj420p" or int(frame.color_range) == _AVCOL_RANGE_JPEG
        y, u, v = (_plane(p) for p in frame.planes[:3])
        return i420_to_rgb(y, u, v, matrix, full)
    return frame.to_ndarray(format="rgb24", threads=1)  # swscale's thread pool waits on busy cores


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


def _add_stream(container, codec: str, w: int, h: int, fps: float, crf: int):
    stream = container.add_stream(codec, rate=int(round(fps)))
    stream.width, stream.height = w, h
    stream.pix_fmt = "yuv420p"
    cc = stream.codec_context
    cc.thread_count = 1
    cc.colorspace, cc.color_range = 6, 1  # signal what rgb_to_i420 makes: BT.601 (SMPTE 170M), limited
    cc.color_primaries = cc.color_trc = 6
    if codec == "libx264":
        # asm=0: x264's C code, the same on every CPU (its AVX-512 path read uninitialised memory)
        stream.options = {"crf": str(crf), "preset": "veryfast", "threads": "1", "x264-params": "asm=0"}
    else:
        cc.bit_rate = 4_000_000
    return stream


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: float = 25.0,
                codec: str = "libx264", crf: int = 18, faststart: bool = False) -> int:
    """Encode RGB frames (H, W, 3) uint8, H and W even, to `path` (mp4). Writes to a temporary
    name, then renames.

    The same frames give the same bytes on any x86 machine, in any process (see the module
    docstring; recorded in `ENCODING`). `faststart` puts the index first (streamable).
    Returns the number of frames written.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    codec = _pick_codec(codec)
    n = 0
    opts = {"movflags": "faststart"} if faststart else {}
    try:
        with av.open(str(tmp), mode="w", format="mp4", options=opts) as container:
            stream = None
            for img in frames:
                if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                    raise CionError(f"{path}: frames must be (H, W, 3) uint8 RGB, got {img.shape} {img.dtype}")
                if stream is None:
                    h, w = img.shape[:2]
                    if h % 2 or w % 2:
                        raise CionError(f"{path}: frame size {w}x{h} must be even (4:2:0 chroma)")
                    stream = _add_stream(container, codec, w, h, fps, crf)
                elif img.shape[:2] != (h, w):
                    raise CionError(f"{path}: frame size changed from {w}x{h} to {img.shape[1]}x{img.shape[0]}")
                for pkt in stream.encode(av.VideoFrame.from_ndarray(rgb_to_i420(img), format="yuv420p")):
                    container.mux(pkt)
                n += 1
            if stream is not None:
                for pkt in stream.encode(None):
                    container.mux(pkt)
        if n == 0:
            raise CionError(f"{path}: no frames to write")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
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
        if s.time_base and fps * float(s.time_base) > 1 + 1e-6:
            # more than one frame per timestamp tick: frames would share indices (iter_frames
            # numbers frames by timestamp), e.g. 1,000,000 fps stored in a 1/1000 s time base
            raise CionError(f"{name}: frame rate {fps:g} is finer than the time base {s.time_base}; "
                            "frames cannot be told apart")
        frames = int(s.frames or 0)
        if frames <= 0:
            try:
                frames = sum(1 for p in c.demux(s) if p.size > 0)
            except av.error.FFmpegError as e:
                raise CionError(f"{name}: unreadable video ({e})") from None
        cc = s.codec_context
        if cc is None:  # a stream of a codec this FFmpeg cannot decode (a damaged header, say)
            raise CionError(f"{name}: video stream has no decoder")
        w, h = cc.width, cc.height
        if not w or not h:
            raise CionError(f"{name}: video stream has no size")
        return VideoInfo(fps=fps, frames=frames, width=w, height=h, codec=cc.name)


def iter_frames(source: str | Path | BinaryIO, start: int = 0, stop: int | None = None,
                step: int = 1, name: str | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (frame_index, rgb) for frames start, start+step, ... < stop.

    Seeks to the keyframe before `start` and decodes forward; frame indices come
    from presentation timestamps, so a chunk decodes to the same frames as a full
    pass. Indices strictly increase: a frame whose timestamp rounds onto the index
    already given is dropped. A decode error mid-stream raises CionError naming the video.
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
                try:
                    c.seek(0, stream=s)
                except av.error.FFmpegError as e:
                    raise CionError(f"{name}: cannot seek to frame {start} ({e})") from None
        try:
            seq, last = 0, -1
            for frame in c.decode(s):
                if frame.pts is None:
                    idx = seq if start == 0 else None
                    if idx is None:
                        raise CionError(f"{name}: frames carry no timestamps; cannot seek")
                else:
                    idx = int(round(float((frame.pts - t0) * tb) * fps))
                seq += 1
                if idx <= last:
                    continue  # a timestamp that rounds onto the previous frame's index (variable frame rate)
                last = idx
                if idx < start:
                    continue
                if stop is not None and idx >= stop:
                    break
                if (idx - start) % step == 0:
                    yield idx, frame_to_rgb(frame)
        except av.error.FFmpegError as e:
            raise CionError(f"{name}: decode error ({e})") from None
