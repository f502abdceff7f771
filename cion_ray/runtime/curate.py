"""The curation stage on Ray.

  crops Parquet --(Ray Data, embedding actors)--> embeddings Parquet            [per video, resumable]
  embeddings --(groupby video: L1 + L2)--> <out>/videos/<video>.npz              [per video, cached]
  identity sums --(one Ray task per sliding range)--> relations                  [per range, cached by content]
  relations --(union-find tree, anti-chaining guard, size filter on the driver)--> global identities
  crops --(Ray Data)--> identities Parquet, CION-AL JSON + images, Market-1501 folder; report; contact sheet

Adding videos re-runs only what they touch: their embeddings and L1/L2, and the ranges whose
content changed; the reducer then runs over all relations, so the result equals a fresh run.
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
import pyarrow.parquet as pq
import ray
from ray.data.expressions import col

from cion_ray.config import from_dict
from cion_ray.curation.config import CurateConfig
from cion_ray.curation.core import (IdentityTable, VideoCrops, VideoLevels, check_unique, denoise_video_levels,
                                    ranges_with_keys, range_relations, reduce_identities)
from cion_ray.curation.export import cion_al_path, market_path
from cion_ray.curation.gt import crop_identities, gt_layout, load_gt
from cion_ray.curation.report import build_report, report_text
from cion_ray.curation.store import load_levels, save_levels, video_uri
from cion_ray.embed.timm_embedder import build_embedder
from cion_ray.errors import CionError
from cion_ray.io import fs, runs
from cion_ray.io.crops import read_crop_images
from cion_ray.io.schemas import IDENTITIES, embeddings_schema
from cion_ray.runtime.session import cluster_cpus, cluster_gpus, ensure_ray, fit_actor_cpus
from cion_ray.viz.sheet import contact_sheet, save_png

STAGE = "curate"
EMBED_STAGE = "embed"
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


class EmbedActor:
    """Holds one embedder; turns batches of crops into rows of embeddings."""

    def __init__(self, cfg: dict, use_gpu: bool):
        self.cfg = from_dict(CurateConfig, cfg)
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
        return pa.Table.from_arrays([t.column(c) for c in CROP_META] + [emb], schema=self.schema)


def _video_crops(t: pa.Table) -> VideoCrops:
    n = t.num_rows
    # fixed-size lists as written; a plain list type after Ray Data unifies several files' schemas
    flat = pc.list_flatten(t.column("embedding")).to_numpy(zero_copy_only=False)
    feats = np.asarray(flat, np.float32).reshape(n, -1) if n else np.zeros((0, 0), np.float32)
    return VideoCrops(str(t.column("video_id")[0]), np.array(t.column("crop_id").to_pylist(), object),
                      t.column("track_id").to_numpy(), t.column("frame").to_numpy(), feats)


def denoise_one_video(t: pa.Table, cfg: dict, out: str, gt_root: str) -> pa.Table:
    """map_groups body: one video's embeddings -> its npz file; returns one row (video_id, stats, error)."""
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
    save_levels(video_uri(out, v.video_id), lv, frames, gt)
    return pa.table({"video_id": [v.video_id], "stats": [json.dumps(lv.stats)], "error": [""]})


def _ranges_task(centroids: np.ndarray, video_pos: np.ndarray, spans: list[tuple[int, int]], link: dict
                 ) -> list[np.ndarray]:
    """Relations of several consecutive ranges; spans index into the given slice."""
    from cion_ray.curation.config import LinkConfig
    cfg = LinkConfig(**link)
    return [range_relations(centroids[a:b], video_pos[a:b], 0, cfg) for a, b in spans]


