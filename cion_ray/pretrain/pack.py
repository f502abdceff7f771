"""The pre-training pack: a data set's images written once, grouped by identity, so that each
Ray Train worker reads only its own identities' bytes and holds them in Arrow buffers.

Layout, under a cache root (`<data>/_pretrain_pack/` beside a curated or tracking output or a
CION-AL JSON when that is writable, else `<out>/_pretrain_pack/` in the run's folder):

    <key>/_manifest.json                   written last: the commit of a complete pack
    <key>/<build>/shard-00000.arrow ...    Arrow IPC files, columns key (string), crop (large_binary)

`key` is a content key of the label table (its image keys and identities) and of where its bytes
come from (the crops Parquet files' committed records, or the CION-AL JSON's bytes), so every run
on the same data (every point of a scaling study, every trial of a search) reuses one pack, and
changed data gets a new one. A `<key>` without a manifest is a build that did not finish: it is
ignored and a new build is written beside it.

Row order ("pack order"): identities sorted by sampler.identity_order (a hash of the id alone),
an identity's rows in table order. shard_identities gives each worker a contiguous block of
identities in that order, so a worker's rows are a contiguous run of the pack and it reads only
the record batches (a few MB each) that hold them: about data set / workers bytes.
"""
from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from cion_ray.errors import CionError
from cion_ray.io import fs, runs, stage
from cion_ray.pretrain.data import LabelTable
from cion_ray.pretrain.sampler import identity_order

FORMAT = "cion-ray-pretrain-pack/1"
FOLDER = "_pretrain_pack"
SHARD_BYTES = 256 << 20  # about this many image bytes per shard file
BATCH_BYTES = 4 << 20  # and per record batch: the unit a worker reads
GUESS_BYTES = 8 << 10  # image size assumed where no metadata tells it (CION-AL image files)


def pack_positions(identity: np.ndarray) -> np.ndarray:
    """(N,) int64: the pack position of each row of a canonical table (identities in
    identity_order, an identity's rows in table order)."""
    order = np.lexsort((np.arange(len(identity)), identity_order(identity)))
    pos = np.empty(len(identity), dtype=np.int64)
    pos[order] = np.arange(len(identity), dtype=np.int64)
    return pos


def _source_records(table: LabelTable, data: str) -> list:
    """What the image bytes are: the crops files' committed records (size and checksum, or ETag),
    or the CION-AL JSON's identity; a file without a record is identified by stage.source_identity."""
    if table.kind == "files":
        uri = data if data.endswith(".json") else fs.join(data, "cion_al.json")
        return [stage.source_identity(uri)]
    m = runs.load_manifest(table.crops, "track") if table.crops else None
    recs = {r["path"]: r for run in (m or {}).get("runs", []) for r in run.get("records", [])}
    out = []
    for f in table.crop_files:
        rel = stage.relative(table.crops, f) if table.crops else f
        r = recs.get(rel)
        out.append([rel, {k: r[k] for k in ("bytes", "sha256", "etag") if k in r} if r else stage.source_identity(f)])
    return out


def pack_key(table: LabelTable, data: str) -> str:
    h = hashlib.sha256("\0".join(map(str, table.keys)).encode())
    h.update(np.ascontiguousarray(table.identity, dtype=np.int64).tobytes())
    return stage.content_key(FORMAT, table.kind, h.hexdigest(), _source_records(table, data))


def cache_roots(data: str, out: str = "") -> list[str]:
    """Where a pack may live, in order of preference: beside the data, then in the run's folder."""
    beside = data.rsplit("/", 1)[0] if data.endswith(".json") and "/" in data else (
        "." if data.endswith(".json") else data)
    roots = [fs.join(beside, FOLDER)]
    if out:
        roots.append(fs.join(out, FOLDER))
    return roots


def _writable(root: str) -> bool:
    if fs.is_remote(root):
        return True  # found out by writing (a refusal falls back to the next root)
    parent = os.path.dirname(os.path.abspath(root))
    return os.access(root if os.path.isdir(root) else parent, os.W_OK)


