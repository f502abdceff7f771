"""Fine-tuning on Ray Train (a TorchTrainer whose workers run cion_ray.finetune.loop.train), or,
with `local=True`, the same loop in the driver process; and the data-efficiency protocol as one
such run per fraction, one after the other.

Layout of `cfg.out` (a folder or s3:// prefix) for one run:
    finetune.json   the run's config and fingerprint (a resume must match it)
    train/          Ray Train storage (checkpoints; `checkpoint/` in local mode)
    metrics.json    one entry per logged iteration
    export/         model.pth (backbone + BNNeck + classifier), backbone.pth (plain state dict)
    result.json     final metrics (retrieval before and after fine-tuning), exports, seconds
For the protocol: one such folder per fraction (fraction-10pc/, ...) and protocol.csv / .md / .png;
the fractions run one after the other, or with `parallel` as concurrent Ray tasks each driving its
own TorchTrainer (they start as the cluster has room for their workers).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from cion_ray.errors import CionError
from cion_ray.finetune.config import FinetuneConfig
from cion_ray.io import fs
from cion_ray.runtime.pretrain import CKPT_FILE, RUN_NAME, RayTrainContext
from cion_ray.runtime.session import root_message, train_storage


@dataclass
class FinetuneResult:
    out: str
    metrics: dict  # final: step, images seen, loss parts, eval_* and eval_*_init
    exports: dict  # {"model.pth": URI, "backbone.pth": URI}
    seconds: float
    reused: bool = False  # a finished run found in `out` (resume)


@dataclass
class ProtocolResult:
    out: str
    rows: list[dict]  # one per fraction (finetune.protocol.protocol_row)
    runs: list[FinetuneResult]
    files: dict  # protocol.csv / .md / .png URIs


def _worker_loop(config: dict) -> None:
    from cion_ray.config import from_dict
    from cion_ray.finetune.loop import train
    from cion_ray.finetune.outputs import MetricsLog

    cfg = from_dict(FinetuneConfig, config["cfg"])
    ctx = RayTrainContext()
    torch.set_num_threads(max(1, int(config["threads"])))
    train(cfg, ctx, log=lambda m: print(m, flush=True), on_log=MetricsLog(cfg.out) if ctx.rank == 0 else None)


def prepare(cfg: FinetuneConfig) -> FinetuneConfig:
    """Paths made absolute, and everything checkable on the driver checked (arch, weights, data,
    evaluation split, identities per worker), so bad input fails here with its name."""
    from cion_ray.finetune.data import eval_dataset, load_train_set, shared_identities_per_batch
    from cion_ray.pretrain.data import absolute
    from cion_ray.zoo.checkpoints import find_checkpoint_file
    from cion_ray.zoo.factory import check_backbone

    if not cfg.out:
        raise CionError("fine-tuning needs an output (--out)")
    cfg = replace(cfg, data=absolute(cfg.data), out=absolute(cfg.out),
                  model=replace(cfg.model, weights=absolute(cfg.model.weights)),
                  eval=replace(cfg.eval, data=absolute(cfg.eval.data)))
    check_backbone(cfg.model.arch)
    if cfg.model.weights:
        find_checkpoint_file(cfg.model.weights)
    if cfg.eval.enabled:
        eval_dataset(cfg.data, cfg.eval.data, cfg.dataset)
    smallest = min(cfg.fractions or (cfg.data_fraction,))
    full = load_train_set(cfg.data, smallest, cfg.seed, cfg.dataset)
    shared_identities_per_batch(full.pids, cfg.optim.identities_per_batch, cfg.scale.workers, cfg.seed)
    return cfg


def _resources(cfg: FinetuneConfig) -> tuple[float, dict]:
    """(GPUs per worker, resources per worker), refused when the cluster is too small now."""
    import ray

    from cion_ray.runtime.session import cluster_gpus

    s = cfg.scale
    gpus = s.gpus_per_worker if s.gpus_per_worker >= 0 else (1.0 if cluster_gpus() >= 1 else 0.0)
    per = {"CPU": s.cpus_per_worker, **({"GPU": gpus} if gpus > 0 else {})}
    have = ray.cluster_resources()
    short = [f"{v * s.workers:g} {r}s (the cluster has {have.get(r, 0):g})" for r, v in per.items()
             if v * s.workers > have.get(r, 0)]
    if short and not s.allow_pending:
        raise CionError(f"{s.workers} workers need {' and '.join(short)}; use fewer workers or "
                        "--set scale.allow_pending=true on an autoscaling cluster")
    return gpus, per


def _fit_on_ray(cfg: FinetuneConfig, address: str | None, log) -> dict:
    """Run the loop on a TorchTrainer; -> the final checkpoint state."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from cion_ray.runtime.session import ensure_ray

    ensure_ray(address)
    gpus, per = _resources(cfg)
    storage_path, storage_fs = train_storage(cfg.out)
    trainer = TorchTrainer(
        _worker_loop, train_loop_config={"cfg": asdict(cfg), "threads": cfg.threads or cfg.scale.cpus_per_worker},
        scaling_config=ScalingConfig(num_workers=cfg.scale.workers, use_gpu=gpus > 0, resources_per_worker=per),
        run_config=RunConfig(name=RUN_NAME, storage_path=storage_path, storage_filesystem=storage_fs,
                             failure_config=FailureConfig(max_failures=cfg.scale.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=1)))
    log(f"fine-tuning {cfg.model.arch} on Ray Train: {cfg.scale.workers} worker(s), {'GPU' if gpus else 'CPU'}")
    try:
        result = trainer.fit()
    except Exception as e:  # a worker error arrives wrapped: show its message, not Ray's traceback
        raise CionError(f"fine-tuning failed: {root_message(e)}") from None
    if result.checkpoint is None:
        raise CionError("fine-tuning ended without a checkpoint")
    with result.checkpoint.as_directory() as d:
        return torch.load(Path(d) / CKPT_FILE, map_location="cpu", weights_only=False)