class LabelCrops:
    """Crops -> identities rows (kept crops only); with export on, also writes their JPEGs."""

    def __init__(self, out: str, identity_of: np.ndarray, offsets: dict[str, int], positions: dict[str, int],
                 export: bool):
        self.out, self.identity_of, self.offsets, self.positions, self.export = (
            out, identity_of, offsets, positions, export)
        self.cache: dict[str, dict[str, int]] = {}

    def _l2(self, vid: str) -> dict[str, int]:
        if vid not in self.cache:
            if len(self.cache) > 64:
                self.cache.clear()
            d = load_levels(video_uri(self.out, vid))
            self.cache[vid] = dict(zip(d["crop_id"].tolist(), d["l2"].tolist()))
        return self.cache[vid]

    def __call__(self, t: pa.Table) -> pa.Table:
        vids = t.column("video_id").to_pylist()
        cids = t.column("crop_id").to_pylist()
        ident = np.full(len(cids), -1, np.int64)
        for i, (v, c) in enumerate(zip(vids, cids)):
            l2 = self._l2(v).get(c, -1) if v in self.offsets else -1
            if l2 >= 0:
                ident[i] = self.identity_of[self.offsets[v] + l2]
        keep = ident >= 0
        kept = t.filter(pa.array(keep))
        if self.export and kept.num_rows:
            frames = kept.column("frame").to_pylist()
            tracks = kept.column("track_id").to_pylist()
            crops = kept.column("crop").to_pylist()
            for j, (v, f, tr, data, pid) in enumerate(zip(kept.column("video_id").to_pylist(), frames, tracks,
                                                           crops, ident[keep].tolist())):
                fs.write_bytes_atomic(fs.join(self.out, "cion_al", *cion_al_path(pid, v, f, tr).split("/")), data)
                fs.write_bytes_atomic(fs.join(self.out, *market_path(pid + 1, self.positions[v], f, tr).split("/")),
                                      data)
        return pa.Table.from_arrays([kept.column("crop_id"), pa.array(ident[keep], pa.int64()),
                                     kept.column("video_id"), kept.column("track_id")], schema=IDENTITIES)


def _embed(cfg: CurateConfig, crop_files: list[str], videos: list[str], use_gpu: bool, log) -> list[str]:
    """Embed the crops of videos not yet embedded; returns the videos embedded now."""
    emb_out = fs.join(cfg.out, "embeddings")
    m = runs.load_manifest(emb_out, EMBED_STAGE)
    if m is not None:
        runs.check_fingerprint(m, cfg.embed_fingerprint(), emb_out)
    else:
        m = runs.empty_manifest(EMBED_STAGE, cfg.embed_fingerprint(), asdict(cfg.embed))
    todo = [v for v in videos if v not in m["units"]]
    if not todo:
        return []
    run_id = runs.new_run_id()
    log(f"embedding the crops of {len(todo)} videos with {cfg.embed.embedder}, {cfg.pool.actors} actor(s)")
    pa_fs, _ = fs.arrow_fs(crop_files[0])
    paths = [fs.arrow_fs(f)[1] for f in crop_files]
    ds = ray.data.read_parquet(paths, filesystem=pa_fs, columns=CROP_META + ["crop"])
    if len(todo) < len(videos):
        ds = ds.filter(expr=col("video_id").is_in(todo))
    # a crops file is often one block: split it so every embedding actor gets work
    ds = ds.repartition(target_num_rows_per_block=cfg.embed.batch)
    ds = ds.map_batches(EmbedActor, fn_constructor_kwargs={"cfg": asdict(cfg), "use_gpu": use_gpu},
                        batch_size=cfg.embed.batch, batch_format="pyarrow",
                        compute=ray.data.ActorPoolStrategy(size=cfg.pool.actors),
                        num_cpus=fit_actor_cpus(cfg.pool.actors, cfg.pool.cpus_per_actor),
                        num_gpus=cfg.pool.gpus_per_actor if use_gpu else 0)
    run_dir = fs.join(emb_out, f"run-{run_id}")
    out_fs, out_path = fs.arrow_fs(run_dir)
    ds.write_parquet(out_path, filesystem=out_fs, min_rows_per_file=20_000)
    files = fs.list_files(run_dir, (".parquet",)) if fs.exists(run_dir) else []
    base = emb_out.rstrip("/") + "/" if fs.is_remote(emb_out) else os.path.abspath(emb_out) + os.sep
    rel = [f[len(base):] if f.startswith(base) else f for f in files]
    runs.commit(emb_out, m, {"run_id": run_id, "files": rel, "videos": todo}, {v: {"run": run_id} for v in todo})
    return todo


