"""The fine-tuning loop, independent of how it is distributed.

`train(cfg, ctx)` runs on every worker with the TrainContext protocol of pre-training
(cion_ray.pretrain.loop): the Ray Train launcher (cion_ray/runtime/finetune.py) passes its
RayTrainContext, `finetune(cfg)` runs the same loop in this process with a LocalContext.

The run's length is a number of iterations (`optim.steps`, or epochs x training images / total
batch); every `log_every` iterations all workers report loss parts, lr, throughput and ETA;
worker 0 evaluates retrieval on the held-out split at the end (and every `eval.every`
iterations, and before training when `eval.initial`) and checkpoints at the end (and every
`checkpoint_every`). A restarted or resumed run continues from the newest checkpoint with the
same batches and augmentations (both are functions of seed, rank and iteration).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from cion_ray.errors import CionError
from cion_ray.finetune import data as D
from cion_ray.finetune.augment import TrainTransform
from cion_ray.finetune.config import FinetuneConfig
from cion_ray.finetune.losses import reid_loss
from cion_ray.finetune.model import ReIDModel, build_reid_model
from cion_ray.finetune.optim import build_optimizer, lr_schedule
from cion_ray.finetune.outputs import FORMAT, checkpoint_state
from cion_ray.pretrain.loop import LocalContext, TrainContext
from cion_ray.pretrain.sampler import IdentitySampler, shard_identities

PARTS = ("loss", "id_loss", "triplet_loss", "id_acc", "triplet_acc")


@dataclass
class FinetuneOutcome:
    metrics: dict  # the last report: step, images seen, loss parts, eval_* (and eval_*_init)
    model: ReIDModel  # this worker's model, unwrapped, in eval mode
    history: list[dict] = field(default_factory=list)  # every report of this run (worker 0)
    state: dict | None = None  # worker 0: the final checkpoint


def evaluate_retrieval(model: torch.nn.Module, cfg: FinetuneConfig, dataset, device: torch.device,
                       log: Callable[[str], None] = print) -> dict:
    """CMC / mAP / mINP of the model's retrieval feature on `dataset` (an evaluate.datasets
    ReIDDataset), as eval_* metrics."""
    from cion_ray.evaluate.pipeline import EvaluateConfig, FeatureOptions, evaluate_model
    from cion_ray.evaluate.search import RankingOptions

    e = cfg.eval
    ecfg = EvaluateConfig(features=FeatureOptions(tuple(cfg.augment.size), e.batch, e.flip, str(device)),
                          ranking=RankingOptions(rerank=e.rerank, max_rank=e.max_rank))
    m = evaluate_model(model, dataset, ecfg, log=log)["metrics"]
    return {f"eval_{k}": m[k] for k in ("mAP", "mINP", "rank1", "rank5", "rank10") if k in m}


def _eval_text(m: dict, suffix: str = "") -> str:
    return (f"mAP {m[f'eval_mAP{suffix}']:.4f}  rank-1 {m[f'eval_rank1{suffix}']:.4f}  "
            f"mINP {m[f'eval_mINP{suffix}']:.4f}")


def _dtype(cfg: FinetuneConfig, device: torch.device) -> torch.dtype | None:
    p = cfg.optim.precision
    if p == "bf16" or (p == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def train(cfg: FinetuneConfig, ctx: TrainContext, log: Callable[[str], None] = print,
          on_log: Callable[[dict], None] | None = None) -> FinetuneOutcome:
    """Fine-tune (or resume) on this worker; see the module doc. on_log(metrics): worker 0's hook
    at every report (metrics.json)."""
    o, rank, world, device = cfg.optim, ctx.rank, ctx.world_size, ctx.device
    worker_started_at = time.time()  # wall-clock s: with each report's step_at, when this worker ran
    say = log if rank == 0 else (lambda m: None)
    full = D.load_train_set(cfg.data, cfg.data_fraction, cfg.seed, cfg.dataset)
    held_out = D.eval_dataset(cfg.data, cfg.eval.data, cfg.dataset) if cfg.eval.enabled and rank == 0 else None
    p = D.shared_identities_per_batch(full.pids, o.identities_per_batch, world, cfg.seed)
    k = o.images_per_identity
    local = full.subset(np.isin(full.pids, shard_identities(full.pids, world, rank, cfg.seed)))
    t0 = time.perf_counter()
    images = D.read_images(local.files)
    ipe = D.iterations_per_epoch(len(full.files), p * k, world)
    total = D.total_iterations(o.steps, o.epochs, ipe)
    lr = lr_schedule(o, total)
    say(f"data: {full.source}: {full.num_classes} identities, {len(full.files)} images (fraction "
        f"{cfg.data_fraction}, seed {cfg.seed}); worker 0 read {len(images)} in {time.perf_counter() - t0:.1f}s")
    say(f"batch: {p} identities x {k} images x {world} worker(s)"
        + (f" (P lowered from {o.identities_per_batch} to what the shards hold)" if p < o.identities_per_batch else "")
        + f"; {total} iterations ({total / ipe:.1f} epochs of {ipe}), {total * p * k * world} images seen")

    model = build_reid_model(cfg.model.arch, full.num_classes, cfg.augment.size, cfg.model.weights, cfg.seed,
                             cfg.model.neck_feat, cfg.model.neck, log=say)
    if device.type == "cuda" and world > 1 and cfg.model.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    fwd = ctx.wrap(model)
    opt = build_optimizer(model, o)
    dtype = _dtype(cfg, device)

    it, eval_init = 0, {}
    state = ctx.latest_checkpoint()
    if state is not None:
        if state.get("format") != FORMAT or state.get("arch") != cfg.model.arch:
            raise CionError(f"the checkpoint to resume from is not a fine-tuning checkpoint of {cfg.model.arch}")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        it, eval_init = int(state["iteration"]), dict(state.get("eval_init") or {})
        say(f"resumed at iteration {it}")
        if eval_init and state.get("eval_init_data") != cfg.eval_split:
            # the eval split is not in the fingerprint, and the initial weights are gone: figures of
            # another split cannot stand beside this one's
            say(f"the retrieval before fine-tuning was measured on {state.get('eval_init_data') or 'another split'}, "
                f"not {cfg.eval_split}: it is not reported for this run (the initial weights are not kept to "
                "measure it again)")
            eval_init = {}
    elif held_out is not None and cfg.eval.initial:
        eval_init = {f"{key}_init": v for key, v in evaluate_retrieval(model, cfg, held_out, device, say).items()}
        say(f"retrieval before fine-tuning on {held_out.root}: {_eval_text(eval_init, '_init')}")

    sampler = IdentitySampler(local.labels, p * k, cfg.seed, rank)
    loader = torch.utils.data.DataLoader(
        D.TrainImages(images, local.files, local.labels, TrainTransform(cfg.augment)),
        batch_sampler=D.StepBatches(sampler, k, ipe, it, total, cfg.seed, rank),
        num_workers=cfg.scale.loader_workers, pin_memory=device.type == "cuda")
    common = {"identities": full.num_classes, "train_images": len(full.files), "identities_per_batch": p,
              "total_steps": total, "data_fraction": cfg.data_fraction}
    history: list[dict] = []
    metrics: dict = {}
    ckpt = None
    sums = torch.zeros(len(PARTS) + 1, dtype=torch.float64, device=device)
    start_it, train_s, t_mark, it_mark = it, 0.0, time.perf_counter(), it
    model.train()
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        for g in opt.param_groups:
            g["lr"] = float(lr[it])
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            feat, logits = fwd(x)
        loss, parts = reid_loss(feat, logits, y, cfg.loss.label_smoothing, cfg.loss.margin, cfg.loss.soft_margin,
                                cfg.loss.id_weight, cfg.loss.triplet_weight)
        if not math.isfinite(loss.item()):
            raise CionError(f"loss is {loss.item()} at iteration {it}: stopping (lower optim.lr?)")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if o.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip_grad)
        opt.step()
        it += 1
        sums += torch.stack([loss.detach(), parts["id"], parts["triplet"], parts["id_acc"], parts["triplet_acc"],
                             torch.ones((), device=device)]).double()
        last = it == total
        do_eval = cfg.eval.enabled and (last or (cfg.eval.every > 0 and it % cfg.eval.every == 0))
        do_ckpt = last or (cfg.checkpoint_every > 0 and it % cfg.checkpoint_every == 0)
        if not (last or do_eval or do_ckpt or it % cfg.log_every == 0):
            continue
        if device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        train_s += now - t_mark
        s = ctx.all_reduce_sum(sums.clone())
        n = float(s[-1])
        metrics = {"step": it, "epoch": it / ipe, "images": it * p * k * world,
                   **{name: float(s[i] / n) for i, name in enumerate(PARTS)}, "lr": float(lr[it - 1]),
                   "images_per_s": (it - it_mark) * p * k * world / max(now - t_mark, 1e-9),
                   "eta_s": (total - it) * train_s / max(it - start_it, 1), "train_seconds": train_s,
                   "worker_started_at": worker_started_at, "step_at": time.time(), **common}
        sums.zero_()
        ckpt = None
        if rank == 0:
            if do_eval:
                metrics.update(evaluate_retrieval(model, cfg, held_out, device, say))
                model.train()
            metrics.update(eval_init)
            if do_ckpt:
                ckpt = checkpoint_state(cfg, model, opt, it, eval_init, metrics)
            say(f"step {it}/{total}  loss {metrics['loss']:.4f} (id {metrics['id_loss']:.3f} + triplet "
                f"{metrics['triplet_loss']:.3f})  acc {metrics['id_acc']:.3f}  lr {metrics['lr']:.2e}  "
                f"{metrics['images_per_s']:.1f} img/s  ETA {metrics['eta_s']:.0f}s"
                + (f"\n  retrieval: {_eval_text(metrics)}" if do_eval else ""))
            history.append(dict(metrics))
            if on_log is not None:
                on_log(metrics)
        ctx.report(metrics, ckpt)
        t_mark, it_mark = time.perf_counter(), it
    if it != total:
        raise CionError(f"the batches ran out at iteration {it} of {total}")
    return FinetuneOutcome(metrics, model.eval(), history, ckpt)


def finetune(cfg: FinetuneConfig, device: str | None = None, log: Callable[[str], None] = print,
             ckpt_dir: str | None = None, on_log: Callable[[dict], None] | None = None) -> FinetuneOutcome:
    """Fine-tune in this process (no Ray): the loop with a LocalContext on `device` (default: CUDA
    when present, else CPU; cfg.threads > 0 sets torch's CPU threads, which matters on a shared
    machine: 2 threads beside another busy process ran 7x slower than 1 here; restored after).
    With `ckpt_dir`, checkpoints go there and a run found there resumes."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    before = torch.get_num_threads()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    try:
        return train(cfg, LocalContext(ckpt_dir, device), log, on_log)
    finally:
        torch.set_num_threads(before)
