"""Exports of a curated set, as pure code (the runtime runs `export_piece` on a pool of actors).

Every export lies under the run's own folder, `exports/<run>/`, and is published by the manifest:
- CION-AL: one JPEG per kept crop, `cion_al/images/<identity:06d>/<video>_<frame:06d>_<track>.jpg`,
  and `cion_al.json` ([{"file_path", "id"}], sorted by id then path), at any number of identities;
- Market-1501 (fast-reid / torchreid): `market/bounding_box_train/<pid:04d>_c<C>s<S>_<frame:06d>_<nn>.jpg`
  with pid = identity + 1; only when the identities fit Market names (at most 9999), else skipped
  with a note. Camera and session come from the video's position p in the curation's order:
  C = p % 9 + 1, S = p // 9 + 1 (Market cameras are one digit). Each video is its own camera, so an
  identity linked across videos has cross-camera pairs; two videos 9 positions apart share a
  camera digit, and the Market protocol then treats their pairs as same-camera (ignored, never
  wrong). Asked for (`market_test_fraction`), a seeded set of held-out identities goes to
  `query/` and `bounding_box_test/` instead of training: per held-out identity seen by >= 2
  cameras, one crop of each camera that has >= 2 crops is a query, so every query has a gallery
  match from another camera;
- WebDataset (`webdataset`): tar shards `webdataset/shard-<n:06d>.tar` of `<key>.jpg`, `<key>.cls`
  (the identity) and `<key>.json` (crop id, video, frame, track, identity), one shard per piece of
  the crops tables (at most `shard_size` crops read; pieces with no kept crop write no shard), and
  `webdataset/index.json` listing the shards with their sample counts.
"""
from __future__ import annotations

import io
import json
import os
import posixpath
import tarfile
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cion_ray.curation.store import load_levels
from cion_ray.errors import CionError
from cion_ray.io import fs, runs
from cion_ray.io.schemas import IDENTITIES

MARKET_MAX_IDS = 9999
# the Market names' camera/session scheme: /2 is camera = position % 9 + 1 (it was c1 with the
# position as session); exports named the old way are not this run's result
MARKET_NAMING = "market/2"
WDS_INDEX = "webdataset/index.json"


def cion_al_path(identity: int, video_id: str, frame: int, track_id: int) -> str:
    return posixpath.join("images", f"{identity:06d}", f"{video_id}_{frame:06d}_{track_id}.jpg")


def market_camera(video_pos: int) -> tuple[int, int]:
    """A video's Market (camera 1-9, session >= 1) from its position in the curation's order."""
    return video_pos % 9 + 1, video_pos // 9 + 1


def market_path(identity: int, video_pos: int, frame: int, index: int, folder: str = "bounding_box_train") -> str:
    """identity: the Market pid (curated identity + 1)."""
    if identity > MARKET_MAX_IDS:
        raise CionError(f"Market-1501 names hold at most {MARKET_MAX_IDS} identities; this set has more "
                        f"(id {identity})")
    cam, session = market_camera(video_pos)
    return posixpath.join("market", folder, f"{identity:04d}_c{cam}s{session}_{frame:06d}_{index % 100:02d}.jpg")


def wds_key(identity: int, video_id: str, frame: int, track_id: int) -> str:
    """A WebDataset sample key: no dots (the extension starts at the first one) and no slashes."""
    vid = video_id.replace(".", "_").replace("/", "_")
    return f"{identity:06d}_{vid}_{frame:06d}_{track_id}"


def shard_name(n: int) -> str:
    return f"webdataset/shard-{n:06d}.tar"


@dataclass(frozen=True)
class ExportPlan:
    """What one curation exports, where (`root`: exports/<run>/), and the held-out Market split."""

    root: str
    positions: dict[str, int]  # video id -> position in the curation's order
    cion_al: bool = True
    market: bool = True
    webdataset: bool = False
    test_ids: frozenset = frozenset()  # held-out identities (curated ids) for query/ and bounding_box_test/
    query: frozenset = frozenset()  # crop ids of the held-out identities that are queries

    @property
    def images(self) -> bool:
        """Whether any export needs the crops' JPEG bytes."""
        return self.cion_al or self.market or self.webdataset


