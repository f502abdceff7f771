"""The evaluate stage without Ray: a backbone (from a checkpoint, or in memory) and a ReID dataset
-> CMC rank-1/5/10, mAP, mINP, as a dict (written as JSON by the runtime) and a printed table.

`evaluate_model` takes the feature extractor as an argument: the local loop by default,
cion_ray/runtime/evaluate.py passes a Ray Data actor pool for large datasets.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import numpy as np

from cion_ray.config import require
from cion_ray.errors import ConfigError
from cion_ray.evaluate.datasets import LOADERS, ReIDDataset
from cion_ray.evaluate.search import RankingOptions, evaluate_features
from cion_ray.zoo.checkpoints import DEFAULT_SIZE

# files -> (N, D) float32 features, in order; `what` names the split for progress lines
Extractor = Callable[[list[str], str], np.ndarray]


@dataclass
class FeatureOptions:
    """size: model input (H, W); None: the size the checkpoint records it was trained at
    (pre-training's views.global_size, fine-tuning's augment.size), else DEFAULT_SIZE (256, 128),
    which an in-memory model gets too. batch: images per forward. flip: average with the mirrored
    image's features. device: cpu | cuda[:n]. ray_above: datasets with more images (query +
    gallery) are embedded by a Ray Data pool of `actors` actors (cpus_per_actor, gpus_per_actor
    each; -1 GPUs: one per actor when the device is cuda), smaller ones in this process."""
    size: tuple[int, int] | None = None  # model input (H, W); null: as the checkpoint records, else 256x128
    batch: int = 64  # images per forward pass
    flip: bool = True  # average with the mirrored image's features
    device: str = "cpu"  # cpu | cuda[:n]
    ray_above: int = 20_000  # more images than this (query + gallery): a Ray Data actor pool embeds them
    actors: int = 1  # actors of that pool
    cpus_per_actor: float = 1.0  # CPUs each actor reserves
    gpus_per_actor: float = -1.0  # GPUs each actor reserves; < 0: 1 when the device is cuda, else 0

    def __post_init__(self):
        if self.size is not None:
            if len(self.size) != 2 or min(self.size) < 1:
                raise ConfigError(f"features.size {self.size}: expected H,W (two positive integers)")
            self.size = (int(self.size[0]), int(self.size[1]))
        require(self.batch >= 1, "features.batch", ">= 1", self.batch)
        require(self.actors >= 1, "features.actors", ">= 1", self.actors)
        require(self.ray_above >= 0, "features.ray_above", ">= 0 (0: always Ray)", self.ray_above)
        require(self.cpus_per_actor > 0, "features.cpus_per_actor", "> 0", self.cpus_per_actor)
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"features.device {self.device!r}: use cpu or cuda")


@dataclass
class EvaluateConfig:
    """The evaluation stage (`cion-ray evaluate`): a backbone's retrieval on a ReID dataset."""
    weights: str = ""  # checkpoint file or run folder (local or s3://), or "random" (seeded by seed)
    arch: str = ""  # backbone name; optional when the checkpoint records it
    data: str = ""  # the dataset folder (local or s3://)
    dataset: str = ""  # its loader: market1501, dukemtmc, cuhk03np, msmt17, synthetic; "" detects it
    cuhk03_protocol: str = "detected"  # CUHK03-NP boxes: detected | labeled
    seed: int = 0  # seed of weights=random
    out: str = ""  # JSON result file, local or s3:// ("" for none)
    features: FeatureOptions = field(default_factory=FeatureOptions)  # how images become features
    ranking: RankingOptions = field(default_factory=RankingOptions)  # how features are compared and scored

    def __post_init__(self):
        if self.dataset and self.dataset not in LOADERS:
            raise ConfigError(f"dataset {self.dataset!r}: one of {', '.join(LOADERS)} (or empty: detected)")
        if self.cuhk03_protocol not in ("detected", "labeled"):
            raise ConfigError(f"cuhk03_protocol must be detected or labeled, got {self.cuhk03_protocol!r}")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")


def local_extractor(model, opts: FeatureOptions, log: Callable[[str], None] = print) -> Extractor:
    """The extractor of this process: cion_ray.zoo.features.extract_features with progress lines."""
    from cion_ray.zoo.features import ProgressLine, extract_features

    def extract(files: list[str], what: str) -> np.ndarray:
        return extract_features(model, files, opts.size, opts.batch, opts.flip, opts.device,
                                progress=ProgressLine(log, what))

    return extract


