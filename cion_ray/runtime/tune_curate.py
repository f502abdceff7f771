"""The Ray side of `cion-ray tune curate`: the embeddings computed once by the curate runtime's
stage and read on the driver, and the Tune search whose trials run `cion_ray.tune.curate.trial_scores`
(pure code) on them. What the search does and why: cion_ray/tune/curate.py."""
from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import asdict, replace
from typing import Callable

import numpy as np

from cion_ray.curation.config import CurateConfig
from cion_ray.curation.core import VideoCrops, check_unique
from cion_ray.errors import CionError
from cion_ray.tune.curate import (METRICS, SearchData, SearchResult, _fmt, calibrated_default, evaluate_worlds,
                                  start_points, trial_scores, worst)
from cion_ray.tune.space import SearchSpec


def _log(msg: str) -> None:
    print(f"[tune-curate] {msg}", file=sys.stderr, flush=True)


def _trainable(config: dict, base: dict = None, worlds: list[SearchData] = None, search: str = ""):
    from ray import tune

    tune.report(trial_scores(config, base, worlds, search))


def load_search_data(cfg: CurateConfig, videos: list[str], log: Callable[[str], None] = _log) -> SearchData:
    """Every video's embeddings (from <cfg.out>/embeddings, as the curate runtime stored them) and
    the ground truth of its samples, read on the driver."""
    import pyarrow.parquet as pq

    from cion_ray.curation.core import clean_features
    from cion_ray.curation.gt import crop_identities, gt_layout, load_gt
    from cion_ray.io import fs, runs
    from cion_ray.runtime.curate import EMBED_STAGE, _video_crops

    emb_out = fs.join(cfg.out, "embeddings")
    m = runs.load_manifest(emb_out, EMBED_STAGE)
    files = runs.committed_files(emb_out, EMBED_STAGE, {m["units"][v]["run"] for v in videos if v in m["units"]})
    import pyarrow as pa

    tables = []
    for f in files:
        pa_fs, path = fs.arrow_fs(f)
        tables.append(pq.read_table(path, filesystem=pa_fs))
    table = pa.concat_tables(tables, promote_options="permissive") if tables else None
    rows: dict[str, np.ndarray] = {}
    if table is not None and table.num_rows:
        names, inverse = np.unique(np.array(table.column("video_id").to_pylist()), return_inverse=True)
        # one row order whatever order the files hold them in: video, track, frame
        order = np.lexsort((table.column("frame").to_numpy(), table.column("track_id").to_numpy(), inverse))
        bounds = np.searchsorted(inverse[order], np.arange(len(names) + 1))
        rows = {str(n): order[a:b] for n, a, b in zip(names, bounds, bounds[1:])}
    if not fs.exists(cfg.gt):
        raise CionError(f"--gt {cfg.gt}: not found")
    _, mapping = gt_layout(cfg.gt)
    out_videos, gts = [], []
    for v in videos:
        g = load_gt(cfg.gt, v)
        if v not in rows:  # tracking found nobody: an empty video, as the curate runtime keeps it
            out_videos.append(VideoCrops(v, np.zeros(0, object), np.zeros(0, np.int64), np.zeros(0, np.int64),
                                         np.zeros((0, 0), np.float32)))
            gts.append(None if g is None else np.zeros(0, object))
            continue
        t = table.take(pa.array(rows[v]))
        vc = _video_crops(t)
        check_unique(vc.crop_id, f"{cfg.crops} (video {v})")
        out_videos.append(vc)
        if g is None:
            gts.append(None)
            continue
        clean, _ = clean_features(vc)
        keep = np.isin(vc.crop_id, clean.crop_id)  # the samples L1 sees
        boxes = np.stack([t.column(k).to_numpy() for k in ("x1", "y1", "x2", "y2")], axis=1)
        gts.append(crop_identities(v, vc.frame[keep], boxes[keep], g, mapping))
    data = SearchData(out_videos, gts)
    if not data.scored:
        raise CionError(f"--gt {cfg.gt}: no <video>/gt.txt for any of the {len(videos)} videos of {cfg.crops}")
    if mapping is None and data.scored > 1:
        log(f"note: {cfg.gt} has no identities.json: ground-truth people are per video, so every link across "
            "videos counts as a wrong one (the search then favours linking nothing)")
    n = sum(len(v.crop_id) for v in out_videos)
    log(f"loaded the embeddings of {len(videos)} videos ({n} crops); {data.scored} with ground truth are scored")
    return data


