"""The pipeline's one YAML config: where the videos are, where every output goes, which stages
run, and one section per stage (the stage's own config, as `cion-ray <stage> --config` takes it).

The pipeline owns the paths between stages: track writes `<out>/crops`, curate reads it and
writes `<out>/curated`, pre-training reads that and writes under `<out>/pretrain`, evaluation
reads its checkpoint and writes under `<out>/evaluate`. Setting one of those keys in a section
is an error that says which top-level key to use instead.

With `rounds` > 1, round r >= 2 curates the same crops again into `<out>/curated-r<r>`, embedding
them with the backbone that round r - 1 pre-trained (`curate.embed.embedder = cion:<its run>`),
then pre-trains on that and evaluates; round 1 is the pipeline as it is without rounds.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from cion_ray.config import load_config, plain, require
from cion_ray.curation.config import CurateConfig
from cion_ray.errors import ConfigError
from cion_ray.evaluate.pipeline import EvaluateConfig
from cion_ray.pretrain.config import PretrainConfig
from cion_ray.tracking.config import TrackConfig

STAGES = ("track", "curate", "pretrain", "evaluate")

# section key -> what sets it (the pipeline joins the stages; these are not the user's to set)
OWNED = {
    "track": {"out": "out", "videos": "videos"},
    "curate": {"out": "out", "crops": "out (the track stage writes <out>/crops)"},
    "pretrain": {"out": "out", "data": "out (the curate stage writes <out>/curated)",
                 "data_fraction": "fractions"},
    "evaluate": {"out": "out", "weights": "out (the pretrain stage's checkpoint)"},
}
# the input of a stage whose upstream stage is not in `stages` may be given in its section
INPUTS = {"curate": "crops", "pretrain": "data", "evaluate": "weights"}


@dataclass
class PipelineConfig:
    """One pipeline run: every stage's output under `out`."""
    out: str = ""  # output folder or s3:// prefix: crops/, curated/, pretrain/, evaluate/, status.json
    videos: str = ""  # input videos: a folder or s3:// prefix (the track stage's input)
    stages: list[str] = field(default_factory=lambda: list(STAGES))  # the stages to run, in pipeline order
    name: str = "cion"  # this pipeline's name: in the Ray job's metadata and its submission id
    fractions: list[float] = field(default_factory=list)  # data-percentage study: pre-train and evaluate once per fraction of the identities (empty: once, on all); with rounds, in the last round
    rounds: int = 1  # curation rounds: round r >= 2 re-curates the crops with round r-1's pre-trained backbone as the embedder (curated-r<r>/), pre-trains and evaluates again; quality per round in rounds.csv
    track: TrackConfig = field(default_factory=TrackConfig)  # `cion-ray track` settings (docs/config.md#track)
    curate: CurateConfig = field(default_factory=CurateConfig)  # `cion-ray curate` settings
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)  # `cion-ray pretrain` settings
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)  # `cion-ray evaluate` settings (data: the held-out split)

    def __post_init__(self):
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ConfigError(f"stages: unknown stage {unknown[0]!r}; the stages are {', '.join(STAGES)}")
        if not self.stages:
            raise ConfigError("stages: empty; choose from " + ", ".join(STAGES))
        order = [STAGES.index(s) for s in self.stages]
        if order != sorted(set(order)) or order != list(range(order[0], order[0] + len(order))):
            raise ConfigError(f"stages: {', '.join(self.stages)}: give consecutive stages in pipeline order "
                              f"({' -> '.join(STAGES)})")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", self.name):
            raise ConfigError(f"name: {self.name!r}: letters, digits, '.', '_' and '-' (at most 63)")
        for f in self.fractions:
            if not 0 < f <= 1:
                raise ConfigError(f"fractions: {f}: each fraction must be in (0, 1]")
        if len(set(self.fractions)) != len(self.fractions):
            raise ConfigError("fractions: a fraction is listed twice")
        require(self.rounds >= 1, "rounds", ">= 1", self.rounds)


def load_pipeline(path: str | Path | None, overrides: list[str] | None = None) -> PipelineConfig:
    """The config from YAML and `section.key=value` overrides, checked as a whole before any work:
    unknown keys (with the section they belong to), keys the pipeline owns, missing inputs."""
    cfg = load_config(PipelineConfig, path, overrides)
    check(cfg)
    return cfg


