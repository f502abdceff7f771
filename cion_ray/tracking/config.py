"""Configuration of the tracking stage."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from cion_ray.config import require
from cion_ray.errors import ConfigError

DETECTORS = ("yolo", "mot-det")
TRACKERS = ("bytetrack", "botsort")
GMC_METHODS = ("sparseOptFlow", "orb", "sift", "ecc", "none")  # ultralytics trackers/utils/gmc.py


@dataclass
class DetectorConfig:
    """`yolo`: ultralytics YOLO, persons only, weights from `weights` (a .pt path or s3:// URI, or a
    model .yaml for an untrained network). `mot-det`: public detections from `mot`/<video_id>/det.txt."""

    kind: str = "mot-det"  # yolo (a person detector, needs weights) or mot-det (public detections, needs mot)
    weights: str = ""  # yolo: a .pt path or s3:// URI, or a model .yaml (an untrained network)
    mot: str = ""  # mot-det: folder or s3:// prefix with <video_id>/det.txt
    imgsz: int = 640  # yolo input size in pixels (the longer side)
    conf: float = 0.1  # yolo: detections scoring below this are dropped
    batch: int = 16  # yolo: frames per forward pass
    half: bool = True  # yolo: float16 inference on GPU

    def __post_init__(self):
        if self.kind not in DETECTORS:
            raise ConfigError(f"detector.kind must be one of {', '.join(DETECTORS)}, got {self.kind!r}")
        require(self.batch >= 1, "detector.batch", ">= 1", self.batch)
        require(self.imgsz >= 32, "detector.imgsz", ">= 32", self.imgsz)
        require(0 <= self.conf <= 1, "detector.conf", "in [0, 1]", self.conf)


@dataclass
class TrackerConfig:
    """Ultralytics tracker settings (names as in its bytetrack.yaml / botsort.yaml)."""

    kind: str = "bytetrack"  # bytetrack or botsort
    track_high_thresh: float = 0.25  # detections above this score are matched first
    track_low_thresh: float = 0.1  # detections between this and track_high_thresh are matched second
    new_track_thresh: float = 0.25  # an unmatched detection above this score starts a track
    track_buffer: int = 30  # frames of the source video a lost track is kept (a duration, at any frame step)
    match_thresh: float = 0.8  # IoU-cost threshold of a match (1 - IoU)
    fuse_score: bool = True  # fuse detection scores into the matching cost
    gmc_method: str = "sparseOptFlow"  # botsort only: camera-motion compensation (sparseOptFlow, orb, sift, ecc, none)
    proximity_thresh: float = 0.5  # botsort only: minimum IoU for an appearance match
    appearance_thresh: float = 0.8  # botsort only: appearance similarity needed for a match

    def __post_init__(self):
        if self.kind not in TRACKERS:
            raise ConfigError(f"tracker.kind must be one of {', '.join(TRACKERS)}, got {self.kind!r}")
        for name in ("track_high_thresh", "track_low_thresh", "new_track_thresh", "match_thresh",
                     "proximity_thresh", "appearance_thresh"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"tracker.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.track_low_thresh > self.track_high_thresh:
            raise ConfigError(f"tracker.track_low_thresh ({self.track_low_thresh}) must not exceed "
                              f"tracker.track_high_thresh ({self.track_high_thresh})")
        if self.track_buffer < 1:
            raise ConfigError(f"tracker.track_buffer must be >= 1 (frames), got {self.track_buffer}")
        if self.gmc_method not in GMC_METHODS:
            raise ConfigError(f"tracker.gmc_method must be one of {', '.join(GMC_METHODS)}, got {self.gmc_method!r}")


@dataclass
class CropConfig:
    """Which tracker outputs become crops, and how they are stored."""

    height: int = 128  # crops are resized to this height, aspect kept
    jpeg_quality: int = 90  # JPEG quality of the stored crops, 1-100
    min_height: float = 32.0  # boxes shorter than this (pixels) are not kept
    min_score: float = 0.3  # tracked boxes whose detection score is below this are not kept
    min_track_len: int = 5  # tracklets with fewer kept crops are dropped

    def __post_init__(self):
        require(self.height >= 8, "crops.height", ">= 8", self.height)
        require(1 <= self.jpeg_quality <= 100, "crops.jpeg_quality", "in 1..100", self.jpeg_quality)
        require(self.min_track_len >= 1, "crops.min_track_len", ">= 1", self.min_track_len)
        require(self.min_height >= 0, "crops.min_height", ">= 0", self.min_height)
        require(0 <= self.min_score <= 1, "crops.min_score", "in [0, 1]", self.min_score)


@dataclass
class ChunkConfig:
    """Long videos are split into chunks of `frames` source frames overlapping by `overlap` frames;
    `frame_step` keeps every n-th frame, or `target_fps` > 0 picks the step from the video's fps."""

    frames: int = 1500  # source frames per chunk; longer videos are split (0: never)
    overlap: int = 16  # frames shared by adjacent chunks, to stitch their tracks
    frame_step: int = 1  # track every n-th frame
    target_fps: float = 0.0  # > 0: track at about this frame rate (overrides frame_step)

    def __post_init__(self):
        require(self.frames >= 0, "chunks.frames", ">= 0 (0: never split)", self.frames)
        require(self.overlap >= 0, "chunks.overlap", ">= 0", self.overlap)
        require(self.frame_step >= 1, "chunks.frame_step", ">= 1", self.frame_step)
        require(self.target_fps >= 0, "chunks.target_fps", ">= 0 (0: use frame_step)", self.target_fps)
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

    actors: int = 1  # detector+tracker actors
    cpus_per_actor: float = 1.0  # CPUs each actor reserves
    gpus_per_actor: float = -1.0  # < 0: 1 for the yolo detector when the cluster has GPUs, else 0

    def __post_init__(self):
        # checked here, so a bad value stops the command before Ray starts
        if self.actors < 1 or not self.cpus_per_actor > 0:
            raise ConfigError(f"pool: need actors >= 1 and cpus_per_actor > 0, got {self.actors} and "
                              f"{self.cpus_per_actor}")


@dataclass
class TrackConfig:
    """The tracking stage (`cion-ray track`): videos in, person crops and tracklets out (Parquet)."""

    videos: str = ""  # local folder or s3:// prefix (or a single video)
    out: str = ""  # local folder or s3:// prefix
    gt: str = ""  # folder with <video_id>/gt.txt for the quality report; defaults to detector.mot
    quality_report: bool = True  # MOTA / IDF1 against gt.txt where it exists
    detector: DetectorConfig = field(default_factory=DetectorConfig)  # where person boxes come from
    tracker: TrackerConfig = field(default_factory=TrackerConfig)  # boxes -> tracks within a video
    crops: CropConfig = field(default_factory=CropConfig)  # which tracked boxes become crops
    chunks: ChunkConfig = field(default_factory=ChunkConfig)  # long videos in chunks; frame sampling
    pool: PoolConfig = field(default_factory=PoolConfig)  # the actor pool

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
