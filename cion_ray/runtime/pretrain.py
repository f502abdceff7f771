"""Pre-training on Ray Train: a TorchTrainer whose workers run cion_ray.pretrain.loop.train.

Layout of `cfg.out` (a folder or s3:// prefix):
    pretrain.json     the run's config and fingerprint (a resume must match it)
    train/            Ray Train storage: checkpoints (checkpoint_*/checkpoint.pt), kept 2 newest
    metrics.json      one entry per epoch; tensorboard/  event files
    export/           teacher.pth (released CION layout) and backbone.pth (plain state dict)
A lost worker (or node) restarts the worker group from the newest checkpoint, up to
`scale.max_failures` times; `resume=True` continues a stopped run from it.

Output: rank 0's messages and its progress inside epochs go to a `TrainRelay` actor beside the
driver, which the driver polls and prints through its own `log` and a `Progress` line (a bar in
a terminal). Worker prints would reach the driver too, but each prefixed with Ray's
"(RayTrainWorker pid=...)" and with no way to draw one updating line; the relay also lets the
driver's progress listeners (a pipeline's status file) see iterations. Ray Train's own INFO logs
are off unless CION_RAY_VERBOSE is set.
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import ray
import torch

from cion_ray.errors import CionError
from cion_ray.io import fs, runs
from cion_ray.pretrain.config import PretrainConfig
from cion_ray.progress import Progress, verbose
from cion_ray.runtime.session import (Poller, cluster_gpus, ensure_ray, root_message, train_log_level,
                                      train_storage)

RUN_NAME = "train"
RUN_FILE = "pretrain.json"
CKPT_FILE = "checkpoint.pt"
LOG_FILE = "log.txt"  # rank 0's messages when no driver prints them (build_trainer(log_file=True))


class RayTrainContext:
    """The loop's TrainContext on a Ray Train worker."""

    def __init__(self):
        import ray.train
        import ray.train.torch

        c = ray.train.get_context()
        self.rank = c.get_world_rank()
        self.world_size = c.get_world_size()
        self.device = ray.train.torch.get_device()

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            torch.distributed.all_reduce(t)
        return t

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.world_size == 1:
            return model
        ids = [self.device] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def latest_checkpoint(self) -> dict | None:
        import ray.train

        ck = ray.train.get_checkpoint()
        if ck is None:
            return None
        with ck.as_directory() as d:
            return torch.load(Path(d) / CKPT_FILE, map_location="cpu", weights_only=False)

    def report(self, metrics: dict, checkpoint: dict | None) -> None:
        import ray.train

        if checkpoint is None:  # every rank reports: it is a barrier
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="cion-ckpt-") as d:
            torch.save(checkpoint, Path(d) / CKPT_FILE)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def _fault_drill(cfg: PretrainConfig, rank: int, world: int):
    """Kill the last worker once at iteration cfg.fault_drill_iteration (a marker in the output
    records that it happened, so the restarted group runs through)."""
    if cfg.fault_drill_iteration <= 0 or rank != world - 1:
        return None
    marker = fs.join(cfg.out, "_faults", f"killed-at-{cfg.fault_drill_iteration}")

    def fault(it: int) -> None:
        if it == cfg.fault_drill_iteration and not fs.exists(marker):
            fs.write_bytes_atomic(marker, f"rank {rank} killed at iteration {it}\n".encode())
            os._exit(1)

    return fault


@ray.remote(num_cpus=0)
class TrainRelay:
    """Rank 0's messages and latest iteration state, held for the driver to poll."""

    def __init__(self):
        self._messages: list[str] = []
        self._state: dict | None = None

    def log(self, msg: str) -> None:
        self._messages.append(msg)

    def step(self, state: dict) -> None:
        self._state = state

    def poll(self) -> tuple[list[str], dict | None]:
        msgs, self._messages = self._messages, []
        return msgs, self._state


class _RelayClient:
    """The worker side: messages in order (one caller, one actor: Ray keeps the order), the
    iteration state at most every `every_s` seconds and at each epoch's end."""

    def __init__(self, relay, every_s: float = 0.5):
        self.relay, self.every_s, self.last = relay, every_s, 0.0

    def log(self, msg: str) -> None:
        try:
            self.relay.log.remote(msg)
        except Exception:  # the relay is gone (its node was lost): print, Ray forwards it
            print(msg, flush=True)

    def step(self, state: dict) -> None:
        now = time.monotonic()
        if now - self.last < self.every_s and state["epoch_iteration"] not in (0, state["epoch_iterations"]):
            return
        self.last = now
        try:
            self.relay.step.remote(state)
        except Exception:
            pass  # progress only


