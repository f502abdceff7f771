"""The data-percentage scaling study on Ray: every (backbone, fraction) of cion_ray.scaling.plan is
one pre-training (cion_ray.runtime.pretrain, a Ray Train run), then the held-out evaluation of its
exported backbone (cion_ray.runtime.evaluate) and, when asked, a short fine-tuning on the
held-out split's training people (cion_ray.runtime.finetune).

Parallel runs: when the cluster holds several runs' worker groups at once (its CPUs, and GPUs,
divided by what one run's workers reserve; at most `max_parallel`), each run is driven from its
own Ray task (num_cpus=0: its trainer's workers hold the resources) and logs into
<run>/log.txt; the driver prints a line as each starts and ends. With room for one, the runs go
one after the other in the driver, with their full progress output.

Resume: a run whose record (scale_run.json) carries the same keys is skipped; one whose
pre-training was interrupted resumes from its last checkpoint; one made with other data or
settings is removed and started afresh (the study folder is the study's own).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import ray

from cion_ray.errors import CionError
from cion_ray.io import fs
from cion_ray.runtime.session import cluster_cpus, cluster_gpus, ensure_ray, root_message
from cion_ray.scaling.plan import (EVAL_FILE, FORMAT, IDENTITIES_FILE, RUN_RECORD, RunPlan, ScaleSpec, complete,
                                   pretrained, read_record, table_row)


@dataclass
class ScaleResult:
    out: str
    rows: list[dict]
    files: dict  # scale.csv / .md / .png
    ran: list[str]  # labels of the runs that did work now
    skipped: list[str]  # labels of the runs found complete
    seconds: float


def _write_record(p: RunPlan, rec: dict) -> None:
    fs.write_json(fs.join(p.run_dir, RUN_RECORD), rec)


def _prepare_folder(p: RunPlan, rec: dict | None, log) -> tuple[dict, bool]:
    """-> (the run's record, whether to resume its pre-training). A folder of another key (other
    data or settings), or one holding a run without a record, is cleared: the run starts afresh."""
    from cion_ray.runtime.pretrain import RUN_FILE

    run_file = fs.join(p.run_dir, RUN_FILE)
    if rec is not None and rec.get("key") == p.key:
        if pretrained(p, rec):
            return rec, False
        if fs.exists(run_file) and fs.read_json(run_file).get("fingerprint") == p.cfg.fingerprint():
            log(f"{p.label}: resuming the interrupted pre-training in {p.run_dir}")
            return rec, True
    if fs.exists(p.run_dir) and (rec is not None or fs.exists(run_file)):
        why = "a run of other data or settings" if rec is not None and rec.get("key") != p.key else \
            "an unfinished run that cannot be resumed"
        log(f"{p.label}: {p.run_dir} holds {why}: starting afresh")
        fs.remove_tree(p.run_dir)
    rec = {"format": FORMAT, "key": p.key, "arch": p.arch, "fraction": p.fraction, "seed": p.cfg.seed,
           "identities": len(p.identities), "images": p.images, "pretrain": None, "evaluation": None,
           "finetune": None}
    from cion_ray.scaling.plan import identities_doc

    fs.write_json(fs.join(p.run_dir, IDENTITIES_FILE), identities_doc(p))
    _write_record(p, rec)
    return rec, False


def _evaluate(p: RunPlan, spec: ScaleSpec, address: str | None, log) -> dict:
    """kNN retrieval (cosine, flip-averaged) of the run's exported backbone (export/backbone.pth:
    the teacher's) on the held-out split, at the size it was trained at."""
    from cion_ray.evaluate.pipeline import EvaluateConfig, FeatureOptions
    from cion_ray.runtime.evaluate import run_evaluate

    uri = fs.join(p.run_dir, EVAL_FILE)
    cfg = EvaluateConfig(weights=fs.join(p.run_dir, "export", "backbone.pth"), arch=p.arch, data=spec.eval_data,
                         out=uri, features=FeatureOptions(size=tuple(p.cfg.views.global_size)))
    r = run_evaluate(cfg, address=address, log=log)
    m = r["metrics"]
    return {"key": p.eval_key, "result": uri, **{k: float(m[k]) for k in ("mAP", "rank1", "mINP") if k in m}}


