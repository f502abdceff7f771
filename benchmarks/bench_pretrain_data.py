"""The pre-training data path per worker, old (every worker filters every crops Parquet file, then
holds a Python list of bytes) against new (the identity-grouped pack, pretrain/pack.py: a worker
reads only its record batches and holds Arrow buffers), on a synthetic curated output.

The data: `--crops` crops (real JPEGs of 5-10 KB: a pool of PIL-encoded images reused under
different crop ids), 16 per identity in 4 tracklets of 4 in different videos, 10,000 crops per
crops Parquet file, a curated output over them (the layout load_labels reads, with the file records
a real tracking output commits). For 1, 2 and 4 workers, the workers run at once, each a fresh
process (spawned, as a Ray Train worker is), and each:
  - loads the labels and its identity shard (shard_identities), then its images;
  - times the first batch of 64 decoded images from a DataLoader of `--loaders` processes;
  - then lets those loader processes touch every one of its images once (an epoch's access
    pattern: in the old path each access writes the reference count of a bytes object);
and reports the bytes it read while loading its images (/proc/self/io rchar; the labels, the same
in both paths, are not counted), its peak RSS (VmHWM), and its and each loader's Pss and private
memory (/proc/<pid>/smaps_rollup: RSS counts the pages a loader shares with its worker).
The pack is built once before the new path's runs (its time is reported: a one-time step, reused
by every later run on the same data).

    python benchmarks/bench_pretrain_data.py                      # 100k crops, old and new
    python benchmarks/bench_pretrain_data.py --crops 1000000 --paths new
    python benchmarks/bench_pretrain_data.py --append             # and append to RESULTS.md
"""
from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PER_ID, PER_TRACK, PER_FILE = 16, 4, 10_000