def _denoise(cfg: CurateConfig, videos: list[str], done: dict, log) -> tuple[list[str], dict]:
    """L1 + L2 for videos without a stored result; returns them and their stats."""
    todo = [v for v in videos if v not in done]
    if not todo:
        return [], {}
    emb_files = runs.committed_files(fs.join(cfg.out, "embeddings"), EMBED_STAGE)
    stats: dict[str, dict] = {}
    with_rows: set[str] = set()
    if emb_files:
        log(f"denoising {len(todo)} videos (L1 single tracklet, L2 single video)")
        pa_fs, _ = fs.arrow_fs(emb_files[0])
        ds = ray.data.read_parquet([fs.arrow_fs(f)[1] for f in emb_files], filesystem=pa_fs)
        if len(todo) < len(videos):
            ds = ds.filter(expr=col("video_id").is_in(todo))
        gt_root = cfg.gt
        rows = ds.groupby("video_id", num_partitions=max(1, min(len(todo), 64))).map_groups(
            denoise_one_video, batch_format="pyarrow", fn_args=(asdict(cfg), cfg.out, gt_root)).take_all()
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
            save_levels(video_uri(cfg.out, v), empty, np.zeros(0, np.int64), None)
            stats[v] = empty.stats
    return todo, stats


def _load_all(out: str, videos: list[str]) -> list[dict]:
    def one(v):
        d = load_levels(video_uri(out, v))
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