def _finetune(p: RunPlan, spec: ScaleSpec, address: str | None, log) -> dict:
    """The downstream protocol, short: BNNeck (ID + triplet) fine-tuning from the run's backbone on
    the held-out split's training people, on Ray Train with the run's worker shape, then its
    retrieval on the split's query / gallery."""
    from cion_ray.config import load_config
    from cion_ray.finetune.config import FinetuneConfig
    from cion_ray.runtime.finetune import run_finetune

    out = fs.join(p.run_dir, "finetune")
    rec = read_record(p) or {}
    if (rec.get("finetune") or {}).get("key") != p.finetune_key and fs.exists(out):
        fs.remove_tree(out)  # another fine-tuning (settings, or the backbone it started from)
    c = p.cfg
    h, w = c.views.global_size
    fcfg = load_config(FinetuneConfig, None, [
        f"data={spec.eval_data}", f"out={out}", f"seed={c.seed}", f"model.arch={p.arch}",
        f"model.weights={fs.join(p.run_dir, 'export', 'backbone.pth')}", f"augment.size={h},{w}",
        f"optim.steps={spec.finetune_steps}", "optim.optimizer=adamw", f"optim.lr={spec.finetune_lr}",
        "optim.schedule=cosine", "optim.warmup=0.1", "eval.initial=false", "scale.workers=1",
        f"scale.cpus_per_worker={c.scale.cpus_per_worker * c.scale.workers:g}",
        f"scale.gpus_per_worker={c.scale.gpus_per_worker:g}", "scale.loader_workers=0",
        f"log_every={max(1, spec.finetune_steps // 4)}"])
    r = run_finetune(fcfg, address=address, resume=fs.exists(fs.join(out, "finetune.json")), log=log)
    m = r.metrics
    return {"key": p.finetune_key, "out": out,
            **{k: float(m[f"eval_{k}"]) for k in ("mAP", "rank1", "mINP") if f"eval_{k}" in m}}


def run_one(p: RunPlan, spec: ScaleSpec, address: str | None = None, log: Callable[[str], None] = print) -> dict:
    """Everything one run still lacks (pre-training, evaluation, fine-tuning), each phase recorded
    in scale_run.json as it ends; -> the record."""
    from cion_ray.runtime.pretrain import run_pretrain

    t0 = time.perf_counter()
    rec, resume = _prepare_folder(p, read_record(p), log)
    if not pretrained(p, rec):
        r = run_pretrain(p.cfg, address=address, resume=resume, log=log)
        rec["pretrain"] = {"seconds": round(r.seconds, 1), "exports": r.exports,
                           **{k: v for k, v in r.metrics.items() if isinstance(v, (int, float, str))}}
        rec["evaluation"] = rec["finetune"] = None  # a new backbone
        _write_record(p, rec)
    if (rec.get("evaluation") or {}).get("key") != p.eval_key:
        rec["evaluation"] = _evaluate(p, spec, address, log)
        _write_record(p, rec)
    if p.finetune_key and (rec.get("finetune") or {}).get("key") != p.finetune_key:
        rec["finetune"] = _finetune(p, spec, address, log)
        _write_record(p, rec)
    rec["seconds"] = round(time.perf_counter() - t0, 1)
    return rec


def _run_task(p: RunPlan, spec: ScaleSpec, address: str | None) -> dict:
    """One run in a Ray task: its output goes to <run>/log.txt, not to the driver."""
    fs.makedirs(p.run_dir)
    with open(fs.join(p.run_dir, "log.txt"), "a") as f:
        return run_one(p, spec, address, log=lambda m: print(m, file=f, flush=True))


def concurrency(p: RunPlan, max_parallel: int = 0) -> int:
    """How many runs' worker groups fit in the cluster at once (CPUs, and GPUs when they use any)."""
    s = p.cfg.scale
    cpus = s.cpus_per_worker * s.workers
    gpus = s.gpus_per_worker if s.gpus_per_worker >= 0 else (1.0 if cluster_gpus() >= 1 else 0.0)
    fit = math.floor(cluster_cpus() / cpus + 1e-9)
    if gpus > 0:
        fit = min(fit, math.floor(cluster_gpus() / (gpus * s.workers) + 1e-9))
    return max(1, min(fit, max_parallel or fit))


