"""Tracker glue: feed per-frame detections to an ultralytics tracker in frame order.

`process_chunk` is the unit of work of the stage: decode a chunk's frames,
detect in batches, track frame by frame, and keep the tracker outputs that
pass the crop filters, with JPEG crops for the frames the chunk owns.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Iterator

import cv2
import numpy as np

from cion_ray.errors import CionError
from cion_ray.tracking.config import CropConfig, TrackerConfig
from cion_ray.tracking.manifest import Chunk


class Detections:
    """Detections in the form ultralytics trackers read: `conf`, `cls`, `xywh`, boolean indexing."""

    def __init__(self, dets: np.ndarray):
        dets = np.asarray(dets, np.float32).reshape(-1, 5)
        self.xyxy = dets[:, :4]
        self.conf = dets[:, 4]
        self.cls = np.zeros(len(dets), np.float32)

    @property
    def xywh(self) -> np.ndarray:
        x1, y1, x2, y2 = self.xyxy.T
        return np.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], axis=1)

    def __len__(self) -> int:
        return len(self.conf)

    def __getitem__(self, idx) -> "Detections":
        return Detections(np.concatenate([self.xyxy[idx], self.conf[idx, None]], axis=1))


def sampled_buffer(track_buffer: int, step: int) -> int:
    """`track_buffer` source frames as a number of sampled frames when every `step`-th frame is
    tracked: rounded up, so a lost track is kept at least as long as at the full frame rate."""
    return -(-int(track_buffer) // max(1, int(step)))


def make_tracker(cfg: TrackerConfig, step: int = 1):
    """A fresh ultralytics BYTETracker or BOTSORT with the given settings, for a stream of every
    `step`-th frame.

    `track_buffer` counts frames of the source video (a duration: track_buffer / fps seconds).
    The pinned ultralytics trackers take no frame rate (they keep a lost track `track_buffer`
    updates), so the buffer is handed to them in sampled frames: the tracker sees fps / step."""
    from ultralytics.trackers.bot_sort import BOTSORT
    from ultralytics.trackers.byte_tracker import BYTETracker
    from ultralytics.utils import IterableSimpleNamespace

    args = asdict(cfg)
    args["track_buffer"] = sampled_buffer(cfg.track_buffer, step)
    kind = args.pop("kind")
    args["tracker_type"] = kind
    if kind == "botsort":
        args.update(with_reid=False, model="auto")
        return BOTSORT(IterableSimpleNamespace(**args))
    return BYTETracker(IterableSimpleNamespace(**args))


def track_frames(frames: Iterable[tuple[int, np.ndarray]], detect: Callable, tracker, batch: int = 16,
                 ) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (index, rgb, dets, tracks) per frame, in order.

    dets: (n, 5) detections; tracks: (m, 6) rows x1, y1, x2, y2, track_id, score where
    the box and score are those of the detection the track was updated with.
    Frames are detected `batch` at a time, then tracked one by one.
    """
    buf: list[tuple[int, np.ndarray]] = []

    def flush():
        dets = detect([f for _, f in buf], [i for i, _ in buf])
        for (i, img), d in zip(buf, dets):
            out = tracker.update(Detections(d), img[..., ::-1])
            if len(out):
                idx = out[:, 7].astype(np.int64)
                rows = np.concatenate([d[idx, :4], out[:, 4:5], d[idx, 4:5]], axis=1).astype(np.float32)
            else:
                rows = np.zeros((0, 6), np.float32)
            yield i, img, d, rows
        buf.clear()

    for item in frames:
        buf.append(item)
        if len(buf) >= batch:
            yield from flush()
    if buf:
        yield from flush()


def prefetch(it: Iterable, depth: int = 8) -> Iterator:
    """Run `it` in a background thread (decoding releases the GIL), `depth` items ahead."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    sentinel = object()
    error: list[BaseException] = []

    def run():
        try:
            for x in it:
                q.put(x)
        except BaseException as e:  # re-raised in the consumer
            error.append(e)
        finally:
            q.put(sentinel)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    while True:
        x = q.get()
        if x is sentinel:
            break
        yield x
    t.join()
    if error:
        raise error[0]


def encode_crop(img: np.ndarray, box, height: int, quality: int) -> bytes:
    """JPEG of `box` (x1, y1, x2, y2) from an RGB frame, resized to `height` pixels, aspect kept."""
    h, w = img.shape[:2]
    x1, y1 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x2, y2 = min(w, int(np.ceil(box[2]))), min(h, int(np.ceil(box[3])))
    crop = img[y1:max(y2, y1 + 1), x1:max(x2, x1 + 1)]
    ch, cw = crop.shape[:2]
    out_w = max(1, int(round(cw * height / ch)))
    crop = cv2.resize(crop, (out_w, height), interpolation=cv2.INTER_AREA if ch > height else cv2.INTER_LINEAR)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


@dataclass
class ChunkResult:
    """Kept tracker outputs of one chunk. Frames are 1-based; track ids are the chunk's own.

    Rows in the lead-in (frame <= own_start) carry an empty crop: they only serve stitching."""

    frame: list[int] = field(default_factory=list)
    track_id: list[int] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)  # (4,) float32 each
    score: list[float] = field(default_factory=list)
    crop: list[bytes] = field(default_factory=list)
    frames_decoded: int = 0
    detections: int = 0
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.frame)


def process_chunk(chunk: Chunk, frames: Iterable[tuple[int, np.ndarray]], detect: Callable,
                  tracker_cfg: TrackerConfig, crop_cfg: CropConfig, batch: int = 16) -> ChunkResult:
    """Track one chunk. `frames` yields (0-based index, rgb) for the chunk's sampled frames in order."""
    t0 = time.perf_counter()
    expected = len(range(-(-chunk.start // chunk.step) * chunk.step, chunk.stop, chunk.step))
    tracker = make_tracker(tracker_cfg, chunk.step)
    res = ChunkResult()
    for i, img, dets, rows in track_frames(frames, detect, tracker, batch):
        res.frames_decoded += 1
        res.detections += len(dets)
        if not len(rows):
            continue
        keep = (rows[:, 3] - rows[:, 1] >= crop_cfg.min_height) & (rows[:, 5] >= crop_cfg.min_score)
        own = i >= chunk.own_start
        for r in rows[keep]:
            res.frame.append(i + 1)
            res.track_id.append(int(r[4]))
            res.boxes.append(r[:4].copy())
            res.score.append(float(r[5]))
            res.crop.append(encode_crop(img, r[:4], crop_cfg.height, crop_cfg.jpeg_quality) if own else b"")
    if res.frames_decoded < expected:
        raise CionError(f"{chunk.uri}: truncated or corrupt: decoded {res.frames_decoded} of {expected} "
                        f"frames in [{chunk.start}, {chunk.stop})")
    res.seconds = time.perf_counter() - t0
    return res


def chunk_frames(chunk: Chunk, open_video: Callable[[], object], iter_frames: Callable) -> Iterator[tuple[int, np.ndarray]]:
    """The chunk's sampled frames: indices that are multiples of `step`, from `start` to `stop`."""
    first = -(-chunk.start // chunk.step) * chunk.step
    with open_video() as f:
        yield from iter_frames(f, start=first, stop=chunk.stop, step=chunk.step, name=chunk.uri)