def held_out_split(identity: np.ndarray, video_pos: np.ndarray, crop_id: np.ndarray, fraction: float,
                   seed: int) -> tuple[frozenset, frozenset]:
    """Kept crops (identity (N,) int >= 0, video_pos (N,), crop_id (N,) str) -> (held-out
    identities, query crop ids). round(fraction * identities) identities, at least one when the
    fraction is > 0 and at least one left to train on, chosen by a seeded generator."""
    ids = np.unique(identity)
    if fraction <= 0 or len(ids) < 2:
        return frozenset(), frozenset()
    n = min(len(ids) - 1, max(1, int(round(fraction * len(ids)))))
    test = np.sort(np.random.default_rng(seed).choice(ids, n, replace=False))
    sel = np.isin(identity, test)
    ident, cam = identity[sel], np.array([market_camera(int(p))[0] for p in video_pos[sel]], np.int64)
    cid = np.asarray(crop_id[sel]).astype(str)
    order = np.lexsort((cid, cam, ident))
    ident, cam, cid = ident[order], cam[order], cid[order]
    query = []
    starts = np.flatnonzero(np.r_[True, ident[1:] != ident[:-1]])
    for a, b in zip(starts, np.r_[starts[1:], len(ident)]):
        cams, first, counts = np.unique(cam[a:b], return_index=True, return_counts=True)
        if len(cams) < 2:
            continue  # one camera: no cross-camera match, all of it is gallery
        for f, c in zip(first, counts):
            if c >= 2:  # the camera keeps a gallery crop, so every other camera's query has a match
                query.append(cid[a + f + c // 2])
    return frozenset(int(i) for i in test), frozenset(query)


def export_plan(settings, root: str, video_ids: list[str], levels: list[dict], final: list[np.ndarray],
                n_identities: int) -> tuple[ExportPlan | None, list[str]]:
    """The exports a curation writes (settings: an ExportConfig; None: none) -> (plan, notes).
    levels: each video's crop_id (N,); final: each video's curated identity (N,), -1 dropped."""
    if settings is None or not (settings.cion_al or settings.market or settings.webdataset):
        return None, []
    notes = []
    market = settings.market and n_identities > 0
    if market and n_identities > MARKET_MAX_IDS:
        market = False
        notes.append(f"{n_identities} identities: Market-1501 names hold at most {MARKET_MAX_IDS}, so the Market "
                     "export was skipped (the other exports are complete)")
    positions = {v: i for i, v in enumerate(video_ids)}
    test_ids, query = frozenset(), frozenset()
    if market and settings.market_test_fraction > 0:
        kept = [(lab >= 0) for lab in final]
        ident = np.concatenate([lab[k] for lab, k in zip(final, kept)] or [np.zeros(0, np.int64)])
        pos = np.concatenate([np.full(int(k.sum()), positions[d["video_id"]]) for d, k in zip(levels, kept)]
                             or [np.zeros(0, np.int64)])
        cid = np.concatenate([np.asarray(d["crop_id"])[k].astype(str) for d, k in zip(levels, kept)]
                             or [np.zeros(0, str)])
        test_ids, query = held_out_split(ident, pos, cid, settings.market_test_fraction, settings.market_seed)
        if not query:
            notes.append("no held-out identity was seen by two cameras with two crops: the Market query/ "
                         "folder is empty")
    return ExportPlan(root, positions, settings.cion_al, market, settings.webdataset, test_ids, query), notes


class CropLabeler:
    """Crop -> curated identity, from each video's cached L2 labels and the global map
    identity_of[offsets[video] + l2] (-1: dropped). The last 64 videos' labels are kept."""

    def __init__(self, level_uris: dict[str, str], identity_of: np.ndarray, offsets: dict[str, int]):
        self.uris, self.identity_of, self.offsets = level_uris, identity_of, offsets
        self.cache: dict[str, dict[str, int]] = {}

    def _l2(self, vid: str) -> dict[str, int]:
        if vid not in self.cache:
            if len(self.cache) > 64:
                self.cache.clear()
            d = load_levels(self.uris[vid])
            self.cache[vid] = dict(zip(d["crop_id"].tolist(), d["l2"].tolist()))
        return self.cache[vid]

    def __call__(self, video_ids: list[str], crop_ids: list[str]) -> np.ndarray:
        """-> (N,) int64 identities, -1 for crops not kept."""
        ident = np.full(len(crop_ids), -1, np.int64)
        for i, (v, c) in enumerate(zip(video_ids, crop_ids)):
            l2 = self._l2(v).get(c, -1) if v in self.offsets else -1
            if l2 >= 0:
                ident[i] = self.identity_of[self.offsets[v] + l2]
        return ident


@dataclass
class Piece:
    """Rows [start, stop) of one row group of a crops file; `shard` numbers its WebDataset shard."""

    file: str
    row_group: int
    start: int
    stop: int
    shard: int


def plan_pieces(row_groups: list[tuple[str, list[int]]], shard_size: int) -> list[list[Piece]]:
    """[(crops file, rows of each row group)] -> tasks, one per row group, each a list of pieces of
    at most shard_size rows, numbered in file order (so shard names do not depend on scheduling)."""
    tasks, n = [], 0
    for file, sizes in row_groups:
        for rg, rows in enumerate(sizes):
            pieces = []
            for a in range(0, rows, shard_size):
                pieces.append(Piece(file, rg, a, min(rows, a + shard_size), n))
                n += 1
            if pieces:
                tasks.append(pieces)
    return tasks


def crops_row_groups(files: list[str]) -> list[tuple[str, list[int]]]:
    out = []
    for f in files:
        afs, path = fs.arrow_fs(f)
        with afs.open_input_file(path) as fh:
            md = pq.ParquetFile(fh).metadata
            out.append((f, [md.row_group(i).num_rows for i in range(md.num_row_groups)]))
    return out


class _Files:
    """Writes files under an export root. Nothing under exports/<run>/ is visible before the
    commit, so a plain write is enough; a failed run's folder is removed whole."""

    def __init__(self, root: str):
        self.root, self.local, self.dirs = root, not fs.is_remote(root), set()

    def write(self, rel: str, data: bytes) -> None:
        uri = fs.join(self.root, *rel.split("/"))
        if not self.local:
            fs.write_bytes_atomic(uri, data)
            return
        d = os.path.dirname(uri)
        if d not in self.dirs:
            os.makedirs(d, exist_ok=True)
            self.dirs.add(d)
        with open(uri, "wb") as f:
            f.write(data)


def shard_bytes(samples: list[tuple[str, bytes, int, dict]]) -> bytes:
    """[(key, JPEG bytes, identity, metadata)] -> a WebDataset tar (members in key order)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, jpg, ident, meta in samples:
            for ext, data in (("jpg", jpg), ("cls", str(ident).encode()), ("json", json.dumps(meta).encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def export_piece(plan: ExportPlan | None, t: pa.Table, ident: np.ndarray, shard: int,
                 files: _Files | None = None) -> pa.Table:
    """One piece of a crops table (crop_id, video_id, track_id, frame[, crop]) and its identities
    (-1: not kept) -> its files written under plan.root; returns the kept rows as identities rows
    (crop_id, identity, video_id, track_id) with their shard (-1: none written)."""
    keep = ident >= 0
    kept = t.filter(pa.array(keep))
    ids = ident[keep]
    written = -1
    if plan is not None and plan.images and kept.num_rows:
        files = files or _Files(plan.root)
        samples = []
        for v, f, tr, cid, data, pid in zip(kept.column("video_id").to_pylist(), kept.column("frame").to_pylist(),
                                            kept.column("track_id").to_pylist(), kept.column("crop_id").to_pylist(),
                                            kept.column("crop").to_pylist(), ids.tolist()):
            if plan.cion_al:
                files.write("cion_al/" + cion_al_path(pid, v, f, tr), data)
            if plan.market:
                folder = ("bounding_box_train" if pid not in plan.test_ids
                          else "query" if cid in plan.query else "bounding_box_test")
                files.write(market_path(pid + 1, plan.positions[v], f, tr, folder), data)
            if plan.webdataset:
                samples.append((wds_key(pid, v, f, tr), data, pid,
                                {"crop_id": cid, "video_id": v, "frame": f, "track_id": tr, "identity": pid}))
        if samples:
            samples.sort(key=lambda s: s[0])
            files.write(shard_name(shard), shard_bytes(samples))
            written = shard
    cols = [kept.column("crop_id"), pa.array(ids, pa.int64()), kept.column("video_id"), kept.column("track_id")]
    cols = [c.cast(f.type) for c, f in zip(cols, IDENTITIES)]
    return pa.Table.from_arrays(cols + [pa.array(np.full(kept.num_rows, written, np.int64))],
                                schema=IDENTITIES.append(pa.field("shard", pa.int64())))


def read_piece(pieces: list[Piece], with_crops: bool) -> list[tuple[Piece, pa.Table]]:
    """The rows of each piece of one row group (read once)."""
    cols = ["crop_id", "video_id", "track_id", "frame"] + (["crop"] if with_crops else [])
    afs, path = fs.arrow_fs(pieces[0].file)
    with afs.open_input_file(path) as fh:
        t = pq.ParquetFile(fh).read_row_group(pieces[0].row_group, columns=cols)
    return [(p, t.slice(p.start, p.stop - p.start)) for p in pieces]


def export_task(pieces: list[Piece], labeler, plan: ExportPlan | None) -> pa.Table:
    """One task (the pieces of one row group): label its crops, write their exports."""
    files = _Files(plan.root) if plan is not None and plan.images else None
    parts = []
    for p, t in read_piece(pieces, plan is not None and plan.images):
        ident = labeler(t.column("video_id").to_pylist(), t.column("crop_id").to_pylist())
        parts.append(export_piece(plan, t, ident, p.shard, files))
    return pa.concat_tables(parts)


# --- the CION-AL JSON, streamed --------------------------------------------------------------

def cion_al_table(identities: pa.Table, prefix: str = "") -> pa.Table:
    """Identities rows (crop_id "<video>/<frame>/<track>", identity) -> (file_path, id) sorted by id
    then path, computed column-wise (the same paths as cion_al_path)."""
    parts = pc.split_pattern(identities.column("crop_id"), "/")
    vid = pc.list_element(parts, 0)
    frame = pc.utf8_lpad(pc.cast(pc.cast(pc.list_element(parts, 1), pa.int64()), pa.string()), 6, "0")
    track = pc.cast(pc.cast(pc.list_element(parts, 2), pa.int64()), pa.string())
    ident = identities.column("identity")
    id6 = pc.utf8_lpad(pc.cast(ident, pa.string()), 6, "0")
    path = pc.binary_join_element_wise(f"{prefix}cion_al/images/", id6, "/", vid, "_", frame, "_", track, ".jpg", "")
    t = pa.table({"file_path": path, "id": pc.cast(ident, pa.int64())})
    return t.sort_by([("id", "ascending"), ("file_path", "ascending")])


def write_cion_al_json(out, entries: pa.Table, chunk: int = 65536) -> int:
    """Streams (file_path, id) rows to a binary stream as a JSON list, one entry per line, chunk
    rows at a time (never one Python list of every entry). -> entries written."""
    out.write(b"[")
    sep = b"\n"
    for off in range(0, entries.num_rows, chunk):
        part = entries.slice(off, chunk)
        text = ",\n".join(f'{{"file_path": {json.dumps(p)}, "id": {i}}}'
                          for p, i in zip(part.column("file_path").to_pylist(), part.column("id").to_pylist()))
        out.write(sep + text.encode())
        sep = b",\n"
    out.write(b"\n]\n")
    return entries.num_rows


def read_identities(files: list[str]) -> pa.Table:
    """(crop_id, identity) of identities Parquet files, as one Arrow table."""
    parts = []
    for f in files:
        afs, path = fs.arrow_fs(f)
        parts.append(pq.read_table(path, filesystem=afs, columns=["crop_id", "identity"]))
    if not parts:
        return pa.table({"crop_id": pa.array([], pa.string()), "identity": pa.array([], pa.int64())})
    return pa.concat_tables(parts, promote_options="default")


def write_cion_al(uri: str, identity_files: list[str], prefix: str = "") -> int:
    """The CION-AL JSON of these identities at `uri`, in one atomic write of a stream."""
    with fs.open_output_atomic(uri) as f:
        return write_cion_al_json(f, cion_al_table(read_identities(identity_files), prefix))


def finish_export(plan: ExportPlan, identity_files: list[str], shards: dict[int, int]) -> None:
    """After the pieces: the CION-AL JSON and the WebDataset index (shard -> samples)."""
    if plan.cion_al:
        write_cion_al(fs.join(plan.root, "cion_al.json"), identity_files)
    if plan.webdataset:
        listing = [{"url": posixpath.basename(shard_name(n)), "samples": int(c)} for n, c in sorted(shards.items())]
        fs.write_json(fs.join(plan.root, WDS_INDEX), {"shards": listing, "samples": int(sum(shards.values()))})


def market_export(out: str) -> str | None:
    """The Market-1501 training folder of the committed curation in `out` (its manifest names the
    export folder: exports/<run>/market), or None when `out` holds no curation with one."""
    m = runs.load_manifest(out, "curate") if fs.exists(fs.join(out, runs.MANIFEST)) else None
    if m is None or not m.get("exports"):
        return None
    uri = fs.join(out, m["exports"], "market", "bounding_box_train")
    return uri if fs.exists(uri) else None