def jpeg_pool(n: int = 512, seed: int = 0) -> list[bytes]:
    """`n` person-sized (128x64) JPEGs of 5-10 KB: smooth colour fields with texture."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        low = rng.integers(0, 255, (8, 4, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(low).resize((64, 128), Image.BILINEAR), dtype=np.float64)
        img += rng.normal(0, 28, img.shape)
        buf = io.BytesIO()
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=92)
        out.append(buf.getvalue())
    return out


def make_data(root: Path, n: int) -> str:
    """A tracking output and a curated output of `n` synthetic crops under root. -> curated path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cion_ray.io import stage

    pool = jpeg_pool()
    n_files = max(1, -(-n // PER_FILE))
    i = np.arange(n)
    pid, j = i // PER_ID, i % PER_ID
    video = (pid + (j // PER_TRACK) * 97) % n_files  # each tracklet of an identity in another video
    crop_id = np.char.add(np.char.add(np.char.add("v", np.char.zfill(video.astype(str), 5)),
                                      np.char.add("/", np.char.zfill(pid.astype(str), 7))),
                          np.char.add("/", np.char.zfill(j.astype(str), 2)))
    pick = (i * 2654435761) % len(pool)
    (root / "crops" / "crops").mkdir(parents=True)
    files = []
    for v in range(n_files):
        rows = np.flatnonzero(video == v)
        pq.write_table(pa.table({"crop_id": pa.array(crop_id[rows].tolist(), pa.string()),
                                 "crop": pa.array([pool[k] for k in pick[rows]], pa.binary())}),
                       root / "crops" / "crops" / f"v{v:05d}.parquet", row_group_size=2048,
                       use_dictionary=["crop_id"], compression="none")  # crops: unique JPEGs, as real ones are
        files.append(f"crops/v{v:05d}.parquet")
    records = stage.file_records(str(root / "crops"), [str(root / "crops" / f) for f in files])
    (root / "crops" / "_manifest.json").write_text(json.dumps(
        {"stage": "track", "runs": [{"run_id": "r", "files": files, "records": records}], "units": {}}))
    (root / "curated" / "identities").mkdir(parents=True)
    pq.write_table(pa.table({"crop_id": pa.array(crop_id.tolist(), pa.string()), "identity": pid,
                             "video_id": pa.array(np.char.add("v", video.astype(str)).tolist(), pa.string()),
                             "track_id": pid * 10 + j // PER_TRACK}),
                   root / "curated" / "identities" / "part-0.parquet")
    (root / "curated" / "_manifest.json").write_text(json.dumps(
        {"stage": "curate", "identities": {"files": ["identities/part-0.parquet"]},
         "config": {"crops": str(root / "crops")}}))
    return str(root / "curated")


def _status(pid: int | str = "self") -> dict:
    """VmHWM, VmRSS (status) and Pss, Private (smaps_rollup) of a process, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmHWM", "VmRSS")):
            out[line.split(":")[0]] = int(line.split()[1]) * 1024
    roll = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        k, v = line.split(":", 1)
        roll[k] = int(v.split()[0]) * 1024
    out["Pss"] = roll.get("Pss", 0)
    out["Private"] = roll.get("Private_Clean", 0) + roll.get("Private_Dirty", 0)
    return out


def _rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar"):
            return int(line.split()[1])
    return 0


class _Decode:
    def __init__(self, images, names):
        self.images, self.names = images, names

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        import torch

        from cion_ray.io.images import decode_jpeg

        return torch.from_numpy(np.array(decode_jpeg(self.images[i], self.names[i])))


class _Touch:
    """An epoch's access to every image, without the decoding: the bytes of image i, measured."""

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return len(self.images[i])


def worker(mode: str, data: str, rank: int, workers: int, loaders: int, go, results) -> None:
    import torch

    from cion_ray.pretrain.data import fetch_images, load_labels
    from cion_ray.pretrain.pack import ReadStats, find_pack
    from cion_ray.pretrain.sampler import shard_identities

    torch.set_num_threads(1)
    go.wait()
    t0 = time.perf_counter()
    table = load_labels(data)
    rows = np.flatnonzero(np.isin(table.identity, shard_identities(table.identity, workers, rank)))
    t_labels = time.perf_counter() - t0
    before = _rchar()
    stats = ReadStats()
    if mode == "old":
        images = fetch_images(table.subset(rows))
        names = [str(k) for k in table.keys[rows]]
    else:
        from cion_ray.pretrain.loop import ImageNames

        images = find_pack(table, data).images(rows, stats)
        names = ImageNames(table.keys[rows])
    read = _rchar() - before
    t_images = time.perf_counter() - t0
    del table
    # fork, as a Ray Train worker's DataLoader does on Linux: this process was spawned, and a spawned
    # process's DataLoader would pickle the dataset into each loader (a copy per loader in both paths)
    first = torch.utils.data.DataLoader(_Decode(images, names), batch_size=64, shuffle=True,
                                        num_workers=loaders, generator=torch.Generator().manual_seed(rank),
                                        multiprocessing_context="fork" if loaders else None)
    next(iter(first))
    t_first = time.perf_counter() - t0
    del first
    touch = torch.utils.data.DataLoader(_Touch(images), batch_size=512, num_workers=loaders, persistent_workers=True,
                                        multiprocessing_context="fork" if loaders else None)
    it = iter(touch)
    seen = sum(int(b.sum()) for b in it)
    loader_mem = [_status(w.pid) for w in getattr(it, "_workers", [])]
    me = _status()
    del it, touch
    results.put({"mode": mode, "workers": workers, "rank": rank, "images": len(rows), "image_bytes": seen,
                 "read": read, "pack_read": stats.bytes, "pack_files": len(stats.files), "t_labels": t_labels,
                 "t_images": t_images, "t_first": t_first, "worker": me, "loaders": loader_mem})


def run(mode: str, data: str, workers: int, loaders: int, ranks: list[int] | None = None) -> list[dict]:
    """Run the given ranks (default: all) of a `workers`-worker run at once, each a spawned process."""
    ctx = mp.get_context("spawn")
    go, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=worker, args=(mode, data, r, workers, loaders, go, results))
             for r in (range(workers) if ranks is None else ranks)]
    for p in procs:
        p.start()
    time.sleep(1.0)
    go.set()
    out = [results.get() for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode:
            raise SystemExit(f"{mode} worker exited with {p.exitcode}")
    return sorted(out, key=lambda r: r["rank"])


def mb(x: float) -> str:
    return f"{x / 1e6:,.0f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--crops", type=int, default=100_000)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--loaders", type=int, default=2)
    ap.add_argument("--paths", default="old,new")
    ap.add_argument("--dir", default="", help="where to write the data (default: a temporary folder, removed)")
    ap.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    from cion_ray.pretrain.data import load_labels
    from cion_ray.pretrain.pack import ensure_pack

    root = Path(args.dir or tempfile.mkdtemp(prefix="bench-pretrain-data-"))
    try:
        t = time.perf_counter()
        data = make_data(root, args.crops)
        t_make = time.perf_counter() - t
        total = sum(f.stat().st_size for f in (root / "crops" / "crops").glob("*.parquet"))
        print(f"{args.crops} crops, {mb(total)} MB of crops Parquet in "
              f"{len(list((root / 'crops' / 'crops').glob('*.parquet')))} files, written in {t_make:.0f}s", flush=True)
        lines = []
        t_pack = None
        for mode in args.paths.split(","):
            if mode == "new":
                t = time.perf_counter()
                pack = ensure_pack(load_labels(data), data, log=print)
                t_pack = time.perf_counter() - t
                print(f"pack built in {t_pack:.0f}s ({len(pack.shards)} shards)", flush=True)
            for w in map(int, args.workers.split(",")):
                rs = run(mode, data, w, args.loaders)
                for r in rs:
                    lo = r["loaders"]
                    lines.append(
                        f"| {mode} | {w} | {r['rank']} | {r['images']:,} | {mb(r['read'])} | "
                        f"{r['read'] / total:.2f} | {mb(r['worker']['VmHWM'])} | {mb(r['worker']['Pss'])} / "
                        f"{mb(r['worker']['Private'])} | "
                        f"{' '.join(mb(x['VmHWM']) for x in lo)} | {' '.join(mb(x['Pss']) for x in lo)} / "
                        f"{' '.join(mb(x['Private']) for x in lo)} | {r['t_images']:.1f} | {r['t_first']:.1f} |")
                    print(lines[-1], flush=True)
        head = ("| path | workers | rank | images | MB read (images) | read / data set | worker peak RSS MB | "
                "worker Pss / private MB | loaders' peak RSS MB | loaders' Pss / private MB | images loaded s | "
                "first batch s |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        body = (f"{args.crops:,} synthetic crops ({PER_ID} per identity, JPEG 128x64, {mb(total)} MB of crops "
                f"Parquet in {-(-args.crops // PER_FILE)} files; {args.loaders} DataLoader processes per worker; "
                f"the workers of a row group ran at once, as spawned processes)."
                + (f" Pack build (once, on the driver): {t_pack:.0f} s." if t_pack is not None else "")
                + "\n\n" + head + "\n" + "\n".join(lines) + "\n")
        print(body)
        if args.append:
            from common import append_results

            append_results(f"pretrain data path: old vs pack, {args.crops:,} crops", body)
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    raise SystemExit(main())
