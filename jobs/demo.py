"""The demo: build the synthetic world, then run each stage of the pipeline on it.

Usage: python jobs/demo.py --out runs/demo
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cion_ray.errors import CionError
from cion_ray.synth import SynthConfig, generate_world


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/demo", help="output directory")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = Path(args.out)
    try:
        print("== 1/1 synthetic world ==")
        world = generate_world(SynthConfig(seed=args.seed), out / "world")
    except CionError as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 2
    r = world.reid
    print(f"world:      {world.out} ({'reused' if world.reused else f'{world.seconds:.0f}s'}): "
          f"{world.videos} videos, {world.frames} frames, {world.tracks} tracks of {world.identities} identities")
    print(f"  videos    {world.out / 'videos'}")
    print(f"  MOT       {world.out / 'mot'}  ({world.gt_boxes} gt boxes, {world.detections} noisy detections)")
    print(f"  ReID      {world.out / 'reid'}  (train {r['bounding_box_train']['images']} images, "
          f"query {r['query']['images']}, gallery {r['bounding_box_test']['images']})")
    print(f"  preview   {world.out / 'preview.png'}  <- open this: each row is one person across videos")
    return 0


if __name__ == "__main__":
    sys.exit(main())