def _fit_locally(cfg: FinetuneConfig, log) -> dict:
    from cion_ray.finetune.loop import finetune
    from cion_ray.finetune.outputs import MetricsLog

    ckpt_dir = None if fs.is_remote(cfg.out) else str(Path(cfg.out) / "checkpoint")
    outcome = finetune(cfg, log=log, ckpt_dir=ckpt_dir, on_log=MetricsLog(cfg.out))
    if outcome.state is not None:
        return outcome.state
    return torch.load(Path(ckpt_dir) / CKPT_FILE, map_location="cpu", weights_only=False)  # already finished


def _single(cfg: FinetuneConfig, address: str | None, local: bool, resume: bool, log,
            carried: dict | None = None) -> FinetuneResult:
    """One run into cfg.out; `carried`: metrics measured elsewhere (the protocol's one evaluation
    of the initialisation), recorded with this run's."""
    from cion_ray.finetune.outputs import write_exports
    from cion_ray.io.runs import claim_run_folder

    result_json = fs.join(cfg.out, "result.json")
    if claim_run_folder(cfg.out, "finetune.json", cfg.fingerprint(), asdict(cfg), resume, "fine-tuning") \
            and fs.exists(result_json):
        r = fs.read_json(result_json)
        if r.get("eval_data", cfg.eval_split) != cfg.eval_split:  # its figures would pass for this split's
            raise CionError(f"{cfg.out}: finished already, evaluated on {r['eval_data']}, not {cfg.eval_split}; "
                            "fine-tune into another --out to evaluate on it")
        log(f"{cfg.out}: finished already (mAP {r['metrics'].get('eval_mAP', float('nan')):.4f}); reused")
        return FinetuneResult(cfg.out, r["metrics"], r["exports"], r["seconds"], reused=True)
    t0, started = time.perf_counter(), time.time()
    state = _fit_locally(cfg, log) if local else _fit_on_ray(cfg, address, log)
    exports = write_exports(state, fs.join(cfg.out, "export"))
    metrics = {**(carried or {}), **(state.get("metrics") or {})}
    seconds = time.perf_counter() - t0
    fs.write_json(result_json, {"label": cfg.run_label, "arch": cfg.model.arch, "weights": cfg.model.weights,
                                "data": cfg.data, "eval_data": cfg.eval_split,
                                "data_fraction": cfg.data_fraction, "workers": 0 if local else cfg.scale.workers,
                                "metrics": metrics, "exports": exports, "seconds": seconds,
                                "started": started, "finished": time.time()})
    return FinetuneResult(cfg.out, metrics, exports, seconds)


