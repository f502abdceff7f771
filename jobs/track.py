"""Ray job entry point for the tracking stage.

    ray job submit --working-dir . -- python jobs/track.py --videos s3://bucket/videos \
        --out s3://bucket/crops --detector yolo --weights s3://bucket/yolo11n.pt --actors 8
"""
from __future__ import annotations

import argparse
import sys

from cion_ray.cli import add_track_args, track_config_from_args
from cion_ray.errors import CionError
from cion_ray.io.fs import redact
from cion_ray.runtime.track import run_track


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="cion-ray tracking stage (Ray job)")
    add_track_args(parser)
    args = parser.parse_args(argv)
    try:
        result = run_track(track_config_from_args(args), overwrite=args.overwrite, address=args.address)
    except CionError as e:
        print(f"track: error: {redact(str(e))}", file=sys.stderr)
        return 2
    print(f"tracked {len(result.videos_done)} videos: {result.tracklets} tracklets, {result.crops} crops; "
          f"skipped {len(result.skipped)}; report at {result.out}/report.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
