"""Same frames, same bytes, same decoded pixels: whatever the memory layout of the input, the
heap's leftovers, the process or the CPU code path FFmpeg picks (issue 11, item 1).

x264's AVX-512 code read uninitialised heap memory, so the bytes changed with what the heap
held: `MALLOC_PERTURB_` (glibc fills fresh allocations with a byte) makes that visible at once.
libswscale's RGB <-> YUV output depends on its CPU code path: `av_force_cpu_flags(0)` (plain C)
stands in for another processor.
"""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import av
import numpy as np
import pytest

from cion_ray.errors import CionError
from cion_ray.io.video import i420_to_rgb, iter_frames, rgb_to_i420, write_video

H, W, N = 48, 64, 20  # 4 macroblocks wide: x264's AVX-512 over-read showed at this width


def _frames(n: int = N, h: int = H, w: int = W, seed: int = 0) -> list[np.ndarray]:
    """A gradient with moving blocks and sensor noise: B-frames, motion and rate control all work."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], -1)
    out = []
    for t in range(n):
        img = base.copy()
        for k in range(3):
            x0, y0 = (t * (3 + 2 * k) + 17 * k) % w, (h // 4) * k
            img[y0:y0 + h // 3, x0:x0 + w // 5] = (60 * k + 40, 200 - 50 * k, 90)
        img += rng.normal(0, 6, img.shape)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def _decode(path: Path) -> np.ndarray:
    return np.stack([f for _, f in iter_frames(path)])


def _layouts(f: np.ndarray) -> dict[str, np.ndarray]:
    """The same pixels at other addresses and strides."""
    buf = np.empty(f.nbytes + 64, np.uint8)
    odd = buf[3:3 + f.nbytes].reshape(f.shape)  # misaligned start
    odd[...] = f
    wide = np.zeros((f.shape[0], f.shape[1] + 7, 3), np.uint8)
    wide[:, 5:5 + f.shape[1]] = f  # rows with padding between them
    planar = np.ascontiguousarray(np.moveaxis(f, 2, 0))
    return {"contiguous": f, "odd offset": odd, "strided rows": wide[:, 5:5 + f.shape[1]],
            "planar view": np.moveaxis(planar, 0, 2), "fortran": np.asfortranarray(f)}


def _churn_heap(seed: int) -> None:
    """Leave freed blocks full of garbage where the encoder's next small allocations may land."""
    rng = np.random.default_rng(seed)
    junk = [rng.integers(0, 256, int(s), dtype=np.uint8).tobytes() for s in rng.integers(1_000, 100_000, 40)]
    del junk


def test_same_frames_same_bytes_whatever_the_memory_layout(tmp_path):
    frames = _frames()
    ref = tmp_path / "ref.mp4"
    write_video(ref, frames)
    ref_bytes, ref_pixels = ref.read_bytes(), _decode(ref)
    for k in range(2):
        for name in _layouts(frames[0]):
            _churn_heap(k)
            p = tmp_path / f"{name}_{k}.mp4"
            write_video(p, (_layouts(f)[name] for f in frames))
            assert p.read_bytes() == ref_bytes, (name, k)
            assert np.array_equal(_decode(p), ref_pixels), (name, k)


_ENCODE = textwrap.dedent("""
    import sys, numpy as np
    from cion_ray.io.video import write_video
    write_video(sys.argv[2], list(np.load(sys.argv[1])))
""")


def _run(code: str, *args: str, env: dict | None = None) -> None:
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                       env={**os.environ, **(env or {})}, cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert r.returncode == 0, r.stderr


def test_same_bytes_in_other_processes_whatever_the_heap_held(tmp_path):
    frames = _frames()
    np.save(tmp_path / "frames.npy", np.stack(frames))
    write_video(tmp_path / "here.mp4", frames)
    for fill in ("85", "170"):
        _run(_ENCODE, tmp_path / "frames.npy", tmp_path / f"p{fill}.mp4", env={"MALLOC_PERTURB_": fill})
        assert (tmp_path / f"p{fill}.mp4").read_bytes() == (tmp_path / "here.mp4").read_bytes(), fill


def _libavutil() -> str | None:
    """The libavutil this PyAV loaded (a bundled copy in wheels), from the process's memory map."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    paths = {line.split()[-1] for line in maps.splitlines() if "libavutil" in line}
    return next(iter(paths), None)


_PLAIN_C = textwrap.dedent("""
    import ctypes, sys, numpy as np
    from cion_ray.io.video import iter_frames, write_video
    ctypes.CDLL(sys.argv[1]).av_force_cpu_flags(0)  # FFmpeg without SIMD: another processor
    write_video(sys.argv[3], list(np.load(sys.argv[2])))
    np.save(sys.argv[4], np.stack([f for _, f in iter_frames(sys.argv[5])]))
