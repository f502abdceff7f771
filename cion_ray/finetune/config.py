"""Configuration of supervised fine-tuning. Defaults are the "Bag of Tricks" strong baseline
(Luo et al., 2019), the downstream protocol CION's ReIDZoo numbers come from for CNNs: 256x128,
P x K = 16 x 4, Adam 3.5e-4 with weight decay 5e-4, 120 epochs, linear warm-up over the first 10,
lr x 0.1 at epochs 40 and 70, ID loss with label smoothing 0.1 + batch-hard triplet (margin 0.3)
through a BNNeck, random erasing p 0.5. `optim.steps` replaces epochs by a budget in iterations
(images seen = steps x P x K x workers); warm-up and decay points are fractions of the run, so
they scale with either.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from cion_ray.config import require
from cion_ray.errors import ConfigError
from cion_ray.pretrain.config import ScaleConfig


@dataclass
class FTModelConfig:
    """The ReID model: a backbone, a neck and an identity classifier."""

    arch: str = "resnet50_ibn"  # backbone: a ReIDZoo name (cion-ray zoo list) or a timm name
    # a checkpoint (path or s3:// URI, any layout zoo.checkpoints accepts); "" = random initialisation
    weights: str = ""
    neck: str = "bnneck"  # bnneck (BoT) | none: a plain linear classifier on the backbone feature
    neck_feat: str = "after"  # the retrieval feature: after the BNNeck (BoT) or before it
    sync_bn: bool = True  # CNNs on GPU with several workers

    def __post_init__(self):
        if self.neck not in ("bnneck", "none"):
            raise ConfigError(f"model.neck must be 'bnneck' or 'none', got {self.neck!r}")
        if self.neck_feat not in ("after", "before"):
            raise ConfigError(f"model.neck_feat must be 'after' or 'before', got {self.neck_feat!r}")


@dataclass
class AugmentConfig:
    """Training-image augmentation."""

    size: tuple[int, int] = (256, 128)  # (height, width) of training and evaluation images
    flip: float = 0.5  # horizontal flip probability
    pad: int = -1  # pixels of padding before the random crop; -1: 10 per 256 of height
    erasing: float = 0.5  # random erasing probability
    erasing_area: tuple[float, float] = (0.02, 0.4)  # erased fraction of the image area
    erasing_aspect: float = 0.3  # erased box aspect ratio in [a, 1 / a]

    def __post_init__(self):
        if len(self.size) != 2 or min(self.size) < 8:
            raise ConfigError(f"augment.size must be two sizes >= 8 (height, width), got {self.size}")
        if not (0 <= self.flip <= 1 and 0 <= self.erasing <= 1):
            raise ConfigError("augment.flip and augment.erasing are probabilities in [0, 1]")
        lo, hi = self.erasing_area
        if not 0 < lo <= hi < 1 or not 0 < self.erasing_aspect <= 1:
            raise ConfigError("augment: need 0 < erasing_area[0] <= erasing_area[1] < 1 and 0 < erasing_aspect <= 1")
        if self.pad < -1:
            raise ConfigError(f"augment.pad must be >= 0 pixels, or -1 for the default, got {self.pad}")

    @property
    def pad_pixels(self) -> int:
        return max(1, round(10 * self.size[0] / 256)) if self.pad < 0 else self.pad


@dataclass
class LossConfig:
    """ID (cross-entropy) loss plus batch-hard triplet loss."""

    label_smoothing: float = 0.1  # of the ID loss's targets, in [0, 1)
    margin: float = 0.3  # triplet margin (ignored with soft_margin)
    soft_margin: bool = False  # log(1 + exp(d_ap - d_an)) instead of the hinge
    id_weight: float = 1.0  # weight of the ID loss
    triplet_weight: float = 1.0  # 0: the plain ID-classification loss

    def __post_init__(self):
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"loss.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.id_weight < 0 or self.triplet_weight < 0 or self.id_weight + self.triplet_weight == 0:
            raise ConfigError("loss: weights must be >= 0 and not both 0")
        if self.margin < 0:
            raise ConfigError(f"loss.margin must be >= 0, got {self.margin}")


@dataclass
class FTOptimConfig:
    """Batches, the optimiser and the lr schedule."""

    optimizer: str = "adam"  # adam | adamw
    lr: float = 3.5e-4  # peak learning rate
    weight_decay: float = 5e-4  # not on biases and norm parameters
    identities_per_batch: int = 16  # P (lowered to what a small subset holds, and logged)
    images_per_identity: int = 4  # K
    epochs: int = 120  # an epoch: training images / total batch iterations
    steps: int = 0  # > 0: the run's length in iterations, instead of epochs
    warmup: float = 10 / 120  # fraction of the run with a linear warm-up
    warmup_start: float = 0.01  # warm-up starts at this fraction of lr
    schedule: str = "step"  # step | cosine
    milestones: tuple[float, ...] = (40 / 120, 70 / 120)  # step: fractions of the run where lr x gamma
    gamma: float = 0.1  # step: the lr factor at each milestone
    min_lr: float = 1e-7  # cosine: the final lr
    clip_grad: float = 0.0  # total gradient norm clip, 0 = off
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU), fp32, bf16

    def __post_init__(self):
        if self.optimizer not in ("adam", "adamw"):
            raise ConfigError(f"optim.optimizer must be adam or adamw, got {self.optimizer!r}")
        if self.schedule not in ("step", "cosine"):
            raise ConfigError(f"optim.schedule must be step or cosine, got {self.schedule!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"optim.precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.identities_per_batch < 2 or self.images_per_identity < 1:
            raise ConfigError("optim: a batch needs identities_per_batch >= 2 (triplets need negatives) "
                              "and images_per_identity >= 1")
        require(self.epochs >= 1, "optim.epochs", ">= 1", self.epochs)
        require(self.steps >= 0, "optim.steps", ">= 0 (0: use epochs)", self.steps)
        require(self.lr > 0, "optim.lr", "> 0", self.lr)
        require(0 <= self.warmup < 1, "optim.warmup", "in [0, 1) (a fraction of the run)", self.warmup)
        require(0 < self.warmup_start <= 1, "optim.warmup_start", "in (0, 1]", self.warmup_start)
        if any(not 0 < m < 1 for m in self.milestones) or list(self.milestones) != sorted(self.milestones):
            raise ConfigError(f"optim.milestones must rise within (0, 1), got {self.milestones}")
        require(0 < self.gamma <= 1, "optim.gamma", "in (0, 1]", self.gamma)
        for name in ("weight_decay", "min_lr", "clip_grad"):
            require(getattr(self, name) >= 0, f"optim.{name}", ">= 0", getattr(self, name))

    @property
    def batch_size(self) -> int:
        return self.identities_per_batch * self.images_per_identity


@dataclass
class EvalConfig:
    """Retrieval evaluation during and after training."""

    enabled: bool = True  # evaluate at all (false: train only)
    data: str = ""  # a dataset folder with query / gallery (any layout evaluate.datasets detects); "" = --data
    every: int = 0  # iterations between evaluations during training; 0 = at the end only
    initial: bool = True  # also evaluate the initialisation (eval_*_init)
    flip: bool = True  # average the features of the image and its mirror
    batch: int = 64  # images per forward pass
    max_rank: int = 50  # CMC length
    rerank: bool = False  # k-reciprocal re-ranking (k1 20, k2 6, lambda 0.3)

    def __post_init__(self):
        require(self.every >= 0, "eval.every", ">= 0 (0: at the end only)", self.every)
        require(self.batch >= 1, "eval.batch", ">= 1", self.batch)
        require(self.max_rank >= 1, "eval.max_rank", ">= 1", self.max_rank)


@dataclass
class FinetuneConfig:
    """The fine-tuning stage (`cion-ray finetune`): supervised ReID training and the data-efficiency protocol."""

    data: str = ""  # training images: a ReID dataset folder, a curated output, or Market-named images
    dataset: str = ""  # the loader of `data` (market1501, dukemtmc, cuhk03np, msmt17, synthetic); "" detects
    out: str = ""  # run folder or s3:// prefix
    data_fraction: float = 1.0  # seeded fraction of the training identities (nested across fractions)
    fractions: tuple[float, ...] = ()  # the data-efficiency protocol: one run per fraction
    parallel: bool = False  # protocol on Ray: start every fraction's trainer at once (they queue for resources)
    label: str = ""  # this run's name in protocol tables and plots (default: arch + init)
    seed: int = 0  # seeds the identity subset, sampling, augmentation and a random initialisation
    log_every: int = 50  # iterations between log lines and metrics.json entries
    threads: int = 0  # torch CPU threads (0: torch's default in this process, scale.cpus_per_worker on Ray)
    checkpoint_every: int = 0  # iterations between checkpoints (0 = at the end only)
    model: FTModelConfig = field(default_factory=FTModelConfig)  # backbone, neck, initialisation
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # training-image augmentation
    loss: LossConfig = field(default_factory=LossConfig)  # ID + triplet loss
    optim: FTOptimConfig = field(default_factory=FTOptimConfig)  # batches, optimiser, lr schedule
    eval: EvalConfig = field(default_factory=EvalConfig)  # evaluation during and after training
    scale: ScaleConfig = field(default_factory=ScaleConfig)  # Ray Train workers

    def __post_init__(self):
        if not 0 < self.data_fraction <= 1:
            raise ConfigError(f"data_fraction must be in (0, 1], got {self.data_fraction}")
        if any(not 0 < f <= 1 for f in self.fractions):
            raise ConfigError(f"fractions must each be in (0, 1], got {self.fractions}")
        require(self.log_every >= 1, "log_every", ">= 1", self.log_every)
        require(self.checkpoint_every >= 0, "checkpoint_every", ">= 0 (0: at the end only)", self.checkpoint_every)
        require(self.seed >= 0, "seed", ">= 0", self.seed)
        require(self.threads >= 0, "threads", ">= 0 (0: the default)", self.threads)
        if self.dataset:
            from cion_ray.evaluate.datasets import LOADERS

            if self.dataset not in LOADERS:
                raise ConfigError(f"dataset {self.dataset!r}: one of {', '.join(LOADERS)} (or empty: detected)")

    @property
    def eval_split(self) -> str:
        """The folder whose query / gallery the run evaluates on."""
        return self.eval.data or self.data

    @property
    def run_label(self) -> str:
        return self.label or f"{self.model.arch} ({'checkpoint' if self.model.weights else 'random init'})"

    def fingerprint(self) -> str:
        """What a resumed run must share with the one it continues."""
        d = asdict(self)
        for k in ("out", "log_every", "label", "parallel", "threads"):
            d.pop(k)
        d["eval"] = {}
        d["scale"] = {"workers": self.scale.workers}
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()[:16]