def evaluate_model(model, dataset: ReIDDataset, cfg: EvaluateConfig, extract: Extractor | None = None,
                   log: Callable[[str], None] = print, model_info: dict | None = None) -> dict:
    """Evaluate `model` ((B, 3, H, W) -> (B, D)) on `dataset`: the result dict (metrics, CMC
    curve, dataset, model, settings, seconds). Without cfg.features.size, at DEFAULT_SIZE
    (settings.size_from: "given" or "default"; run_evaluate: "checkpoint" when it records one)."""
    size_from = "given" if cfg.features.size else "default"
    cfg = replace(cfg, features=replace(cfg.features, size=cfg.features.size or DEFAULT_SIZE))
    extract = extract or local_extractor(model, cfg.features, log)
    t0 = time.perf_counter()
    files = dataset.query.files + dataset.gallery.files
    feats = extract(files, f"{dataset.name} features")
    qf, gf = feats[:len(dataset.query)], feats[len(dataset.query):]
    t1 = time.perf_counter()
    opts = cfg.ranking
    engine, neighbours = opts.engines(len(qf), len(gf))
    log(f"ranking {len(qf)} queries x {len(gf)} gallery images ({opts.distance}, {engine}"
        f"{f'; k-reciprocal re-ranking, neighbours by {neighbours}' if opts.rerank else ''})")
    r = evaluate_features(qf, gf, dataset.query.pids, dataset.gallery.pids, dataset.query.cams,
                          dataset.gallery.cams, opts)
    t2 = time.perf_counter()
    metrics = {k: r.summary()[k] for k in ("rank1", "rank5", "rank10") if k in r.summary()}
    metrics.update(mAP=r.mAP, mINP=r.mINP, queries=r.queries, skipped=r.skipped, gallery=r.gallery)
    settings = {"size": list(cfg.features.size), "size_from": size_from, "batch": cfg.features.batch,
                "flip": cfg.features.flip, "device": cfg.features.device, **asdict(opts), "engine": engine,
                "neighbour_engine": neighbours if opts.rerank else None}
    return {"metrics": metrics, "cmc": [float(c) for c in r.cmc], "dataset": dataset.summary(),
            "model": model_info or {}, "settings": settings,
            "seconds": {"features": round(t1 - t0, 3), "ranking": round(t2 - t1, 3)}}


SIZE_FROM = {"checkpoint": " (as trained: recorded by the checkpoint)", "default": " (default)"}


def result_table(result: dict) -> str:
    """The printed form of a result: a title (model, the checkpoint file with the epoch / iteration
    it records, dataset, settings and the input size with where it came from), one header line,
    one row of percentages and counts."""
    m, d, s, w = result["metrics"], result["dataset"], result["settings"], result.get("model", {})
    cols = [("rank-1", "rank1"), ("rank-5", "rank5"), ("rank-10", "rank10"), ("mAP", "mAP"), ("mINP", "mINP")]
    head = "".join(f"{c:>9}" for c, _ in cols) + f"{'queries':>9}{'gallery':>9}"
    row = "".join(f"{100 * m[k]:>9.2f}" if k in m else f"{'-':>9}" for _, k in cols)
    row += f"{m['queries']:>9}{m['gallery']:>9}"
    how = s["distance"] + (f", re-ranked (k1 {s['k1']}, k2 {s['k2']}, lambda {s['lambda_value']})"
                           if s["rerank"] else "")
    size = "x".join(str(v) for v in s["size"]) + SIZE_FROM.get(s.get("size_from", "given"), "")
    source = [w.get("file") or w.get("weights", "in memory")]
    source += [f"{k} {w[k]}" for k in ("epoch", "iteration") if w.get(k) is not None]
    title = (f"{w.get('arch', 'model')} ({', '.join(source)}) on {d['dataset']} {d['root']}: "
             f"{how}, {size}{', flip' if s['flip'] else ''}")
    skipped = f"\n  ({m['skipped']} queries without a match from another camera were skipped)" if m["skipped"] else ""
    return f"{title}\n{head}\n{row}{skipped}"