@dataclass
class ReadStats:
    """What one worker read from the pack: files opened, bytes read (IPC footers included)."""

    files: list[str] = field(default_factory=list)
    bytes: int = 0


class _CountingFile:
    """A read-only file object that counts the bytes read through it."""

    def __init__(self, raw, stats: ReadStats):
        self.raw, self.stats = raw, stats
        self.closed = False

    def read(self, n: int = -1):
        b = self.raw.read(n)
        self.stats.bytes += len(b)
        return b

    def seek(self, pos: int, whence: int = 0):
        return self.raw.seek(pos, whence)

    def tell(self):
        return self.raw.tell()

    def seekable(self):
        return True

    def readable(self):
        return True

    def close(self):
        self.closed = True
        self.raw.close()


class ImageColumn:
    """Encoded images held in Arrow buffers (one LargeBinary chunk per record batch read, no Python
    object per image), indexed in the caller's row order: images[i] -> bytes of row i (a copy of
    those bytes only). Forked DataLoader processes read the buffers without writing to them, so
    their pages stay shared."""

    def __init__(self, chunks: list, index: np.ndarray):
        self.chunks = chunks
        self.starts = np.cumsum([0] + [len(c) for c in chunks]).astype(np.int64)
        self.index = np.asarray(index, dtype=np.int64)  # row -> position in the chunks' concatenation
        self._offsets, self._data = [], []
        for c in chunks:  # zero-copy numpy views of each chunk's offsets and data buffers
            bufs = c.buffers()
            self._offsets.append(np.frombuffer(bufs[1], dtype=np.int64)[c.offset:c.offset + len(c) + 1])
            self._data.append(np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8))

    def __len__(self) -> int:
        return len(self.index)

    def _get(self, i: int) -> bytes:
        g = int(self.index[i])
        c = int(np.searchsorted(self.starts, g, side="right")) - 1
        o = self._offsets[c]
        j = g - int(self.starts[c])
        return self._data[c][o[j]:o[j + 1]].tobytes()

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._get(j) for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self._get(i)

    def __iter__(self):
        return (self._get(i) for i in range(len(self)))

    @property
    def nbytes(self) -> int:
        return int(sum(c.nbytes for c in self.chunks))


class Pack:
    """A committed pack, opened from its manifest. positions: (N,) pack position of each row of the
    table it was built from."""

    def __init__(self, root: str, manifest: dict, positions: np.ndarray, keys: np.ndarray):
        self.root, self.manifest, self.positions, self.keys = root, manifest, positions, keys
        self.shards = manifest["shards"]

    @property
    def uri(self) -> str:
        return self.root

    def images(self, rows: np.ndarray, stats: ReadStats | None = None) -> ImageColumn:
        """The images of table rows `rows` (in that order), reading only the record batches that
        hold them (each shard file opened once). A pack whose keys disagree with the table is a
        CionError naming the file."""
        import pyarrow as pa

        stats = stats if stats is not None else ReadStats()
        rows = np.asarray(rows, dtype=np.int64)
        pos = self.positions[rows]
        order = np.argsort(pos, kind="stable")
        sorted_pos = pos[order]
        # every record batch of the pack: its global first row, its shard and its number in the shard
        first = np.concatenate([s["start"] + np.asarray(s["batches"], dtype=np.int64) for s in self.shards] +
                               [np.asarray([self.manifest["rows"]], dtype=np.int64)])
        shard_of = np.concatenate([np.full(len(s["batches"]), i) for i, s in enumerate(self.shards)])
        local_no = np.concatenate([np.arange(len(s["batches"])) for s in self.shards])
        batch = np.searchsorted(first, sorted_pos, side="right") - 1
        used, begin = np.unique(batch, return_index=True)
        end = np.append(begin[1:], len(batch))
        chunks = []
        for s in np.unique(shard_of[used]):
            uri = fs.join(self.root, self.shards[int(s)]["file"])
            pa_fs, path = fs.arrow_fs(uri)
            try:
                with pa_fs.open_input_file(path) as raw:
                    reader = pa.ipc.open_file(pa.PythonFile(_CountingFile(raw, stats), mode="r"))
                    stats.files.append(uri)
                    for b, lo, hi in zip(used, begin, end):
                        if shard_of[b] != s:
                            continue
                        rb = reader.get_batch(int(local_no[b]))
                        local = sorted_pos[lo:hi] - first[b]
                        if len(local) != rb.num_rows:
                            rb = rb.take(pa.array(local))
                        got = np.asarray(rb.column(0).to_pylist(), dtype=object)
                        if not np.array_equal(got, self.keys[rows[order[lo:hi]]]):
                            raise CionError(f"{uri}: the pre-training pack does not match its data "
                                            f"(batch {int(local_no[b])}); remove {self.root} and run again")
                        chunks.append(rb.column(1))
            except CionError:
                raise
            except FileNotFoundError:
                raise CionError(f"{uri}: missing from the pre-training pack; remove {self.root} and run again") from None
            except Exception as e:
                raise fs.storage_error(uri, e, "cannot read the pre-training pack") from None
        index = np.empty(len(rows), dtype=np.int64)
        index[order] = np.arange(len(rows), dtype=np.int64)
        return ImageColumn(chunks, index)


