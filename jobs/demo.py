"""The demo: build the synthetic world, then run each stage of the pipeline on it.

Usage: python jobs/demo.py --out runs/demo
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cion_ray.errors import CionError
from cion_ray.synth import SynthConfig, generate_world
from cion_ray.tracking.config import DetectorConfig, PoolConfig, TrackConfig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/demo", help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--actors", type=int, default=2, help="detector+tracker actors")
    args = p.parse_args(argv)
    out = Path(args.out)
    try:
        print("== 1/3 synthetic world ==", flush=True)
        world = generate_world(SynthConfig(seed=args.seed), out / "world")
        r = world.reid
        print(f"world:      {world.out} ({'reused' if world.reused else f'{world.seconds:.0f}s'}): "
              f"{world.videos} videos, {world.frames} frames, {world.tracks} tracks of {world.identities} identities")
        print(f"  videos    {world.out / 'videos'}")
        print(f"  MOT       {world.out / 'mot'}  ({world.gt_boxes} gt boxes, {world.detections} noisy detections)")
        print(f"  ReID      {world.out / 'reid'}  (train {r['bounding_box_train']['images']} images, "
              f"query {r['query']['images']}, gallery {r['bounding_box_test']['images']})")
        print(f"  preview   {world.out / 'preview.png'}  <- open this: each row is one person across videos",
              flush=True)

        print("\n== 2/3 tracking (Ray Data, public detections + ByteTrack) ==", flush=True)
        from cion_ray.runtime.track import run_track

        track = run_track(TrackConfig(videos=str(world.out / "videos"), out=str(out / "crops"),
                                      detector=DetectorConfig(kind="mot-det", mot=str(world.out / "mot")),
                                      pool=PoolConfig(actors=args.actors)))
        o = track.report["overall"]
        print(f"tracking:   {out / 'crops'}: {track.report['tracklets']} tracklets, {track.report['crops']} crops "
              f"({len(track.videos_done)} videos this run, {len(track.videos_skipped_finished)} already done)")
        print(f"  quality   MOTA {o['mota']:.3f}  IDF1 {o['idf1']:.3f}  ID switches {int(o['num_switches'])}"
              f"  (per video: {out / 'crops' / 'report.txt'})")

        print("\n== 3/3 curation (embeddings, L1/L2 denoising, sliding-range linking) ==", flush=True)
        from cion_ray.curation.config import CurateConfig, PoolConfig as CuratePool
        from cion_ray.curation.report import report_text
        from cion_ray.runtime.curate import run_curate

        cur = run_curate(CurateConfig(crops=str(out / "crops"), out=str(out / "curated"), gt=str(world.out),
                                      pool=CuratePool(actors=args.actors)), log=lambda m: None)
        print(report_text(cur.report).rstrip())
        print(f"curated:    {out / 'curated'}: {cur.identities} identities, {cur.samples} images")
        print(f"  exports   {out / 'curated' / 'cion_al.json'}, {out / 'curated' / 'market'}")
        print(f"  sheet     {out / 'curated' / 'sheet.png'}  <- open this: each row should be one person")
    except CionError as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