def _done_line(i: int, n: int, p: RunPlan, rec: dict, t0: float) -> str:
    ev, ft = rec.get("evaluation") or {}, rec.get("finetune") or {}
    tail = f", fine-tuned mAP {ft['mAP']:.3f}" if "mAP" in ft else ""
    return (f"[{i}/{n}] {p.label}: {len(p.identities)} identities, {p.images} images: mAP {ev.get('mAP', float('nan')):.3f}"
            f" rank-1 {ev.get('rank1', float('nan')):.3f} mINP {ev.get('mINP', float('nan')):.3f}{tail} "
            f"({rec.get('seconds', 0):.0f}s; {time.perf_counter() - t0:.0f}s elapsed)")


def run_scale(spec: ScaleSpec, plans: list[RunPlan], address: str | None = None,
              log: Callable[[str], None] = print) -> ScaleResult:
    """Run what each plan lacks (skipping complete runs, without Ray when all are), then write
    scale.csv / .md / .png under spec.out."""
    from cion_ray.scaling.report import write_study

    t0 = time.perf_counter()
    fs.makedirs(spec.out)
    records: dict[int, dict] = {}
    todo: list[int] = []
    for i, p in enumerate(plans):
        rec = read_record(p)
        if complete(p, rec):
            records[i] = rec
            log(f"[{len(records)}/{len(plans)}] {p.label}: complete in {p.run_dir} (skipped)")
        else:
            todo.append(i)
    failed: list[str] = []
    if todo:
        ensure_ray(address)
        width = min(len(todo), concurrency(plans[todo[0]], spec.max_parallel))
        log(f"scaling study: {len(todo)} run(s) to do of {len(plans)}, {width} at a time -> {spec.out}")
        if width == 1:
            for i in todo:
                p = plans[i]
                log(f"== {p.label}: {len(p.identities)} identities, {p.images} images -> {p.run_dir} ==")
                try:
                    records[i] = run_one(p, spec, address, log=lambda m, p=p: log(f"  {m}"))
                except CionError as e:
                    failed.append(f"{p.label}: {e}")
                    log(f"  {p.label} failed: {e}")
                    continue
                log(_done_line(len(records), len(plans), p, records[i], t0))
        else:
            task = ray.remote(num_cpus=0, max_retries=0)(_run_task)  # its trainer's workers hold the CPUs
            queue, pending = list(todo), {}
            while queue or pending:
                while queue and len(pending) < width:
                    i = queue.pop(0)
                    pending[task.remote(plans[i], spec, address)] = i
                    log(f"started {plans[i].label} (log: {fs.join(plans[i].run_dir, 'log.txt')})")
                ready, _ = ray.wait(list(pending), num_returns=1)
                i = pending.pop(ready[0])
                try:
                    records[i] = ray.get(ready[0])
                except Exception as e:  # one run failing loses nothing the others do
                    failed.append(f"{plans[i].label}: {root_message(e)}")
                    log(f"{plans[i].label} failed: {root_message(e)}")
                    continue
                log(_done_line(len(records), len(plans), plans[i], records[i], t0))
    rows = [table_row(p, records[i]) for i, p in enumerate(plans) if i in records]
    files = {}
    if rows:
        archs = list(dict.fromkeys(p.arch for p in plans))
        files = write_study(spec.out, rows, "scale", f"held-out retrieval against pre-training data "
                                                     f"({', '.join(archs)}, {plans[0].cfg.optim.epochs} epochs)")
        fs.write_json(fs.join(spec.out, "scale.json"), {"spec": asdict(spec), "rows": rows,
                                                       "runs": {p.run_dir: records.get(i) for i, p in enumerate(plans)}})
    if failed:
        raise CionError(f"{len(failed)} of {len(plans)} runs failed ({'; '.join(failed)}); the others are kept: "
                        "run the same command again to redo only those")
    return ScaleResult(spec.out, rows, files, [plans[i].label for i in todo],
                       [p.label for i, p in enumerate(plans) if i not in todo], time.perf_counter() - t0)