def _quiet_train_worker() -> None:
    """Ray Train 2.60 logs "Reporting training result N: TrainingReport(...)" at INFO on every
    report from every worker through a logger named by its file's path (not under "ray.train"),
    so RunConfig's LoggingConfig does not reach it: raise that logger's level here."""
    import logging

    try:
        from ray.train.v2._internal.execution import context as train_context
    except ImportError:  # another Ray version: its logging is as it is
        return
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)


class _FileLog:
    """Rank 0's messages appended to a text file (local or s3://, rewritten whole: a few lines an
    epoch): the log of a run nobody watches line by line (a Tune trial)."""

    def __init__(self, uri: str):
        self.uri = uri
        self.text = fs.read_bytes(uri).decode() if fs.exists(uri) else ""

    def __call__(self, msg: str) -> None:
        self.text += f"{time.strftime('%H:%M:%S')} {msg}\n"
        fs.write_bytes_atomic(self.uri, self.text.encode())


def _worker_loop(config: dict) -> None:
    from cion_ray.config import from_dict
    from cion_ray.pretrain.loop import train
    from cion_ray.pretrain.metrics import EpochLog

    cfg = from_dict(PretrainConfig, config["cfg"])
    if not config.get("verbose"):
        _quiet_train_worker()
    ctx = RayTrainContext()
    torch.set_num_threads(max(1, int(config["threads"])))
    log = EpochLog(cfg.out) if ctx.rank == 0 else None
    relay = _RelayClient(config["relay"]) if config.get("relay") is not None else None
    if relay is not None:
        say = relay.log
    elif config.get("log_file"):
        say = _FileLog(fs.join(cfg.out, LOG_FILE)) if ctx.rank == 0 else (lambda m: None)
    else:
        say = lambda m: print(m, flush=True)  # noqa: E731
    try:
        train(cfg, ctx, log=say, on_epoch=log, fault=_fault_drill(cfg, ctx.rank, ctx.world_size),
              on_iteration=relay.step if relay else None)
    finally:
        if log is not None:
            log.close()


def _check_inputs(cfg: PretrainConfig) -> PretrainConfig:
    """Everything a worker would read, read or checked on the driver first: the init weights, the
    evaluation split, the backbone name, the training data, the validation split (held-out
    identities that leave some to train on and give at least one query), and that every worker's
    shard can fill its P x K batches at every K of the run (the sampler's own rule). A failure is a
    CionError naming the input, before Ray starts. -> cfg with the crops of a curated output pinned."""
    from cion_ray.pretrain.data import absolute, load_labels, split_identities
    from cion_ray.pretrain.sampler import worker_shortfall
    from cion_ray.pretrain.schedules import k_values
    from cion_ray.zoo.factory import check_backbone

    if cfg.init:
        from cion_ray.zoo.checkpoints import read_checkpoint

        read_checkpoint(cfg.init)  # a missing or unreadable init fails here, naming the file
    if cfg.eval_data:
        from cion_ray.evaluate.datasets import load_dataset

        load_dataset(None, cfg.eval_data, with_train=False)  # a missing or malformed split fails here
    check_backbone(cfg.model.arch)  # unknown names fail here, not on a worker
    table = load_labels(cfg.data, cfg.labels, cfg.crops, cfg.gt)  # bad data fails here too, with its name
    if table.crops and not cfg.crops:  # pin the crops a curated output points to, for the workers
        cfg = replace(cfg, crops=absolute(table.crops))
    kept, val_ids = split_identities(table.identity, cfg.data_fraction, cfg.validation, cfg.seed, cfg.data)
    if len(val_ids):  # a split without a query fails here, naming the data
        import numpy as np

        from cion_ray.pretrain.validation import tracklet_cameras, validation_split

        rows = np.isin(table.identity, val_ids)
        validation_split(table.identity[rows], tracklet_cameras(table.keys[rows], table.kind), cfg.seed, cfg.data)
    o, workers = cfg.optim, cfg.scale.workers
    short = worker_shortfall(kept, workers, cfg.seed, o.batch_per_worker, k_values(o.k_steps, o.epochs))
    if short is not None:
        rank, k, p, held = short
        val = f"; {len(val_ids)} more held out for validation" if len(val_ids) else ""
        raise CionError(f"{cfg.data}: {len(kept)} identities (fraction {cfg.data_fraction}{val}) are too few for "
                        f"{workers} worker(s) x {o.batch_per_worker} images per batch: at K {k} a batch holds "
                        f"{p} identities and worker {rank} has {held}; use a smaller batch, fewer workers, "
                        "or more data")
    return cfg


