"""The evaluate stage on Ray: feature extraction by a Ray Data actor pool when the dataset is
large (more than `features.ray_above` query + gallery images), the local loop otherwise; the
ranking and metrics are cion_ray.evaluate.pipeline's, on the driver.

`run_evaluate(cfg)` loads the backbone from cfg.weights; `run_evaluate(cfg, model=m)` evaluates
an in-memory model (a comparison job evaluating many checkpoints in one process), and
`dataset=` reuses splits already loaded. Ray starts only when the pool is used.
"""
from __future__ import annotations

import copy
import sys
import time
from dataclasses import asdict, replace
from typing import Callable

import numpy as np
import ray

from cion_ray.errors import CionError
from cion_ray.evaluate.datasets import ReIDDataset, load_dataset
from cion_ray.evaluate.pipeline import EvaluateConfig, Extractor, FeatureOptions, evaluate_model, local_extractor
from cion_ray.io import fs
from cion_ray.progress import Progress
from cion_ray.runtime.session import cluster_gpus, ensure_ray, fit_actor_cpus, root_message


def _log(msg: str) -> None:
    print(f"[evaluate] {msg}", file=sys.stderr, flush=True)


class FeatureActor:
    """Holds one copy of the model; turns batches of image URIs into features."""

    def __init__(self, model: list, opts: dict, use_gpu: bool, threads: int):
        import torch

        m = model[0]  # wrapped in a list so Ray hands over the reference, not a copy per argument
        self.model = ray.get(m) if isinstance(m, ray.ObjectRef) else m
        self.opts = FeatureOptions(**{**opts, "size": tuple(opts["size"])})
        self.device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        torch.set_num_threads(max(1, threads))

    def __call__(self, batch: dict) -> dict:
        from cion_ray.zoo.features import extract_features

        o = self.opts
        feats = extract_features(self.model, [str(u) for u in batch["uri"]], o.size, o.batch, o.flip, self.device)
        return {"i": batch["i"], "feature": feats}


def ray_extractor(model, opts: FeatureOptions, address: str | None = None,
                  log: Callable[[str], None] = _log) -> Extractor:
    """An extractor running `opts.actors` FeatureActors over a Ray Data dataset of image URIs
    (every actor reads its images itself: local paths must be visible to every node)."""
    def extract(files: list[str], what: str) -> np.ndarray:
        ensure_ray(address)
        gpus = opts.gpus_per_actor
        if gpus < 0:
            gpus = 1.0 if opts.device.startswith("cuda") and cluster_gpus() >= 1 else 0.0
        if opts.device.startswith("cuda") and gpus == 0:
            raise CionError("--device cuda with the Ray pool needs GPUs in the cluster (or --gpus-per-actor)")
        cpus = fit_actor_cpus(opts.actors, opts.cpus_per_actor)
        ref = ray.put(copy.deepcopy(model).cpu())  # the caller's model stays where it is
        items = [{"i": i, "uri": f} for i, f in enumerate(files)]
        blocks = max(opts.actors * 4, len(files) // max(1, opts.batch * 8))
        ds = ray.data.from_items(items, override_num_blocks=min(len(files), blocks))
        ds = ds.map_batches(FeatureActor, fn_constructor_kwargs={"model": [ref], "opts": asdict(opts),
                                                                 "use_gpu": gpus > 0, "threads": max(1, int(cpus))},
                            batch_size=opts.batch, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=opts.actors), num_cpus=cpus, num_gpus=gpus)
        out: np.ndarray | None = None
        done = 0
        label = f"{what} ({opts.actors} Ray actor{'s' if opts.actors > 1 else ''})"
        try:
            with Progress("evaluate/features", len(files), "images", label=label, log=log) as progress:
                for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
                    f = np.asarray(b["feature"], np.float32)
                    if out is None:
                        out = np.full((len(files), f.shape[1]), np.nan, np.float32)
                    out[np.asarray(b["i"], np.int64)] = f
                    done += len(f)
                    progress.update(len(f))
        except Exception as e:  # an actor's error arrives wrapped: show its message
            raise CionError(f"feature extraction failed: {root_message(e)}") from None
        if out is None or done != len(files):
            raise CionError(f"feature extraction returned {done} of {len(files)} images")
        return out

    return extract


def run_evaluate(cfg: EvaluateConfig, model=None, dataset: ReIDDataset | None = None, address: str | None = None,
                 log: Callable[[str], None] = _log) -> dict:
    """Evaluate cfg.weights (or `model`) on cfg.data (or `dataset`); writes cfg.out (JSON) when
    set and returns the result dict (see cion_ray.evaluate.pipeline.evaluate_model)."""
    from cion_ray.zoo.checkpoints import DEFAULT_SIZE, load_backbone

    t0 = time.perf_counter()
    if cfg.out and not fs.is_remote(cfg.out):
        from pathlib import Path

        fs.makedirs(str(Path(cfg.out).resolve().parent))  # an unwritable output fails now, not after the run
    elif cfg.out:
        fs.check_output(cfg.out)  # the bucket must exist (it is never created)
    if dataset is None:
        if not cfg.data:
            raise CionError("no dataset given (--data)")
        dataset = load_dataset(cfg.dataset or None, cfg.data, with_train=False, cuhk03_protocol=cfg.cuhk03_protocol)
    size, size_from = cfg.features.size or DEFAULT_SIZE, "given" if cfg.features.size else "default"
    if model is None:  # without features.size, at the size the checkpoint was trained at
        model, info = load_backbone(cfg.arch or None, cfg.weights, cfg.features.size, cfg.seed)
        model_info = {"arch": info.arch, "weights": info.source, "file": info.file, "epoch": info.epoch,
                      "iteration": info.iteration, "seed": info.seed,
                      "trained_size": list(info.trained_size) if info.trained_size else None}
        size = info.size
        if not cfg.features.size and info.trained_size:
            size_from = "checkpoint"
    else:
        model_info = {"arch": cfg.arch or type(model).__name__, "weights": cfg.weights or "in memory"}
    cfg = replace(cfg, features=replace(cfg.features, size=size))
    n = len(dataset.query) + len(dataset.gallery)
    log(f"{dataset.name} at {dataset.root}: {len(dataset.query)} queries, {len(dataset.gallery)} gallery images; "
        f"model {model_info['arch']} from {model_info.get('file') or model_info['weights']}"
        + (f" (epoch {model_info['epoch']})" if model_info.get("epoch") is not None else ""))
    pooled = n > cfg.features.ray_above
    extract = ray_extractor(model, cfg.features, address, log) if pooled else local_extractor(model, cfg.features, log)
    try:
        result = evaluate_model(model, dataset, cfg, extract, log, model_info)
    except ValueError as e:  # e.g. no query with a match from another camera
        raise CionError(f"{dataset.root}: {e}") from None
    result["settings"]["size_from"] = size_from
    result["extraction"] = {"where": "ray" if pooled else "local", "actors": cfg.features.actors if pooled else 0}
    result["seconds"]["total"] = round(time.perf_counter() - t0, 3)
    if cfg.out:
        fs.write_json(cfg.out, result)
    return result
