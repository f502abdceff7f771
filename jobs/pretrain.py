"""Ray job entry point for pre-training.

    ray job submit --working-dir . -- python jobs/pretrain.py --data s3://bucket/curated \\
        --arch resnet50_ibn --epochs 100 --workers 8 --gpus-per-worker 1 --out s3://bucket/pretrain
"""
from __future__ import annotations

import argparse
import sys

from cion_ray.cli import add_pretrain_args, pretrain_config_from_args
from cion_ray.errors import CionError
from cion_ray.runtime.pretrain import run_pretrain


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="cion-ray pre-training (Ray job)")
    add_pretrain_args(parser)
    args = parser.parse_args(argv)
    try:
        r = run_pretrain(pretrain_config_from_args(args), address=args.address, resume=args.resume)
    except CionError as e:
        print(f"pretrain: error: {e}", file=sys.stderr)
        return 2
    print(f"pre-trained: epoch {r.metrics.get('epoch')}, loss {r.metrics.get('loss')}; exports {r.exports}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
