"""Ray job entry point for evaluation: CMC / mAP / mINP of a backbone on a ReID dataset.

    ray job submit --working-dir . -- python jobs/evaluate.py --weights s3://bucket/pretrain/run1 \\
        --data s3://bucket/datasets/MSMT17_V1 --device cuda --actors 4 --rerank --out s3://bucket/eval/run1.json
"""
from __future__ import annotations

import argparse
import sys

from cion_ray.cli import add_evaluate_args, evaluate_config_from_args
from cion_ray.errors import CionError
from cion_ray.evaluate.pipeline import result_table
from cion_ray.runtime.evaluate import run_evaluate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="cion-ray evaluation (Ray job)")
    add_evaluate_args(parser)
    args = parser.parse_args(argv)
    try:
        r = run_evaluate(evaluate_config_from_args(args), address=args.address)
    except CionError as e:
        print(f"evaluate: error: {e}", file=sys.stderr)
        return 2
    print(result_table(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
