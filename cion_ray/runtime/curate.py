"""The curation stage on Ray.

  crops Parquet --(Ray Data, embedding actors)--> embeddings Parquet            [per video, resumable]
  embeddings --(groupby video: L1 + L2)--> <out>/videos/<video>.npz              [per video, cached]
  identity sums --(one Ray task per sliding range)--> relations                  [per range, cached by content]
  relations --(union-find tree, anti-chaining guard, size filter on the driver)--> global identities
  crops --(export actor pool, one task per row group)--> identities Parquet; CION-AL images, Market-1501
      folder, WebDataset shards (cion_ray.curation.export); the CION-AL JSON streamed; report; contact sheet

Every cache is keyed by the content it was computed from (`cion_ray.io.stage.content_key`): a
video's embeddings by its crops' digest (from the tracking manifest) and the embedder; its L1/L2
by its embeddings, the denoising settings and its ground truth; a range's relations by its
videos' L1/L2 keys and the linking settings. Adding videos re-runs only what they touch, and
re-tracking other videos into the same crops folder re-runs everything they changed: the
result always equals a fresh run. Exports are written beside the committed ones
(`exports/<run>/`) and published by the manifest; the previous run's are removed only after.
"""
from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data.expressions import col

from cion_ray.config import from_dict
from cion_ray.curation.config import CurateConfig
from cion_ray.curation.core import (IdentityTable, VideoCrops, VideoLevels, check_unique, clean_features,
                                    denoise_video_levels, global_pass_runs, range_relations, reduce_identities)
from cion_ray.curation.export import (MARKET_NAMING, WDS_INDEX, CropLabeler, ExportPlan, crops_row_groups,
                                      export_plan, export_task, finish_export, plan_pieces, write_cion_al)
from cion_ray.curation.sheet import write_sheet
from cion_ray.curation.gt import crop_identities, gt_layout, load_gt
from cion_ray.linking.ranges import range_key, sliding_ranges
from cion_ray.linking.relations import clear_mutual_pairs, global_candidates
from cion_ray.curation.report import build_report, report_text
from cion_ray.curation.calibrate import Calibration, Distances, calibrate, pool, video_distances
from cion_ray.curation.store import (distances_uri, load_distances, load_levels, save_distances, save_levels,
                                     video_uri)
from cion_ray.embed.timm_embedder import build_embedder
from cion_ray.errors import CionError
from cion_ray.io import fs, runs, stage
from cion_ray.io.schemas import IDENTITIES, embeddings_schema
from cion_ray.progress import Progress
from cion_ray.runtime.session import PolledProgress, cluster_cpus, cluster_gpus, ensure_ray, fit_actor_cpus
from cion_ray.viz.calibration import calibration_png

STAGE = "curate"
EMBED_STAGE = "embed"
# L1/L2's algorithm: /2 takes L2's cannot-link from every crop before L1. Results cached by an
# earlier version are another computation, so they are never served.
LEVELS_VERSION = "levels/2"
DISTANCES_VERSION = "distances/1"
CROP_META = ["crop_id", "video_id", "track_id", "frame", "x1", "y1", "x2", "y2"]


def _log(msg: str) -> None:
    print(f"[curate] {msg}", file=sys.stderr, flush=True)


@dataclass
class CurateResult:
    out: str
    report: dict
    identities: int
    samples: int
    videos_embedded: list[str] = field(default_factory=list)
    videos_denoised: list[str] = field(default_factory=list)
    ranges_computed: int = 0
    ranges_reused: int = 0
    seconds: float = 0.0
    exports: list[str] = field(default_factory=list)  # the CION-AL JSON and Market folder written, if any
    current: bool = False  # nothing had changed: the committed output was already this run's result


class EmbedActor:
    """Holds one embedder; turns batches of crops into rows of embeddings."""

    def __init__(self, cfg: dict, use_gpu: bool, counter=None):
        self.cfg = from_dict(CurateConfig, cfg)
        self.counter = counter  # a ProgressCounter: crops embedded, for the driver's progress line
        device = "cpu"
        if use_gpu:
            import torch
            device = "cuda:0" if torch.cuda.is_available() else "cpu"
        e = self.cfg.embed
        self.embedder = build_embedder(e.embedder, e.weights, device, e.height, e.width)
        self.schema = embeddings_schema(self.embedder.dim, e.dtype)
        self.np_dtype = np.float16 if e.dtype == "float16" else np.float32

    def __call__(self, t: pa.Table) -> pa.Table:
        feats = self.embedder(t.column("crop").to_pylist()).astype(self.np_dtype)
        emb = pa.FixedSizeListArray.from_arrays(pa.array(feats.ravel()), self.embedder.dim)
        if self.counter is not None:
            self.counter.add.remote(t.num_rows)
        return pa.Table.from_arrays([t.column(c) for c in CROP_META] + [emb], schema=self.schema)