def _open(root: str, key: str, table: LabelTable, positions: np.ndarray) -> Pack | None:
    m_uri = fs.join(root, key, runs.MANIFEST)
    if not fs.exists(m_uri):
        return None
    m = fs.read_json(m_uri)
    if m.get("format") != FORMAT or m.get("key") != key or m.get("rows") != len(table.keys):
        return None
    return Pack(fs.join(root, key), m, positions, table.keys)


def find_pack(table: LabelTable, data: str, out: str = "") -> Pack | None:
    """The committed pack of `table` in any of its cache roots, or None."""
    key, positions = pack_key(table, data), pack_positions(table.identity)
    for root in cache_roots(data, out):
        p = _open(root, key, table, positions)
        if p is not None:
            return p
    return None


def ensure_pack(table: LabelTable, data: str, out: str = "", log: Callable[[str], None] = print) -> Pack:
    """The committed pack of `table` (see the module doc): found in a cache root, or built into the
    first writable one. Crops missing from the crops Parquet, or image files that cannot be read,
    are a CionError naming them."""
    key, positions = pack_key(table, data), pack_positions(table.identity)
    roots = cache_roots(data, out)
    for root in roots:
        p = _open(root, key, table, positions)
        if p is not None:
            return p
    problems = []
    for root in roots:
        if not _writable(root):
            problems.append(f"{root}: not writable")
            continue
        try:
            m = build_pack(table, positions, fs.join(root, key), log)
        except CionError as e:
            if "not writable" in str(e) or "access denied" in str(e) or "cannot write" in str(e):
                problems.append(str(e))
                continue
            raise
        _note_other_packs(root, key, log)
        return Pack(fs.join(root, key), m, positions, table.keys)
    raise CionError(f"no place to write the pre-training pack of {data}: {'; '.join(problems)}")


def _note_other_packs(root: str, key: str, log: Callable[[str], None]) -> None:
    """Say what the other packs beside a new one hold: packs of other labels of the same data, or
    of data that has changed since. Nothing removes them (a running job may be reading one)."""
    try:
        others = [f for f in fs.list_files(root, (runs.MANIFEST,))
                  if f.rstrip("/").rsplit("/", 2)[-2] != key and f.endswith("/" + runs.MANIFEST)]
        size = sum(int(fs.read_json(f).get("bytes", 0)) for f in others)
    except CionError:
        return  # a note only: a listing that fails does not stop the run
    if others:
        log(f"pre-training pack: {len(others)} other pack(s) in {root} hold {size / 1e9:.2f} GB (other labels, or "
            f"data that has changed since); nothing removes them: delete a folder there once no run uses it")