def run_finetune(cfg: FinetuneConfig, address: str | None = None, local: bool = False, resume: bool = False,
                 log=print) -> FinetuneResult:
    """One fine-tuning run (cfg.fractions must be empty; see run_protocol)."""
    if cfg.fractions:
        raise CionError("run_finetune runs one fraction; the data-efficiency protocol is run_protocol")
    cfg = prepare(cfg)
    return _single(cfg, address, local, resume, log)


def run_protocol(cfg: FinetuneConfig, address: str | None = None, local: bool = False, resume: bool = False,
                 compare: list[str] | None = None, log=print) -> ProtocolResult:
    """The data-efficiency protocol over cfg.fractions: one run per fraction under
    out/fraction-<p>pc/ (one after the other, or with cfg.parallel all at once on Ray), then the
    table and plot (with the rows of the `compare` runs' tables)."""
    from cion_ray.finetune.protocol import fraction_name, protocol_row, read_table, write_protocol

    if not cfg.fractions:
        raise CionError("the data-efficiency protocol needs fractions (--fractions 0.1,0.25,0.5,1)")
    if not cfg.eval.enabled:
        raise CionError("the data-efficiency protocol compares held-out retrieval: it needs eval.enabled")
    cfg = prepare(cfg)
    others = []
    for c in compare or []:
        rows = read_table(c)
        others += [{**r, "label": f"{r['label']} [{c}]" if r["label"] == cfg.run_label else r["label"]} for r in rows]
    subs = [replace(cfg, fractions=(), data_fraction=f, out=fs.join(cfg.out, fraction_name(f)))
            for f in sorted(cfg.fractions)]

    def table(results: list[FinetuneResult]) -> tuple[list[dict], dict]:
        rows = [protocol_row(cfg.run_label, s.data_fraction, r.metrics) for s, r in zip(subs, results)]
        return rows, write_protocol(rows, cfg.out, others, title=f"data efficiency: {cfg.run_label} on {cfg.data}")

    if cfg.parallel and not local:
        import ray

        from cion_ray.runtime.session import ensure_ray

        ensure_ray(address)
        log(f"data-efficiency protocol: {len(subs)} fractions at once (their trainers queue for the cluster)")
        fit = ray.remote(num_cpus=0)(_single)  # a task that drives one fraction's TorchTrainer
        refs = [fit.remote(s, address, False, resume, print) for s in subs]
        runs, failed = [], []
        for s, ref in zip(subs, refs):  # every fraction runs to its end; the failures are reported together
            try:
                runs.append(ray.get(ref))
            except Exception as e:  # a task's error arrives inside Ray's traceback: its message is enough
                failed.append(f"fraction {s.data_fraction:g}: {root_message(e)}")
        if failed:
            raise CionError("; ".join(failed))
    else:
        runs, init = [], {}
        for s in subs:
            # the initialisation is the same for every fraction (same weights, same seed): measured once
            s = replace(s, eval=replace(s.eval, initial=s.eval.initial and not init))
            log(f"data-efficiency protocol: fraction {s.data_fraction:g} -> {s.out}")
            runs.append(_single(s, address, local, resume, log, carried=init))
            init = init or {k: v for k, v in runs[-1].metrics.items() if k.endswith("_init")}
            rows, _ = table(runs)
            log(f"  fraction {s.data_fraction:g}: mAP {rows[-1]['mAP']:.4f}  rank-1 {rows[-1]['rank1']:.4f}  "
                f"({rows[-1]['identities']} identities)")
    rows, files = table(runs)
    return ProtocolResult(cfg.out, rows, runs, files)