def _video_crops(t: pa.Table) -> VideoCrops:
    n = t.num_rows
    # fixed-size lists as written; a plain list type after Ray Data unifies several files' schemas
    flat = pc.list_flatten(t.column("embedding")).to_numpy(zero_copy_only=False)
    feats = np.asarray(flat, np.float32).reshape(n, -1) if n else np.zeros((0, 0), np.float32)
    return VideoCrops(str(t.column("video_id")[0]), np.array(t.column("crop_id").to_pylist(), object),
                      t.column("track_id").to_numpy(), t.column("frame").to_numpy(), feats)


def denoise_one_video(t: pa.Table, cfg: dict, out: str, gt_root: str, keys: dict[str, str], counter=None
                      ) -> pa.Table:
    """map_groups body: one video's embeddings -> its npz file (named by keys[video]); returns one
    row (video_id, stats, error). counter: a ProgressCounter of the videos done."""
    try:
        return _denoise_video(t, cfg, out, gt_root, keys)
    finally:
        if counter is not None:
            counter.add.remote(1)


def _denoise_video(t: pa.Table, cfg: dict, out: str, gt_root: str, keys: dict[str, str]) -> pa.Table:
    c = from_dict(CurateConfig, cfg)
    v = _video_crops(t)
    try:
        check_unique(v.crop_id, f"{c.crops} (video {v.video_id})")
    except CionError as e:
        return pa.table({"video_id": [v.video_id], "stats": ["{}"], "error": [str(e)]})
    lv = denoise_video_levels(v, c.denoise)
    gt = None
    if gt_root:
        g = load_gt(gt_root, v.video_id)
        if g is not None:
            _, mapping = gt_layout(gt_root)
            boxes = np.stack([t.column(k).to_numpy() for k in ("x1", "y1", "x2", "y2")], axis=1)
            # labels follow the cleaned sample order of `lv` (invalid embeddings removed)
            keep = np.isin(v.crop_id, lv.crop_id)
            gt = crop_identities(v.video_id, v.frame[keep], boxes[keep], g, mapping)
    frames = v.frame[np.isin(v.crop_id, lv.crop_id)]
    save_levels(video_uri(out, v.video_id, keys[v.video_id]), lv, frames, gt)
    return pa.table({"video_id": [v.video_id], "stats": [json.dumps(lv.stats)], "error": [""]})


def distances_one_video(t: pa.Table, min_len: int, max_per_video: int, out: str, keys: dict[str, str],
                        counter=None) -> pa.Table:
    """map_groups body: one video's embeddings -> its calibration distances file (named by
    keys[video]); returns one row (video_id)."""
    try:
        v, _ = clean_features(_video_crops(t))
        d = video_distances(v.feats, v.track_id, v.frame, min_len, max_per_video)
        save_distances(distances_uri(out, v.video_id, keys[v.video_id]), d)
        return pa.table({"video_id": [v.video_id]})
    finally:
        if counter is not None:
            counter.add.remote(1)


def _ranges_task(centroids: np.ndarray, video_pos: np.ndarray, spans: list[tuple[int, int]], link: dict
                 ) -> list[np.ndarray]:
    """Relations of several consecutive ranges; spans index into the given slice."""
    from cion_ray.curation.config import LinkConfig
    cfg = LinkConfig(**link)
    return [range_relations(centroids[a:b], video_pos[a:b], 0, cfg) for a, b in spans]


class ExportActor:
    """One export writer of the pool: a task (the pieces of one row group of a crops file) ->
    its crops labelled, their files written (cion_ray.curation.export.export_task), its
    identities rows returned."""

    def __init__(self, tasks: list, labeler: CropLabeler, plan: ExportPlan | None, counter=None):
        self.tasks, self.labeler, self.plan = tasks, labeler, plan
        self.counter = counter  # a ProgressCounter: crops labelled (and exported)

    def __call__(self, batch: pa.Table) -> pa.Table:
        parts = []
        for i in batch.column("task").to_pylist():
            pieces = self.tasks[i]
            parts.append(export_task(pieces, self.labeler, self.plan))
            if self.counter is not None:
                self.counter.add.remote(sum(p.stop - p.start for p in pieces))
        return pa.concat_tables(parts)


def _identities_rows(t: pa.Table) -> pa.Table:
    return t.select(IDENTITIES.names).cast(IDENTITIES)


def export_writers(configured: int) -> int:
    """The export pool's size: as configured, or one actor per CPU of the cluster."""
    return configured if configured > 0 else max(1, int(cluster_cpus()))


