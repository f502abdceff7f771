"""Ray job entry point for the data-percentage scaling study (`cion-ray scale`).

    ray job submit --working-dir . -- python jobs/scaling.py --data /shared/curated \\
        --eval-data /shared/world/reid --config configs/small.yaml --fractions 0.1,0.25,0.5,1 \\
        --arch resnet18,resnet18_ibn --out /shared/scale
"""
from __future__ import annotations

import argparse
import sys

from cion_ray.errors import CionError
from cion_ray.scaling import command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="cion-ray data-percentage scaling study (Ray job)")
    command.add_args(parser)
    args = parser.parse_args(argv)
    try:
        return command.run(args)
    except CionError as e:
        from cion_ray.io.fs import redact

        print(f"scale: error: {redact(str(e))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
