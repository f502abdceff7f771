"""The `cion-ray` command line: parse, build, run. Each stage lives in its own module;
heavy imports (Ray, torch) happen inside the command that needs them."""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from cion_ray.errors import CionError


def _synth(args: argparse.Namespace) -> int:
    from cion_ray.config import load_config
    from cion_ray.synth import SynthConfig, generate_world, preset

    base = preset(args.preset)
    cfg = load_config(SynthConfig, args.config, args.set, base=base)
    direct = {k: getattr(args, k) for k in ("videos", "identities", "frames", "seed", "cameras", "width", "height")
              if getattr(args, k) is not None}
    cfg = replace(cfg, **direct)
    s = generate_world(cfg, args.out, workers=args.workers, force=args.force)
    print(f"world: {s.out}  ({'reused' if s.reused else f'generated in {s.seconds:.1f}s'})")
    print(f"  videos:      {s.out / 'videos'}  ({s.videos} videos, {s.frames} frames)")
    print(f"  MOT files:   {s.out / 'mot'}  ({s.gt_boxes} gt boxes, {s.detections} detections)")
    print(f"  identities:  {s.out / 'identities.json'}  ({s.tracks} tracks of {s.identities} identities)")
    r = s.reid
    print(f"  ReID split:  {s.out / 'reid'}  (train {r['bounding_box_train']['identities']} ids / "
          f"{r['bounding_box_train']['images']} images; query {r['query']['images']}; "
          f"gallery {r['bounding_box_test']['images']}; {r['bounding_box_test']['cameras']} cameras)")
    print(f"  preview:     {s.out / 'preview.png'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cion-ray", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("synth", help="generate the synthetic multi-camera pedestrian world")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--preset", default="default", help="default | tiny | bench")
    s.add_argument("--videos", type=int, help="number of videos")
    s.add_argument("--identities", type=int, help="number of people walking through the videos")
    s.add_argument("--frames", type=int, help="frames per video")
    s.add_argument("--seed", type=int, help="random seed (same seed, same world)")
    s.add_argument("--cameras", type=int, help="number of cameras (1-9)")
    s.add_argument("--width", type=int, help="frame width in pixels")
    s.add_argument("--height", type=int, help="frame height in pixels")
    s.add_argument("--workers", type=int, default=0, help="render processes (0 = one per core)")
    s.add_argument("--force", action="store_true", help="regenerate even if a complete world is there")
    s.add_argument("--config", help="YAML file with SynthConfig fields")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set det.miss_rate=0.1 (repeatable)")
    s.set_defaults(func=_synth)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CionError as e:
        print(f"cion-ray {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cion-ray {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
