"""CION scale, per stage and per size: curate's label + export throughput and the pre-training data
path per worker, on synthetic crops tables of real JPEG bytes at 100k, 1M and 4M crops (CION-AL
holds 3.9M images), and how each grows with size.

Per size in --sizes (each size's data is written, measured and removed before the next one):
  - the pre-training data path (bench_pretrain_data.py's data and worker, the pack path): the pack
    build (once, one process), then for each worker count in --workers every rank measured alone, in
    a fresh spawned process: bytes read for its images, its peak RSS and the Pss and private memory
    of it and of its --loaders forked DataLoader processes, the time to its first decoded batch. A
    worker count whose shard (data set / workers) would not fit in this machine's free memory is
    skipped and said so;
  - at the sizes in --export-sizes, curate's export (bench_export.py: the label_and_export actor
    pool, the CION-AL images and streamed JSON; Market skipped above 9999 identities, as a curate
    run does) with each pool size in --actors: crops/s.
With --fs-probe N, first the file system's own rate of creating N export-like files by 1 and 2
processes (no labelling, no Ray): the ceiling of the export on this disk.

    python benchmarks/bench_scale.py --sizes 100000 --export-sizes 100000      # a quick look
    python benchmarks/bench_scale.py --append                                  # 100k, 1M, 4M
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import append_results, machine, median  # noqa: E402

import bench_pretrain_data as bpd  # noqa: E402

HEADROOM = 3 << 30  # a worker holds its shard plus about 0.5 GB; keep this much free besides


def _mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable"):
            return int(line.split()[1]) * 1024
    return 0


def _size(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)


def pretrain_path(root: Path, n: int, workers: list[int], loaders: int, log) -> tuple[dict, list[dict]]:
    """The pack build and the per-worker load at one size. -> (size facts, one row per worker count)."""
    from cion_ray.pretrain.data import load_labels
    from cion_ray.pretrain.pack import ensure_pack

    t = time.perf_counter()
    data = bpd.make_data(root, n)
    t_make = time.perf_counter() - t
    total = sum(f.stat().st_size for f in (root / "crops" / "crops").glob("*.parquet"))
    log(f"  {n:,} crops: {total / 1e9:.2f} GB of crops Parquet, written in {t_make:.0f}s")
    t = time.perf_counter()
    pack = ensure_pack(load_labels(data), data, log=lambda m: log("  " + m))
    t_pack = time.perf_counter() - t
    log(f"  pack built in {t_pack:.0f}s ({len(pack.shards)} shards, {n / t_pack:,.0f} crops/s)")
    del pack
    rows = []
    for w in workers:
        need, free = total / w + HEADROOM, _mem_available()
        if need > free:
            log(f"  {w} worker(s): skipped, a shard of {total / w / 1e9:.1f} GB does not fit in "
                f"{free / 1e9:.1f} GB of free memory")
            rows.append({"workers": w, "skipped": f"shard {total / w / 1e9:.1f} GB > {free / 1e9:.1f} GB free"})
            continue
        rs = [bpd.run("new", data, w, loaders, ranks=[r])[0] for r in range(w)]
        row = {"workers": w,
               "images": max(r["images"] for r in rs),
               "read": max(r["read"] for r in rs),
               "read_frac": max(r["read"] for r in rs) / total,
               "rss": max(r["worker"]["VmHWM"] for r in rs),
               "pss_sum": max(r["worker"]["Pss"] + sum(x["Pss"] for x in r["loaders"]) for r in rs),
               "loader_private": max((x["Private"] for r in rs for x in r["loaders"]), default=0),
               "first": median([r["t_first"] for r in rs])}
        rows.append(row)
        log(f"  {w} worker(s): {row['read'] / 1e6:,.0f} MB read per worker ({row['read_frac']:.2f} of the data), "
            f"peak RSS {row['rss'] / 1e6:,.0f} MB, worker + loaders Pss {row['pss_sum'] / 1e6:,.0f} MB, "
            f"loader private {row['loader_private'] / 1e6:.0f} MB, first batch {row['first']:.1f}s")
    return {"crops": n, "bytes": total, "t_pack": t_pack}, rows


def export_path(root: str, n: int, actors: list[int], repeats: int, shard_size: int, per_identity: int,
                videos: int, log) -> tuple[dict, list[dict]]:
    """Curate's export at one size. -> (size facts, one row per pool size)."""
    from bench_export import synthetic_table, time_pools

    from cion_ray.curation.config import ExportConfig

    t = time.perf_counter()
    crops, _ = synthetic_table(root, n, per_identity, videos, shard_size, files=max(4, n // 250_000))
    got, ids = len(crops.expected), len(set(crops.expected.values()))
    log(f"  export table: {got:,} crops of {ids:,} identities in {videos} videos, made in "
        f"{time.perf_counter() - t:.0f}s")
    rows = time_pools(crops, root, ExportConfig(shard_size=shard_size), actors, repeats, log)
    shutil.rmtree(os.path.join(root, "data"), ignore_errors=True)
    return {"crops": got, "identities": ids}, rows


def _create_files(folder: str, n: int, seed: int) -> float:
    """Create n files of 6 KB (written beside, then renamed, 8 per folder, as the export writes
    crops) under folder. -> seconds."""
    data = os.urandom(6000)
    t = time.perf_counter()
    for i in range(n):
        sub = os.path.join(folder, f"{seed}-{i // 8:07d}")
        if i % 8 == 0:
            os.mkdir(sub)
        path = os.path.join(sub, f"{i}.jpg")
        with open(path + ".partial", "wb") as f:
            f.write(data)
        os.replace(path + ".partial", path)
    return time.perf_counter() - t


def fs_probe(root: Path, n: int, procs: list[int], repeats: int) -> list[dict]:
    """The file system's own rate of creating export-like files, by 1, 2, ... processes at once,
    with no labelling, no Ray and no Parquet: the ceiling of the export on this disk."""
    from concurrent.futures import ProcessPoolExecutor

    rows = []
    for k in procs:
        rates = []
        for r in range(repeats):
            folder = root / f"probe-{k}-{r}"
            folder.mkdir()
            t = time.perf_counter()
            with ProcessPoolExecutor(k) as pool:
                list(pool.map(_create_files, [str(folder)] * k, [n // k] * k, range(k)))
            rates.append(n // k * k / (time.perf_counter() - t))
            shutil.rmtree(folder)
        rows.append({"procs": k, "median": median(rates), "min": min(rates), "max": max(rates)})
    return rows


def report(pre: list[tuple[dict, list[dict]]], exp: list[tuple[dict, list[dict]]], loaders: int,
           repeats: int, probe: list[dict] | None = None, probe_files: int = 0) -> str:
    out = []
    if probe:
        out += [f"The file system alone: {probe_files:,} files of 6 KB created (written beside, then renamed, 8 per "
                f"folder) by 1, 2, ... processes at once; median of {repeats} run(s).", "",
                "| processes | files/s (median) | min-max files/s | vs 1 process |", "|---:|---:|---:|---:|"]
        for r in probe:
            out.append(f"| {r['procs']} | {r['median']:,.0f} | {r['min']:,.0f}-{r['max']:,.0f} | "
                       f"{r['median'] / probe[0]['median']:.2f}x |")
        out.append("")
    if pre:
        out += ["Pre-training data path (the pack): each rank of each worker count measured alone, in a fresh "
                f"spawned process with {loaders} forked DataLoader processes; per worker count the largest value "
                "over its ranks (first batch: the median).", "",
                "| crops | data GB | pack build s | pack crops/s | workers | images per worker | MB read per worker "
                "| read / data set | worker peak RSS MB | worker + loaders Pss MB | loader private MB "
                "| first batch s |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for facts, rows in pre:
            head = (f"| {facts['crops']:,} | {facts['bytes'] / 1e9:.2f} | {facts['t_pack']:.0f} | "
                    f"{facts['crops'] / facts['t_pack']:,.0f} |")
            for i, r in enumerate(rows):
                lead = head if i == 0 else "| | | | |"
                if "skipped" in r:
                    out.append(f"{lead} {r['workers']} | skipped: {r['skipped']} | | | | | | |")
                    continue
                out.append(f"{lead} {r['workers']} | {r['images']:,} | {r['read'] / 1e6:,.0f} | {r['read_frac']:.2f} "
                           f"| {r['rss'] / 1e6:,.0f} | {r['pss_sum'] / 1e6:,.0f} | {r['loader_private'] / 1e6:.0f} "
                           f"| {r['first']:.1f} |")
        out.append("")
    if exp:
        out += [f"Curate's export (label_and_export, CION-AL images + streamed JSON; Market skipped above 9999 "
                f"identities): median of {repeats} run(s) per pool size.", "",
                "| crops | identities | actors | median s | crops/s | min-max s | vs 1 actor |",
                "|---:|---:|---:|---:|---:|---:|---:|"]
        for facts, rows in exp:
            base = next((r["median"] for r in rows if r["actors"] == 1), None)
            for r in rows:
                speed = f"{base / r['median']:.2f}x" if base else ""
                out.append(f"| {facts['crops']:,} | {facts['identities']:,} | {r['actors']} | {r['median']:.1f} | "
                           f"{facts['crops'] / r['median']:,.0f} | {r['min']:.1f}-{r['max']:.1f} | {speed} |")
        out.append("")
    # growth: the same quantity at each size, relative to the smallest
    if len(pre) > 1:
        first = pre[0][0]
        out.append("Growth with size (pre-training): " + "; ".join(
            f"{_size(f['crops'])}: pack build {f['t_pack'] / first['t_pack']:.1f}x the time for "
            f"{f['crops'] / first['crops']:.0f}x the crops" for f, _ in pre[1:]) + ".")
    if len(exp) > 1:
        def rate(facts, rows, a):
            r = next((x for x in rows if x["actors"] == a), None)
            return facts["crops"] / r["median"] if r else None

        a = max(exp[-1][1], key=lambda r: r["actors"])["actors"]
        r0, r1 = rate(*exp[0], a), rate(*exp[-1], a)
        if r0 and r1:
            out.append(f"Growth with size (export, {a} actor(s)): {exp[0][0]['crops']:,} crops {r0:,.0f} crops/s, "
                       f"{exp[-1][0]['crops']:,} crops {r1:,.0f} crops/s ({r1 / r0:.2f}x the rate).")
    return "\n".join(out).rstrip() + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000,4000000", help="crops, comma-separated (pre-training path)")
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--loaders", type=int, default=2)
    ap.add_argument("--export-sizes", default="100000,1000000", help="crops, comma-separated ('' for none)")
    ap.add_argument("--actors", default="1,2", help="export pool sizes, comma-separated")
    ap.add_argument("--repeats", type=int, default=1, help="export runs per pool size")
    ap.add_argument("--shard-size", type=int, default=5000, help="crops read per export task")
    ap.add_argument("--per-identity", type=int, default=16, help="export table: identity i has 1 + i %% N crops")
    ap.add_argument("--videos", type=int, default=200)
    ap.add_argument("--fs-probe", type=int, default=0, metavar="N",
                    help="also time the file system creating N export-like files by 1 and 2 processes")
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary folder, removed)")
    ap.add_argument("--append", action="store_true", help="append the tables to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",") if x]
    export_sizes = [int(x) for x in args.export_sizes.split(",") if x]
    workers = [int(x) for x in args.workers.split(",")]
    actors = [int(x) for x in args.actors.split(",")]
    t0 = time.perf_counter()

    def log(m: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f}s] {m}", flush=True)

    base = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=args.dir))
    pre, exp, probe = [], [], []
    try:
        if args.fs_probe:
            log(f"file system: creating {args.fs_probe:,} files by 1 and 2 processes")
            probe = fs_probe(base, args.fs_probe, [1, 2], args.repeats)
        for n in sizes:
            log(f"pre-training data path at {n:,} crops")
            root = base / f"pretrain-{n}"
            root.mkdir()
            pre.append(pretrain_path(root, n, workers, args.loaders, log))
            shutil.rmtree(root, ignore_errors=True)
        if export_sizes:
            import ray

            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING")
            ray.data.DataContext.get_current().enable_progress_bars = False
            logging.getLogger("ray.data").setLevel(logging.WARNING)
            try:
                for n in export_sizes:
                    log(f"export at {n:,} crops")
                    root = base / f"export-{n}"
                    root.mkdir()
                    exp.append(export_path(str(root), n, actors, args.repeats, args.shard_size, args.per_identity,
                                           args.videos, log))
                    shutil.rmtree(root, ignore_errors=True)
            finally:
                ray.shutdown()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    body = report(pre, exp, args.loaders, args.repeats, probe, args.fs_probe)
    print(body)
    if args.append:
        append_results("bench_scale: the pre-training data path and curate's export by size", body)
    else:
        print(machine())
    return 0


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    raise SystemExit(main())