def embed_once(cfg: CurateConfig, address: str | None, log: Callable[[str], None] = _log) -> list[str]:
    """The curate runtime's embedding stage into <cfg.out>/embeddings (cached: a second search on
    the same crops and embedder embeds nothing). -> the videos, in their natural order."""
    from cion_ray.runtime.curate import _check_inputs, _embed, content_keys
    from cion_ray.runtime.session import cluster_gpus, ensure_ray

    crops_m, videos = _check_inputs(cfg)
    ensure_ray(address)
    if cfg.pool.gpus_per_actor < 0:
        auto = 1.0 if cfg.embed.embedder.startswith(("timm:", "cion:")) and cluster_gpus() >= 1 else 0.0
        cfg = replace(cfg, pool=replace(cfg.pool, gpus_per_actor=auto))
    keys = content_keys(replace(cfg, gt=""), crops_m, videos)
    done = _embed(cfg, keys, videos, cfg.pool.gpus_per_actor > 0, log,
                  {v: crops_m["units"][v].get("crops") for v in videos})
    log(f"embeddings: {len(done)} videos embedded now, {len(videos) - len(done)} cached ({cfg.out}/embeddings)")
    return videos


def search(spec: SearchSpec, base: CurateConfig, data: SearchData | list[SearchData], storage: str,
           seed: int = 0, log: Callable[[str], None] = _log) -> SearchResult:
    """The Tune search over `spec` on `data` (Ray already initialised): one world, or several,
    each trial scored by the worst of them (`worst`). storage: Tune's experiment folder (local
    path or URI)."""
    from cion_ray.io import fs

    t0 = time.perf_counter()
    fs.remove_tree(fs.join(storage, "search"))  # an earlier search's trials: this one starts afresh
    worlds = data if isinstance(data, list) else [data]
    defaults = [calibrated_default(d, base) for d in worlds]
    cal_scores = worst([d[0] for d in defaults])
    applied = any(d[2].applied for d in defaults)
    cal_thresholds = defaults[0][1] if len(worlds) == 1 else [d[1] for d in defaults]
    log(f"default config as `cion-ray curate` runs it ({'calibrated' if applied else 'thresholds as given'}): "
        f"{spec.metric} {cal_scores[spec.metric]:.4f}"
        + (f" (worst of {len(worlds)} worlds)" if len(worlds) > 1 else ""))
    fixed_base = replace(base, calibrate=replace(base.calibrate, enabled=False))
    points = start_points(spec, fixed_base, [d[1] for d in defaults if d[2].applied])
    grid = _fit(spec, fixed_base, worlds, points, storage, seed, log)
    rows = _rows(grid, spec)
    if grid.errors:
        log(f"{len(grid.errors)} trial(s) failed, e.g. {str(grid.errors[0]).strip().splitlines()[-1]}")
    errors = [r for r in rows if r.get("error")]
    if errors:
        log(f"{len(errors)} trial(s) refused by the stage, e.g. {errors[0]['error']}")
    good = [r for r in rows if r[spec.metric] is not None and r[spec.metric] == r[spec.metric]]
    if not good:
        first = (str(grid.errors[0]).strip().splitlines() or [""])[-1] if grid.errors else ""
        raise CionError("no trial finished with a score" + (f": {first}" if first else ""))
    sign = 1 if spec.mode == "max" else -1
    best = max(good, key=lambda r: (sign * r[spec.metric], -r["trial"]))
    start = points[0]
    default_row = next((r for r in rows if r["params"] == start), None)
    if default_row is None:  # the trial ran with coerced values: score the defaults here
        default_row = {"trial": -1, "params": start, **evaluate_worlds(worlds, fixed_base.denoise, fixed_base.link)}
    hits = [r for r in rows if r.get("levels_cached")]
    reuse = {"trials": len(rows), "levels_cached": len(hits),
             "levels_s": float(np.mean([r["levels_s"] for r in rows if not r.get("levels_cached")] or [0.0])),
             "link_s": float(np.mean([r["link_s"] for r in rows] or [0.0]))}
    return SearchResult(rows, best, default_row, {**cal_scores, "thresholds": cal_thresholds}, applied,
                        spec.metric, spec.mode, time.perf_counter() - t0, reuse)


