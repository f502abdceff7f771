"""Curate's export throughput: the actor pool that labels every crop and writes its export files
(cion_ray.runtime.curate.label_and_export), then the streamed CION-AL JSON, on a synthetic crops
table of real JPEG bytes (about 6 KB each, a few encoded images reused under varied ids; no video).

Per pool size: crops/s over the whole export (labelling, one CION-AL image per kept crop, the
identities Parquet, the JSON; with --webdataset also the tar shards), median of --repeats runs,
each into a fresh folder. With more than 9999 identities (the default) the Market export is
skipped, as a curate run would.

    python benchmarks/bench_export.py --crops 100000 --actors 1,2 --repeats 3
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_results, machine, median  # noqa: E402

from cion_ray.curation.config import ExportConfig  # noqa: E402
from cion_ray.curation.export import CropLabeler, export_plan, finish_export  # noqa: E402
from cion_ray.synth.crop_tables import jpeg_pool, write_curated_crops  # noqa: E402


def one_run(crops, root: str, settings: ExportConfig, actors: int) -> float:
    from cion_ray.runtime.curate import label_and_export

    n_ids = int(crops.identity_of.max()) + 1
    plan, _ = export_plan(settings, os.path.join(root, "exports"), crops.video_ids, crops.levels, crops.final, n_ids)
    labeler = CropLabeler(crops.level_uris, crops.identity_of, crops.offsets)
    t0 = time.perf_counter()
    files, shards = label_and_export(crops.crop_files, labeler, plan, os.path.join(root, "identities"),
                                     writers=actors, shard_size=settings.shard_size, log=lambda m: None)
    finish_export(plan, files, shards)
    return time.perf_counter() - t0


def synthetic_table(root: str, crops: int, per_identity: int, videos: int, shard_size: int, files: int = 4):
    """A synthetic curated crops table of about `crops` crops under root/data (identity i has
    1 + i % per_identity crops; row groups of shard_size). -> (CuratedCrops, the JPEGs it reuses)."""
    jpegs = jpeg_pool(16)
    table = write_curated_crops(os.path.join(root, "data"), int(crops / ((per_identity + 1) / 2)), per_identity,
                                videos, row_group=shard_size, files=files, jpegs=jpegs)
    return table, jpegs


def time_pools(crops, base: str, settings: ExportConfig, actors: list[int], repeats: int, log=print) -> list[dict]:
    """`repeats` exports per pool size, each into a fresh folder under base (removed after).
    -> per pool size {actors, median, min, max} seconds."""
    n = len(crops.expected)
    rows = []
    for a in actors:
        times = []
        for r in range(repeats):
            root = os.path.join(base, f"run-{a}-{r}")
            times.append(one_run(crops, root, settings, a))
            shutil.rmtree(root)
            log(f"  {a} actor(s), run {r + 1}: {times[-1]:.1f}s ({n / times[-1]:,.0f} crops/s)")
        rows.append({"actors": a, "median": median(times), "min": min(times), "max": max(times)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--crops", type=int, default=100_000, help="crops in the synthetic table (about)")
    ap.add_argument("--per-identity", type=int, default=16, help="identity i has 1 + i %% N crops")
    ap.add_argument("--videos", type=int, default=200)
    ap.add_argument("--actors", default="1,2", help="pool sizes to measure, comma-separated")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shard-size", type=int, default=5000, help="crops read per export task")
    ap.add_argument("--webdataset", action="store_true", help="also write WebDataset shards")
    ap.add_argument("--dir", help="where to write (default: a temporary folder)")
    ap.add_argument("--no-append", action="store_true", help="print only, do not append to RESULTS.md")
    args = ap.parse_args()

    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    base = tempfile.mkdtemp(prefix="bench-export-", dir=args.dir)
    try:
        t0 = time.perf_counter()
        crops, jpegs = synthetic_table(base, args.crops, args.per_identity, args.videos, args.shard_size)
        n, ids = len(crops.expected), len(set(crops.expected.values()))
        print(f"synthetic table: {n} crops, {ids} identities, {args.videos} videos, "
              f"JPEG {min(map(len, jpegs))}-{max(map(len, jpegs))} bytes, made in {time.perf_counter() - t0:.1f}s")
        settings = ExportConfig(webdataset=args.webdataset, shard_size=args.shard_size)
        rows = time_pools(crops, base, settings, [int(x) for x in args.actors.split(",")], args.repeats)
    finally:
        shutil.rmtree(base, ignore_errors=True)
        ray.shutdown()
    what = "CION-AL images + JSON" + (" + WebDataset shards" if args.webdataset else "") + \
        (" (Market skipped: > 9999 identities)" if ids > 9999 else " + Market folder")
    table = ["| actors | median s | crops/s (median) | min-max s | speed-up |", "|---:|---:|---:|---:|---:|"]
    for r in rows:
        table.append(f"| {r['actors']} | {r['median']:.1f} | {n / r['median']:.0f} | {r['min']:.1f}-{r['max']:.1f} | "
                     f"{rows[0]['median'] / r['median']:.2f}x |")
    body = (f"{n} crops of {ids} identities in {args.videos} videos (synthetic table, real JPEG bytes "
            f"{min(map(len, jpegs))}-{max(map(len, jpegs))} B), exports: {what}; one task per {args.shard_size} "
            f"crops; median of {args.repeats} runs per pool size on {os.cpu_count()} cores.\n\n" + "\n".join(table))
    print(body)
    if not args.no_append:
        append_results("bench_export: curate export throughput by actor-pool size", body)
    else:
        print(machine())


if __name__ == "__main__":
    main()
