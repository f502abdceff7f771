"""Ray job entry point for the curation stage.

    ray job submit --working-dir . -- python jobs/curate.py --crops s3://bucket/crops \
        --out s3://bucket/curated --window 8 --stride 4
"""
from __future__ import annotations

import argparse
import sys

from cion_ray.cli import add_curate_args, curate_config_from_args
from cion_ray.errors import CionError
from cion_ray.io.fs import redact
from cion_ray.runtime.curate import run_curate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="cion-ray curation stage (Ray job)")
    add_curate_args(parser)
    args = parser.parse_args(argv)
    try:
        r = run_curate(curate_config_from_args(args), overwrite=args.overwrite, address=args.address)
    except CionError as e:
        print(f"curate: error: {redact(str(e))}", file=sys.stderr)
        return 2
    print(f"curated {r.report['videos']} videos: {r.identities} identities, {r.samples} images; "
          f"report at {r.out}/report.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
