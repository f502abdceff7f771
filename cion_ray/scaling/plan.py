"""The scaling study's plan, without Ray: which (backbone, fraction) runs there are, their
pre-training configs, where they live, which identities each trains on, and the keys that say
whether a run found on disk is the same run.

Layout of a study folder `out`:
    runs/<arch>/f<fraction>/   one pre-training run (cion_ray.runtime.pretrain's layout) plus
        identities.json        the identity ids it trained on (nested: a smaller fraction's are a
                               subset of a larger one's), their count, image count and digest
        scale_run.json         the run's record: its keys, pre-training metrics, evaluation (and
                               fine-tuning) results; written as each phase ends
        evaluation.json        the held-out retrieval of its exported backbone (cion-ray evaluate)
        finetune/              with --finetune: a short fine-tuning on the eval split's training people
    scale.csv / scale.md / scale.png   the table and the figure (cion_ray.scaling.report)
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace

from cion_ray.errors import CionError
from cion_ray.io import fs, stage

RUN_RECORD = "scale_run.json"
IDENTITIES_FILE = "identities.json"
EVAL_FILE = "evaluation.json"
FORMAT = "cion-ray-scale-run/1"
DEFAULT_FRACTIONS = (0.1, 0.25, 0.5, 1.0)


@dataclass(frozen=True)
class ScaleSpec:
    """What `cion-ray scale` was asked for."""

    data: str  # curated output (or anything cion-ray pretrain reads)
    eval_data: str  # held-out Market-style split
    out: str  # study folder (local, or shared by every node)
    config: str = ""  # pre-training profile (YAML), e.g. configs/small.yaml
    overrides: tuple[str, ...] = ()  # --set K=V on the pre-training config
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    archs: tuple[str, ...] = ()  # () : the profile's model.arch
    seed: int | None = None  # None: the profile's seed
    finetune: bool = False
    finetune_steps: int = 200
    finetune_lr: float = 1e-3
    max_parallel: int = 0  # 0: as many as the cluster holds


@dataclass
class RunPlan:
    """One (backbone, fraction) run of the study."""

    arch: str
    fraction: float
    cfg: object  # PretrainConfig, cfg.out = run_dir
    run_dir: str
    key: str  # the pre-training's content key: data, settings (not where it is written)
    eval_key: str  # key + the held-out split and evaluation settings
    finetune_key: str  # eval_key + the fine-tuning settings ("" without --finetune)
    identities: list[int] = field(default_factory=list)  # identity ids trained on
    images: int = 0

    @property
    def label(self) -> str:
        return f"{self.arch} {self.fraction * 100:g}%"


def parse_fractions(text: str) -> tuple[float, ...]:
    """"0.1,0.25,0.5,1" -> (0.1, 0.25, 0.5, 1.0), sorted; each in (0, 1], no repeats."""
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise CionError(f"--fractions: expected numbers like 0.1,0.25,0.5,1, got {text!r}") from None
    if not values:
        raise CionError(f"--fractions: no fraction given ({text!r})")
    bad = [v for v in values if not 0 < v <= 1]
    if bad:
        raise CionError(f"--fractions: each must be in (0, 1] (a fraction of the identities), got {bad[0]:g}")
    if len(set(values)) < len(values):
        dup = next(v for v in values if values.count(v) > 1)
        raise CionError(f"--fractions: {dup:g} is given twice")
    return tuple(sorted(values))


def parse_archs(text: str) -> tuple[str, ...]:
    """"resnet18,resnet18_ibn" -> names checked against the zoo (an unknown one fails here)."""
    from cion_ray.zoo.factory import check_backbone

    names = [a.strip() for a in str(text).split(",") if a.strip()]
    if not names:
        raise CionError(f"--arch: no backbone given ({text!r})")
    if len(set(names)) < len(names):
        raise CionError(f"--arch: {next(a for a in names if names.count(a) > 1)} is given twice")
    for a in names:
        check_backbone(a)
    return tuple(names)


def run_dir(out: str, arch: str, fraction: float) -> str:
    return fs.join(out, "runs", arch, f"f{fraction:g}")


def identities_digest(ids) -> str:
    return hashlib.sha256(",".join(str(int(i)) for i in sorted(ids)).encode()).hexdigest()[:16]


def _data_key(data: str) -> object:
    """What the training data is: the curated manifest (a re-curation changes it), else the file."""
    m = fs.join(data, "_manifest.json")
    if not data.endswith(".json") and fs.exists(m):
        return stage.content_key(fs.read_json(m))
    ident = stage.source_identity(data)
    return {k: v for k, v in ident.items() if k != "mtime"}


def _split_key(eval_data: str, with_train: bool) -> str:
    """Which images the held-out split holds (names and sizes), not where it was read from."""
    import os

    from cion_ray.evaluate.datasets import load_dataset

    d = load_dataset(None, eval_data, with_train=with_train)
    files = d.query.files + d.gallery.files + (d.train.files if with_train and d.train is not None else [])
    return stage.content_key([(f.rsplit("/", 1)[-1], None if fs.is_remote(f) else os.path.getsize(f))
                              for f in files])


def base_config(spec: ScaleSpec):
    """The profile with --set applied, data and seed filled in (the fraction and arch come later)."""
    from cion_ray.config import load_config
    from cion_ray.pretrain.config import PretrainConfig

    return load_config(PretrainConfig, spec.config or None, list(spec.overrides),
                       values={"data": spec.data, "seed": spec.seed})


def make_plan(spec: ScaleSpec) -> list[RunPlan]:
    """Every run of the study, checked: the data, the held-out split, the backbones, and that each
    fraction holds enough identities for the profile's batches (the sampler's rule). A failure is a
    CionError naming the input, before Ray starts. Runs come backbone by backbone, smallest
    fraction first."""
    from cion_ray.pretrain.data import absolute, load_labels, select_identities
    from cion_ray.pretrain.sampler import worker_shortfall
    from cion_ray.pretrain.schedules import k_values
    from cion_ray.zoo.factory import check_backbone

    import numpy as np

    if not spec.data or not fs.exists(spec.data):
        raise CionError(f"--data {spec.data}: not found")
    if not spec.eval_data or not fs.exists(spec.eval_data):
        raise CionError(f"--eval-data {spec.eval_data}: not found")
    if not spec.out or fs.is_remote(spec.out):
        raise CionError(f"--out: the study needs a local folder (shared by every node on a cluster), got {spec.out!r}")
    spec = replace(spec, data=absolute(spec.data), eval_data=absolute(spec.eval_data), out=absolute(spec.out))
    base = base_config(spec)
    archs = spec.archs or (base.model.arch,)
    for a in archs:
        check_backbone(a)
    split = _split_key(spec.eval_data, spec.finetune)  # a missing or malformed split fails here
    base = replace(base, crops=absolute(base.crops), eval_data=absolute(base.eval_data), gt=absolute(base.gt),
                   init=absolute(base.init))
    table = load_labels(base.data, base.labels, base.crops, base.gt)
    if table.crops and not base.crops:  # as run_pretrain pins them: the run file's fingerprint then matches
        base = replace(base, crops=absolute(table.crops))
    data_key = _data_key(base.data)
    o, workers = base.optim, base.scale.workers
    plans = []
    for arch in archs:
        for f in spec.fractions:
            kept = select_identities(table.identity, f, base.seed)
            short = worker_shortfall(kept, workers, base.seed, o.batch_per_worker, k_values(o.k_steps, o.epochs))
            if short is not None:
                rank, k, p, held = short
                raise CionError(f"fraction {f:g}: {len(kept)} identities of {base.data} are too few for "
                                f"{workers} worker(s) x {o.batch_per_worker} images per batch (at K {k} a batch "
                                f"holds {p} identities, worker {rank} has {held}); use larger fractions, or a "
                                "smaller batch (--set optim.batch_per_worker=N)")
            d = run_dir(spec.out, arch, f)
            cfg = replace(base, model=replace(base.model, arch=arch), data_fraction=f, out=d)
            settings = {k: v for k, v in asdict(cfg).items() if k not in ("out", "fault_drill_iteration")}
            key = stage.content_key(FORMAT, data_key, settings)
            eval_key = stage.content_key(key, split, "knn-cosine-flip")
            ft_key = stage.content_key(eval_key, spec.finetune_steps, spec.finetune_lr) if spec.finetune else ""
            images = int(np.isin(table.identity, kept).sum())
            plans.append(RunPlan(arch, f, cfg, d, key, eval_key, ft_key, [int(i) for i in kept], images))
    return plans


def identities_doc(p: RunPlan) -> dict:
    """identities.json: the nesting record of one run."""
    return {"arch": p.arch, "fraction": p.fraction, "seed": p.cfg.seed, "identities": p.identities,
            "count": len(p.identities), "images": p.images, "digest": identities_digest(p.identities)}


def read_record(p: RunPlan) -> dict | None:
    uri = fs.join(p.run_dir, RUN_RECORD)
    if not fs.exists(uri):
        return None
    try:
        return fs.read_json(uri)
    except (CionError, ValueError, json.JSONDecodeError):
        return None


def pretrained(p: RunPlan, rec: dict | None) -> bool:
    """Whether the record says this run's pre-training finished, for the same key, and its
    exported backbone is still there."""
    return bool(rec and rec.get("key") == p.key and rec.get("pretrain")
                and fs.exists(fs.join(p.run_dir, "export", "backbone.pth")))


def complete(p: RunPlan, rec: dict | None) -> bool:
    """Whether nothing is left to do for this run: pre-trained, evaluated on this split, and
    fine-tuned when asked."""
    if not pretrained(p, rec):
        return False
    if (rec.get("evaluation") or {}).get("key") != p.eval_key:
        return False
    return not p.finetune_key or (rec.get("finetune") or {}).get("key") == p.finetune_key


def table_row(p: RunPlan, rec: dict) -> dict:
    """One row of the study's table from a run's record."""
    ev = rec.get("evaluation") or {}
    row = {"arch": p.arch, "fraction": p.fraction, "identities": len(p.identities), "images": p.images,
           "mAP": ev.get("mAP"), "rank1": ev.get("rank1"), "mINP": ev.get("mINP")}
    if p.finetune_key:
        ft = rec.get("finetune") or {}
        row.update(ft_mAP=ft.get("mAP"), ft_rank1=ft.get("rank1"), ft_mINP=ft.get("mINP"))
    return row
