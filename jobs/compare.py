"""Ray job entry point for the comparison of pre-training data sources on held-out people.

    ray job submit --working-dir . -- python jobs/compare.py --data /shared/curated \\
        --eval-data /shared/world/reid --gt /shared/world --out /shared/compare --seeds 0,1
"""
from __future__ import annotations

import argparse
import sys

from cion_ray.cli import add_compare_args, compare_config_from_args
from cion_ray.compare.report import table_markdown
from cion_ray.errors import CionError
from cion_ray.runtime.compare import run_compare


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="cion-ray comparison of pre-training data (Ray job)")
    add_compare_args(parser)
    args = parser.parse_args(argv)
    try:
        r = run_compare(compare_config_from_args(args), address=args.address)
    except CionError as e:
        print(f"compare: error: {e}", file=sys.stderr)
        return 2
    print(table_markdown(r["rows"]), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