# ---------------------------------------------------------------- building


def _schema():
    import pyarrow as pa

    return pa.schema([("key", pa.string()), ("crop", pa.large_binary())])


def _write_shard(uri: str, keys, crops) -> dict:
    """Write one shard (rows already in pack order) as an Arrow IPC file cut into record batches
    of about BATCH_BYTES. -> {"rows", "bytes", "batches" (first row of each batch)}."""
    import pyarrow as pa
    import pyarrow.compute as pc

    lengths = pc.binary_length(crops).to_numpy(zero_copy_only=False).astype(np.int64)
    cum = np.cumsum(lengths)
    starts, s = [], 0
    while s < len(lengths):
        starts.append(s)
        base = cum[s - 1] if s else 0
        e = int(np.searchsorted(cum, base + BATCH_BYTES, side="left")) + 1
        s = min(len(lengths), max(e, s + 1))
    pa_fs, path = fs.arrow_fs(uri)
    if not fs.is_remote(uri):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    table = pa.table([keys, crops], schema=_schema())
    try:
        with pa_fs.open_output_stream(path) as sink, pa.ipc.new_file(sink, _schema()) as w:
            for i, a in enumerate(starts):
                b = starts[i + 1] if i + 1 < len(starts) else len(lengths)
                w.write_batch(table.slice(a, b - a).combine_chunks().to_batches()[0])
    except Exception as e:
        raise fs.storage_error(uri, e, "cannot write") from None
    return {"rows": len(lengths), "bytes": int(cum[-1]) if len(cum) else 0, "batches": starts}


def _missing(table: LabelTable, positions: np.ndarray, lost_pos: np.ndarray) -> CionError:
    inv = np.argsort(positions)
    lost = [str(k) for k in table.keys[inv[lost_pos[:3]]]]
    return CionError(f"{len(lost_pos)} curated crops are missing from the crops Parquet of {table.crops} "
                     f"({', '.join(lost)}{' ...' if len(lost_pos) > 3 else ''})")


def build_pack(table: LabelTable, positions: np.ndarray, dest: str, log: Callable[[str], None] = print) -> dict:
    """Write the pack of `table` under `dest` (a new build folder, then the manifest last).
    -> the manifest."""
    build = f"build-{runs.new_run_id()}-{secrets.token_hex(2)}"
    n = len(table.keys)
    if table.kind == "files":
        shards = _build_from_files(table, positions, fs.join(dest, build))
    else:
        shards = _build_from_parquet(table, positions, fs.join(dest, build))
    for s in shards:
        s["file"] = f"{build}/{s['file']}"
    m = {"format": FORMAT, "key": dest.rstrip("/").rsplit("/", 1)[-1], "rows": n,
         "bytes": int(sum(s["bytes"] for s in shards)), "shards": shards}
    fs.write_json(fs.join(dest, runs.MANIFEST), m)
    log(f"pre-training pack: {n} images, {m['bytes'] / 1e6:.1f} MB in {len(shards)} shards -> {dest}")
    return m