def label_and_export(crop_files: list[str], labeler: CropLabeler, plan: ExportPlan | None, id_dir: str,
                     writers: int = 0, shard_size: int = 1000, total: int | None = None,
                     log: Callable[[str], None] = _log) -> tuple[list[str], dict[int, int]]:
    """Every crop labelled and exported by a pool of actors (`writers`, 0: one per cluster CPU),
    one task per row group of the crops files; the kept crops' identities rows written to id_dir.
    -> (identities files, {WebDataset shard: samples})."""
    tasks = plan_pieces(crops_row_groups(crop_files), shard_size)
    if not tasks:
        return [], {}
    n = min(export_writers(writers), len(tasks))
    what = "labelling and exporting" if plan is not None and plan.images else "labelling"
    with PolledProgress(Progress("curate/export", total, "crops", label=what, log=log)) as pp:
        ds = ray.data.from_items([{"task": i} for i in range(len(tasks))], override_num_blocks=len(tasks))
        ds = ds.map_batches(ExportActor, batch_size=1, batch_format="pyarrow",
                            compute=ray.data.ActorPoolStrategy(size=n), num_cpus=fit_actor_cpus(n, 1.0),
                            fn_constructor_kwargs=dict(tasks=tasks, labeler=labeler, plan=plan, counter=pp.counter))
        ds = ds.materialize()
        shards: dict[int, int] = {}
        if plan is not None and plan.webdataset:
            for r in ds.groupby("shard").count().take_all():
                if r["shard"] >= 0:
                    shards[int(r["shard"])] = int(r["count()"])
        out_fs, out_path = fs.arrow_fs(id_dir)
        ds = ds.map_batches(_identities_rows, batch_format="pyarrow")
        ds.write_parquet(out_path, filesystem=out_fs, min_rows_per_file=100_000)
    files = fs.list_files(id_dir, (".parquet",)) if fs.exists(id_dir) else []
    return files, shards


@dataclass
class Keys:
    """The content keys of one curation: per video, its crops (tracking digest), its embeddings
    and its L1/L2 result; `runs` names the tracking run that holds each video's crops."""
    crops: dict[str, str]
    embed: dict[str, str]
    levels: dict[str, str]
    runs: dict[str, str]


def content_keys(cfg: CurateConfig, crops_m: dict, videos: list[str]) -> Keys:
    units = crops_m["units"]
    crops = {v: units[v].get("digest") or stage.content_key(crops_m["fingerprint"], units[v].get("run"),
                                                              units[v].get("crops"))
             for v in videos}
    embed = {v: stage.content_key("embed", crops[v], cfg.embed_fingerprint()) for v in videos}
    gt = _gt_keys(cfg.gt, videos)
    levels = {v: stage.content_key(LEVELS_VERSION, embed[v], asdict(cfg.denoise), gt.get(v, "")) for v in videos}
    return Keys(crops, embed, levels, {v: units[v].get("run", "") for v in videos})


def _gt_keys(gt_root: str, videos: list[str]) -> dict[str, str]:
    """{video: key of its ground truth} (the gt file's and the identity map's content), for the
    quality labels stored with each video's L1/L2 result."""
    if not gt_root:
        return {}
    folder, _ = gt_layout(gt_root)
    ids_uri = fs.join(gt_root, "identities.json")
    ids = stage.source_identity(ids_uri) if fs.exists(ids_uri) else None

    def one(v):
        uri = fs.join(folder, v, "gt.txt")
        return v, stage.content_key(ids, stage.source_identity(uri) if fs.exists(uri) else None)
    with ThreadPoolExecutor(max_workers=16) as pool:
        return dict(pool.map(one, videos))


def _embed(cfg: CurateConfig, keys: Keys, videos: list[str], use_gpu: bool, log, crops: dict[str, int | None]
           ) -> list[str]:
    """Embed the crops of videos whose embeddings are missing or were computed from other crops;
    returns the videos embedded now."""
    emb_out = fs.join(cfg.out, "embeddings")
    m = runs.load_manifest(emb_out, EMBED_STAGE)
    if m is not None:
        runs.check_fingerprint(m, cfg.embed_fingerprint(), emb_out)
    else:
        m = runs.empty_manifest(EMBED_STAGE, cfg.embed_fingerprint(), asdict(cfg.embed))
    todo = [v for v in videos if m["units"].get(v, {}).get("key") != keys.embed[v]]
    if not todo:
        return []
    crop_files = runs.committed_files(cfg.crops, "track", {keys.runs[v] for v in todo})
    run_id = runs.new_run_id()
    rel: list[str] = []
    if crop_files:
        log(f"embedding the crops of {len(todo)} videos with {cfg.embed.embedder}, {cfg.pool.actors} actor(s)")
        pa_fs, _ = fs.arrow_fs(crop_files[0])
        ds = ray.data.read_parquet([fs.arrow_fs(f)[1] for f in crop_files], filesystem=pa_fs,
                                   columns=CROP_META + ["crop"])
        ds = ds.filter(expr=col("video_id").is_in(todo))
        # a crops file is often one block: split it so every embedding actor gets work
        ds = ds.repartition(target_num_rows_per_block=cfg.embed.batch)
        with PolledProgress(Progress("curate/embed", _total(crops, todo), "crops", label="embedding", log=log)) as pp:
            ds = ds.map_batches(EmbedActor, fn_constructor_kwargs={"cfg": asdict(cfg), "use_gpu": use_gpu,
                                                                   "counter": pp.counter},
                                batch_size=cfg.embed.batch, batch_format="pyarrow",
                                compute=ray.data.ActorPoolStrategy(size=cfg.pool.actors),
                                num_cpus=fit_actor_cpus(cfg.pool.actors, cfg.pool.cpus_per_actor),
                                num_gpus=cfg.pool.gpus_per_actor if use_gpu else 0)
            run_dir = fs.join(emb_out, f"run-{run_id}")
            out_fs, out_path = fs.arrow_fs(run_dir)
            ds.write_parquet(out_path, filesystem=out_fs, min_rows_per_file=20_000)
        files = fs.list_files(run_dir, (".parquet",)) if fs.exists(run_dir) else []
        rel = [stage.relative(emb_out, f) for f in files]
    m = runs.commit(emb_out, m, {"run_id": run_id, "files": rel, "videos": todo},
                    {v: {"run": run_id, "key": keys.embed[v]} for v in todo})
    _prune_runs(emb_out, m)
    return todo


