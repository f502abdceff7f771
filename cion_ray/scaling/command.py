"""`cion-ray scale` and jobs/scaling.py: parse, plan (every check before Ray starts), run, print.

    cion-ray scale --data runs/demo/curated --eval-data runs/demo/world/reid \\
        --config configs/small.yaml --fractions 0.25,0.5,1 --arch resnet18,resnet18_ibn --out runs/scale
"""
from __future__ import annotations

import argparse

from cion_ray.cli import add_run_args
from cion_ray.errors import CionError


def add_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--data", required=True, help="curated output (cion-ray curate) to pre-train on")
    s.add_argument("--eval-data", required=True, help="held-out Market-style split (query/, bounding_box_test/; "
                                                      "bounding_box_train/ with --finetune)")
    s.add_argument("--out", required=True, help="study folder (local, or shared by every node): runs/<arch>/f<fraction>/, "
                                                "scale.csv, scale.md, scale.png")
    s.add_argument("--fractions", default="0.1,0.25,0.5,1",
                   help="fractions of the curated identities, nested (same seed), each in (0, 1] (default 0.1,0.25,0.5,1)")
    s.add_argument("--arch", help="comma-separated backbones, one line each on the plot (default: the profile's)")
    s.add_argument("--seed", type=int, help="seed of the identity selection and of every run (default: the profile's)")
    s.add_argument("--finetune", action="store_true", help="also fine-tune each backbone briefly on the held-out "
                                                           "split's training people and evaluate it")
    s.add_argument("--finetune-steps", type=int, default=200, help="iterations of that fine-tuning (default 200)")
    s.add_argument("--max-parallel", type=int, default=0,
                   help="runs at once at most (default: as many as the cluster's CPUs / GPUs hold)")
    add_run_args(s, "PretrainConfig", "override a field of the pre-training config, e.g. --set optim.epochs=4",
                 config_help="pre-training profile (YAML with PretrainConfig fields), e.g. configs/small.yaml")


def spec_from_args(args: argparse.Namespace):
    from cion_ray.scaling.plan import ScaleSpec, parse_archs, parse_fractions

    if args.max_parallel < 0:
        raise CionError(f"--max-parallel must be >= 0 (0: as the cluster holds), got {args.max_parallel}")
    if args.finetune_steps < 1:
        raise CionError(f"--finetune-steps must be >= 1, got {args.finetune_steps}")
    return ScaleSpec(data=args.data, eval_data=args.eval_data, out=args.out, config=args.config or "",
                     overrides=tuple(args.set), fractions=parse_fractions(args.fractions),
                     archs=parse_archs(args.arch) if args.arch else (), seed=args.seed, finetune=args.finetune,
                     finetune_steps=args.finetune_steps, max_parallel=args.max_parallel)


def run(args: argparse.Namespace, log=print) -> int:
    from dataclasses import replace

    from cion_ray.pretrain.data import absolute
    from cion_ray.scaling.plan import make_plan
    from cion_ray.scaling.report import table_markdown

    spec = spec_from_args(args)
    plans = make_plan(spec)  # every input checked here, before Ray starts
    spec = replace(spec, data=absolute(spec.data), eval_data=absolute(spec.eval_data), out=absolute(spec.out))
    from cion_ray.runtime.scaling import run_scale

    r = run_scale(spec, plans, address=args.address, log=log)
    log(table_markdown(r.rows).rstrip())
    log(f"  {len(r.ran)} run(s) done now, {len(r.skipped)} complete before; {r.seconds:.0f}s")
    log(f"  table: {r.files['scale.csv']}, {r.files['scale.md']}   plot: {r.files['scale.png']}")
    return 0