def _link(cfg: CurateConfig, table: IdentityTable, log) -> tuple[list[np.ndarray], int, int]:
    """Relations of every range: cached ones are read, the others computed by parallel Ray tasks
    (consecutive ranges batched per task, so each task does enough work to pay for itself)."""
    import io
    ranges = ranges_with_keys(table.video_ids, cfg.link)
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
    per_task = max(1, min(64, -(-len(todo) // max(1, int(4 * cluster_cpus())))))
    remote = ray.remote(num_cpus=1)(_ranges_task)
    pending: dict = {}

    def collect(ref):
        for j, rel in zip(pending.pop(ref), ray.get(ref)):
            rels[j] = rel
            _save_npy(uris[j], rel)

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
    # stored relative to the range's first identity: shift to global indices now
    out = []
    for (s, _, _), rel in zip(ranges, rels):
        rel = np.array(rel, np.float64).reshape(-1, 3)
        if len(rel):
            rel[:, :2] += table.offsets[s]
        out.append(rel)
    log(f"linked {len(ranges)} sliding ranges (window {cfg.link.window}, stride {cfg.link.stride}): "
        f"{len(todo)} computed, {reused} reused; {sum(len(r) for r in out)} relations")
    return out, len(todo), reused


def _save_npy(uri: str, arr: np.ndarray) -> None:
    import io
    buf = io.BytesIO()
    np.save(buf, np.asarray(arr, np.float64).reshape(-1, 3))
    fs.write_bytes_atomic(uri, buf.getvalue())


def _sheet(cfg: CurateConfig, crop_files: list[str], levels: list[dict], final: list[np.ndarray],
           rows: int = 10, cols: int = 8) -> None:
    """A row of crops per identity (most videos first), mixing videos, captioned with the video."""
    members: dict[int, list[tuple[str, str]]] = {}
    for d, lab in zip(levels, final):
        for cid, g in zip(d["crop_id"].tolist(), lab.tolist()):
            if g >= 0:
                members.setdefault(g, []).append((d["video_id"], cid))
    order = sorted(members, key=lambda g: (-len({v for v, _ in members[g]}), g))[:rows]
    picks: dict[int, list[tuple[str, str]]] = {}
    for g in order:
        by_video: dict[str, list[str]] = {}
        for v, cid in members[g]:
            by_video.setdefault(v, []).append(cid)
        chosen = []
        while len(chosen) < cols and any(by_video.values()):  # round-robin over videos
            for v in sorted(by_video):
                if by_video[v] and len(chosen) < cols:
                    lst = by_video[v]
                    chosen.append((v, lst.pop(len(lst) // 2)))
        picks[g] = chosen
    images = read_crop_images(crop_files, [cid for ch in picks.values() for _, cid in ch])
    import cv2
    sheet_rows = []
    for g in order:
        cells = []
        for v, cid in picks[g]:
            img = cv2.imdecode(np.frombuffer(images.get(cid, b""), np.uint8), cv2.IMREAD_COLOR)
            cells.append((v, img[..., ::-1] if img is not None else np.zeros((128, 64, 3), np.uint8)))
        n_videos = len({v for v, _ in members[g]})
        sheet_rows.append((f"identity {g}\n{len(members[g])} crops\n{n_videos} videos", cells))
    img = contact_sheet(sheet_rows, title="curated identities: each row should be one person across videos",
                        max_cols=cols)
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        save_png(os.path.join(d, "sheet.png"), img)
        fs.write_bytes_atomic(fs.join(cfg.out, "sheet.png"), open(os.path.join(d, "sheet.png"), "rb").read())


def run_curate(cfg: CurateConfig, overwrite: bool = False, address: str | None = None,
               log: Callable[[str], None] = _log) -> CurateResult:
    t0 = time.perf_counter()
    if not cfg.crops or not cfg.out:
        raise CionError("curation needs the tracking output (--crops) and an output (--out)")
    if cfg.embed.embedder.startswith("timm:"):
        if not cfg.embed.weights:
            raise CionError(f"the {cfg.embed.embedder} embedder needs --weights (a checkpoint path or s3:// URI)")
        if not fs.exists(cfg.embed.weights):
            raise CionError(f"embedder weights {cfg.embed.weights}: not found")
    crops_m = runs.load_manifest(cfg.crops, "track")
    if crops_m is None:
        raise CionError(f"{cfg.crops}: no committed tracking output here (no _manifest.json)")
    crop_files = runs.committed_files(cfg.crops, "track")
    videos = sorted(crops_m["units"])  # the natural order: video ids sort in upload order
    if not videos:
        raise CionError(f"{cfg.crops}: the tracking output holds no videos")
    fs.makedirs(cfg.out)
    if overwrite:
        for sub in (runs.MANIFEST, "embeddings", "videos", "relations", "identities", "cion_al", "market",
                    "report.json", "report.txt", "sheet.png", "cion_al.json"):
            fs.remove_tree(fs.join(cfg.out, sub))
    m = runs.load_manifest(cfg.out, STAGE)
    if m is not None:
        runs.check_fingerprint(m, cfg.fingerprint(), cfg.out)
    else:
        m = runs.empty_manifest(STAGE, cfg.fingerprint(), asdict(cfg))
    ensure_ray(address)
    if cfg.pool.gpus_per_actor < 0:
        auto = 1.0 if cfg.embed.embedder.startswith("timm:") and cluster_gpus() >= 1 else 0.0
        cfg = replace(cfg, pool=replace(cfg.pool, gpus_per_actor=auto))
    use_gpu = cfg.pool.gpus_per_actor > 0
    if use_gpu and cluster_gpus() < cfg.pool.gpus_per_actor:
        raise CionError(f"{cfg.pool.gpus_per_actor} GPU(s) per actor asked for, but the Ray cluster has "
                        f"{cluster_gpus():g}; use --gpus-per-actor 0")

    embedded = _embed(cfg, crop_files, videos, use_gpu, log)
    denoised, stats = _denoise(cfg, videos, m["units"], log)
    m = dict(m)
    m["units"] = {**m["units"], **stats}
    levels = _load_all(cfg.out, videos)
    table = _table(levels)
    notes = []
    if len(videos) == 1:
        notes.append("a single video: there is nothing to link across videos (L3 keeps the L2 identities)")
    relations, computed, reused = _link(cfg, table, log)
    identity_of, rstats, small = reduce_identities(table, relations, cfg.link)
    final = []
    for i, d in enumerate(levels):
        lab = np.full(len(d["l2"]), -1, np.int64)
        kept = d["l2"] >= 0
        lab[kept] = identity_of[table.offsets[i] + d["l2"][kept]]
        final.append(lab)

    # identities Parquet (+ exports), replacing the previous run's
    run_id = runs.new_run_id()
    offsets = {v: int(table.offsets[i]) for i, v in enumerate(table.video_ids)}
    positions = {v: i for i, v in enumerate(table.video_ids)}
    if cfg.export_market and identity_of.max(initial=-1) + 1 > 9999:
        raise CionError(f"{identity_of.max() + 1} identities: Market-1501 names hold at most 9999; "
                        "curate with --no-market-export")
    for sub in ("cion_al", "market"):
        fs.remove_tree(fs.join(cfg.out, sub))
    pa_fs, _ = fs.arrow_fs(crop_files[0])
    cols = ["crop_id", "video_id", "track_id", "frame"] + (["crop"] if cfg.export_market else [])
    ds = ray.data.read_parquet([fs.arrow_fs(f)[1] for f in crop_files], filesystem=pa_fs, columns=cols)
    ds = ds.map_batches(LabelCrops, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=1),
                        num_cpus=fit_actor_cpus(1, 1.0),
                        fn_constructor_kwargs=dict(out=cfg.out, identity_of=identity_of, offsets=offsets,
                                                   positions=positions, export=cfg.export_market))
    id_dir = fs.join(cfg.out, "identities", f"run-{run_id}")
    out_fs, out_path = fs.arrow_fs(id_dir)
    ds.write_parquet(out_path, filesystem=out_fs, min_rows_per_file=100_000)
    id_files = fs.list_files(id_dir, (".parquet",)) if fs.exists(id_dir) else []
    base = cfg.out.rstrip("/") + "/" if fs.is_remote(cfg.out) else os.path.abspath(cfg.out) + os.sep
    rel_files = [f[len(base):] if f.startswith(base) else f for f in id_files]
    if cfg.export_market:
        entries = []
        for f in id_files:
            ofs, p = fs.arrow_fs(f)
            t = pq.read_table(p, filesystem=ofs)
            for cid, pid in zip(t.column("crop_id").to_pylist(), t.column("identity").to_pylist()):
                vid, frame, track = cid.split("/")
                entries.append({"file_path": "cion_al/" + cion_al_path(pid, vid, int(frame), int(track)), "id": pid})
        entries.sort(key=lambda e: (e["id"], e["file_path"]))
        fs.write_json(fs.join(cfg.out, "cion_al.json"), entries)

    link_counts = {"ranges": computed + reused, "ranges_reused": reused, "links": rstats.relations,
                   "components_split": rstats.components_split, "unions_refused": rstats.unions_refused,
                   "identities_dropped_small": small}
    report = build_report(levels, final, link_counts)
    report["notes"] = notes
    fs.write_json(fs.join(cfg.out, "report.json"), report)
    text = report_text(report)
    fs.write_bytes_atomic(fs.join(cfg.out, "report.txt"), text.encode())
    _sheet(cfg, crop_files, levels, final)
    previous = m.get("identities", {}).get("files", [])
    m["identities"] = {"run_id": run_id, "files": rel_files, "identities": report["counts"]["identities_out"],
                       "samples": report["counts"]["samples_out"], "videos": videos}
    m["runs"] = list(m["runs"]) + [{"run_id": run_id, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                    "videos_embedded": embedded, "videos_denoised": denoised,
                                    "ranges_computed": computed, "ranges_reused": reused}]
    fs.write_json(fs.join(cfg.out, runs.MANIFEST), m)
    for f in previous:  # the previous identities files are superseded once the manifest points here
        fs.remove_tree(fs.join(cfg.out, f))
    log("report:\n" + text.rstrip())
    return CurateResult(out=cfg.out, report=report, identities=report["counts"]["identities_out"],
                        samples=report["counts"]["samples_out"], videos_embedded=embedded, videos_denoised=denoised,
                        ranges_computed=computed, ranges_reused=reused, seconds=time.perf_counter() - t0)


def identities_files(out: str) -> list[str]:
    """The identities Parquet files of the last committed curation in `out`."""
    m = runs.load_manifest(out, STAGE)
    if m is None or "identities" not in m:
        raise CionError(f"{out}: no committed curation output here")
    return [fs.join(out, f) for f in m["identities"]["files"]]
