"""Ray job entry point for the hyperparameter searches: `pretrain` (cion_ray.tune.pretrain_command:
ASHA over pre-training runs) and `curate` (cion_ray.tune.curate_command: curation thresholds).

    ray job submit --working-dir . -- python jobs/tune.py pretrain --data s3://bucket/curated \\
        --config configs/small.yaml --validation 0.2 --trials 16 --out s3://bucket/tune
    ray job submit --working-dir . -- python jobs/tune.py curate ...

Submitted again with the same --out, a pre-training search resumes where it stopped.
"""
from __future__ import annotations

import argparse
import sys

from cion_ray.errors import CionError
from cion_ray.tune import curate_command, pretrain_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="cion-ray hyperparameter searches (Ray job)")
    sub = parser.add_subparsers(dest="search", required=True, metavar="SEARCH")
    for name, module in (("pretrain", pretrain_command), ("curate", curate_command)):
        s = sub.add_parser(name, help=f"cion-ray tune {name}")
        module.add_args(s)
        s.set_defaults(func=module.run)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CionError as e:
        print(f"tune {args.search}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
