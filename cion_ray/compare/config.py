"""Configuration of the comparison of pre-training data sources (CION's claim, on held-out people).

Every trained arm gets the same backbone, the same initialisation seed and the same budget in
images seen (iterations x batch); they differ only in what supervises them:

    instance    single images, K = 1: instance-level DINO (each image its own identity)
    tracklet    the curated images grouped by tracklet (LUPerson-NL's labels)
    curated     cion-ray's curated cross-video identities (CION)
    gt          the same images grouped by their ground-truth person (an upper bound; needs gt)
    supervised  the curated identities with a plain ID-classification loss instead of distillation
    random      no training: the random initialisation itself
    random_bn   no training, but BatchNorm statistics re-estimated on the training images (what
                any trained network carries; shows how much of `random` is the statistics)
    imagenet    no training: ImageNet weights (needs imagenet, and an arch they fit)
    imagenet_curated  ImageNet weights, then pre-trained on the curated identities

Each arm's backbone is evaluated by kNN retrieval on the held-out split and, with
finetune_steps > 0, also after a short supervised fine-tuning on that split's training people.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from cion_ray.config import require
from cion_ray.errors import ConfigError

# what each arm trains with: pre-training labels (None: no pre-training) and K
PRETRAIN_ARMS = {"instance": ("instance", 1), "tracklet": ("tracklet", None), "curated": ("identity", None),
                 "gt": ("gt", None), "imagenet_curated": ("identity", None)}
OTHER_ARMS = ("supervised", "random", "random_bn", "imagenet")
# in the order of the table's rows
ARMS = ("instance", "tracklet", "curated", "gt", "random", "random_bn", "supervised", "imagenet", "imagenet_curated")
# the arms run when none are named: these, plus gt when gt is given and the imagenet arms when
# imagenet is given
DEFAULT_ARMS = ("random", "random_bn", "instance", "tracklet", "curated", "supervised")
LABELS = {"instance": "(a) single instances, K=1", "tracklet": "(b) tracklets", "curated": "(c) curated identities",
          "gt": "(d) ground-truth identities", "random": "(e) random init", "random_bn": "(e') random init, BN re-estimated",
          "supervised": "(f) curated identities, ID loss", "imagenet": "(g) ImageNet init",
          "imagenet_curated": "(g+c) ImageNet init + curated"}


@dataclass
class CompareConfig:
    """The comparison (`cion-ray compare`): one pre-training arm per data source, on held-out people.
    It has no --config; `overrides` change the pre-training profile."""

    data: str = ""  # a curated output (identities + the crops they came from)
    eval_data: str = ""  # held-out split: any dataset folder cion-ray evaluate reads (e.g. <world>/reid)
    gt: str = ""  # the synthetic world (or MOT folder) for the gt arm
    imagenet: str = ""  # ImageNet weights for the imagenet arms (make imagenet-weights; arch mobilenetv2)
    out: str = ""  # output folder (local or shared by every node)
    arms: tuple[str, ...] = ()  # () = DEFAULT_ARMS, with gt and the imagenet arms when their inputs are given
    profile: str = "configs/small.yaml"  # the pre-training config every distillation arm starts from
    overrides: tuple[str, ...] = ()  # --set-style overrides of the profile (e.g. model.arch=resnet18_ibn)
    seeds: tuple[int, ...] = (0,)  # each arm runs once per seed (initialisation and sampling)
    finetune_steps: int = 0  # > 0: also fine-tune each backbone on the held-out split's training people
    finetune_lr: float = 1e-3  # learning rate of that fine-tuning
    parallel: int = 0  # arms at once (0: as many as the cluster's CPUs / cpus_per_arm)
    cpus_per_arm: float = 1.0  # CPUs each arm's Ray task reserves
    gpus_per_arm: float = 0.0  # GPUs each arm's Ray task reserves
    threads: int = 1  # torch threads per arm (more than the arm's CPUs slows everything down)

    def __post_init__(self):
        arms = self.active_arms
        bad = [a for a in arms if a not in ARMS]
        if bad:
            raise ConfigError(f"arms: unknown {bad}; choose from {', '.join(ARMS)}")
        if len(set(arms)) != len(arms) or not self.seeds:
            raise ConfigError("arms must not repeat, and at least one seed is needed")
        if "gt" in arms and not self.gt:
            raise ConfigError("the gt arm needs gt: the synthetic world (or MOT folder) of the curated videos")
        if {"imagenet", "imagenet_curated"} & set(arms) and not self.imagenet:
            raise ConfigError("the imagenet arms need imagenet: a weights file (make imagenet-weights)")
        require(self.finetune_steps >= 0, "finetune_steps", ">= 0 (0: no fine-tuning)", self.finetune_steps)
        require(self.parallel >= 0, "parallel", ">= 0 (0: as the cluster allows)", self.parallel)
        require(self.cpus_per_arm > 0, "cpus_per_arm", "> 0", self.cpus_per_arm)
        require(self.gpus_per_arm >= 0, "gpus_per_arm", ">= 0", self.gpus_per_arm)
        require(self.threads >= 1, "threads", ">= 1", self.threads)
        require(self.finetune_lr > 0, "finetune_lr", "> 0", self.finetune_lr)
        if any(s < 0 for s in self.seeds):
            raise ConfigError(f"seeds must be >= 0, got {list(self.seeds)}")

    @property
    def active_arms(self) -> tuple[str, ...]:
        """The arms named, or DEFAULT_ARMS with gt and the imagenet arms when their inputs are given."""
        if self.arms:
            return tuple(self.arms)
        return DEFAULT_ARMS[:-1] + (("gt",) if self.gt else ()) + DEFAULT_ARMS[-1:] + (
            ("imagenet", "imagenet_curated") if self.imagenet else ())


@dataclass
class ArmResult:
    """One arm at one seed: kNN retrieval (and fine-tuned retrieval) on the held-out split."""
    arm: str
    seed: int
    metrics: dict  # mAP, mINP, rank1, rank5, rank10 (kNN on the held-out split)
    finetuned: dict = field(default_factory=dict)  # the same after fine-tuning (finetune_steps > 0)
    history: list[dict] = field(default_factory=list)  # pre-training arms: per-epoch metrics
    images_seen: int = 0
    seconds: float = 0.0
    fingerprint: str = ""