def _rows_per_shard(avg_bytes: float) -> int:
    return max(1, int(SHARD_BYTES // max(1.0, avg_bytes)))


def _build_from_files(table: LabelTable, positions: np.ndarray, folder: str) -> list[dict]:
    """CION-AL image files, read (16 at a time) in pack order, one shard at a time."""
    import pyarrow as pa

    by_pos = np.argsort(positions)
    per = _rows_per_shard(GUESS_BYTES)
    shards = []
    with ThreadPoolExecutor(16) as pool:
        for i, a in enumerate(range(0, len(by_pos), per)):
            rows = by_pos[a:a + per]
            keys = [str(k) for k in table.keys[rows]]
            data = list(pool.map(fs.read_bytes, keys))  # an unreadable file: CionError naming it
            name = f"shard-{i:05d}.arrow"
            rec = _write_shard(fs.join(folder, name), pa.array(keys, pa.string()), pa.array(data, pa.large_binary()))
            shards.append({"file": name, "start": a, **rec})
    return shards


def _build_from_parquet(table: LabelTable, positions: np.ndarray, folder: str) -> list[dict]:
    """Crops Parquet (grouped by video) -> shards (grouped by identity) in two passes with bounded
    memory: each crops file is streamed once and its wanted rows are appended to the spill file of
    their shard (local temporary files); then each shard's spill is sorted into pack order and
    written."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(table.keys)
    index = pd.Index(table.keys)
    if not index.is_unique:
        raise CionError(f"{table.source}: a crop id is listed twice")
    files = []
    crop_bytes = rows_total = 0
    for f in table.crop_files:
        pa_fs, path = fs.arrow_fs(f)
        try:
            with pa_fs.open_input_file(path) as src:
                meta = pq.ParquetFile(src).metadata
        except Exception as e:
            raise fs.storage_error(f, e, "cannot read") from None
        col = meta.schema.names.index("crop") if "crop" in meta.schema.names else None
        if col is None:
            raise CionError(f"{f}: not a crops Parquet file (no crop column)")
        crop_bytes += sum(meta.row_group(g).column(col).total_uncompressed_size for g in range(meta.num_row_groups))
        rows_total += meta.num_rows
        files.append(f)
    per = _rows_per_shard(crop_bytes / max(1, rows_total))
    n_shards = max(1, -(-n // per))
    spill_schema = pa.schema([("pos", pa.int64()), ("key", pa.string()), ("crop", pa.large_binary())])
    with tempfile.TemporaryDirectory(prefix="cion-pack-") as tmp:
        sinks = [pa.OSFile(os.path.join(tmp, f"{s}.arrows"), "wb") for s in range(n_shards)]
        writers = [pa.ipc.new_stream(s, spill_schema) for s in sinks]
        for f in files:
            pa_fs, path = fs.arrow_fs(f)
            try:
                with pa_fs.open_input_file(path) as src:
                    for rb in pq.ParquetFile(src).iter_batches(batch_size=2048, columns=["crop_id", "crop"]):
                        ids = rb.column(0).to_numpy(zero_copy_only=False)
                        hit = index.get_indexer(ids)
                        keep = np.flatnonzero(hit >= 0)
                        if not len(keep):
                            continue
                        pos = positions[hit[keep]]
                        shard = pos // per
                        sub = rb.take(pa.array(keep))
                        crops = sub.column(1).cast(pa.large_binary())
                        for s in np.unique(shard):
                            sel = np.flatnonzero(shard == s)
                            t = pa.array(sel)
                            writers[int(s)].write_batch(pa.record_batch(
                                [pa.array(pos[sel]), sub.column(0).take(t).cast(pa.string()), crops.take(t)],
                                schema=spill_schema))
            except CionError:
                raise
            except Exception as e:
                raise fs.storage_error(f, e, "cannot read") from None
        for w, s in zip(writers, sinks):
            w.close()
            s.close()
        shards = []
        for s in range(n_shards):
            with pa.memory_map(os.path.join(tmp, f"{s}.arrows")) as src:
                t = pa.ipc.open_stream(src).read_all()
            start, stop = s * per, min(n, (s + 1) * per)
            pos = t.column("pos").to_numpy()
            order = np.argsort(pos, kind="stable")
            pos = pos[order]
            first = np.ones(len(pos), dtype=bool)
            first[1:] = pos[1:] != pos[:-1]  # the same crop in two files: the first one read
            order, pos = order[first], pos[first]
            if len(pos) != stop - start:
                lost = np.setdiff1d(np.arange(start, stop), pos)
                raise _missing(table, positions, lost)
            t = t.take(pa.array(order))
            name = f"shard-{s:05d}.arrow"
            rec = _write_shard(fs.join(folder, name), t.column("key").combine_chunks(),
                               t.column("crop").combine_chunks())
            shards.append({"file": name, "start": start, **rec})
            os.remove(os.path.join(tmp, f"{s}.arrows"))
    return shards
