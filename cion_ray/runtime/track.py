"""The tracking stage on Ray Data.

manifest of video chunks -> map_batches over a pool of detector+tracker actors -> crops Parquet,
committed by manifest. Videos tracked as one chunk are finished inside the actor; chunks of
long videos are written raw, stitched per video (groupby), and relabelled in a second pass.
"""
from __future__ import annotations

import os
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from cion_ray.config import from_dict
from cion_ray.errors import CionError
from cion_ray.io import fs, runs, stage
from cion_ray.io.video import iter_frames
from cion_ray.progress import Progress, verbose
from cion_ray.runtime.session import PolledProgress, RunLedger, cluster_gpus, ensure_ray, fit_actor_cpus
from cion_ray.tracking.config import TrackConfig
from cion_ray.tracking.detectors import check_weights
from cion_ray.tracking.local import make_detector
from cion_ray.tracking.manifest import Chunk, VideoEntry, list_videos, plan_chunks, probe_entry, video_id_of
from cion_ray.tracking.output import final_table, raw_table, relabel_table
from cion_ray.tracking.report import write_quality_report
from cion_ray.tracking.stitch import stitch_group
from cion_ray.tracking.tracker import chunk_frames, make_tracker, prefetch, process_chunk

STAGE = "track"
LEDGER_LOST = ("the run's message ledger was lost: its skip reasons and warnings are unknown; videos in which "
               "nobody was found, and chunked videos, are tracked again on the next run")
ROWS_PER_BLOCK = 2048


def _log(msg: str) -> None:
    print(f"[track] {msg}", file=sys.stderr, flush=True)


@dataclass
class TrackResult:
    out: str
    run_id: str | None
    videos_done: list[str] = field(default_factory=list)
    videos_skipped_finished: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    crops: int = 0
    tracklets: int = 0
    frames: int = 0
    seconds: float = 0.0
    busy_seconds: float = 0.0  # summed time actors spent tracking chunks (decode + detect + track + crops)
    report: dict | None = None


def _scalar(v):
    return v.item() if hasattr(v, "item") else v


class TrackActor:
    """Holds a detector (the YOLO model is loaded once) and tracks the chunks it is given."""

    def __init__(self, cfg: dict, mode: str, ledger, use_gpu: bool, chatty: bool = False):
        os.environ.setdefault("YOLO_OFFLINE", "1")
        self.chatty = chatty  # a line per chunk (--verbose); the driver's progress line counts them anyway
        self.cfg = from_dict(TrackConfig, cfg)
        self.mode = mode
        self.ledger = ledger
        device = "cpu"
        if use_gpu:
            import torch
            device = "cuda:0" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.yolo = make_detector(self.cfg, "", device) if self.cfg.detector.kind == "yolo" else None
        make_tracker(self.cfg.tracker)  # import the tracker code now, not inside the first chunk's timing

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[pa.Table]:
        for i in range(len(batch["video_id"])):
            chunk = Chunk(**{k: _scalar(batch[k][i]) for k in Chunk.__dataclass_fields__})
            yield from self._one(chunk)

    def _one(self, chunk: Chunk) -> Iterator[pa.Table]:
        where = {"video_id": chunk.video_id, "chunk": chunk.chunk}
        try:
            detect = make_detector(self.cfg, chunk.video_id, self.device, self.yolo)
            for p in getattr(detect, "problems", [])[:20]:
                self.ledger.record.remote({**where, "warning": p})
            if getattr(detect, "problems", None) and len(detect.problems) > 20:
                self.ledger.record.remote({**where, "warning": f"... {len(detect.problems) - 20} more malformed lines"})
            frames = prefetch(chunk_frames(chunk, lambda: fs.open_input(chunk.uri), iter_frames))
            res = process_chunk(chunk, frames, detect, self.cfg.tracker, self.cfg.crops, self.cfg.detector.batch)
        except CionError as e:
            self.ledger.record.remote({**where, "error": str(e)})
            return
        except Exception as e:  # keep the other videos going; the report carries the traceback's last line
            self.ledger.record.remote({**where, "error": fs.redact(f"{chunk.uri}: internal error "
                                                                    f"{type(e).__name__}: {e}"),
                                       "traceback": fs.redact(traceback.format_exc(limit=5))})
            return
        if self.mode == "final":
            table = final_table(chunk, res, self.cfg.crops.min_track_len)
            tracklets = len(set(table.column("track_id").to_pylist()))
        else:
            table = raw_table(chunk, res)
            tracklets = -1
        fps = res.frames_decoded / res.seconds if res.seconds else 0.0
        owned = _owned_frames(chunk)
        self.ledger.record.remote({**where, "done": True, "frames": owned, "rows": table.num_rows,
                                   "tracklets": tracklets, "detections": res.detections, "seconds": res.seconds})
        if self.chatty:
            _log(f"{chunk.video_id} chunk {chunk.chunk + 1}/{chunk.n_chunks}: {res.frames_decoded} frames, "
                 f"{res.detections} detections, {table.num_rows} rows, {fps:.0f} frames/s")
        for b in table.to_batches(max_chunksize=ROWS_PER_BLOCK):
            yield pa.Table.from_batches([b], schema=table.schema)


