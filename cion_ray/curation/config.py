"""Configuration of the curation stage. Thresholds are cosine distances (d = 1 - cos) between
L2-normalised embeddings; the defaults were chosen by a grid search on synthetic worlds of two
seeds with the hand-crafted embedder, maximising the worse of the two final pairwise F1 scores
(benchmarks/tune_curation.py; results in benchmarks/RESULTS.md). Another embedder has another
distance scale: tune them again for it."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from cion_ray.errors import ConfigError


@dataclass
class EmbedConfig:
    """`handcrafted` (no weights) or `timm:<name>` with `weights` (path or s3:// URI; a plain state dict,
    a timm checkpoint, or a cion-ray pre-training checkpoint)."""

    embedder: str = "handcrafted"
    weights: str = ""
    dtype: str = "float32"  # stored embedding type: float32 or float16
    batch: int = 256
    height: int = 256
    width: int = 128

    def __post_init__(self):
        if self.embedder != "handcrafted" and not self.embedder.startswith("timm:"):
            raise ConfigError(f"embedder must be 'handcrafted' or 'timm:<name>', got {self.embedder!r}")
        if self.dtype not in ("float32", "float16"):
            raise ConfigError(f"embed.dtype must be float32 or float16, got {self.dtype!r}")


@dataclass
class DenoiseConfig:
    """L1: `radius` (max distance of a sample to its tracklet centroid) and `min_len` (samples a
    tracklet keeps at least); L2: `merge` (centroid distance under which tracklets of one video
    merge) and `margin` (how much closer another identity must be for a sample to move)."""

    radius: float = 0.20
    min_len: int = 4
    merge: float = 0.06
    margin: float = 0.05

    def __post_init__(self):
        if not (0 < self.radius <= 2 and 0 <= self.merge <= 2 and self.margin >= 0 and self.min_len >= 1):
            raise ConfigError("denoise: need 0 < radius <= 2, 0 <= merge <= 2, margin >= 0, min_len >= 1")


@dataclass
class LinkConfig:
    """L3: ranges of `window` videos every `stride` videos; a relation joins identities of different
    videos that are mutual `k`-nearest neighbours closer than `threshold`; components whose members
    lie farther than `drift` from their centroid are split; identities with fewer than `min_images`
    samples are dropped at the end."""

    window: int = 6
    stride: int = 3
    k: int = 2
    threshold: float = 0.08
    drift: float = 0.08
    min_images: int = 8
    use_gpu: bool = False

    def __post_init__(self):
        if self.window < 2 or not 1 <= self.stride < self.window:
            raise ConfigError(f"link: need window >= 2 and 1 <= stride < window, got {self.window}/{self.stride}")
        if self.k < 1 or self.threshold <= 0 or self.drift <= 0 or self.min_images < 1:
            raise ConfigError("link: need k >= 1, threshold > 0, drift > 0, min_images >= 1")


@dataclass
class PoolConfig:
    """The embedding actor pool: `actors` actors with these resources each."""

    actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = -1.0  # < 0: 1 for timm embedders when the cluster has GPUs, else 0

    def __post_init__(self):
        # checked here, so a bad value stops the command before Ray starts
        if self.actors < 1 or not self.cpus_per_actor > 0:
            raise ConfigError(f"pool: need actors >= 1 and cpus_per_actor > 0, got {self.actors} and "
                              f"{self.cpus_per_actor}")


TIMM_PREPROCESS = "pil-bicubic/1"


@dataclass
class CurateConfig:
    crops: str = ""  # output of the track stage (folder or s3:// prefix with _manifest.json)
    out: str = ""
    gt: str = ""  # synthetic world folder (mot/ + identities.json) or a MOT folder, for quality figures
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    denoise: DenoiseConfig = field(default_factory=DenoiseConfig)
    link: LinkConfig = field(default_factory=LinkConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    export_market: bool = True

    def embed_fingerprint(self) -> str:
        d = asdict(self.embed)
        d.pop("batch")
        if self.embed.embedder.startswith("timm:"):
            # the timm embedder's input pipeline (cion_ray.zoo.features: PIL bicubic resize; it was
            # cv2 bilinear): embeddings cached under the old one are another feature space
            d["preprocess"] = TIMM_PREPROCESS
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def fingerprint(self) -> str:
        d = {"embed": self.embed_fingerprint(), "denoise": asdict(self.denoise),
             "link": {k: v for k, v in asdict(self.link).items() if k != "use_gpu"}}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