def _total(counts: dict[str, int | None], videos: list[str]) -> int | None:
    """Sum of counts over videos (None when one is unknown: a manifest of an older version)."""
    vals = [counts.get(v) for v in videos]
    return None if any(x is None for x in vals) else int(sum(vals))


def _prune_runs(out: str, m: dict) -> None:
    """Drop the runs no unit points to any more (their videos were embedded again), after the
    manifest that supersedes them is published."""
    live = {u["run"] for u in m["units"].values()}
    dead = [r for r in m["runs"] if r["run_id"] not in live]
    if not dead:
        return
    m = {**m, "runs": [r for r in m["runs"] if r["run_id"] in live]}
    fs.write_json(fs.join(out, runs.MANIFEST), m)
    for r in dead:
        fs.remove_tree(fs.join(out, f"run-{r['run_id']}"))


def _embedding_dataset(cfg: CurateConfig, todo: list[str]):
    """Each video's embeddings from the one embedding run its unit points to."""
    emb_out = fs.join(cfg.out, "embeddings")
    m = runs.load_manifest(emb_out, EMBED_STAGE)
    by_run: dict[str, list[str]] = {}
    for v in todo:
        by_run.setdefault(m["units"][v]["run"], []).append(v)
    parts = []
    for run_id, vids in sorted(by_run.items()):
        files = runs.committed_files(emb_out, EMBED_STAGE, {run_id})
        if files:
            pa_fs, _ = fs.arrow_fs(files[0])
            parts.append(ray.data.read_parquet([fs.arrow_fs(f)[1] for f in files], filesystem=pa_fs)
                         .filter(expr=col("video_id").is_in(vids)))
    if not parts:
        return None
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def _cached(out: str, sub: str) -> set[str]:
    """Names of the per-video .npz results stored in out/<sub> (one listing): L1/L2 results in
    videos/, calibration distances in calibration/."""
    root = fs.join(out, sub)
    if not fs.exists(root):
        return set()
    return {f.rsplit("/", 1)[-1].rsplit(os.sep, 1)[-1] for f in fs.list_files(root, (".npz",))}


def _denoise(cfg: CurateConfig, keys: Keys, videos: list[str], log) -> tuple[list[str], dict]:
    """L1 + L2 for videos without a stored result at their key; returns them and their stats."""
    have = _cached(cfg.out, "videos")
    todo = [v for v in videos if f"{v}-{keys.levels[v]}.npz" not in have]
    if not todo:
        return [], {}
    stats: dict[str, dict] = {}
    with_rows: set[str] = set()
    ds = _embedding_dataset(cfg, todo)
    if ds is not None:
        log(f"denoising {len(todo)} videos (L1 single tracklet, L2 single video)")
        with PolledProgress(Progress("curate/denoise", len(todo), "videos", label="denoising", log=log)) as pp:
            rows = ds.groupby("video_id", num_partitions=max(1, min(len(todo), 64))).map_groups(
                denoise_one_video, batch_format="pyarrow",
                fn_args=(asdict(cfg), cfg.out, cfg.gt, {v: keys.levels[v] for v in todo}, pp.counter)).take_all()
        errors = [r["error"] for r in rows if r["error"]]
        if errors:
            raise CionError(errors[0] + (f" (and {len(errors) - 1} more videos)" if len(errors) > 1 else ""))
        for r in rows:
            stats[r["video_id"]] = json.loads(r["stats"])
            with_rows.add(r["video_id"])
    for v in todo:  # videos whose tracking found nobody: an empty result, counted
        if v not in with_rows:
            empty = VideoLevels(v, np.zeros(0, object), np.zeros(0, np.int64), np.zeros(0, np.int64),
                                np.zeros(0, np.int64), np.zeros((0, 0)), np.zeros(0, np.int64),
                                {"samples_in": 0, "tracklets_in": 0})
            save_levels(video_uri(cfg.out, v, keys.levels[v]), empty, np.zeros(0, np.int64), None)
            stats[v] = empty.stats
    return todo, stats


def distance_keys(cfg: CurateConfig, keys: Keys, videos: list[str]) -> dict[str, str]:
    return {v: stage.content_key(DISTANCES_VERSION, keys.embed[v], cfg.denoise.min_len, cfg.calibrate.max_per_video)
            for v in videos}


