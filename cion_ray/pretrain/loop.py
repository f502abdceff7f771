"""The pre-training loop, independent of how it is distributed.

`train(cfg, ctx)` runs on every worker. `ctx` (a TrainContext) supplies rank, world size,
device, the cross-worker sum, DDP wrapping, reporting and checkpoints: the Ray Train launcher
(cion_ray/runtime/pretrain.py) passes one backed by ray.train, `LocalContext` runs the same
loop in one plain process (the baseline of bench_pretrain and the fast tests).

Checkpoints hold everything the next step depends on, by name: student, teacher, optimizer,
loss centre, grad scaler, the epoch and global iteration, and the sampler's seed (the sampler
is a function of (seed, epoch, rank), so resuming at an epoch reproduces its batches).
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from cion_ray.errors import CionError
from cion_ray.pretrain.config import PretrainConfig
from cion_ray.pretrain.data import LabelTable, load_labels, split_identities
from cion_ray.pretrain.pack import ImageColumn, Pack, ReadStats, ensure_pack
from cion_ray.pretrain.sampler import IdentitySampler, shard_identities
from cion_ray.pretrain.schedules import cosine_schedule, k_at_epoch, teacher_temp_schedule
from cion_ray.pretrain.task import CIONTask, clip_gradients, has_batchnorm
from cion_ray.pretrain.validation import score_split, tracklet_cameras, val_metrics, validation_split
from cion_ray.pretrain.views import MultiCropViews, decode_jpeg

FORMAT = "cion-ray-pretrain/1"


class TrainContext(Protocol):
    rank: int
    world_size: int
    device: torch.device

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor: ...
    def wrap(self, model: torch.nn.Module) -> torch.nn.Module: ...
    def latest_checkpoint(self) -> dict | None: ...
    def report(self, metrics: dict, checkpoint: dict | None) -> None: ...


class LocalContext:
    """One process, no process group; checkpoints as files under `ckpt_dir`."""

    rank = 0
    world_size = 1

    def __init__(self, ckpt_dir: str | Path | None = None, device: str = "cpu"):
        self.ckpt_dir = Path(ckpt_dir) if ckpt_dir else None
        self.device = torch.device(device)
        self.metrics: list[dict] = []

    def all_reduce_sum(self, t):
        return t

    def wrap(self, model):
        return model

    def latest_checkpoint(self):
        if self.ckpt_dir is None or not (self.ckpt_dir / "checkpoint.pt").exists():
            return None
        return torch.load(self.ckpt_dir / "checkpoint.pt", map_location="cpu", weights_only=False)

    def report(self, metrics, checkpoint):
        self.metrics.append(dict(metrics))
        if checkpoint is not None and self.ckpt_dir is not None:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.ckpt_dir / "checkpoint.pt.tmp"
            torch.save(checkpoint, tmp)
            tmp.replace(self.ckpt_dir / "checkpoint.pt")


class ImageNames:
    """Image names (crop ids or URIs) in one Arrow string array, for error messages: no Python
    object per name for forked loader processes to copy."""

    def __init__(self, keys: np.ndarray):
        import pyarrow as pa

        self.names = pa.array([str(k) for k in keys], pa.string())

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> str:
        return self.names[i].as_py()


class ImageViews(torch.utils.data.Dataset):
    """images: encoded images by index (an ImageColumn: Arrow buffers that forked DataLoader
    processes share); each loader process decodes the JPEGs it serves."""

    def __init__(self, images: ImageColumn | list[bytes], names: ImageNames | list[str], views: MultiCropViews):
        self.images, self.names, self.views = images, names, views

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.views(decode_jpeg(self.images[i], self.names[i]))


def _seed_worker(worker_id: int) -> None:
    s = torch.initial_seed() % 2 ** 32
    random.seed(s)
    np.random.seed(s)


def _precision(cfg: PretrainConfig, device: torch.device) -> torch.dtype | None:
    p = cfg.optim.precision
    if p == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[p]


class ValidationImages:
    """The held-out validation images (encoded, row order of `rows` in `table`) and their query /
    gallery split (pretrain/validation.py), loaded once on worker 0."""

    def __init__(self, table: LabelTable, rows: np.ndarray, pack: Pack, seed: int):
        held = table.subset(rows)
        self.split = validation_split(held.identity, tracklet_cameras(held.keys, held.kind), seed, held.source)
        self.identities = held.n_identities
        self.images = pack.images(np.flatnonzero(rows))


class WorkerData:
    """This worker's shard of the training images, loaded once from the pre-training pack
    (pretrain/pack.py: built on first use, reused after; a worker reads only the record batches of
    its own identities); on worker 0 also the held-out validation images (cfg.validation > 0),
    whose identities no worker trains on. read: what this worker read from the pack."""

    def __init__(self, cfg: PretrainConfig, rank: int, world_size: int, log: Callable[[str], None] = print):
        table = load_labels(cfg.data, cfg.labels, cfg.crops, cfg.gt)
        pack = ensure_pack(table, cfg.data, cfg.out, log if rank == 0 else (lambda m: None))
        kept, held = split_identities(table.identity, cfg.data_fraction, cfg.validation, cfg.seed, table.source)
        self.validation = None
        if rank == 0 and len(held):
            self.validation = ValidationImages(table, np.isin(table.identity, held), pack, cfg.seed)
        rows = np.isin(table.identity, kept)
        self.total_images = int(rows.sum())
        self.total_identities = len(kept)
        mine = shard_identities(table.identity[rows], world_size, rank, cfg.seed)
        rows &= np.isin(table.identity, mine)
        t0 = time.perf_counter()
        self.read = ReadStats()
        self.images = pack.images(np.flatnonzero(rows), self.read)
        self.names = ImageNames(table.keys[rows])
        self.labels = table.identity[rows]
        if rank == 0:
            log(f"data: {table.source}: {self.total_identities} identities, {self.total_images} images "
                f"(fraction {cfg.data_fraction}, seed {cfg.seed}); worker 0 holds {len(mine)} identities, "
                f"{len(self.images)} images ({self.read.bytes / 1e6:.1f} MB read from {len(self.read.files)} of "
                f"{len(pack.shards)} pack shards), loaded in {time.perf_counter() - t0:.1f}s")
            if self.validation is not None:
                v = self.validation
                log(f"validation: {v.identities} held-out identities (fraction {cfg.validation}), "
                    f"{len(v.split.query)} queries, {len(v.split.gallery)} gallery images")


def iterations_per_epoch(cfg: PretrainConfig, total_images: int, world_size: int) -> int:
    if cfg.optim.iters_per_epoch > 0:
        return cfg.optim.iters_per_epoch
    return max(1, total_images // (cfg.optim.batch_per_worker * world_size))


def train(cfg: PretrainConfig, ctx: TrainContext, log: Callable[[str], None] = print,
          on_epoch: Callable[[dict], None] | None = None, fault: Callable[[int], None] | None = None,
          on_iteration: Callable[[dict], None] | None = None) -> dict:
    """Run (or resume) pre-training on this worker; returns the last epoch's metrics.

    on_epoch(metrics): rank 0's per-epoch hook (TensorBoard); fault(iteration): called after every
    step, the launcher's fault-injection drill; on_iteration(state): rank 0's progress hook, called
    once before the first step and after every step with {"epoch" (1-based), "epochs",
    "iteration" (global, done), "iterations" (the run's total), "epoch_iteration", "epoch_iterations",
    "images_per_iteration" (all workers)}."""
    data = WorkerData(cfg, ctx.rank, ctx.world_size, log)
    o = cfg.optim
    ipe = iterations_per_epoch(cfg, data.total_images, ctx.world_size)
    total_batch = o.batch_per_worker * ctx.world_size
    lr = cosine_schedule(o.lr * total_batch / 256.0, o.min_lr, o.epochs, ipe, o.warmup_epochs)
    wd = cosine_schedule(o.weight_decay, o.weight_decay_end, o.epochs, ipe)
    mom = cosine_schedule(o.momentum_teacher, 1.0, o.epochs, ipe)
    ttemp = teacher_temp_schedule(o.warmup_teacher_temp, o.teacher_temp, o.warmup_teacher_temp_epochs, o.epochs, ipe)

    torch.manual_seed(cfg.seed)  # the same initial student and teacher on every worker
    task = CIONTask(cfg, ctx.all_reduce_sum, ctx.world_size)
    if cfg.init:
        init_backbones(task, cfg.init, cfg.model.arch)
        if ctx.rank == 0:
            log(f"backbone initialised from {cfg.init}")
    device = ctx.device
    if device.type == "cuda" and ctx.world_size > 1 and cfg.model.sync_bn and has_batchnorm(task.student):
        task.convert_sync_batchnorm()
    task.to(device)
    task.wrap_student(ctx.wrap)
    opt = torch.optim.AdamW(task.param_groups())
    dtype = _precision(cfg, device)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None

    start_epoch, it = 0, 0
    state = ctx.latest_checkpoint()
    if state is not None:
        if state.get("format") != FORMAT:
            raise CionError("the checkpoint to resume from is not a cion-ray pre-training checkpoint")
        if state.get("arch") != cfg.model.arch:
            raise CionError(f"the checkpoint is of {state.get('arch')!r}, not {cfg.model.arch!r}")
        if state.get("fingerprint", cfg.fingerprint()) != cfg.fingerprint():
            raise CionError(f"the checkpoint to resume from was made with other settings (fingerprint "
                            f"{state.get('fingerprint')}, now {cfg.fingerprint()}): resume with the same settings, "
                            "or start the run in another folder")
        task.student.load_state_dict(state["student"])
        task.teacher.load_state_dict(state["teacher"])
        task.loss.load_state_dict(state["loss"])
        opt.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, it = int(state["epoch"]), int(state["iteration"])
        history = list(state.get("history") or [])
        eval_init = state.get("eval_init") or {}
        val_init = state.get("val_init") or {}  # the split is part of the fingerprint: always this run's
        if eval_init and state.get("eval_init_data") != cfg.eval_data:
            # the initial weights are gone: figures of another split cannot stand beside this one's
            if ctx.rank == 0:
                log(f"the before-training retrieval was measured on {state.get('eval_init_data')}, not "
                    f"{cfg.eval_data}: it is not reported for this run")
            eval_init = {}
        if ctx.rank == 0:
            log(f"resumed at epoch {start_epoch}, iteration {it}")

    if state is None:
        eval_init, val_init, history = {}, {}, []
        if cfg.eval_data and ctx.rank == 0:
            eval_init = {f"{k}_init": v for k, v in evaluate_teacher(cfg, task, device, log).items()}
        if data.validation is not None:
            val_init = {f"{k}_init": v for k, v in evaluate_validation(cfg, task, data.validation, device, log).items()
                        if k != "val_queries"}
    sampler = IdentitySampler(data.labels, o.batch_per_worker, cfg.seed, ctx.rank)
    views = MultiCropViews(cfg.views)
    dataset = ImageViews(data.images, data.names, views)
    metrics: dict = {}

    def step_state(epoch: int, steps: int) -> dict:
        return {"epoch": epoch + 1, "epochs": o.epochs, "iteration": it, "iterations": o.epochs * ipe,
                "epoch_iteration": steps, "epoch_iterations": ipe, "images_per_iteration": total_batch}

    progress = on_iteration if ctx.rank == 0 else None
    if progress is not None:
        progress(step_state(start_epoch, 0))
    for epoch in range(start_epoch, o.epochs):
        k = k_at_epoch(o.k_steps, o.epochs, epoch)
        batches = sampler.batches(epoch, k, ipe)
        # augmentation randomness is a function of (seed, epoch, rank): a resumed run repeats it
        random.seed(cfg.seed * 1_000_003 + epoch * 101 + ctx.rank)
        torch.manual_seed(cfg.seed * 1_000_003 + epoch * 101 + ctx.rank)
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=batches, num_workers=cfg.scale.loader_workers,
            worker_init_fn=_seed_worker, persistent_workers=False, pin_memory=device.type == "cuda",
            generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch * 13 + ctx.rank))
        task.train()
        t0 = time.perf_counter()
        steps = 0
        terms_sum = torch.zeros(2, device=device)  # distillation loss, KoLeo
        entropy_sum = torch.zeros(2, device=device)
        similarity_sum = torch.zeros((), device=device)
        for views_b in loader:
            views_b = [v.to(device, non_blocking=True) for v in views_b]
            for g_i, g in enumerate(opt.param_groups):
                g["lr"] = float(lr[it])  # a Python float: checkpoints load with weights_only
                if g_i == 0:
                    g["weight_decay"] = float(wd[it])
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = task(views_b, k, float(ttemp[it]))
            if not math.isfinite(loss.item()):
                raise CionError(f"loss is {loss.item()} at epoch {epoch}, iteration {it}: stopping")
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
            else:
                loss.backward()
            if o.clip_grad > 0:
                clip_gradients(task.student, o.clip_grad)
            task.cancel_last_layer_grad(epoch)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            task.update_teacher(float(mom[it]))
            terms_sum += task.last_terms.to(device)
            similarity_sum += task.last_similarity.to(device)
            entropy_sum += task.loss.last_entropy
            steps += 1
            it += 1
            if progress is not None:
                progress(step_state(epoch, steps))
            if fault is not None:
                fault(it)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        # teacher_spread: std over workers of the sum of the teacher's weights; 0 when they agree
        t_sum = sum(p.detach().double().sum() for p in task.teacher.parameters()).to(device)
        w = ctx.world_size
        stats = ctx.all_reduce_sum(torch.cat([
            torch.stack([terms_sum[0].double(), torch.tensor(float(steps), device=device, dtype=torch.float64), t_sum]),
            entropy_sum.double(), terms_sum[1:].double(), similarity_sum.double().reshape(1)]))
        spread = float(ctx.all_reduce_sum(((t_sum - stats[2] / w) ** 2).reshape(1))[0] / w) ** 0.5
        mean_loss, entropy = float(stats[0] / stats[1]), float(stats[3] / stats[1])
        metrics = {"epoch": epoch + 1, "iteration": it, "loss": mean_loss, "k": k,
                   # loss = teacher_entropy + kl: the part the student cannot change, and the part it lowers
                   "teacher_entropy": entropy, "kl": mean_loss - entropy,
                   "teacher_mean_entropy": float(stats[4] / stats[1]), "koleo": float(stats[5] / stats[1]),
                   "feature_similarity": float(stats[6] / stats[1]),
                   "teacher_temp": float(ttemp[it - 1]),
                   "lr": float(lr[it - 1]), "weight_decay": float(wd[it - 1]), "momentum": float(mom[it - 1]),
                   "images_per_s": steps * o.batch_per_worker * ctx.world_size / seconds,
                   "epoch_seconds": seconds, "identities": data.total_identities, "images": data.total_images,
                   "teacher_spread": spread}
        ckpt = None
        save = ctx.rank == 0 and ((epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == o.epochs)
        if save and cfg.eval_data:
            metrics.update(eval_init)
            metrics.update(evaluate_teacher(cfg, task, device, log))
        if save and data.validation is not None:
            metrics.update(val_init)
            metrics.update(evaluate_validation(cfg, task, data.validation, device, log))
        history.append(dict(metrics))
        if save:
            ckpt = checkpoint_state(cfg, task, opt, scaler, epoch + 1, it)
            # every epoch's metrics so far: a resumed run's curves start at epoch 1
            ckpt.update(eval_init=eval_init, eval_init_data=cfg.eval_data, val_init=val_init, history=list(history))
        if ctx.rank == 0:
            val = (f"  val mAP {metrics['val_mAP']:.4f} rank-1 {metrics['val_rank1']:.4f}"
                   if "val_mAP" in metrics else "")
            log(f"epoch {epoch + 1}/{o.epochs}  K {k}  loss {metrics['loss']:.4f} (teacher entropy "
                f"{entropy:.3f} + KL {metrics['kl']:.3f})  lr {metrics['lr']:.2e}  "
                f"momentum {metrics['momentum']:.4f}  {metrics['images_per_s']:.1f} img/s{val}")
            if on_epoch is not None:
                on_epoch(metrics)
        ctx.report(metrics, ckpt)
    return metrics


def init_backbones(task: CIONTask, weights: str, arch: str) -> None:
    """Student and teacher backbones from a checkpoint (any layout cion_ray.zoo.checkpoints reads),
    strictly: a missing or unexpected key is an error naming the file. The heads stay random."""
    from cion_ray.zoo.checkpoints import load_state_strict, read_checkpoint

    state, info = read_checkpoint(weights)
    if info.arch and info.arch != arch:
        raise CionError(f"init weights {info.file} hold a {info.arch} backbone, not {arch}")
    load_state_strict(task.student.backbone, state, info.file, arch)
    task.teacher.backbone.load_state_dict(task.student.backbone.state_dict())


def evaluate_teacher(cfg: PretrainConfig, task: CIONTask, device: torch.device, log: Callable[[str], None]) -> dict:
    """CMC / mAP / mINP of the teacher backbone on cfg.eval_data, as eval_* metrics."""
    from cion_ray.evaluate.reid import evaluate_backbone

    t0 = time.perf_counter()
    r = evaluate_backbone(task.teacher.backbone, cfg.eval_data, tuple(cfg.views.global_size), device=str(device))
    log(f"retrieval on {cfg.eval_data}: mAP {r.mAP:.4f}  rank-1 {r.rank(1):.4f}  mINP {r.mINP:.4f} "
        f"({r.queries} queries, {time.perf_counter() - t0:.1f}s)")
    return {f"eval_{k}": v for k, v in r.summary().items() if k in ("mAP", "mINP", "rank1", "rank5")}


def evaluate_validation(cfg: PretrainConfig, task: CIONTask, val: ValidationImages, device: torch.device,
                        log: Callable[[str], None]) -> dict:
    """The teacher backbone's retrieval on the held-out validation split, as val_mAP, val_rank1,
    val_mINP and val_queries."""
    from cion_ray.zoo.features import extract_features

    t0 = time.perf_counter()
    feats = extract_features(task.teacher.backbone, val.images, tuple(cfg.views.global_size), device=str(device))
    r = score_split(feats, val.split)
    log(f"validation retrieval ({val.identities} held-out identities): mAP {r.mAP:.4f}  rank-1 {r.rank(1):.4f}  "
        f"mINP {r.mINP:.4f} ({r.queries} queries, {time.perf_counter() - t0:.1f}s)")
    return val_metrics(r)


def checkpoint_state(cfg: PretrainConfig, task: CIONTask, opt, scaler, epoch: int, iteration: int) -> dict:
    def cpu(sd):
        return {k: v.detach().cpu() for k, v in sd.items()}

    return {"format": FORMAT, "arch": cfg.model.arch, "epoch": epoch, "iteration": iteration,
            "student": cpu(task.student.state_dict()), "teacher": cpu(task.teacher.state_dict()),
            "loss": cpu(task.loss.state_dict()), "optimizer": opt.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "sampler": {"seed": cfg.seed, "epoch": epoch}, "config": asdict(cfg),
            "fingerprint": cfg.fingerprint()}
