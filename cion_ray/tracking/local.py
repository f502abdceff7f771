"""Track videos in this process, one after another: no Ray, no chunking.

The reference the Ray pipeline is tested and benchmarked against, and a
convenient way to track a handful of videos on a laptop.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import pyarrow as pa

from cion_ray.io import fs
from cion_ray.io.video import iter_frames
from cion_ray.tracking.config import TrackConfig
from cion_ray.tracking.detectors import MotDetections, YoloDetector
from cion_ray.tracking.manifest import VideoEntry, plan_chunks
from cion_ray.tracking.output import final_table
from cion_ray.tracking.tracker import chunk_frames, prefetch, process_chunk


@dataclass
class LocalRun:
    tables: list[pa.Table] = field(default_factory=list)
    frames: int = 0
    seconds: float = 0.0

    def table(self) -> pa.Table:
        from cion_ray.io.schemas import CROPS
        return pa.concat_tables(self.tables) if self.tables else CROPS.empty_table()


def make_detector(cfg: TrackConfig, video_id: str, device: str = "cpu", detector=None):
    """The detector for one video: the shared YOLO model, or the video's det.txt."""
    if cfg.detector.kind == "yolo":
        return detector or YoloDetector(cfg.detector.weights, device, cfg.detector.imgsz, cfg.detector.conf,
                                        cfg.detector.half)
    return MotDetections(fs.join(cfg.detector.mot, video_id, "det.txt"))


def track_local(cfg: TrackConfig, entries: list[VideoEntry], device: str = "cpu", decode_ahead: bool = True
                ) -> LocalRun:
    """Track each video whole (one chunk), with the same detector, tracker and filters as the stage."""
    run = LocalRun()
    t0 = time.perf_counter()
    yolo = make_detector(cfg, "", device) if cfg.detector.kind == "yolo" else None
    for e in entries:
        (chunk,) = plan_chunks(e, 0, 0, cfg.chunks.step_for(e.fps))
        frames = chunk_frames(chunk, lambda: fs.open_input(chunk.uri), iter_frames)
        res = process_chunk(chunk, prefetch(frames) if decode_ahead else frames,
                            make_detector(cfg, e.video_id, device, yolo), cfg.tracker, cfg.crops, cfg.detector.batch)
        run.frames += res.frames_decoded
        run.tables.append(final_table(chunk, res, cfg.crops.min_track_len))
    run.seconds = time.perf_counter() - t0
    return run
