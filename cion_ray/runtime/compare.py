"""The comparison of pre-training data sources on Ray: every (arm, seed) is one Ray task running
cion_ray.compare.run.run_arm (its own training loop on one CPU, or a GPU with gpus_per_arm), as
many at once as the cluster holds; the driver gathers the results into the table and plots.

Layout of `cfg.out` (a local or shared folder: every node writes its arms there):
    arms/<arm>-s<seed>/   log.txt, checkpoint.pt, backbone.pth, result.json (a finished arm is reused)
    compare.json          settings, budget, one row per arm, every arm's result
    compare.md / .csv     the table;  compare.png  the bar chart;  curves.png  mAP per epoch
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path

import ray

from cion_ray.compare.config import ARMS, OTHER_ARMS, ArmResult, CompareConfig
from cion_ray.errors import CionError
from cion_ray.io import fs
from cion_ray.runtime.session import cluster_cpus, ensure_ray, root_message


def check_inputs(cfg: CompareConfig) -> tuple[int, int]:
    """Fail on the driver, naming the input, before any arm starts; returns the budget."""
    from cion_ray.compare.run import budget
    from cion_ray.evaluate.datasets import load_dataset
    from cion_ray.pretrain.data import load_labels

    if not cfg.out or fs.is_remote(cfg.out):
        raise CionError(f"compare needs --out, a local or shared folder (every node writes its arms there), "
                        f"got {cfg.out!r}")
    iters, batch = budget(cfg)  # the profile loads (a missing file or a bad key fails here)
    load_labels(cfg.data, "identity")
    load_dataset(None, cfg.eval_data, with_train=cfg.finetune_steps > 0)
    if "gt" in cfg.active_arms:
        load_labels(cfg.data, "gt", gt=cfg.gt)
    if cfg.imagenet:  # the weights must fit the profile's backbone (mobilenetv2 for the shipped ones)
        from cion_ray.compare.run import profile_config
        from cion_ray.zoo.checkpoints import load_backbone

        p = profile_config(cfg)
        load_backbone(p.model.arch, cfg.imagenet, tuple(p.views.global_size))
    return iters, batch


def _absolute(cfg: CompareConfig) -> CompareConfig:
    from dataclasses import replace

    from cion_ray.compare.run import resolve_profile
    from cion_ray.pretrain.data import absolute

    return replace(cfg, data=absolute(cfg.data), eval_data=absolute(cfg.eval_data), gt=absolute(cfg.gt),
                   imagenet=absolute(cfg.imagenet), out=absolute(cfg.out), profile=resolve_profile(cfg.profile))


def _run_task(cfg: CompareConfig, arm: str, seed: int, device: str) -> ArmResult:
    """One arm on a Ray worker; its training log goes to <arm dir>/log.txt, not to the driver."""
    from cion_ray.compare.run import run_arm

    arm_dir = Path(cfg.out) / "arms" / f"{arm}-s{seed}"
    arm_dir.mkdir(parents=True, exist_ok=True)
    with open(arm_dir / "log.txt", "a") as f:
        return run_arm(cfg, arm, seed, arm_dir, device, log=lambda m: print(m, file=f, flush=True))


def run_compare(cfg: CompareConfig, address: str | None = None, log=print) -> dict:
    """Run every (arm, seed) not already done, then write the table and plots; returns compare.json."""
    from cion_ray.compare.report import bar_chart_png, curves_png, summarise, table_csv, table_markdown

    cfg = _absolute(cfg)
    iters, batch = check_inputs(cfg)
    os.makedirs(cfg.out, exist_ok=True)
    ensure_ray(address)
    device = "cuda" if cfg.gpus_per_arm > 0 else "cpu"
    task = ray.remote(num_cpus=cfg.cpus_per_arm, num_gpus=cfg.gpus_per_arm, max_retries=1)(_run_task)
    width = cfg.parallel or max(1, int(cluster_cpus() // cfg.cpus_per_arm))
    # the untrained arms are quick: queue them last, the long ones first
    arms = cfg.active_arms
    jobs = [(a, s) for s in cfg.seeds for a in arms if a not in OTHER_ARMS or a == "supervised"]
    jobs += [(a, s) for s in cfg.seeds for a in arms if (a, s) not in jobs]
    log(f"comparing {len(arms)} arms x {len(cfg.seeds)} seed(s) on {cfg.data}: {iters} iterations x {batch} "
        f"images = {iters * batch:,} images seen per trained arm; {width} at a time; held-out split {cfg.eval_data}")
    t0 = time.perf_counter()
    pending, results, queue = {}, [], list(jobs)
    while queue or pending:
        while queue and len(pending) < width:
            a, s = queue.pop(0)
            pending[task.remote(cfg, a, s, device)] = (a, s)
        ready, _ = ray.wait(list(pending), num_returns=1)
        a, s = pending.pop(ready[0])
        try:
            r = ray.get(ready[0])
        except Exception as e:  # one arm failing loses nothing the others wrote
            raise CionError(f"arm {a} (seed {s}) failed: {root_message(e)}") from None
        results.append(r)
        log(f"  [{len(results)}/{len(jobs)}] {a} seed {s}: mAP {r.metrics['mAP']:.3f} rank-1 "
            f"{r.metrics['rank1']:.3f}" + (f", fine-tuned mAP {r.finetuned['mAP']:.3f}" if r.finetuned else "")
            + f" ({r.seconds:.0f}s; {time.perf_counter() - t0:.0f}s elapsed)")
    rows = summarise(results, tuple(a for a in ARMS if a in arms))  # in the order of the paper's rows
    title = f"{os.path.basename(cfg.data.rstrip('/'))}: {iters * batch:,} images seen per trained arm"
    out = {"settings": asdict(cfg), "budget": {"iterations": iters, "batch": batch, "images_seen": iters * batch},
           "rows": rows, "results": [asdict(r) for r in results], "seconds": round(time.perf_counter() - t0, 1)}
    fs.write_json(fs.join(cfg.out, "compare.json"), out)
    fs.write_bytes_atomic(fs.join(cfg.out, "compare.md"), table_markdown(rows).encode())
    fs.write_bytes_atomic(fs.join(cfg.out, "compare.csv"), table_csv(rows).encode())
    fs.write_bytes_atomic(fs.join(cfg.out, "compare.png"), bar_chart_png(rows, title))
    fs.write_bytes_atomic(fs.join(cfg.out, "curves.png"), curves_png(results, title))
    return out