def _calibrate(cfg: CurateConfig, keys: Keys, videos: list[str], log) -> tuple[Calibration, Distances]:
    """The same- and different-person distances of every video (computed for those without a
    cached file at their key), pooled, and the thresholds they give (cion_ray.curation.calibrate)."""
    dkeys = distance_keys(cfg, keys, videos)
    have = _cached(cfg.out, "calibration")
    todo = [v for v in videos if f"{v}-{dkeys[v]}.npz" not in have]
    done: set[str] = set()
    if todo:
        ds = _embedding_dataset(cfg, todo)
        if ds is not None:
            with PolledProgress(Progress("curate/calibrate", len(todo), "videos",
                                         label="measuring distances for calibration", log=log)) as pp:
                rows = ds.groupby("video_id", num_partitions=max(1, min(len(todo), 64))).map_groups(
                    distances_one_video, batch_format="pyarrow",
                    fn_args=(cfg.denoise.min_len, cfg.calibrate.max_per_video, cfg.out,
                             {v: dkeys[v] for v in todo}, pp.counter)).take_all()
            done = {r["video_id"] for r in rows}
        for v in todo:  # videos whose tracking found nobody
            if v not in done:
                save_distances(distances_uri(cfg.out, v, dkeys[v]), Distances())
    with ThreadPoolExecutor(max_workers=16) as ex:
        d = pool(list(ex.map(lambda v: load_distances(distances_uri(cfg.out, v, dkeys[v])), videos)))
    return calibrate(d, cfg.calibrate, cfg.denoise, cfg.link), d  # the report shows the thresholds


def _load_all(out: str, keys: Keys, videos: list[str]) -> list[dict]:
    def one(v):
        d = load_levels(video_uri(out, v, keys.levels[v]))
        d["video_id"] = v
        return d
    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(one, videos))


def _table(levels: list[dict]) -> IdentityTable:
    dim = next((d["sums"].shape[1] for d in levels if d["sums"].size), 0)
    lv = [VideoLevels(d["video_id"], d["crop_id"], d["track_id"], d["l1"], d["l2"],
                      d["sums"].astype(np.float64).reshape(-1, dim) if dim else np.zeros((0, 0)), d["counts"])
          for d in levels]
    from cion_ray.curation.core import identity_table
    return identity_table(lv)


