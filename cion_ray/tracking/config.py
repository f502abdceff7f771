"""Configuration of the tracking stage."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from cion_ray.errors import ConfigError

DETECTORS = ("yolo", "mot-det")
TRACKERS = ("bytetrack", "botsort")


@dataclass
class DetectorConfig:
    """`yolo`: ultralytics YOLO, persons only, weights from `weights` (a .pt path or s3:// URI, or a
    model .yaml for an untrained network). `mot-det`: public detections from `mot`/<video_id>/det.txt."""

    kind: str = "mot-det"
    weights: str = ""
    mot: str = ""
    imgsz: int = 640
    conf: float = 0.1
    batch: int = 16
    half: bool = True

    def __post_init__(self):
        if self.kind not in DETECTORS:
            raise ConfigError(f"detector must be one of {', '.join(DETECTORS)}, got {self.kind!r}")
        if self.batch < 1 or self.imgsz < 32:
            raise ConfigError("detector.batch must be >= 1 and detector.imgsz >= 32")


@dataclass
class TrackerConfig:
    """Ultralytics tracker settings (names as in its bytetrack.yaml / botsort.yaml)."""

    kind: str = "bytetrack"
    track_high_thresh: float = 0.25
    track_low_thresh: float = 0.1
    new_track_thresh: float = 0.25
    track_buffer: int = 30  # frames of the source video a lost track is kept (a duration, at any frame step)
    match_thresh: float = 0.8
    fuse_score: bool = True
    gmc_method: str = "sparseOptFlow"  # botsort only
    proximity_thresh: float = 0.5
    appearance_thresh: float = 0.8

    def __post_init__(self):
        if self.kind not in TRACKERS:
            raise ConfigError(f"tracker must be one of {', '.join(TRACKERS)}, got {self.kind!r}")


@dataclass
class CropConfig:
    """Which tracker outputs become crops, and how they are stored."""

    height: int = 128  # crops are resized to this height, aspect kept
    jpeg_quality: int = 90
    min_height: float = 32.0  # boxes shorter than this (pixels) are not kept
    min_score: float = 0.3
    min_track_len: int = 5  # tracklets with fewer kept crops are dropped

    def __post_init__(self):
        if self.height < 8 or not 1 <= self.jpeg_quality <= 100 or self.min_track_len < 1:
            raise ConfigError("crops: need height >= 8, 1 <= jpeg_quality <= 100, min_track_len >= 1")


@dataclass
class ChunkConfig:
    """Long videos are split into chunks of `frames` source frames overlapping by `overlap` frames;
    `frame_step` keeps every n-th frame, or `target_fps` > 0 picks the step from the video's fps."""

    frames: int = 1500
    overlap: int = 16
    frame_step: int = 1
    target_fps: float = 0.0

    def __post_init__(self):
        if self.frames < 0 or self.overlap < 0 or self.frame_step < 1 or self.target_fps < 0:
            raise ConfigError("chunks: need frames >= 0, overlap >= 0, frame_step >= 1, target_fps >= 0")
        if self.frames and self.overlap >= self.frames:
            raise ConfigError(f"chunks.overlap ({self.overlap}) must be smaller than chunks.frames ({self.frames})")

    def step_for(self, fps: float) -> int:
        if self.target_fps > 0:
            return max(1, int(round(fps / self.target_fps)))
        return self.frame_step


@dataclass
class PoolConfig:
    """The actor pool: `actors` detector+tracker actors with these resources each.
    `gpus_per_actor` < 0 means automatic: 1 for the YOLO detector when the cluster has GPUs, else 0."""

    actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = -1.0

    def __post_init__(self):
        # checked here, so a bad value stops the command before Ray starts
        if self.actors < 1 or not self.cpus_per_actor > 0:
            raise ConfigError(f"pool: need actors >= 1 and cpus_per_actor > 0, got {self.actors} and "
                              f"{self.cpus_per_actor}")


@dataclass
class TrackConfig:
    videos: str = ""  # local folder or s3:// prefix (or a single video)
    out: str = ""  # local folder or s3:// prefix
    gt: str = ""  # folder with <video_id>/gt.txt for the quality report; defaults to detector.mot
    quality_report: bool = True  # MOTA / IDF1 against gt.txt where it exists
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    crops: CropConfig = field(default_factory=CropConfig)
    chunks: ChunkConfig = field(default_factory=ChunkConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)

    def fingerprint(self) -> str:
        """Hash of everything that changes the output rows (not paths or the actor pool)."""
        d = {k: asdict(getattr(self, k)) for k in ("tracker", "crops", "chunks")}
        det = asdict(self.detector)
        det.pop("batch")
        det.pop("mot")
        d["detector"] = det
        if self.chunks.frame_step != 1 or self.chunks.target_fps > 0:
            # the lost-track buffer counts source frames at any step (it counted sampled frames before):
            # crops tracked at a step under the old rule are another computation
            d["buffer"] = "source-frames/1"
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
