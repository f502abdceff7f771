"""Configuration of the synthetic multi-camera pedestrian world."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from cion_ray.errors import ConfigError

# how people and imaging are drawn: "alt" is another distribution of figures, clothes, accessories
# and imaging conditions, for a world the hand-crafted descriptor was not designed on
STYLES = ("default", "alt")


@dataclass
class DetNoiseConfig:
    """How det.txt departs from the ground truth.

    A gt box is missed with probability `miss_rate + occlusion_miss * (1 - visibility)`
    (always when shorter than `min_height` px); a kept box has each edge moved by
    N(0, jitter * box size); `fp_per_frame` false positives per frame on average
    (Poisson). Scores: N(score_mean - 0.3 * (1 - visibility), score_std) for true
    boxes, U(fp_score_min, fp_score_max) for false ones, all clipped to [0.05, 1].
    """

    miss_rate: float = 0.04  # probability a fully visible gt box is missed
    occlusion_miss: float = 0.5  # extra miss probability of a fully occluded box (times 1 - visibility)
    min_height: float = 14.0  # gt boxes shorter than this (pixels) are always missed
    jitter: float = 0.03  # std of each edge's displacement, as a fraction of the box size
    fp_per_frame: float = 0.15  # false positives per frame on average (Poisson)
    score_mean: float = 0.85  # mean score of a fully visible true detection
    score_std: float = 0.07  # std of true detections' scores
    fp_score_min: float = 0.3  # false positives score uniformly between this ...
    fp_score_max: float = 0.65  # ... and this

    def __post_init__(self):
        for name in ("miss_rate", "occlusion_miss"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"det.{name} must be in [0, 1], got {v}")
        if self.jitter < 0 or self.fp_per_frame < 0 or self.score_std < 0 or self.min_height < 0:
            raise ConfigError("det.jitter, det.fp_per_frame, det.score_std and det.min_height must be >= 0")
        if not 0.0 <= self.fp_score_min <= self.fp_score_max <= 1.0:
            raise ConfigError("det.fp_score_min <= det.fp_score_max must lie in [0, 1]")
        if not 0.0 <= self.score_mean <= 1.0:
            raise ConfigError(f"det.score_mean must be in [0, 1], got {self.score_mean}")


@dataclass
class ReidSplitConfig:
    """The Market-1501 style split, built from identities that never appear in the videos."""

    train_identities: int = 16  # identities of bounding_box_train
    test_identities: int = 16  # identities of query and bounding_box_test
    min_cameras: int = 2  # each identity is seen by at least this many cameras ...
    max_cameras: int = 4  # ... and at most this many
    images_per_camera: int = 3  # images of an identity per camera

    def __post_init__(self):
        if self.train_identities < 0 or self.test_identities < 0:
            raise ConfigError("reid identity counts must be >= 0")
        if self.min_cameras < 1 or self.max_cameras < self.min_cameras:
            raise ConfigError("reid cameras: need 1 <= min_cameras <= max_cameras")
        if self.images_per_camera < 1:
            raise ConfigError("reid.images_per_camera must be >= 1")


@dataclass
class SynthConfig:
    """The world: `videos` videos of `frames` frames, each by one of `cameras` cameras,
    showing `identities` people, each in `min_videos_per_identity`..`max_videos_per_identity`
    videos, mostly within `locality` of a home position in the video order and with
    probability `far_prob` anywhere."""

    videos: int = 12  # number of videos
    identities: int = 60  # people walking through the videos
    frames: int = 200  # frames per video
    width: int = 320  # frame width in pixels (even, >= 64)
    height: int = 240  # frame height in pixels (even, >= 64)
    fps: float = 25.0  # frame rate the videos are written at
    cameras: int = 6  # cameras (1-9); each video is filmed by one of them
    seed: int = 0  # same seed, same world
    min_videos_per_identity: int = 2  # each person appears in at least this many videos ...
    max_videos_per_identity: int = 3  # ... and at most this many
    locality: int = 2  # a person's videos lie mostly within this many of a home position in the video order
    far_prob: float = 0.15  # probability one of a person's videos is anywhere in the order instead
    reentry_prob: float = 0.12  # probability a person walks through a video a second time
    style: str = "default"  # how people and imaging look: default, or alt (other palettes, clothing, accessories and proportions; stronger casts, gain, blur and noise)
    cast: float = 1.0  # strength of each video's colour cast: 0 none, 1 the style's own, 2 twice as far from neutral
    det: DetNoiseConfig = field(default_factory=DetNoiseConfig)  # how det.txt departs from the ground truth
    reid: ReidSplitConfig = field(default_factory=ReidSplitConfig)  # the Market-1501 style split

    def __post_init__(self):
        if self.videos < 1:
            raise ConfigError(f"videos must be >= 1, got {self.videos}")
        if self.identities < 1:
            raise ConfigError(f"identities must be >= 1, got {self.identities}")
        if self.frames < 1:
            raise ConfigError(f"frames must be >= 1, got {self.frames}")
        if self.width < 64 or self.height < 64 or self.width % 2 or self.height % 2:
            raise ConfigError(f"frame size must be even and at least 64x64, got {self.width}x{self.height}")
        if not 1 <= self.cameras <= 9:
            raise ConfigError(f"cameras must be in 1..9 (Market-1501 names use one digit), got {self.cameras}")
        if not 1 <= self.min_videos_per_identity <= self.max_videos_per_identity:
            raise ConfigError("need 1 <= min_videos_per_identity <= max_videos_per_identity")
        if self.fps <= 0:
            raise ConfigError(f"fps must be > 0, got {self.fps}")
        if not 0 <= self.far_prob <= 1 or not 0 <= self.reentry_prob <= 1:
            raise ConfigError("far_prob and reentry_prob must be in [0, 1]")
        if self.locality < 1:
            raise ConfigError(f"locality must be >= 1, got {self.locality}")
        if self.reid.train_identities + self.reid.test_identities > 0 and self.reid.min_cameras > self.cameras:
            raise ConfigError(f"reid.min_cameras ({self.reid.min_cameras}) exceeds the number of cameras ({self.cameras})")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        if self.style not in STYLES:
            raise ConfigError(f"style must be one of {', '.join(STYLES)}, got {self.style!r}")
        if not 0 <= self.cast < float("inf"):  # nan fails too
            raise ConfigError(f"cast must be a finite number >= 0, got {self.cast}")


PRESETS: dict[str, dict] = {
    # the demo world: a few minutes end to end on 2 cores
    "default": {},
    # for unit tests: seconds
    "tiny": dict(videos=4, identities=14, frames=60, cameras=3,
                 reid=ReidSplitConfig(train_identities=4, test_identities=5, max_cameras=3, images_per_camera=2)),
    # for benchmarks: more, longer, larger videos
    "bench": dict(videos=32, identities=200, frames=400, width=480, height=360, cameras=8,
                  reid=ReidSplitConfig(train_identities=50, test_identities=50)),
}


def preset(name: str, **overrides) -> SynthConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return replace(SynthConfig(**PRESETS[name]), **overrides)