""")


def test_ffmpeg_cpu_code_path_changes_neither_bytes_nor_pixels(tmp_path):
    lib = _libavutil()
    if lib is None or not hasattr(ctypes.CDLL(lib), "av_force_cpu_flags"):
        pytest.skip("cannot reach this PyAV's libavutil")
    frames = _frames()
    np.save(tmp_path / "frames.npy", np.stack(frames))
    write_video(tmp_path / "simd.mp4", frames)
    _run(_PLAIN_C, lib, tmp_path / "frames.npy", tmp_path / "c.mp4", tmp_path / "c_decoded.npy", tmp_path / "simd.mp4")
    assert (tmp_path / "c.mp4").read_bytes() == (tmp_path / "simd.mp4").read_bytes()
    assert np.array_equal(np.load(tmp_path / "c_decoded.npy"), _decode(tmp_path / "simd.mp4"))


def test_decoded_colours_stay_close_to_the_frames(tmp_path):
    frames = _frames()
    write_video(tmp_path / "v.mp4", frames)
    decoded = _decode(tmp_path / "v.mp4")
    assert decoded.shape == (N, H, W, 3) and decoded.dtype == np.uint8
    # mostly the sensor noise (sd 6) the coder smooths away: 6.2 here, 6.5 through libswscale
    # before; a wrong matrix, range or plane order costs tens
    err = np.abs(decoded.astype(np.int16) - np.stack(frames)).mean()
    assert err < 7.0, err


# --- the conversions -----------------------------------------------------------------------------

def _planes(i420: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    flat = i420.reshape(-1)
    n = (h // 2) * (w // 2)
    return (flat[:h * w].reshape(h, w), flat[h * w:h * w + n].reshape(h // 2, w // 2),
            flat[h * w + n:].reshape(h // 2, w // 2))


def _float_rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    r, g, b = np.moveaxis(rgb.astype(np.float64), -1, 0)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    return np.stack([16 + 219 / 255 * y, 128 + 224 / 255 * (b - y) / 1.772, 128 + 224 / 255 * (r - y) / 1.402], -1)


def test_rgb_to_i420_is_bt601_limited_range():
    grey = np.repeat(np.arange(256, dtype=np.uint8)[:, None, None], 3, axis=2)  # (256, 1, 3)
    grey = np.repeat(np.repeat(grey, 2, axis=0), 2, axis=1)  # every 2x2 block one grey
    y, u, v = _planes(rgb_to_i420(grey), 512, 2)
    assert y[0, 0] == 16 and y[-1, 0] == 235
    assert (u == 128).all() and (v == 128).all()
    assert np.abs(y[::2, 0] - (16 + 219 / 255 * np.arange(256))).max() <= 0.5 + 1e-3
    rgb = np.random.default_rng(1).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    flat = np.repeat(np.repeat(rgb[::2, ::2], 2, axis=0), 2, axis=1)  # flat 2x2 blocks: chroma is exact too
    y, u, v = _planes(rgb_to_i420(flat), 32, 48)
    want = _float_rgb_to_ycbcr(flat)
    assert np.abs(y - want[..., 0]).max() <= 0.51
    assert np.abs(u - want[::2, ::2, 1]).max() <= 0.51 and np.abs(v - want[::2, ::2, 2]).max() <= 0.51
    with pytest.raises(ValueError, match="even"):
        rgb_to_i420(np.zeros((5, 4, 3), np.uint8))


@pytest.mark.parametrize("matrix,full", [("bt601", False), ("bt709", False), ("bt601", True)])
def test_i420_to_rgb_inverts_the_matrix(matrix, full):
    kr, kb = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}[matrix]
    rng = np.random.default_rng(2)
    y = rng.integers(0, 256, (6, 10), dtype=np.uint8)
    u, v = (rng.integers(0, 256, (3, 5), dtype=np.uint8) for _ in range(2))
    out = i420_to_rgb(y, u, v, matrix, full)
    up = lambda c: np.repeat(np.repeat(c.astype(np.float64), 2, 0), 2, 1)  # noqa: E731
    yn = y if full else (y - 16.0) * 255 / 219
    cb, cr = ((up(c) - 128) * (1 if full else 255 / 224) for c in (u, v))
    r = yn + (2 - 2 * kr) * cr
    b = yn + (2 - 2 * kb) * cb
    g = (yn - kr * r - kb * b) / (1 - kr - kb)
    want = np.clip(np.stack([r, g, b], -1), 0, 255)
    assert np.abs(out - want).max() <= 0.51


def test_i420_round_trip_and_odd_sizes():
    rgb = np.random.default_rng(3).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    flat = np.repeat(np.repeat(rgb[::2, ::2], 2, axis=0), 2, axis=1)
    back = i420_to_rgb(*_planes(rgb_to_i420(flat), 16, 24))
    inside = (_float_rgb_to_ycbcr(flat)[..., 1:] > 16).all(-1) & (_float_rgb_to_ycbcr(flat)[..., 1:] < 240).all(-1)
    assert np.abs(back.astype(int) - flat)[inside].max() <= 2
    odd = i420_to_rgb(np.full((5, 7), 126, np.uint8), np.full((3, 4), 128, np.uint8), np.full((3, 4), 128, np.uint8))
    assert odd.shape == (5, 7, 3) and odd.flags.c_contiguous and (odd == 128).all()
    with pytest.raises(ValueError, match="4:2:0"):
        i420_to_rgb(np.zeros((4, 4), np.uint8), np.zeros((1, 2), np.uint8), np.zeros((1, 2), np.uint8))


def test_write_video_refuses_odd_or_changing_sizes(tmp_path):
    with pytest.raises(CionError, match="even"):
        write_video(tmp_path / "odd.mp4", [np.zeros((47, 64, 3), np.uint8)])
    with pytest.raises(CionError, match="changed"):
        write_video(tmp_path / "change.mp4", [np.zeros((48, 64, 3), np.uint8), np.zeros((48, 32, 3), np.uint8)])
    with pytest.raises(CionError, match="uint8"):
        write_video(tmp_path / "float.mp4", [np.zeros((48, 64, 3), np.float32)])
    assert not list(tmp_path.glob("*.mp4"))


def test_other_pixel_formats_still_decode(tmp_path):
    """Videos from elsewhere (here 4:4:4) go through libswscale, as before."""
    p = tmp_path / "yuv444.mp4"
    frames = _frames(n=4)
    with av.open(str(p), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = W, H, "yuv444p"
        for f in frames:
            for pkt in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode(None):
            c.mux(pkt)
    decoded = _decode(p)
    assert decoded.shape == (4, H, W, 3)
    assert np.abs(decoded.astype(np.int16) - np.stack(frames)).mean() < 7.0
