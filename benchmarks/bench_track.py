"""Tracking-stage benchmark on the generated benchmark world.

Measures, on the same videos, detector (public detections) and tracker:
- frames/s of a bare single-process loop (decode, track, crop, write Parquet);
- frames/s of the Ray Data pipeline with 1 and 2 actors, end to end (probe, track, write, commit);
- the driver's peak memory when the number of videos grows 4x (each size in a fresh process).
Medians over --repeats; results appended to benchmarks/RESULTS.md.

    python benchmarks/bench_track.py --world runs/bench-world --repeats 3
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_results, median  # noqa: E402

from cion_ray.synth import generate_world, preset  # noqa: E402
from cion_ray.tracking.config import DetectorConfig, PoolConfig, TrackConfig  # noqa: E402
from cion_ray.tracking.local import track_local  # noqa: E402
from cion_ray.tracking.manifest import list_videos, probe_entry  # noqa: E402


def _cfg(world: Path, videos: Path, out: str, actors: int = 1) -> TrackConfig:
    return TrackConfig(videos=str(videos), out=out, quality_report=False,
                       detector=DetectorConfig(kind="mot-det", mot=str(world / "mot")),
                       pool=PoolConfig(actors=actors, cpus_per_actor=1, gpus_per_actor=0))


def _subset(world: Path, n: int, root: Path) -> Path:
    d = root / f"videos-{n}"
    if not d.exists():
        d.mkdir(parents=True)
        for f in sorted((world / "videos").glob("*.mp4"))[:n]:
            (d / f.name).symlink_to(f.resolve())
    return d


def bare(world: Path, videos: Path, tmp: Path) -> tuple[int, float]:
    t0 = time.perf_counter()
    entries = [probe_entry(u) for u in list_videos(str(videos))]
    run = track_local(_cfg(world, videos, ""), entries)
    pq.write_table(run.table(), tmp / "bare.parquet")
    return run.frames, time.perf_counter() - t0


def pipeline(world: Path, videos: Path, tmp: Path, actors: int) -> tuple[int, float, float]:
    """-> frames, end-to-end seconds, actor busy seconds per actor (steady-state work)."""
    from cion_ray.runtime.track import run_track
    out = tmp / f"ray-{actors}-{time.monotonic_ns()}"
    t0 = time.perf_counter()
    r = run_track(_cfg(world, videos, str(out), actors), log=lambda m: None)
    dt = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    return r.frames, dt, r.busy_seconds / actors


def driver_memory(world: Path, n: int) -> None:
    """Child process: run the pipeline on n videos, print the driver's peak RSS in MiB."""
    from cion_ray.runtime.session import ensure_ray
    ensure_ray(num_cpus=2)
    tmp = Path(tempfile.mkdtemp())
    frames, _, _ = pipeline(world, _subset(world, n, Path(world) / "subsets"), tmp, actors=2)
    print(json.dumps({"videos": n, "frames": frames,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", default="runs/bench-world")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--videos", type=int, default=0, help="use the first N videos (0 = all)")
    p.add_argument("--driver-memory", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    world = Path(args.world)
    if args.driver_memory:
        driver_memory(world, args.driver_memory)
        return 0
    generate_world(preset("bench"), world)
    n_all = len(list((world / "videos").glob("*.mp4")))
    n = args.videos or n_all
    videos = _subset(world, n, world / "subsets")
    from cion_ray.runtime.session import ensure_ray
    ensure_ray(num_cpus=2)
    import ray
    ray.data.DataContext.get_current().enable_progress_bars = False
    tmp = Path(tempfile.mkdtemp())
    pipeline(world, _subset(world, 2, world / "subsets"), tmp, 1)  # warm-up: worker processes, imports
    rates: dict[str, list[float]] = {"bare": [], "ray1": [], "ray2": [], "ray1 steady": []}
    for rep in range(args.repeats):
        frames, dt = bare(world, videos, tmp)
        rates["bare"].append(frames / dt)
        print(f"repeat {rep + 1}: bare: {frames} frames in {dt:.1f}s = {frames / dt:.1f} frames/s", flush=True)
        for actors in (1, 2):
            frames, dt, busy = pipeline(world, videos, tmp, actors)
            rates[f"ray{actors}"].append(frames / dt)
            if actors == 1:
                rates["ray1 steady"].append(frames / busy)
            print(f"repeat {rep + 1}: ray{actors}: {frames} frames in {dt:.1f}s = {frames / dt:.1f} frames/s "
                  f"(actor busy {busy:.1f}s)", flush=True)
    ray.shutdown()
    med = {k: median(v) for k, v in rates.items()}

    mems = []
    for k in (max(1, n // 4), n):
        out = subprocess.run([sys.executable, __file__, "--world", str(world), "--driver-memory", str(k)],
                             capture_output=True, text=True, check=True)
        mems.append(json.loads(out.stdout.strip().splitlines()[-1]))
    growth = mems[1]["peak_rss_mib"] / mems[0]["peak_rss_mib"]

    cfg = preset("bench")
    body = (f"World: preset `bench` ({n} videos x {cfg.frames} frames at {cfg.width}x{cfg.height}), detector "
            f"`mot-det` (public detections), ByteTrack, crops at 128 px; repeats: {args.repeats} (medians). "
            f"`bare`: one process, warm imports, probe + track + crops + Parquet. `ray1`/`ray2`: `run_track` end to "
            f"end with 1/2 actors (probe, actor start-up and imports, track, write, commit) on a running local Ray. "
            f"`ray1 steady`: frames over the actor's busy time (the per-frame cost inside the pipeline).\n\n"
            f"| run | frames/s (median) | all repeats | ratio vs bare |\n|---|---|---|---|\n"
            + "".join(f"| {k} | {med[k]:.1f} | {', '.join(f'{x:.1f}' for x in rates[k])} | {med[k] / med['bare']:.3f} |\n"
                      for k in ("bare", "ray1", "ray1 steady", "ray2"))
            + f"\nDriver peak RSS: {mems[0]['videos']} videos {mems[0]['peak_rss_mib']:.0f} MiB, "
              f"{mems[1]['videos']} videos {mems[1]['peak_rss_mib']:.0f} MiB: growth x{growth:.3f} for x"
              f"{mems[1]['videos'] / mems[0]['videos']:.0f} videos (target: within 1.10).\n"
              f"\nTargets: ray1 / bare >= 0.9 ({'met' if med['ray1'] / med['bare'] >= 0.9 else 'NOT met'}); "
              f"ray2 reported. GPU (YOLO11n batched vs decode-only): not measured, no GPU on this machine.\n")
    append_results("bench_track: tracking stage", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