def prepare_pack(cfg: PretrainConfig, log=print) -> str:
    """The pre-training pack of cfg's data (pretrain/pack.py), found or built here on the driver,
    once, before any worker starts: the workers then only read their part of it, and every later
    run on the same data (a scaling study's points, a search's trials) reuses it. -> its URI."""
    from cion_ray.pretrain.data import load_labels
    from cion_ray.pretrain.pack import ensure_pack

    return ensure_pack(load_labels(cfg.data, cfg.labels, cfg.crops, cfg.gt), cfg.data, cfg.out, log).uri


class _RelayPrinter(Poller):
    """The driver side of the relay: while fit() runs, a thread prints rank 0's messages through
    `log` and keeps a Progress of iterations (label: the epoch; rate in it/s and img/s)."""

    def __init__(self, relay, log, poll_s: float = 0.5):
        super().__init__(poll_s, "pretrain-progress")
        self.relay, self.log = relay, log
        self.progress: Progress | None = None

    def _sync(self) -> None:
        try:
            msgs, state = ray.get(self.relay.poll.remote(), timeout=10)
        except Exception:  # a lost relay costs the progress line, never the run
            return
        if state is not None:
            self._step(state)
        for m in msgs:  # after the count: an epoch's summary line follows its last iteration
            self.log(m)

    def _step(self, state: dict) -> None:
        label = f"pre-training epoch {state['epoch']}/{state['epochs']}"
        p = self.progress
        if p is None or state["iteration"] < p.done:  # the first report, or a restarted group went back
            if p is not None:
                p.close(failed=True)
            p = self.progress = Progress("pretrain", state["iterations"], "it", label=label, log=self.log,
                                         initial=state["iteration"], also=(state["images_per_iteration"], "img"))
        p.set_label(label)
        if state["iteration"] > p.done:
            p.update(state["iteration"] - p.done)

    def _finish(self, failed: bool) -> None:
        self._sync()  # the last messages (a failed run's too)
        if self.progress is not None:
            self.progress.close(failed=failed)


@dataclass
class PretrainResult:
    out: str
    metrics: dict
    checkpoint: str
    exports: dict
    seconds: float


def _release_without_checkpoint(out: str) -> None:
    """A fresh run that failed before its first checkpoint holds nothing to resume: give the folder
    back (its run file and Ray Train's storage), so the same command runs again once fixed."""
    train = fs.join(out, "train")
    if fs.exists(train) and fs.list_files(train, (CKPT_FILE,)):
        return
    fs.remove_tree(train)
    fs.remove_tree(fs.join(out, RUN_FILE))


def worker_resources(cfg: PretrainConfig) -> tuple[float, dict]:
    """(GPUs per worker, the resources one Train worker reserves): scale.gpus_per_worker < 0 means
    one GPU per worker when the cluster has GPUs, else CPU only."""
    gpus = cfg.scale.gpus_per_worker
    if gpus < 0:
        gpus = 1.0 if cluster_gpus() >= 1 else 0.0
    resources = {"CPU": cfg.scale.cpus_per_worker}
    if gpus > 0:
        resources["GPU"] = gpus
    return gpus, resources


def check_cluster(cfg: PretrainConfig, gpus: float) -> None:
    """A CionError when the worker group can never fit the cluster as it is (unless
    scale.allow_pending: an autoscaler will add nodes)."""
    have = ray.cluster_resources()
    need = {"CPU": cfg.scale.cpus_per_worker * cfg.scale.workers, "GPU": gpus * cfg.scale.workers}
    short = [f"{need[r]:g} {r}s (the cluster has {have.get(r, 0):g})" for r in need if need[r] > have.get(r, 0)]
    if short and not cfg.scale.allow_pending:
        raise CionError(f"{cfg.scale.workers} workers need {' and '.join(short)}; use fewer workers or fewer "
                        "resources per worker, or --set scale.allow_pending=true on an autoscaling cluster")


