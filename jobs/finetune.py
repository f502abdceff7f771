"""Ray job entry point for supervised fine-tuning (and the data-efficiency protocol).

    ray job submit --working-dir . -- python jobs/finetune.py --data s3://bucket/market1501 \\
        --arch resnet50_ibn --weights s3://bucket/pretrain/export/teacher.pth --workers 1 \\
        --gpus-per-worker 1 --fractions 0.1,0.25,0.5,1 --out s3://bucket/finetune/r50ibn
"""
from __future__ import annotations

import argparse
import sys

from cion_ray.cli import add_finetune_args, finetune_config_from_args
from cion_ray.errors import CionError
from cion_ray.runtime.finetune import run_finetune, run_protocol


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="cion-ray fine-tuning (Ray job)")
    add_finetune_args(parser)
    args = parser.parse_args(argv)
    try:
        cfg = finetune_config_from_args(args)
        kw = {"address": args.address, "local": args.local, "resume": args.resume}
        if cfg.fractions:
            p = run_protocol(cfg, compare=args.compare, **kw)
            print(f"protocol: {[(r['fraction'], r['mAP']) for r in p.rows]}; table {p.files['protocol.md']}")
        else:
            r = run_finetune(cfg, **kw)
            print(f"fine-tuned: mAP {r.metrics.get('eval_mAP')} (before {r.metrics.get('eval_mAP_init')}); "
                  f"exports {r.exports}")
    except CionError as e:
        print(f"finetune: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
