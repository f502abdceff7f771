"""One arm of the comparison at one seed, in this process (no Ray): train what the arm trains,
then evaluate its backbone on the held-out split. cion_ray/runtime/compare.py runs the arms as
Ray tasks; tests run them directly.

Outputs under `arm_dir`: checkpoint.pt (pre-training arms: resumes an interrupted arm),
backbone.pth (the evaluated backbone: the teacher's for distillation arms), result.json.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from cion_ray.compare.config import PRETRAIN_ARMS, ArmResult, CompareConfig
from cion_ray.config import load_config
from cion_ray.errors import CionError
from cion_ray.pretrain.config import PretrainConfig

METRICS = ("mAP", "mINP", "rank1", "rank5", "rank10")
# bumped when what an arm trains or measures changes: older stored results are then not reused
COMPARE_FORMAT = 1


def resolve_profile(profile: str) -> str:
    """A profile path as given, else relative to the repository (the default configs/small.yaml
    from any working directory)."""
    if Path(profile).is_file():
        return str(Path(profile).resolve())
    repo = Path(__file__).resolve().parents[2] / profile
    if not Path(profile).is_absolute() and repo.is_file():
        return str(repo)
    raise CionError(f"profile {profile}: not found")


def profile_config(cfg: CompareConfig) -> PretrainConfig:
    """The pre-training profile as one process runs it: the profile's total batch on one worker,
    in-process data loading."""
    p = load_config(PretrainConfig, resolve_profile(cfg.profile), list(cfg.overrides))
    total = p.optim.batch_per_worker * p.scale.workers
    return replace(p, optim=replace(p.optim, batch_per_worker=total),
                   scale=replace(p.scale, workers=1, loader_workers=0))


def budget(cfg: CompareConfig) -> tuple[int, int]:
    """(iterations, batch): every trained arm sees iterations x batch images."""
    p = profile_config(cfg)
    if p.optim.iters_per_epoch < 1:
        raise CionError(f"{cfg.profile}: the comparison needs optim.iters_per_epoch set (a fixed budget)")
    return p.optim.epochs * p.optim.iters_per_epoch, p.optim.batch_per_worker


def arm_pretrain_config(cfg: CompareConfig, arm: str, seed: int, out: str) -> PretrainConfig:
    labels, k = PRETRAIN_ARMS[arm]
    p = profile_config(cfg)
    optim = replace(p.optim, k_schedule=f"0:{k}") if k else p.optim
    return replace(p, data=cfg.data, out=out, labels=labels, gt=cfg.gt if arm == "gt" else "",
                   init=cfg.imagenet if arm == "imagenet_curated" else "", seed=seed, eval_data=cfg.eval_data,
                   checkpoint_every=1, optim=optim)


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _files_key(uris: list[str]) -> str:
    """Names and (local files) sizes of a file list: which images, not where they were read from."""
    import os

    from cion_ray.io import fs

    return _digest([(u.rsplit("/", 1)[-1], None if fs.is_remote(u) else os.path.getsize(u)) for u in uris])


def inputs_key(cfg: CompareConfig, arm: str) -> dict:
    """What an arm's result depends on besides settings: the curated output's manifest (a
    re-curation into the same folder changes it), the held-out split's files, and for the arms
    that use them the ground truth and the ImageNet weights."""
    from cion_ray.evaluate.datasets import load_dataset
    from cion_ray.io import fs

    d = load_dataset(None, cfg.eval_data, with_train=cfg.finetune_steps > 0)
    split = d.query.files + d.gallery.files + (d.train.files if d.train is not None else [])
    key = {"curated": _digest(fs.read_json(fs.join(cfg.data, "_manifest.json"))), "eval": _files_key(split)}
    if arm == "gt":
        from cion_ray.curation.gt import gt_layout

        folder, mapping = gt_layout(cfg.gt)
        key["gt"] = _digest([sorted((mapping or {}).items()), _files_key(fs.list_files(folder, ("gt.txt",)))])
    if arm.startswith("imagenet"):
        key["imagenet"] = hashlib.sha256(fs.read_bytes(cfg.imagenet)).hexdigest()[:16]
    return key


def arm_fingerprint(cfg: CompareConfig, arm: str, seed: int) -> str:
    """The settings and inputs an arm's stored result must match to be reused: the resolved
    pre-training profile (not its file name: an edited profile is another run), the arm's own
    configuration, the fine-tuning protocol, and inputs_key."""
    p = asdict(profile_config(cfg))
    for k in ("data", "out", "eval_data"):
        p.pop(k)
    own = arm_pretrain_config(cfg, arm, seed, "").fingerprint() if arm in PRETRAIN_ARMS else None
    return _digest({"format": COMPARE_FORMAT, "arm": arm, "seed": seed, "profile": p, "arm_config": own,
                    "finetune": [cfg.finetune_steps, cfg.finetune_lr], "inputs": inputs_key(cfg, arm)})


def reestimate_bn(model: torch.nn.Module, images: list[bytes], size: tuple[int, int], batch: int = 64) -> None:
    """Replace every BatchNorm's running statistics by their average over `images` (encoded, seen
    through the evaluation transform at `size`); weights are untouched."""
    from cion_ray.io.images import decode_jpeg, eval_array

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the passes
    was = model.training
    model.train()
    with torch.no_grad():
        for s in range(0, len(images) - batch + 1, batch):
            x = np.stack([eval_array(decode_jpeg(b), size) for b in images[s:s + batch]])
            model(torch.from_numpy(x))
    for m in bns:
        m.momentum = 0.1
    model.train(was)


def _pretrain(cfg: CompareConfig, arm: str, seed: int, arm_dir: Path, device: str, log) -> tuple:
    from cion_ray.pretrain.export import backbone_export
    from cion_ray.pretrain.loop import LocalContext, train
    from cion_ray.zoo.factory import create_backbone

    pcfg = arm_pretrain_config(cfg, arm, seed, str(arm_dir))
    train(pcfg, LocalContext(arm_dir, device), log=log)
    state = torch.load(arm_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    model = create_backbone(pcfg.model.arch, tuple(pcfg.views.global_size))
    model.load_state_dict(backbone_export(state))
    keep = ("epoch", "loss", "teacher_entropy", "kl", "teacher_mean_entropy", "feature_similarity", "eval_mAP",
            "eval_rank1")
    # every epoch, also those of an earlier process when the arm was resumed
    return model, [{k: m[k] for k in keep if k in m} for m in state.get("history", [])]


def _supervised(cfg: CompareConfig, seed: int, arm_dir: Path, device: str, log) -> torch.nn.Module:
    """The curated identities with a plain ID-classification loss (linear classifier, label
    smoothing 0.1, no triplet, no BNNeck), AdamW 1e-3 with a cosine schedule, at the budget."""
    from cion_ray.finetune.config import FinetuneConfig
    from cion_ray.finetune.loop import finetune

    iters, batch = budget(cfg)
    p = profile_config(cfg)
    k = 4
    fcfg = load_config(FinetuneConfig, None, [
        f"data={cfg.data}", f"out={arm_dir}", f"seed={seed}", f"model.arch={p.model.arch}", "model.weights=",
        "model.neck=none", "loss.triplet_weight=0", "loss.label_smoothing=0.1",
        f"augment.size={p.views.global_size[0]},{p.views.global_size[1]}", f"optim.steps={iters}",
        f"optim.identities_per_batch={max(2, batch // k)}", f"optim.images_per_identity={k}",
        "optim.optimizer=adamw", "optim.lr=1e-3", "optim.schedule=cosine", "optim.warmup=0.1",
        "eval.enabled=false", "scale.loader_workers=0", f"threads={cfg.threads}", f"log_every={max(1, iters // 4)}"])
    return finetune(fcfg, device=device, log=log).model.backbone


def _finetuned_metrics(cfg: CompareConfig, backbone_file: Path, seed: int, arm_dir: Path, device: str,
                       log) -> dict:
    """The downstream protocol, short: the BNNeck baseline (ID + triplet) fine-tuned from the
    arm's backbone on the held-out split's training people, then its retrieval."""
    from cion_ray.finetune.config import FinetuneConfig
    from cion_ray.finetune.loop import finetune

    p = profile_config(cfg)
    fcfg = load_config(FinetuneConfig, None, [
        f"data={cfg.eval_data}", f"out={arm_dir / 'finetune'}", f"seed={seed}", f"model.arch={p.model.arch}",
        f"model.weights={backbone_file}", f"augment.size={p.views.global_size[0]},{p.views.global_size[1]}",
        f"optim.steps={cfg.finetune_steps}", "optim.optimizer=adamw", f"optim.lr={cfg.finetune_lr}",
        "optim.schedule=cosine", "optim.warmup=0.1", "eval.initial=false", "scale.loader_workers=0",
        f"threads={cfg.threads}", f"log_every={max(1, cfg.finetune_steps // 2)}"])
    m = finetune(fcfg, device=device, log=log).metrics
    return {k: float(m[f"eval_{k}"]) for k in METRICS if f"eval_{k}" in m}


def evaluate_backbone_on(model: torch.nn.Module, eval_data: str, size: tuple[int, int], device: str) -> dict:
    """kNN retrieval (cosine, flip-averaged features) of `model` on the held-out split."""
    from cion_ray.evaluate.reid import evaluate_backbone

    m = evaluate_backbone(model, eval_data, tuple(size), device=device).summary()
    return {k: float(m[k]) for k in METRICS if k in m}


def run_arm(cfg: CompareConfig, arm: str, seed: int, arm_dir: str | Path, device: str = "cpu",
            log: Callable[[str], None] = print) -> ArmResult:
    """Train (or not) and evaluate one arm; a result already stored for the same settings is
    returned as it is."""
    from cion_ray.io import fs
    from cion_ray.zoo.checkpoints import RANDOM, load_backbone

    arm_dir = Path(arm_dir)
    fingerprint = arm_fingerprint(cfg, arm, seed)
    done = arm_dir / "result.json"
    if done.exists():
        prev = fs.read_json(str(done))
        if prev.get("fingerprint") == fingerprint:
            return ArmResult(**prev)
        raise CionError(f"{arm_dir}: holds a result of other settings or inputs (fingerprint {prev.get('fingerprint')}, "
                        f"now {fingerprint}); use another --out, or remove that arm's folder to run it again")
    arm_dir.mkdir(parents=True, exist_ok=True)
    before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    p = profile_config(cfg)
    arch, size = p.model.arch, tuple(p.views.global_size)
    iters, batch = budget(cfg)
    history: list[dict] = []
    seen = iters * batch
    try:
        if arm in PRETRAIN_ARMS:
            model, history = _pretrain(cfg, arm, seed, arm_dir, device, log)
        elif arm == "supervised":
            model = _supervised(cfg, seed, arm_dir, device, log)
        elif arm == "imagenet":
            model, seen = load_backbone(arch, cfg.imagenet, size)[0], 0
        else:  # random, random_bn: the initialisation every trained arm starts from at this seed
            model, seen = load_backbone(arch, RANDOM, size, seed)[0], 0
            if arm == "random_bn":
                reestimate_bn(model, _training_images(cfg, seed, 20 * 64), size)
        model = model.cpu().eval()
        metrics = evaluate_backbone_on(model, cfg.eval_data, size, device)
        log(f"{arm} (seed {seed}): mAP {metrics['mAP']:.4f}  rank-1 {metrics['rank1']:.4f}")
        torch.save(model.state_dict(), arm_dir / "backbone.pth")
        finetuned = {}
        if cfg.finetune_steps > 0 and arm != "random_bn":  # re-estimated statistics: the same as random
            finetuned = _finetuned_metrics(cfg, arm_dir / "backbone.pth", seed, arm_dir, device, log)
            log(f"{arm} (seed {seed}) fine-tuned: mAP {finetuned['mAP']:.4f}  rank-1 {finetuned['rank1']:.4f}")
    finally:
        torch.set_num_threads(before)
    result = ArmResult(arm, seed, metrics, finetuned, history, seen, round(time.perf_counter() - t0, 1), fingerprint)
    fs.write_json(str(done), asdict(result))
    return result


def _training_images(cfg: CompareConfig, seed: int, n: int) -> list[bytes]:
    """n encoded images drawn (seeded) from the curated training data."""
    from cion_ray.pretrain.data import fetch_images, load_labels

    table = load_labels(cfg.data, "identity")
    pick = np.sort(np.random.default_rng([seed, 5]).choice(len(table.keys), min(n, len(table.keys)), replace=False))
    return fetch_images(table.subset(np.isin(np.arange(len(table.keys)), pick)))
