"""Configuration of the pre-training stage. Defaults are the released CION recipe
(../DESIGN: "Identity-guided self-distillation"); tests and the demo shrink them."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from cion_ray.config import require
from cion_ray.errors import ConfigError

# released gradual-K schedule: K = 2, 4, 6, 8 from epochs 0, 40, 60, 80 of 100
GRADUAL_K = "0:2,0.4:4,0.6:6,0.8:8"


def parse_k_schedule(text: str) -> list[tuple[float, int]]:
    """"0:2,0.4:4" -> [(0.0, 2), (0.4, 4)]: (fraction of the epochs where K starts, K)."""
    try:
        steps = [(float(a), int(b)) for a, b in (part.split(":") for part in text.split(",") if part.strip())]
    except ValueError:
        raise ConfigError(f"optim.k_schedule: expected 'fraction:K,...' (e.g. {GRADUAL_K}), got {text!r}") from None
    if not steps:
        raise ConfigError("optim.k_schedule is empty")
    return steps


@dataclass
class ViewsConfig:
    """The multi-crop views of each image: two global views and `local_crops` local ones."""

    global_size: tuple[int, int] = (256, 128)  # (height, width) of the two global views
    local_size: tuple[int, int] = (128, 64)  # (height, width) of the local views
    local_crops: int = 8  # local views per image
    global_scale: tuple[float, float] = (0.8, 1.0)  # area fraction a global crop keeps (RandomResizedCrop scale)
    local_scale: tuple[float, float] = (0.05, 0.8)  # area fraction a local crop keeps
    ratio: tuple[float, float] = (0.4, 0.6)  # width / height, as RandomResizedCrop's ratio
    # photometric augmentation: ColorJitter (brightness, contrast, saturation, hue) with
    # probability colour_p, grayscale, Gaussian blur on (global 1, global 2, local), solarize on global 2
    colour_jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
    colour_p: float = 0.8  # probability of the colour jitter
    grayscale_p: float = 0.2  # probability of turning a view grey
    blur_p: tuple[float, float, float] = (1.0, 0.1, 0.5)  # Gaussian blur probability: global 1, global 2, local
    # Gaussian blur radius range in pixels at the released view heights (global 256, local 128);
    # at other sizes it scales with the view height (pretrain/views.py: blur_radius)
    blur_radius: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.2  # probability of solarizing the second global view

    def __post_init__(self):
        if self.local_crops < 0:
            raise ConfigError("views.local_crops must be >= 0")
        for name in ("global_size", "local_size", "global_scale", "local_scale", "ratio"):
            if len(getattr(self, name)) != 2:
                raise ConfigError(f"views.{name} needs two values")
        if len(self.colour_jitter) != 4 or len(self.blur_p) != 3 or len(self.blur_radius) != 2:
            raise ConfigError("views.colour_jitter needs 4 values, views.blur_p 3 and views.blur_radius 2")
        probs = (self.colour_p, self.grayscale_p, self.solarize_p, *self.blur_p)
        if any(not 0 <= x <= 1 for x in probs):
            raise ConfigError(f"views: probabilities must lie in [0, 1], got {probs}")
        for name in ("global_size", "local_size"):
            if min(getattr(self, name)) < 8:
                raise ConfigError(f"views.{name} must be two sizes >= 8 (height, width), got {getattr(self, name)}")
        for name in ("global_scale", "local_scale"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi <= 1:
                raise ConfigError(f"views.{name} must satisfy 0 < low <= high <= 1, got {getattr(self, name)}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ConfigError(f"views.ratio must satisfy 0 < low <= high, got {self.ratio}")
        if min(self.colour_jitter) < 0 or self.colour_jitter[3] > 0.5:
            raise ConfigError(f"views.colour_jitter: strengths must be >= 0 and hue <= 0.5, got {self.colour_jitter}")
        if not 0 <= self.blur_radius[0] <= self.blur_radius[1]:
            raise ConfigError(f"views.blur_radius must satisfy 0 <= low <= high, got {self.blur_radius}")


@dataclass
class ModelConfig:
    """The student and teacher: a backbone and DINO's projection head."""

    arch: str = "resnet50_ibn"  # backbone: a ReIDZoo name (cion-ray zoo list) or a timm name
    out_dim: int = 65536  # dimensions of the head's output (the distribution the loss compares)
    hidden_dim: int = 2048  # width of the head's hidden layers
    bottleneck_dim: int = 256  # width of the head's bottleneck before its last (weight-normalised) layer
    norm_last_layer: bool = True  # fix the norm of the last layer's weights (DINO's norm_last_layer)
    head_bn: bool = False  # BatchNorm after the head's hidden layers (DINO's use_bn option)
    sync_bn: bool = True  # SyncBatchNorm for CNNs on GPU with several workers

    def __post_init__(self):
        for name in ("out_dim", "hidden_dim", "bottleneck_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class OptimConfig:
    """Schedules, the optimiser and the self-distillation loss."""

    epochs: int = 100  # length of the run
    batch_per_worker: int = 120  # fixed; P = batch // K shrinks as K grows
    lr: float = 5e-4  # per 256 images of the total batch
    min_lr: float = 1e-6  # the cosine schedule's final lr
    warmup_epochs: int = 10  # epochs of linear lr warm-up
    weight_decay: float = 0.04  # AdamW weight decay at the start (cosine schedule) ...
    weight_decay_end: float = 0.4  # ... and at the end
    clip_grad: float = 3.0  # per-parameter gradient norm clip, 0 = off
    freeze_last_layer: int = 1  # epochs with the head's last layer frozen
    momentum_teacher: float = 0.996  # EMA momentum of the teacher at the start (cosine to 1 at the end)
    teacher_temp: float = 0.04  # softmax temperature of the teacher's outputs
    student_temp: float = 0.1  # softmax temperature of the student's outputs
    center_momentum: float = 0.9  # EMA momentum of the centre subtracted from the teacher's outputs
    # how the teacher's outputs become targets: "center" (the released recipe: subtract an EMA of
    # the batch mean, then sharpen) or "sinkhorn" (Sinkhorn-Knopp equipartition over the batch,
    # as in SwAV and DINOv2; it cannot collapse to one dimension nor to the uniform distribution)
    centering: str = "center"
    sinkhorn_iters: int = 3  # centering=sinkhorn: Sinkhorn-Knopp iterations
    # teacher temperature warm-up (DINO): linear from warmup_teacher_temp to teacher_temp over
    # warmup_teacher_temp_epochs (0: none)
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 0  # epochs of the teacher temperature warm-up (0: none)
    # KoLeo regulariser (DINOv2) on the student's backbone features of the global views: spreads
    # a batch's identities apart (images of one identity are not pushed apart); 0 = off
    koleo: float = 0.0
    # gradual K: "fraction:K,..." (where each K starts, as a fraction of the epochs);
    # "0:1" = instance-level DINO, "0:2" = a constant K
    k_schedule: str = GRADUAL_K
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU), fp32, bf16, fp16
    iters_per_epoch: int = 0  # 0: images of the (fraction of the) data set / total batch

    @property
    def k_steps(self) -> list[tuple[float, int]]:
        return parse_k_schedule(self.k_schedule)

    def __post_init__(self):
        require(self.epochs >= 1, "optim.epochs", ">= 1", self.epochs)
        require(self.batch_per_worker >= 1, "optim.batch_per_worker", ">= 1", self.batch_per_worker)
        ks = parse_k_schedule(self.k_schedule)
        if ks[0][0] != 0.0 or any(b[0] <= a[0] for a, b in zip(ks, ks[1:])) or any(not 0 <= f < 1 for f, _ in ks):
            raise ConfigError(f"optim.k_schedule must start at 0 and rise within [0, 1): {self.k_schedule}")
        if any(k < 1 or k > self.batch_per_worker for _, k in ks):
            raise ConfigError(f"optim.k_schedule: every K must be in 1..batch_per_worker, got {self.k_schedule}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"optim.precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        if self.warmup_epochs < 0:
            raise ConfigError("optim.warmup_epochs must be >= 0")
        if self.centering not in ("center", "sinkhorn"):
            raise ConfigError(f"optim.centering must be center or sinkhorn, got {self.centering!r}")
        if self.sinkhorn_iters < 1 or self.warmup_teacher_temp_epochs < 0 or self.koleo < 0:
            raise ConfigError("optim: need sinkhorn_iters >= 1, warmup_teacher_temp_epochs >= 0 and koleo >= 0")
        if min(self.teacher_temp, self.warmup_teacher_temp, self.student_temp) <= 0:
            raise ConfigError("optim: temperatures must be > 0")
        require(self.lr >= 0, "optim.lr", ">= 0 (0: the no-learning control)", self.lr)
        for name in ("min_lr", "weight_decay", "weight_decay_end", "clip_grad", "freeze_last_layer",
                     "iters_per_epoch"):
            require(getattr(self, name) >= 0, f"optim.{name}", ">= 0", getattr(self, name))
        for name in ("momentum_teacher", "center_momentum"):
            require(0 <= getattr(self, name) <= 1, f"optim.{name}", "in [0, 1]", getattr(self, name))
        if self.warmup_epochs >= self.epochs:  # a run shorter than the warm-up: warm up over all but its last epoch
            self.warmup_epochs = self.epochs - 1


@dataclass
class ScaleConfig:
    """The Ray Train worker group."""

    workers: int = 1  # Ray Train workers (one process each; data-parallel)
    gpus_per_worker: float = -1.0  # < 0: 1 when the cluster has GPUs, else 0 (CPU, gloo)
    cpus_per_worker: float = 1.0  # CPUs each worker reserves
    loader_workers: int = 2  # DataLoader processes per training worker
    max_failures: int = 2  # worker-group restarts from the last checkpoint (-1: without limit)
    allow_pending: bool = False  # start even if the cluster is too small now (an autoscaler will add nodes)

    def __post_init__(self):
        require(self.workers >= 1, "scale.workers", ">= 1", self.workers)
        require(self.cpus_per_worker > 0, "scale.cpus_per_worker", "> 0", self.cpus_per_worker)
        require(self.loader_workers >= 0, "scale.loader_workers", ">= 0", self.loader_workers)
        require(self.max_failures >= -1, "scale.max_failures", ">= 0, or -1 for no limit", self.max_failures)


@dataclass
class PretrainConfig:
    """The pre-training stage (`cion-ray pretrain`): identity-guided self-distillation on Ray Train."""

    data: str = ""  # curated output (identities Parquet), track output (tracklet labels), or a CION-AL JSON
    out: str = ""  # run folder or s3:// prefix: Ray Train storage, checkpoints, TensorBoard, exports
    crops: str = ""  # tracking output holding a curated output's images (default: as recorded by curate)
    # identity (curated), tracklet (the tracklet-level baseline), instance (every image its own
    # identity: the instance-level baseline) or gt (the ground-truth identities of a synthetic world
    # or MOT gt.txt, matched to the crops: the upper bound; needs gt)
    labels: str = "identity"
    gt: str = ""  # labels=gt: the synthetic world folder (or a MOT folder with <video>/gt.txt)
    # backbone initialisation: "" (random, seeded) or a checkpoint (path or s3://) in any layout
    # cion-ray evaluate reads, e.g. an ImageNet-trained backbone; student and teacher start from it
    init: str = ""
    data_fraction: float = 1.0  # train on this seeded fraction of the identities, in (0, 1]
    seed: int = 0  # seeds identity selection, sampling, augmentation and initialisation
    checkpoint_every: int = 1  # epochs between checkpoints
    fault_drill_iteration: int = 0  # > 0: the last worker dies once at this iteration (a recovery drill)
    # a Market-style split (query/, bounding_box_test/): the teacher backbone's CMC / mAP / mINP on it
    # before training and at every checkpoint, measured on worker 0
    eval_data: str = ""
    # hold out this fraction of the identities (seeded, disjoint from training) as a validation split: the
    # teacher's retrieval on it (val_mAP, val_rank1, val_mINP) before training and at every checkpoint,
    # measured on worker 0 (pretrain/validation.py);
    validation: float = 0.0  # 0: off
    views: ViewsConfig = field(default_factory=ViewsConfig)  # augmented views
    model: ModelConfig = field(default_factory=ModelConfig)  # backbone and head
    optim: OptimConfig = field(default_factory=OptimConfig)  # optimisation and loss
    scale: ScaleConfig = field(default_factory=ScaleConfig)  # Ray Train workers

    def __post_init__(self):
        if not 0 < self.data_fraction <= 1:
            raise ConfigError(f"data_fraction must be in (0, 1], got {self.data_fraction}")
        if self.labels not in ("identity", "tracklet", "instance", "gt"):
            raise ConfigError(f"labels must be identity, tracklet, instance or gt, got {self.labels!r}")
        if self.labels == "instance" and max(k for _, k in self.optim.k_steps) > 1:
            raise ConfigError("labels=instance makes every image its own identity: K > 1 would only repeat each "
                              f"image; use optim.k_schedule 0:1 (--k-schedule 0:1), got {self.optim.k_schedule}")
        if (self.labels == "gt") != bool(self.gt):
            raise ConfigError("labels=gt needs gt (a synthetic world or MOT folder), and gt needs labels=gt")
        if self.checkpoint_every < 1:
            raise ConfigError("checkpoint_every must be >= 1")
        require(self.seed >= 0, "seed", ">= 0", self.seed)
        require(0 <= self.validation < 1, "validation", "in [0, 1) (0: no validation split)", self.validation)
        require(self.fault_drill_iteration >= 0, "fault_drill_iteration", ">= 0 (0: no drill)",
                self.fault_drill_iteration)

    def fingerprint(self) -> str:
        """What a resumed run must share with the one it continues."""
        d = asdict(self)
        for k in ("out", "fault_drill_iteration", "eval_data"):
            d.pop(k)
        if self.validation == 0:  # runs from before the validation split keep their fingerprint
            d.pop("validation")
        d["scale"] = {"workers": self.scale.workers}
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()[:16]