def _owned_frames(chunk: Chunk) -> int:
    """Frames a chunk is responsible for (its overlap with the previous chunk excluded)."""
    return len(range(-(-chunk.own_start // chunk.step) * chunk.step, chunk.stop, chunk.step))


def _probe(args: tuple[str, str]) -> dict:
    uri, det_uri = args
    try:
        e = probe_entry(uri)
        if det_uri and not fs.exists(det_uri):
            return {"uri": uri, "error": f"{uri}: no detections file {det_uri}"}
        return {"entry": e.to_json()}
    except CionError as err:
        return {"uri": uri, "error": str(err)}


def _pool_kwargs(cfg: TrackConfig, use_gpu: bool) -> dict:
    return dict(
        compute=ray.data.ActorPoolStrategy(size=cfg.pool.actors),
        num_cpus=fit_actor_cpus(cfg.pool.actors, cfg.pool.cpus_per_actor),
        num_gpus=cfg.pool.gpus_per_actor if use_gpu else 0,
        batch_size=1,
        batch_format="numpy",
    )


def _chunk_dataset(chunks: list[Chunk]):
    return ray.data.from_items([c.to_row() for c in chunks], override_num_blocks=max(1, len(chunks)))


def _write(ds, uri: str) -> list[str]:
    pa_fs, path = fs.arrow_fs(uri)
    # ~20-50 MB files; small enough that writing overlaps tracking instead of waiting for the end
    ds.write_parquet(path, filesystem=pa_fs, min_rows_per_file=10_000)
    try:
        return fs.list_files(uri, (".parquet",))
    except CionError:
        return []  # nothing was written: no rows


def _stitch_multi(cfg: TrackConfig, chunks: list[Chunk], raw_uri: str, out_uri: str, failed: set[str]
                  ) -> tuple[list[str], dict[str, dict]]:
    """Stitch raw chunk outputs per video, relabel, write final rows. Returns files and per-video counts."""
    own = {(c.video_id, c.chunk): c.own_start for c in chunks}
    pa_fs, path = fs.arrow_fs(raw_uri)
    if not fs.exists(raw_uri) or not fs.list_files(raw_uri, (".parquet",)):
        return [], {}
    cols = ["video_id", "chunk", "frame", "track_id", "x1", "y1", "x2", "y2"]
    min_len = cfg.crops.min_track_len

    def per_video(b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        vid = str(b["video_id"][0])
        boxes = np.stack([b["x1"], b["y1"], b["x2"], b["y2"]], axis=1)
        starts = {int(c): own[(vid, int(c))] for c in np.unique(b["chunk"])}
        return stitch_group(vid, b["chunk"], b["frame"], b["track_id"], boxes, starts, min_len)

    boxes_ds = ray.data.read_parquet(path, filesystem=pa_fs, columns=cols)
    n_videos = len({c.video_id for c in chunks})
    mapping_rows = boxes_ds.groupby("video_id", num_partitions=max(1, min(n_videos, 32))).map_groups(
        per_video, batch_format="numpy").take_all()
    ids = {(r["video_id"], int(r["chunk"]), int(r["track_id"])): int(r["final_id"])
           for r in mapping_rows if r["video_id"] not in failed}
    counts = {r["video_id"]: {"rows": int(r["crops"]), "tracklets": int(r["tracklets"])}
              for r in mapping_rows if r["video_id"] not in failed}

    def relabel(t: pa.Table) -> pa.Table:
        return relabel_table(t, ids, own)

    ds = ray.data.read_parquet(path, filesystem=pa_fs).map_batches(relabel, batch_format="pyarrow")
    return _write(ds, out_uri), counts


def _sweep(out: str, m: dict) -> None:
    """After a commit: remove run folders under crops/ that the manifest does not name (a run
    replaced by --overwrite, or one killed before its commit)."""
    stage.remove_unnamed(fs.join(out, "crops"), {f"run-{r['run_id']}" for r in m["runs"]})


def _events(ledger, result: TrackResult, log) -> list[dict]:
    """The run's chunk messages. They only report (errors, warnings, videos with no rows): what is
    committed is read from the rows written, so a lost ledger costs the report, never data."""
    try:
        return ray.get(ledger.events.remote())
    except ray.exceptions.RayActorError:
        if not _ledger_lost(result):
            result.warnings.append(LEDGER_LOST)
            log(LEDGER_LOST)
        return []


def _ledger_lost(result: TrackResult) -> bool:
    return LEDGER_LOST in result.warnings


def _written_units(cfg: TrackConfig, chunks: list[Chunk], files: list[str], events: list[dict],
                   failed: dict[str, str], sources: dict[str, dict], run_id: str) -> dict[str, dict]:
    """The videos this run commits, decided from the rows written, not from actor messages:
    every video with rows in the written files (a chunk's rows are yielded only once it is
    tracked whole), plus videos whose chunks all reported done with no rows. Each unit
    carries its source identity and a digest of its rows (what downstream caches key on).
    Two rows with one crop id (a chunk written twice) stop the commit."""
    counts, digests = _rows_per_video(files)
    n_chunks = {c.video_id: c.n_chunks for c in chunks}
    done: dict[str, list[dict]] = {}
    for e in {(e["video_id"], e["chunk"]): e for e in events if e.get("done")}.values():  # a retried chunk once
        done.setdefault(e["video_id"], []).append(e)
    units: dict[str, dict] = {}
    for vid in sorted(n_chunks):
        evs = done.get(vid, [])
        complete = vid not in failed and len(evs) == n_chunks[vid]
        if vid not in counts and not complete:
            continue
        rows, tracklets = counts.get(vid, (0, 0))
        units[vid] = {"run": run_id, "frames": sum(e["frames"] for e in evs), "crops": rows, "tracklets": tracklets,
                      "detections": sum(e["detections"] for e in evs), "source": sources.get(vid),
                      "digest": stage.content_key(cfg.fingerprint(), sources.get(vid), digests.get(vid, ""))}
    return units


def _rows_per_video(files: list[str]) -> tuple[dict[str, tuple[int, int]], dict[str, str]]:
    """Read back what was written: {video: (rows, tracklets)} and {video: digest of its rows}."""
    import hashlib
    cols = ["crop_id", "video_id", "track_id", "frame", "x1", "y1", "x2", "y2"]
    parts = []
    for uri in files:
        pa_fs, path = fs.arrow_fs(uri)
        parts.append(pq.read_table(path, filesystem=pa_fs, columns=cols))
    if not parts:
        return {}, {}
    t = pa.concat_tables(parts).sort_by([("video_id", "ascending"), ("crop_id", "ascending")])
    cid = t.column("crop_id").to_pylist()
    dup = next((a for a, b in zip(cid, cid[1:]) if a == b), None)
    if dup is not None:
        raise CionError(f"tracking wrote crop {dup} twice (a chunk written twice); nothing was committed; re-run to "
                        "track these videos again")
    vids = np.asarray(t.column("video_id").to_pylist(), object)
    counts, digests = {}, {}
    bounds = np.flatnonzero(np.r_[True, vids[1:] != vids[:-1], True])
    for a, b in zip(bounds[:-1], bounds[1:]):
        part = t.slice(a, b - a)
        h = hashlib.sha256()
        for c in cols[2:]:
            h.update(np.ascontiguousarray(part.column(c).to_numpy()).tobytes())
        h.update("\n".join(cid[a:b]).encode())
        counts[str(vids[a])] = (int(b - a), len(set(part.column("track_id").to_pylist())))
        digests[str(vids[a])] = h.hexdigest()
    return counts, digests


def run_track(cfg: TrackConfig, overwrite: bool = False, address: str | None = None,
              log: Callable[[str], None] = _log) -> TrackResult:
    """Track every video under cfg.videos not yet committed in cfg.out; commit; report quality."""
    t0 = time.perf_counter()
    if not cfg.videos or not cfg.out:
        raise CionError("tracking needs an input (--videos) and an output (--out)")
    fs.check_output(cfg.out)  # a missing bucket or an unwritable folder fails before any work
    if cfg.detector.kind == "yolo":
        check_weights(cfg.detector.weights)
    elif not cfg.detector.mot:
        raise CionError("the mot-det detector needs --mot DIR (a folder with <video_id>/det.txt)")
    elif not fs.exists(cfg.detector.mot):
        raise CionError(f"{cfg.detector.mot}: not found (the --mot folder of detections)")
    out = cfg.out
    m = runs.load_manifest(out, STAGE)
    if overwrite:  # a new output replaces the committed one when it commits, not before
        m = None
    if m is not None:
        runs.check_fingerprint(m, cfg.fingerprint(), out)
    else:
        m = runs.empty_manifest(STAGE, cfg.fingerprint(), asdict(cfg))
    uris, sources, todo = plan_videos(cfg, m)
    result = TrackResult(out=out, run_id=None,
                         videos_skipped_finished=sorted(video_id_of(u) for u in uris if u not in todo))
    if result.videos_skipped_finished:
        log(f"{len(result.videos_skipped_finished)} of {len(uris)} videos already committed in {out}; skipping them")
    if todo:
        ensure_ray(address)
        _track_videos(cfg, todo, sources, m, result, log)
    gt_root = cfg.gt or (cfg.detector.mot if cfg.detector.kind == "mot-det" else "")
    if not cfg.quality_report:
        gt_root = ""
    m = runs.load_manifest(out, STAGE) or m
    result.report = write_quality_report(out, m, gt_root, skipped=result.skipped, warnings=result.warnings,
                                         log=log)
    result.seconds = time.perf_counter() - t0
    if not m["units"]:
        raise CionError(f"{cfg.videos}: no video could be tracked ({len(result.skipped)} skipped; the reasons are in "
                        f"{fs.join(out, 'report.txt')}); nothing was committed in {out}")
    return result


def plan_videos(cfg: TrackConfig, m: dict) -> tuple[list[str], dict[str, dict], list[str]]:
    """(every video under cfg.videos, their source identities, those not committed in manifest m).
    A committed video whose file now has other content is refused (CionError), before any work."""
    uris = list_videos(cfg.videos)
    sources = _sources(uris, m["units"])
    _refuse_changed(cfg, uris, sources, m["units"])
    return uris, sources, [u for u in uris if video_id_of(u) not in m["units"]]


def _sources(uris: list[str], units: dict) -> dict[str, dict]:
    """{video_id: source identity} (size + mtime + SHA-256, or size + ETag on S3); a file unchanged
    since it was committed is not hashed again. Unreadable files are left out (probing reports them)."""
    def one(u):
        v = video_id_of(u)
        try:
            return v, stage.source_identity(u, units.get(v, {}).get("source"))
        except CionError:
            return v, None
    with ThreadPoolExecutor(max_workers=16) as pool:
        return {v: ident for v, ident in pool.map(one, uris) if ident is not None}


def _refuse_changed(cfg: TrackConfig, uris: list[str], sources: dict[str, dict], units: dict) -> None:
    """A committed video whose file now has other content (same name, other bytes): the output holds
    the crops of another video, and tracking into it would mix the two. Refused before any work."""
    changed = []
    for u in uris:
        v = video_id_of(u)
        old = units.get(v, {}).get("source")
        if old is not None and v in sources and not stage.same_source(old, sources[v]):
            changed.append(v)
    if changed:
        v = changed[0]
        raise CionError(f"{cfg.out}: {len(changed)} of the {len(uris)} videos under {cfg.videos} are not the videos of "
                        f"the same names tracked there (e.g. {v}: {units[v]['source'].get('size')} bytes then, "
                        f"{sources[v].get('size')} bytes and other content now); track into another --out, or pass "
                        "--overwrite to replace that output")


def _track_videos(cfg: TrackConfig, todo: list[str], sources: dict[str, dict], m: dict, result: TrackResult,
                  log) -> None:
    out = cfg.out
    if cfg.pool.gpus_per_actor < 0:
        auto = 1.0 if cfg.detector.kind == "yolo" and cluster_gpus() >= 1 else 0.0
        cfg = replace(cfg, pool=replace(cfg.pool, gpus_per_actor=auto))
    use_gpu = cfg.pool.gpus_per_actor > 0
    if use_gpu and cluster_gpus() < cfg.pool.gpus_per_actor:
        raise CionError(f"{cfg.pool.gpus_per_actor} GPU(s) per actor asked for, but the Ray cluster has "
                        f"{cluster_gpus():g}; use --gpus-per-actor 0 to run on CPUs")
    det_uri = (lambda u: fs.join(cfg.detector.mot, video_id_of(u), "det.txt")) if cfg.detector.kind == "mot-det" \
        else (lambda u: "")
    log(f"probing {len(todo)} videos")
    # probing is I/O (headers, a few packets): threads on the driver beat task start-up
    with ThreadPoolExecutor(max_workers=32) as pool:
        probed = list(pool.map(_probe, [(u, det_uri(u)) for u in todo]))
    entries = []
    for p in probed:
        if "error" in p:
            result.skipped.append({"video_id": video_id_of(p["uri"]), "reason": p["error"]})
            log(f"skipping {p['error']}")
        else:
            entries.append(VideoEntry(**p["entry"]))
    chunks = [c for e in entries for c in plan_chunks(e, cfg.chunks.frames, cfg.chunks.overlap,
                                                      cfg.chunks.step_for(e.fps))]
    if not chunks:
        log("nothing to track")
        return
    run_id = runs.new_run_id()
    result.run_id = run_id
    single = [c for c in chunks if c.n_chunks == 1]
    multi = [c for c in chunks if c.n_chunks > 1]
    log(f"run {run_id}: {len(entries)} videos, {len(chunks)} chunks ({len(multi)} in {len({c.video_id for c in multi})}"
        f" long videos), {cfg.pool.actors} actor(s), detector {cfg.detector.kind}, tracker {cfg.tracker.kind}")
    # beside the driver: a lost worker node does not take the run's messages with it
    here = ray.get_runtime_context().get_node_id()
    ledger = RunLedger.options(scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True)).remote()
    cfg_dict = asdict(cfg)
    run_dir = fs.join(out, "crops", f"run-{run_id}")
    tmp_dir = fs.join(out, "_tmp", run_id)
    files: list[str] = []
    # frames of the chunks done over the frames planned, from the ledger the actors report to
    total = sum(_owned_frames(c) for c in chunks)
    with PolledProgress(Progress("track", total, "frames", label="tracking", log=log),
                        read=lambda: ray.get(ledger.done_frames.remote(), timeout=10)):
        if single:
            ds = _chunk_dataset(single).map_batches(
                TrackActor, fn_constructor_kwargs=dict(cfg=cfg_dict, mode="final", ledger=ledger, use_gpu=use_gpu,
                                                       chatty=verbose()),
                **_pool_kwargs(cfg, use_gpu))
            files += _write(ds, fs.join(run_dir, "single"))
        if multi:
            ds = _chunk_dataset(multi).map_batches(
                TrackActor, fn_constructor_kwargs=dict(cfg=cfg_dict, mode="raw", ledger=ledger, use_gpu=use_gpu,
                                                       chatty=verbose()),
                **_pool_kwargs(cfg, use_gpu))
            _write(ds, fs.join(tmp_dir, "raw"))
    events = _events(ledger, result, log)
    if multi:
        failed_now = {e["video_id"] for e in events if "error" in e}
        if _ledger_lost(result):  # which chunks failed is unknown: no chunked video is committed
            log(f"{len({c.video_id for c in multi})} chunked videos left for the next run")
        else:
            log(f"stitching {len({c.video_id for c in multi})} chunked videos")
            more, _ = _stitch_multi(cfg, multi, fs.join(tmp_dir, "raw"), fs.join(run_dir, "stitched"), failed_now)
            files += more
    failed: dict[str, str] = {}
    for e in events:
        if "error" in e:
            failed.setdefault(e["video_id"], e["error"])
        if "warning" in e:
            result.warnings.append(e["warning"])
    for vid, reason in failed.items():
        result.skipped.append({"video_id": vid, "reason": reason})
        log(f"skipped {reason}")
    units = _written_units(cfg, chunks, files, events, failed, sources, run_id)
    run = {"run_id": run_id, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "files": [stage.relative(out, f) for f in files], "videos": sorted(units)}
    m = runs.commit(out, m, run, units)
    fs.remove_tree(tmp_dir)
    _sweep(out, m)
    result.busy_seconds = sum(e.get("seconds", 0.0) for e in events if e.get("done"))
    result.videos_done = sorted(units)
    result.crops = sum(u["crops"] for u in units.values())
    result.tracklets = sum(u["tracklets"] for u in units.values())
    result.frames = sum(u["frames"] for u in units.values())
    log(f"committed run {run_id}: {len(units)} videos, {result.frames} frames, {result.tracklets} tracklets, "
        f"{result.crops} crops -> {fs.join(out, runs.MANIFEST)}")