def build_trainer(cfg: PretrainConfig, gpus: float, relay=None, callbacks: tuple = (), log_file: bool = False):
    """The TorchTrainer of one pre-training run: `cfg.scale.workers` workers running _worker_loop,
    Ray Train storage under cfg.out (run name RUN_NAME, so fit() again with the same cfg.out
    resumes from the newest checkpoint), 2 checkpoints kept, scale.max_failures group restarts.
    relay: a TrainRelay the driver polls for rank 0's messages and progress; without one, rank 0's
    messages go to cfg.out/log.txt (log_file) or are printed. callbacks: Ray Train UserCallbacks
    (a Tune trial passes TuneReportCallback)."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    storage_path, storage_fs = train_storage(cfg.out)
    _, resources = worker_resources(replace(cfg, scale=replace(cfg.scale, gpus_per_worker=gpus)))
    return TorchTrainer(
        _worker_loop,
        train_loop_config={"cfg": asdict(cfg), "threads": cfg.scale.cpus_per_worker, "relay": relay,
                           "log_file": log_file, "verbose": verbose()},
        scaling_config=ScalingConfig(num_workers=cfg.scale.workers, use_gpu=gpus > 0,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=RUN_NAME, storage_path=storage_path, storage_filesystem=storage_fs,
                             failure_config=FailureConfig(max_failures=cfg.scale.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             logging_config=LoggingConfig(log_level=train_log_level()),
                             callbacks=list(callbacks) or None))


def run_pretrain(cfg: PretrainConfig, address: str | None = None, resume: bool = False,
                 log=print) -> PretrainResult:
    from cion_ray.pretrain.data import absolute
    from cion_ray.pretrain.export import write_exports

    if not cfg.out:
        raise CionError("pre-training needs an output (--out)")
    if fs.is_remote(cfg.out):
        fs.check_output(cfg.out)  # the bucket must exist (it is never created)
    cfg = replace(cfg, data=absolute(cfg.data), out=absolute(cfg.out), crops=absolute(cfg.crops),
                  eval_data=absolute(cfg.eval_data), gt=absolute(cfg.gt), init=absolute(cfg.init))
    # every check before the run folder is claimed: a refused run leaves nothing behind, so the
    # same command, fixed, can start afresh (a claimed folder would need --resume, and a fixed
    # command has another fingerprint)
    cfg = _check_inputs(cfg)
    runs.check_run_folder(cfg.out, RUN_FILE, cfg.fingerprint(), resume, "pre-training")  # before Ray starts
    prepare_pack(cfg, log)
    ensure_ray(address)
    gpus, _ = worker_resources(cfg)
    check_cluster(cfg, gpus)
    resuming = runs.claim_run_folder(cfg.out, RUN_FILE, cfg.fingerprint(), asdict(cfg), resume, "pre-training")

    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # beside the driver: it outlives any worker node the run loses
    relay = TrainRelay.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        ray.get_runtime_context().get_node_id(), soft=True)).remote()
    trainer = build_trainer(cfg, gpus, relay=relay)
    t0 = time.perf_counter()
    log(f"pre-training {cfg.model.arch} on {cfg.data}: {cfg.scale.workers} worker(s), "
        f"{'GPU' if gpus > 0 else 'CPU'}, {cfg.optim.epochs} epochs -> {cfg.out}")
    try:
        with _RelayPrinter(relay, log):
            result = trainer.fit()
    except Exception as e:  # a worker error arrives wrapped: show its message, not Ray's traceback
        if not resuming:
            _release_without_checkpoint(cfg.out)
        raise CionError(f"pre-training failed: {root_message(e)}") from None
    finally:
        ray.kill(relay)
    if result.checkpoint is None:
        raise CionError("pre-training ended without a checkpoint")
    with result.checkpoint.as_directory() as d:
        state = torch.load(Path(d) / CKPT_FILE, map_location="cpu", weights_only=False)
    exports = write_exports(state, fs.join(cfg.out, "export"))
    metrics_uri = fs.join(cfg.out, "metrics.json")
    history = fs.read_json(metrics_uri) if fs.exists(metrics_uri) else []
    if history:
        from cion_ray.viz.curves import training_curves_png

        fs.write_bytes_atomic(fs.join(cfg.out, "curves.png"), training_curves_png(
            history, cfg.model.out_dim, f"{cfg.model.arch}, {cfg.scale.workers} worker(s), {cfg.data}"))
    return PretrainResult(cfg.out, history[-1] if history else dict(result.metrics or {}),
                          result.checkpoint.path, exports, time.perf_counter() - t0)
