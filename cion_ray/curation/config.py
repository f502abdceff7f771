"""Configuration of the curation stage. Thresholds are cosine distances (d = 1 - cos) between
L2-normalised embeddings; the defaults were chosen by a grid search on synthetic worlds of two
seeds with the hand-crafted embedder, maximising the worse of the two final pairwise F1 scores
(benchmarks/tune_curation.py; results in benchmarks/RESULTS.md). Another embedder, or other
footage, has another distance scale: by default (`calibrate`) each run scales them to its own
data's distances (cion_ray.curation.calibrate)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from cion_ray.config import require
from cion_ray.errors import ConfigError


@dataclass
class EmbedConfig:
    """`handcrafted` (no weights), `timm:<name>` with `weights` (path or s3:// URI; a plain state dict,
    a timm checkpoint, or a cion-ray pre-training checkpoint), or `cion:<run>`: the backbone of a
    `cion-ray pretrain` run (its folder or export, local or s3://), with the architecture and input
    size the run recorded."""

    embedder: str = "handcrafted"  # handcrafted (weights-free), timm:<name> (needs weights) or cion:<pre-training run>
    weights: str = ""  # timm embedder checkpoint: path or s3:// URI
    dtype: str = "float32"  # stored embedding type: float32 or float16
    batch: int = 256  # crops per forward pass
    height: int = 256  # embedder input height in pixels
    width: int = 128  # embedder input width in pixels

    def __post_init__(self):
        if self.embedder != "handcrafted" and not self.embedder.startswith(("timm:", "cion:")):
            raise ConfigError(f"embed.embedder must be 'handcrafted', 'timm:<name>' or 'cion:<pre-training run>', "
                              f"got {self.embedder!r}")
        if self.embedder.startswith(("timm:", "cion:")) and not self.embedder.split(":", 1)[1]:
            raise ConfigError(f"embed.embedder {self.embedder!r} names no backbone or run")
        if self.embedder.startswith("cion:") and self.weights:
            raise ConfigError("embed.weights: a cion:<run> embedder takes its weights from the run; leave weights empty")
        if self.dtype not in ("float32", "float16"):
            raise ConfigError(f"embed.dtype must be float32 or float16, got {self.dtype!r}")
        require(self.batch >= 1, "embed.batch", ">= 1", self.batch)
        require(self.height >= 8, "embed.height", ">= 8", self.height)
        require(self.width >= 8, "embed.width", ">= 8", self.width)


@dataclass
class DenoiseConfig:
    """L1: `radius` (max distance of a sample to its tracklet centroid) and `min_len` (samples a
    tracklet keeps at least); L2: `merge` (centroid distance under which tracklets of one video
    merge) and `margin` (how much closer another identity must be for a sample to move)."""

    radius: float = 0.20  # L1: samples farther than this from their tracklet's centroid are dropped
    min_len: int = 4  # L1: samples a tracklet keeps at least (shorter tracklets are dropped)
    merge: float = 0.06  # L2: tracklets of one video whose centroids are closer than this merge
    margin: float = 0.05  # L2: a sample moves to another identity only when that one is this much closer

    def __post_init__(self):
        require(0 < self.radius <= 2, "denoise.radius", "in (0, 2] (a cosine distance)", self.radius)
        require(0 <= self.merge <= 2, "denoise.merge", "in [0, 2] (a cosine distance)", self.merge)
        require(self.margin >= 0, "denoise.margin", ">= 0", self.margin)
        require(self.min_len >= 1, "denoise.min_len", ">= 1", self.min_len)


@dataclass
class LinkConfig:
    """L3: ranges of `window` videos every `stride` videos; a relation joins identities of different
    videos that are mutual `k`-nearest neighbours closer than `threshold`; the global pass adds
    pairs that are each other's nearest identity of another video in the whole corpus, closer than
    `global_scale` x `threshold` and clear by `global_ratio` (linking.relations); components whose
    members lie farther than `drift` from their centroid are split; identities with fewer than
    `min_images` samples are dropped at the end."""

    window: int = 6  # videos per sliding range (W)
    stride: int = 3  # videos between range starts (S, 1 <= S < W)
    k: int = 2  # identities of different videos link only as mutual k-nearest neighbours
    threshold: float = 0.08  # ... and closer than this
    global_ratio: float = 0.8  # global pass: identities that are each other's nearest of another video in the whole corpus link when closer than global_scale x threshold and than this x the runner-up's distance; 0: off
    global_scale: float = 2.0  # global pass: its distance limit is this x threshold (its mutual-nearest and ratio tests are stricter than a range's mutual k-NN, so it may reach further)
    global_max: int = 200_000  # the global pass runs on corpora of at most this many identities (its cost grows as their square); above, it is skipped and the report says so
    drift: float = 0.08  # linked components with members farther than this from their centroid are split
    min_images: int = 8  # identities with fewer samples are dropped at the end
    use_gpu: bool = False  # neighbour search on a GPU (faiss) when there is one

    @property
    def global_threshold(self) -> float:
        """The global pass's distance limit."""
        return self.global_scale * self.threshold

    def __post_init__(self):
        require(self.window >= 2, "link.window", ">= 2 (videos per range)", self.window)
        require(1 <= self.stride < self.window, "link.stride", f"in 1..window - 1 (window is {self.window})",
                self.stride)
        require(self.k >= 1, "link.k", ">= 1", self.k)
        require(self.threshold > 0, "link.threshold", "> 0", self.threshold)
        require(0 <= self.global_ratio <= 1, "link.global_ratio", "in [0, 1] (0 turns the global pass off)",
                self.global_ratio)
        require(self.global_scale >= 1, "link.global_scale", ">= 1 (a multiple of link.threshold)", self.global_scale)
        require(self.global_max >= 0, "link.global_max", ">= 0", self.global_max)
        require(self.drift > 0, "link.drift", "> 0", self.drift)
        require(self.min_images >= 1, "link.min_images", ">= 1", self.min_images)


@dataclass
class CalibrateConfig:
    """Thresholds set from each run's own data (cion_ray.curation.calibrate): the configured
    thresholds are scaled by how the data's same-person distances (within tracklets) and
    different-person distances (tracklets that share a frame) compare with those of the worlds they
    were tuned on. Off: the thresholds of `denoise` and `link` as given."""

    enabled: bool = True  # scale the thresholds to the data's own distances (false: use them as given)
    link_floor: float = 0.75  # merge / link / drift never scale below this fraction of the same-person scale
    min_pairs: int = 30  # fewer pairs of any kind than this: the thresholds as given, with a note in the report
    max_per_video: int = 2000  # distances of each kind kept per video (a seeded sample)

    def __post_init__(self):
        require(0 <= self.link_floor <= 1, "calibrate.link_floor", "in [0, 1]", self.link_floor)
        require(self.min_pairs >= 1, "calibrate.min_pairs", ">= 1", self.min_pairs)
        require(self.max_per_video >= 10, "calibrate.max_per_video", ">= 10", self.max_per_video)


@dataclass
class PoolConfig:
    """The embedding actor pool: `actors` actors with these resources each."""

    actors: int = 1  # embedding actors
    cpus_per_actor: float = 1.0  # CPUs each actor reserves
    gpus_per_actor: float = -1.0  # < 0: 1 for timm embedders when the cluster has GPUs, else 0

    def __post_init__(self):
        # checked here, so a bad value stops the command before Ray starts
        if self.actors < 1 or not self.cpus_per_actor > 0:
            raise ConfigError(f"pool: need actors >= 1 and cpus_per_actor > 0, got {self.actors} and "
                              f"{self.cpus_per_actor}")


@dataclass
class ExportConfig:
    """What the curation exports beside its identities Parquet (cion_ray.curation.export), when
    `export_market` (the switch of every export, `--no-export`) is on."""

    cion_al: bool = True  # CION-AL JSON + images, at any number of identities
    market: bool = True  # Market-1501 folder, when the identities fit its names (<= 9999; else skipped with a note)
    market_test_fraction: float = 0.0  # identities held out of bounding_box_train for query/ and bounding_box_test/
    market_seed: int = 0  # seed of the held-out identities' choice
    webdataset: bool = False  # WebDataset tar shards (webdataset/shard-*.tar + index.json)
    shard_size: int = 1000  # crops read per export piece: one WebDataset shard holds the kept ones
    writers: int = 0  # export actors writing files in parallel; 0: one per cluster CPU

    def __post_init__(self):
        require(0 <= self.market_test_fraction < 1, "export.market_test_fraction", "in [0, 1)",
                self.market_test_fraction)
        require(self.shard_size >= 1, "export.shard_size", ">= 1", self.shard_size)
        require(self.writers >= 0, "export.writers", ">= 0 (0: one per cluster CPU)", self.writers)

    def key(self) -> dict:
        """The settings that change what is exported (not how many actors write it)."""
        d = asdict(self)
        d.pop("writers")
        if not self.webdataset:
            d.pop("shard_size")
        if not self.market or not self.market_test_fraction:
            d.pop("market_seed")
        return d


TIMM_PREPROCESS = "pil-bicubic/1"
_IDENTITIES: dict[str, dict] = {}


def checkpoint_identity(uri: str) -> str:
    """The content of the checkpoint file a weights URI resolves to (the newest checkpoint of a
    run folder): its sha256 locally, its ETag on S3. A local file is hashed once per size and
    modification time in this process."""
    from cion_ray.io import stage
    from cion_ray.zoo.checkpoints import find_checkpoint_file

    file = find_checkpoint_file(uri)
    ident = _IDENTITIES[file] = stage.source_identity(file, _IDENTITIES.get(file))
    return f"{file}:{ident.get('sha256') or ident.get('etag')}:{ident.get('size')}"


@dataclass
class CurateConfig:
    """The curation stage (`cion-ray curate`): crops in, denoised cross-video identities out."""

    crops: str = ""  # output of the track stage (folder or s3:// prefix with _manifest.json)
    out: str = ""  # output folder or s3:// prefix
    gt: str = ""  # synthetic world folder (mot/ + identities.json) or a MOT folder, for quality figures
    embed: EmbedConfig = field(default_factory=EmbedConfig)  # how crops become embeddings
    denoise: DenoiseConfig = field(default_factory=DenoiseConfig)  # L1 and L2: within a tracklet and a video
    link: LinkConfig = field(default_factory=LinkConfig)  # L3: across videos, in sliding ranges
    calibrate: CalibrateConfig = field(default_factory=CalibrateConfig)  # thresholds from the data's own distances
    pool: PoolConfig = field(default_factory=PoolConfig)  # the embedding actor pool
    # every export on or off (`--no-export`); the name is kept for existing configs: it switches the
    # CION-AL export too, and `export` says which exports (the Market one only when it fits)
    export_market: bool = True
    export: ExportConfig = field(default_factory=ExportConfig)  # which exports, and the actors writing them

    def embed_fingerprint(self) -> str:
        d = asdict(self.embed)
        d.pop("batch")
        if self.embed.embedder.startswith(("timm:", "cion:")):
            # the timm embedder's input pipeline (cion_ray.zoo.features: PIL bicubic resize; it was
            # cv2 bilinear): embeddings cached under the old one are another feature space
            d["preprocess"] = TIMM_PREPROCESS
        if self.embed.embedder.startswith("cion:"):
            # the checkpoint's bytes, not its path: a run trained further (or again) at the same
            # place is another embedder, and embeddings cached with the old one must not be reused
            d["checkpoint"] = checkpoint_identity(self.embed.embedder[5:])
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def export_key(self, market_naming: str) -> tuple:
        """What of the export settings a committed curation's `inputs` key holds (not the
        fingerprint: another export choice re-runs the export only, on every cache). With exports
        off it is what it always was, (False,), so such an output stays current; with them on it
        names the Market naming scheme and the export settings, so an output exported the old way
        (every crop c1) is exported again rather than served as this run's result."""
        if not self.export_market:
            return (False,)
        return (True, market_naming, self.export.key())

    def fingerprint(self) -> str:
        d = {"embed": self.embed_fingerprint(), "denoise": asdict(self.denoise),
             "link": {k: v for k, v in asdict(self.link).items() if k != "use_gpu"},
             "calibrate": asdict(self.calibrate)}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