def check(cfg: PipelineConfig) -> None:
    if not cfg.out:
        raise ConfigError("out: the output folder or s3:// prefix is required (--set out=...)")
    defaults = {s: asdict(type(getattr(cfg, s))()) for s in STAGES}
    for s, owned in OWNED.items():
        section = asdict(getattr(cfg, s))
        for key, by in owned.items():
            if section[key] != defaults[s][key] and not (key == INPUTS.get(s) and _upstream_absent(cfg, s)):
                raise ConfigError(f"{s}.{key}: set by the pipeline from `{by}`; remove it from the {s} section")
    first = cfg.stages[0]
    if first == "track" and not cfg.videos:
        raise ConfigError("videos: the input videos (folder or s3:// prefix) are required to run the track stage")
    if first == "evaluate" and not cfg.evaluate.weights:
        raise ConfigError("evaluate.weights: the pipeline starts at evaluate, so give the checkpoint to evaluate")
    if "track" in cfg.stages:
        d = cfg.track.detector
        if d.kind == "yolo" and not d.weights:
            raise ConfigError("track.detector.weights: the YOLO weights (.pt path or s3:// URI) are required with "
                              "track.detector.kind yolo")
        if d.kind == "mot-det" and not d.mot:
            raise ConfigError("track.detector.mot: the folder of <video>/det.txt detections is required with "
                              "track.detector.kind mot-det (or use kind yolo with weights)")
    if "evaluate" in cfg.stages and not cfg.evaluate.data:
        raise ConfigError("evaluate.data: the held-out ReID split to evaluate on is required (query/ and "
                          "bounding_box_test/); or end `stages` at pretrain")
    if cfg.fractions and "pretrain" not in cfg.stages:
        raise ConfigError("fractions: a data-percentage study pre-trains once per fraction; add pretrain to stages")
    if cfg.rounds > 1 and not {"curate", "pretrain"} <= set(cfg.stages):
        raise ConfigError(f"rounds: {cfg.rounds} rounds re-curate with each round's pre-trained backbone; "
                          "stages must include curate and pretrain")


def _upstream_absent(cfg: PipelineConfig, stage: str) -> bool:
    return STAGES[STAGES.index(stage) - 1] not in cfg.stages


def stage_configs(cfg: PipelineConfig) -> dict[str, object]:
    """Each stage's own config, with the pipeline's paths filled in (pretrain / evaluate: their
    paths depend on their inputs' content and are completed when the stage starts)."""
    out = cfg.out.rstrip("/")
    crops = cfg.curate.crops if "track" not in cfg.stages and cfg.curate.crops else f"{out}/crops"
    data = cfg.pretrain.data if "curate" not in cfg.stages and cfg.pretrain.data else curated_out(out, 1)
    return {
        "track": replace(cfg.track, videos=cfg.videos, out=f"{out}/crops"),
        "curate": replace(cfg.curate, crops=crops, out=curated_out(out, 1)),
        "pretrain": replace(cfg.pretrain, data=data),
        "evaluate": cfg.evaluate,
    }


def curated_out(out: str, rnd: int) -> str:
    """Where round `rnd` writes its curation: `<out>/curated` in round 1, `<out>/curated-r<rnd>` after."""
    return f"{out.rstrip('/')}/curated" + (f"-r{rnd}" if rnd > 1 else "")


def round_configs(cfg: PipelineConfig, rnd: int, embedder_run: str) -> dict[str, object]:
    """The stage configs of round `rnd` >= 2: curation of the same crops with the backbone of
    `embedder_run` (the previous round's pre-training run folder) into curated-r<rnd>/, and
    pre-training on that (from the same settings as round 1; evaluation as in round 1)."""
    base = stage_configs(cfg)
    data = curated_out(cfg.out, rnd)
    embed = replace(cfg.curate.embed, embedder=f"cion:{embedder_run}", weights="")
    return {**base, "curate": replace(base["curate"], out=data, embed=embed),
            "pretrain": replace(base["pretrain"], data=data)}


def digest(cfg: PipelineConfig) -> str:
    return hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True, default=list).encode()).hexdigest()[:12]


def to_yaml(cfg: PipelineConfig) -> str:
    """The resolved config as YAML: every key, defaults included (what ran, to re-run it)."""
    import yaml

    return yaml.safe_dump(plain(asdict(cfg)), sort_keys=False, width=110)


__all__ = ["PipelineConfig", "STAGES", "load_pipeline", "check", "stage_configs", "curated_out", "round_configs",
           "digest", "to_yaml"]