def _fit(spec: SearchSpec, fixed_base: CurateConfig, worlds: list[SearchData], points: list[dict], storage: str,
         seed: int, log: Callable[[str], None]):
    """Tune's random search (the start points first) on a quiet console. -> Tune's ResultGrid."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from cion_ray.progress import Progress
    from cion_ray.runtime.tune_space import to_tune

    grid = 1
    for d in spec.space:
        grid *= len(d.args) if d.kind == "grid" else 1
    samples = max(spec.trials, len(points))
    progress = Progress("tune/curate", samples * grid, "trials", label="searching", log=log)
    live = {"progress": progress, "log": log, "best": None}
    _LIVE[id(live)] = live  # the callback is pickled with the Tuner's state: it holds a key, not these
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, base=asdict(fixed_base), worlds=worlds,
                             search=f"{storage}:{time.time_ns()}"), {"cpu": 1})
    tuner = tune.Tuner(
        trainable, param_space=to_tune(spec),
        tune_config=tune.TuneConfig(metric=spec.metric, mode=spec.mode, num_samples=samples,
                                    search_alg=BasicVariantGenerator(points_to_evaluate=points, random_state=seed),
                                    reuse_actors=True,  # the trial process, and its L1/L2 cache, stays
                                    trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
        run_config=tune.RunConfig(name="search", storage_path=storage, verbose=0, log_to_file=True,
                                  callbacks=[trial_lines(id(live), spec.metric, spec.mode, tuple(spec.keys))]))
    # Tune warns when a start point's value is not among a choice's values (a calibrated threshold
    # between the listed ones): that is the point of the start point, not a mistake
    vg = logging.getLogger("ray.tune.search.variant_generator")
    level = vg.level
    vg.setLevel(logging.ERROR)
    # Tune's newer console output prints a configuration table whatever the verbosity: the older
    # one honours verbose=0 (set for this fit only)
    old_output = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        return tuner.fit()
    finally:
        progress.close()
        _LIVE.pop(id(live), None)
        vg.setLevel(level)
        if old_output is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = old_output


def _rows(grid, spec: SearchSpec) -> list[dict]:
    """One row per trial that reported: trial (its order), params, scores, cache use, seconds."""
    rows = []
    for i, r in enumerate(grid):
        if not r.metrics:
            continue
        rows.append({"trial": i, "trial_id": r.metrics.get("trial_id", ""),
                     "params": {k: r.config[k] for k in spec.keys},
                     **{k: r.metrics.get(k) for k in (*METRICS, "samples", "kept", "identities", "error",
                                                         "levels_cached", "levels_s", "link_s")},
                     **{k: v for k, v in r.metrics.items() if "@" in k}})
    return rows


_LIVE: dict[int, dict] = {}


def _trial_name(trial) -> str:
    return f"trial-{trial.trial_id}"


def trial_lines(key: int, metric: str, mode: str, keys: tuple[str, ...]):
    """A Tune callback: the search's progress line and a line at each new best. Tune pickles it
    with the Tuner's state, so it holds only a key into _LIVE (the Progress and log function)."""
    from ray import tune

    class TrialLines(tune.Callback):
        def __reduce__(self):
            return trial_lines, (key, metric, mode, keys)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            state = _LIVE.get(key)
            if state is None:
                return
            state["progress"].update(1)
            v = result.get(metric)
            if v is None or v != v:
                return
            b = state["best"]
            if b is None or (v > b if mode == "max" else v < b):
                state["best"] = v
                shown = ", ".join(f"{k.split('.')[-1]} {_fmt(trial.config[k])}" for k in keys)
                state["log"](f"best so far: {metric} {v:.4f} ({shown})")

    return TrialLines()