def _link(cfg: CurateConfig, table: IdentityTable, keys: Keys, log) -> tuple[list[np.ndarray], int, int]:
    """Relations of every range, then the global pass's: cached ones are read, the others computed
    by parallel Ray tasks (consecutive ranges batched per task, so each task does enough work to
    pay for itself; the global pass in query chunks beside them). A range is cached under the L1/L2 keys
    of its videos and the linking settings, the global pass under those of every video."""
    import io
    level_keys = [keys.levels[v] for v in table.video_ids]
    ranges = [(s, e, range_key(level_keys[s:e]))
              for s, e in sliding_ranges(len(table.video_ids), cfg.link.window, cfg.link.stride)]
    link = asdict(cfg.link)
    tag = cfg.fingerprint()
    cent = table.centroids
    uris = [fs.join(cfg.out, "relations", f"{key}-{tag}.npy") for _, _, key in ranges]
    rels: list[np.ndarray | None] = [None] * len(ranges)
    todo = []
    for i, uri in enumerate(uris):
        if fs.exists(uri):
            rels[i] = np.load(io.BytesIO(fs.read_bytes(uri)))
        else:
            todo.append(i)
    reused = len(ranges) - len(todo)
    global_uri = fs.join(cfg.out, "relations", f"global-{range_key(level_keys)}-{tag}.npy")
    global_rel, global_refs = np.zeros((0, 3)), []
    run_global = global_pass_runs(len(cent), cfg.link)
    if run_global:
        if fs.exists(global_uri):
            global_rel = np.load(io.BytesIO(fs.read_bytes(global_uri)))
        else:
            # query chunks as tasks beside the ranges, each against every identity
            refs = ray.put(cent), ray.put(table.video_pos)
            step = max(5000, -(-len(cent) // max(1, int(2 * cluster_cpus()))))
            task = ray.remote(num_cpus=1)(global_candidates)
            global_refs = [task.remote(*refs, (lo, min(lo + step, len(cent))), cfg.link.use_gpu)
                           for lo in range(0, len(cent), step)]
    per_task = max(1, min(64, -(-len(todo) // max(1, int(4 * cluster_cpus())))))
    remote = ray.remote(num_cpus=1)(_ranges_task)
    pending: dict = {}

    progress = Progress("curate/link", len(todo), "ranges", label="linking", log=log, final_line=False) if todo else None

    def collect(ref):
        group = pending.pop(ref)
        for j, rel in zip(group, ray.get(ref)):
            rels[j] = rel
            _save_npy(uris[j], rel)
        progress.update(len(group))

    for g in range(0, len(todo), per_task):
        group = todo[g:g + per_task]
        base, end = int(table.offsets[ranges[group[0]][0]]), int(table.offsets[ranges[group[-1]][1]])
        spans = [(int(table.offsets[ranges[j][0]]) - base, int(table.offsets[ranges[j][1]]) - base) for j in group]
        if len(pending) >= 2 * max(1, int(cluster_cpus())):
            done, _ = ray.wait(list(pending), num_returns=1)
            collect(done[0])
        pending[remote.remote(cent[base:end], table.video_pos[base:end], spans, link)] = group
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        collect(done[0])
    if progress is not None:
        progress.close()
    if global_refs:
        parts = ray.get(global_refs)
        global_rel = clear_mutual_pairs(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                                        table.video_pos, cfg.link.global_threshold, cfg.link.global_ratio)
        _save_npy(global_uri, global_rel)
    # stored relative to the range's first identity: shift to global indices now
    out = []
    for (s, _, _), rel in zip(ranges, rels):
        rel = np.array(rel, np.float64).reshape(-1, 3)
        if len(rel):
            rel[:, :2] += table.offsets[s]
        out.append(rel)
    passes = (f"; the global pass: {len(global_rel)} relations ({'computed' if global_refs else 'reused'})"
              if run_global else "")
    log(f"linked {len(ranges)} sliding ranges (window {cfg.link.window}, stride {cfg.link.stride}): "
        f"{len(todo)} computed, {reused} reused; {sum(len(r) for r in out)} relations{passes}")
    return out + [np.asarray(global_rel, np.float64).reshape(-1, 3)], len(todo), reused


def _save_npy(uri: str, arr: np.ndarray) -> None:
    import io
    buf = io.BytesIO()
    np.save(buf, np.asarray(arr, np.float64).reshape(-1, 3))
    fs.write_bytes_atomic(uri, buf.getvalue())


def _check_inputs(cfg: CurateConfig) -> tuple[dict, list[str]]:
    if not cfg.crops or not cfg.out:
        raise CionError("curation needs the tracking output (--crops) and an output (--out)")
    if cfg.embed.embedder.startswith("timm:"):
        if not cfg.embed.weights:
            raise CionError(f"the {cfg.embed.embedder} embedder needs --weights (a checkpoint path or s3:// URI)")
        if not fs.exists(cfg.embed.weights):
            raise CionError(f"embedder weights {cfg.embed.weights}: not found")
    if cfg.embed.embedder.startswith("cion:"):
        from cion_ray.zoo.checkpoints import find_checkpoint_file
        find_checkpoint_file(cfg.embed.embedder[5:])  # a missing run or one without a checkpoint, named
    fs.check_output(cfg.out)  # a missing bucket or an unwritable folder fails before any work
    crops_m = runs.load_manifest(cfg.crops, "track")
    if crops_m is None:
        raise CionError(f"{cfg.crops}: no committed tracking output here (no _manifest.json)")
    runs.committed_files(cfg.crops, "track")  # every listed file there, at its committed size
    videos = sorted(crops_m["units"])  # the natural order: video ids sort in upload order
    if not videos:
        raise CionError(f"{cfg.crops}: the tracking output holds no videos")
    return crops_m, videos


def _previous(out: str, m: dict | None) -> dict:
    """What the committed curation in `out` consists of, to be removed once a new one is published."""
    if m is None or "identities" not in m:
        return {}
    return {"identities": list(m["identities"].get("files", [])), "exports": m.get("exports", ""),
            "legacy": not m.get("exports")}  # the first layout exported to out/cion_al and out/market


def run_curate(cfg: CurateConfig, overwrite: bool = False, address: str | None = None,
               log: Callable[[str], None] = _log) -> CurateResult:
    t0 = time.perf_counter()
    crops_m, videos = _check_inputs(cfg)
    m = runs.load_manifest(cfg.out, STAGE)
    previous = _previous(cfg.out, m)
    if overwrite:  # caches of other settings go; the committed output stays until the new one is published
        for sub in ("embeddings", "videos", "relations", "calibration"):
            fs.remove_tree(fs.join(cfg.out, sub))
        m = None
    if m is not None:
        runs.check_fingerprint(m, cfg.fingerprint(), cfg.out)
    else:
        m = runs.empty_manifest(STAGE, cfg.fingerprint(), asdict(cfg))
    keys = content_keys(cfg, crops_m, videos)
    inputs = stage.content_key(sorted(keys.levels.items()), cfg.fingerprint(), *cfg.export_key(MARKET_NAMING))
    if not overwrite and m.get("identities", {}).get("inputs") == inputs:
        current = _current(cfg, m, log)
        if current is not None:
            current.seconds = time.perf_counter() - t0
            return current
    ensure_ray(address)
    if cfg.pool.gpus_per_actor < 0:
        auto = 1.0 if cfg.embed.embedder.startswith(("timm:", "cion:")) and cluster_gpus() >= 1 else 0.0
        cfg = replace(cfg, pool=replace(cfg.pool, gpus_per_actor=auto))
    use_gpu = cfg.pool.gpus_per_actor > 0
    if use_gpu and cluster_gpus() < cfg.pool.gpus_per_actor:
        raise CionError(f"{cfg.pool.gpus_per_actor} GPU(s) per actor asked for, but the Ray cluster has "
                        f"{cluster_gpus():g}; use --gpus-per-actor 0")

    crop_counts = {v: crops_m["units"][v].get("crops") for v in videos}
    embedded = _embed(cfg, keys, videos, use_gpu, log, crop_counts)
    cal, distances = _calibrate(cfg, keys, videos, log)
    denoise, link = cal.apply(cfg.denoise, cfg.link)
    cfg = replace(cfg, denoise=denoise, link=link)  # the thresholds this run uses
    keys = content_keys(cfg, crops_m, videos)
    denoised, stats = _denoise(cfg, keys, videos, log)
    levels = _load_all(cfg.out, keys, videos)
    table = _table(levels)
    notes = []
    if len(videos) == 1:
        notes.append("a single video: there is nothing to link across videos (L3 keeps the L2 identities)")
    if not any(len(d["l2"]) for d in levels):
        notes.append("no crops in any video: nothing to curate")
    if cfg.link.global_ratio > 0 and len(table.counts) > cfg.link.global_max:
        notes.append(f"the global linking pass was skipped: {len(table.counts)} identities, more than "
                     f"link.global_max ({cfg.link.global_max}); its cost grows as their square. Videos more than "
                     f"window - stride apart link only through others; raise link.global_max to run it")
    relations, computed, reused = _link(cfg, table, keys, log)
    identity_of, rstats, small = reduce_identities(table, relations, cfg.link)
    final = []
    for i, d in enumerate(levels):
        lab = np.full(len(d["l2"]), -1, np.int64)
        kept = d["l2"] >= 0
        lab[kept] = identity_of[table.offsets[i] + d["l2"][kept]]
        final.append(lab)
    link_counts = {"ranges": computed + reused, "ranges_reused": reused, "links": rstats.relations,
                   "global_links": int(len(relations[-1])),
                   "components_split": rstats.components_split, "unions_refused": rstats.unions_refused,
                   "identities_dropped_small": small}
    if global_pass_runs(len(table.counts), cfg.link):  # how far it reached (none when off or skipped)
        link_counts["global_limit"] = round(cfg.link.global_threshold, 6)
    report = build_report(levels, final, link_counts)
    report["calibration"] = cal.to_json()
    report["notes"] = notes

    run_id = runs.new_run_id()
    try:
        published = _write_outputs(cfg, run_id, keys, table, levels, final, identity_of, report,
                                   _total(crop_counts, list(crops_m["units"])), log,
                                   calibration_png(distances, cal, title=f"curation of {len(videos)} videos"))
    except BaseException:
        # nothing of this run was published: its files go, the committed output stays as it was
        fs.remove_tree(fs.join(cfg.out, "identities", f"run-{run_id}"))
        fs.remove_tree(fs.join(cfg.out, "exports", run_id))
        raise
    m = dict(m)
    m["units"] = {v: {"key": keys.levels[v]} for v in videos}
    m["identities"] = {"run_id": run_id, "files": published["files"], "records": published["records"],
                       "identities": report["counts"]["identities_out"], "samples": report["counts"]["samples_out"],
                       "videos": videos, "inputs": inputs}
    m["exports"] = published["exports"]
    m["runs"] = list(m["runs"]) + [{"run_id": run_id, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                    "videos_embedded": embedded, "videos_denoised": denoised,
                                    "ranges_computed": computed, "ranges_reused": reused}]
    fs.write_json(fs.join(cfg.out, runs.MANIFEST), m)  # the commit point
    _publish_views(cfg.out, m)
    _remove_previous(cfg.out, previous, m)
    log("report:\n" + report_text(report).rstrip())
    return CurateResult(out=cfg.out, report=report, identities=report["counts"]["identities_out"],
                        samples=report["counts"]["samples_out"], videos_embedded=embedded, videos_denoised=denoised,
                        ranges_computed=computed, ranges_reused=reused, seconds=time.perf_counter() - t0,
                        exports=export_paths(cfg.out, m))


def _write_outputs(cfg: CurateConfig, run_id: str, keys: Keys, table: IdentityTable, levels: list[dict],
                   final: list[np.ndarray], identity_of: np.ndarray, report: dict, crops_total: int | None = None,
                   log: Callable[[str], None] = _log, calibration: bytes | None = None) -> dict:
    """This run's identities Parquet, exports, report and contact sheet, all beside the committed
    ones (identities/run-<id>/, exports/<id>/). -> {"files", "records", "exports"} to publish."""
    export_root = fs.join(cfg.out, "exports", run_id)
    crop_files = runs.committed_files(cfg.crops, "track")
    id_dir = fs.join(cfg.out, "identities", f"run-{run_id}")
    plan, notes = export_plan(cfg.export if cfg.export_market else None, export_root, list(table.video_ids), levels,
                              final, int(identity_of.max(initial=-1)) + 1)
    for n in notes:
        log(f"note: {n}")
    report["notes"] = list(report.get("notes", [])) + notes
    labeler = CropLabeler({v: video_uri(cfg.out, v, keys.levels[v]) for v in table.video_ids}, identity_of,
                          {v: int(table.offsets[i]) for i, v in enumerate(table.video_ids)})
    files, shards = label_and_export(crop_files, labeler, plan, id_dir, cfg.export.writers, cfg.export.shard_size,
                                     crops_total, log)
    records = stage.file_records(cfg.out, files)
    if sum(r["rows"] for r in records) != report["counts"]["samples_out"]:
        raise CionError(f"{id_dir}: {sum(r['rows'] for r in records)} identity rows written, "
                        f"{report['counts']['samples_out']} expected; nothing was committed")
    if plan is not None:
        finish_export(plan, files, shards)
    fs.write_json(fs.join(export_root, "report.json"), report)
    fs.write_bytes_atomic(fs.join(export_root, "report.txt"), report_text(report).encode())
    if calibration:
        fs.write_bytes_atomic(fs.join(export_root, "calibration.png"), calibration)
    if report["counts"]["samples_out"]:
        _sheet(fs.join(export_root, "sheet.png"), crop_files, levels, final)
    return {"files": [stage.relative(cfg.out, f) for f in files], "records": records,
            "exports": f"exports/{run_id}"}


def _sheet(uri: str, crop_files: list[str], levels: list[dict], final: list[np.ndarray]) -> None:
    write_sheet(uri, crop_files, levels, final)


def _publish_views(out: str, m: dict) -> None:
    """After the commit: the committed run's report, sheet and CION-AL JSON at the top of `out`
    (the JSON's paths lead into exports/<run>/; streamed from the committed identities), and
    locally `out/market` pointing at its Market export. Each is one atomic write; any of them can
    be redone from the manifest."""
    root = fs.join(out, m["exports"])
    for name in ("report.json", "report.txt", "sheet.png", "calibration.png"):
        uri = fs.join(root, name)
        if fs.exists(uri):
            fs.write_bytes_atomic(fs.join(out, name), fs.read_bytes(uri))
        else:
            fs.remove_tree(fs.join(out, name))
    if fs.exists(fs.join(root, "cion_al.json")):
        write_cion_al(fs.join(out, "cion_al.json"), [fs.join(out, f) for f in m["identities"]["files"]],
                      prefix=f"{m['exports']}/")
    else:
        fs.remove_tree(fs.join(out, "cion_al.json"))
    if fs.is_remote(out):
        return
    if fs.exists(fs.join(root, "market")):
        stage.publish_link(out, "market", f"{m['exports']}/market")
    elif os.path.islink(fs.join(out, "market")):
        os.unlink(fs.join(out, "market"))


def _remove_previous(out: str, previous: dict, m: dict) -> None:
    """The superseded run's files, once the manifest no longer names them; and anything a run that
    died before its commit left under identities/ or exports/."""
    keep_ids = {f.split("/")[1] for f in m["identities"]["files"] if f.count("/") >= 2}
    keep_ids.add(f"run-{m['identities']['run_id']}")
    stage.remove_unnamed(fs.join(out, "identities"), keep_ids)
    stage.remove_unnamed(fs.join(out, "exports"), {m["exports"].split("/", 1)[1]})
    if previous.get("legacy"):
        fs.remove_tree(fs.join(out, "cion_al"))
        if not os.path.islink(fs.join(out, "market")):
            fs.remove_tree(fs.join(out, "market"))


def _current(cfg: CurateConfig, m: dict, log) -> CurateResult | None:
    """The committed result when nothing it was computed from has changed (None when its files are
    damaged or its report is missing: then the stage runs again)."""
    try:
        stage.check_records(cfg.out, m["identities"].get("records", []), "curation output")
        report = fs.read_json(fs.join(cfg.out, m["exports"], "report.json"))
    except (CionError, KeyError):
        return None
    _publish_views(cfg.out, m)  # a run killed between its commit and its views left them behind
    log(f"nothing changed since the committed curation (run {m['identities']['run_id']}): it is current")
    return CurateResult(out=cfg.out, report=report, identities=report["counts"]["identities_out"],
                        samples=report["counts"]["samples_out"], exports=export_paths(cfg.out, m), current=True)


def export_paths(out: str, m: dict) -> list[str]:
    """The exports of the committed curation in `out`, as a user reaches them."""
    if not m.get("exports"):
        return []
    root = fs.join(out, m["exports"])
    paths = []
    if fs.exists(fs.join(out, "cion_al.json")):
        paths.append(fs.join(out, "cion_al.json"))
    if fs.exists(fs.join(root, "market")):
        market = fs.join(out, "market") if not fs.is_remote(out) else fs.join(root, "market")
        paths.append(fs.join(market, "bounding_box_train"))
        if fs.exists(fs.join(root, "market", "query")):
            paths += [fs.join(market, "query"), fs.join(market, "bounding_box_test")]
    if fs.exists(fs.join(root, WDS_INDEX)):
        paths.append(fs.join(root, WDS_INDEX))
    return paths


def identities_files(out: str) -> list[str]:
    """The identities Parquet files of the last committed curation in `out` (checked to be whole)."""
    m = runs.load_manifest(out, STAGE)
    if m is None or "identities" not in m:
        raise CionError(f"{out}: no committed curation output here")
    stage.check_records(out, m["identities"].get("records", []), "curation output")
    return [fs.join(out, f) for f in m["identities"]["files"]]
