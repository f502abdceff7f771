"""`cion-ray tune pretrain`: the command line of the pre-training search (cion_ray.tune.pretrain).

Everything the search needs is read and checked here first (the base config, the space file, the
metric against the inputs), so a bad space is a one-line error before Ray starts. No Ray or torch
import at module level: the CLI imports this to build its parser.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from cion_ray.cli import add_run_args
from cion_ray.errors import ConfigError

# metrics the loop reports every epoch (loss and its parts, throughput): a search may use them
# (mode: min for the loss), though held-out retrieval is what it is for
TRAINING_METRICS = ("loss", "kl", "teacher_entropy", "teacher_mean_entropy", "feature_similarity", "koleo",
                    "images_per_s")
RETRIEVAL = ("mAP", "rank1", "rank5", "mINP")
# keys the command sets, or that would make trials incomparable or change their resources
FIXED = ("data", "out", "crops", "gt", "eval_data", "validation", "data_fraction", "checkpoint_every",
         "fault_drill_iteration", "optim.epochs", "scale.workers", "scale.gpus_per_worker", "scale.cpus_per_worker",
         "scale.allow_pending", "scale.max_failures")
SPACE_KEYS = ("grace_period", "reduction_factor")  # ASHA settings a space file may hold


def default_space() -> Path:
    """configs/tune-pretrain.yaml beside the package (a checkout), else under the working folder."""
    here = Path(__file__).resolve().parents[2] / "configs" / "tune-pretrain.yaml"
    return here if here.is_file() else Path("configs") / "tune-pretrain.yaml"


def add_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--data", required=True, help="training data: a curated output (or anything cion-ray pretrain "
                                                 "reads)")
    s.add_argument("--out", required=True, help="search folder (or s3:// prefix); the same command again resumes "
                                                "the search there")
    s.add_argument("--space", help="search-space YAML (default: configs/tune-pretrain.yaml)")
    s.add_argument("--trials", type=int, help="configurations to sample (default: the space file's trials); the "
                                              "base config is the first of them")
    s.add_argument("--metric", help="what to maximise (default: the space file's metric, else val_mAP with "
                                    "--validation, else eval_mAP with --eval-data)")
    s.add_argument("--validation", type=float, help="hold out this fraction of the identities of --data: the "
                                                     "teacher's val_mAP / val_rank1 / val_mINP on them every epoch")
    s.add_argument("--eval-data", help="Market-style split (query/, bounding_box_test/): eval_mAP / eval_rank1 / "
                                       "eval_mINP every epoch")
    s.add_argument("--epochs", type=int, help="epochs of every trial (ASHA's max_t)")
    s.add_argument("--grace-period", type=int, help="epochs before ASHA may stop a trial (default 1)")
    s.add_argument("--reduction-factor", type=int, help="ASHA keeps the best 1/N at each rung (default 2)")
    s.add_argument("--max-concurrent", type=int, help="trials at once (default: as many as the cluster fits)")
    s.add_argument("--no-base", action="store_true", help="do not run the base config's values as a trial")
    add_run_args(s, "PretrainConfig", "override a base config field, e.g. --set optim.iters_per_epoch=10",
                 config_help="base pre-training YAML (PretrainConfig fields), e.g. configs/small.yaml")


def available_metrics(cfg) -> tuple[str, ...]:
    held = []
    if getattr(cfg, "validation", 0) > 0:
        held += [f"val_{m}" for m in RETRIEVAL]
    if cfg.eval_data:
        held += [f"eval_{m}" for m in RETRIEVAL]
    return tuple(held) + TRAINING_METRICS


def checked_args(args: argparse.Namespace) -> dict:
    """The search's settings from the command line, every check that needs no Ray done: the base
    config, the space file against PretrainConfig (unknown key, empty range, a value the stage
    refuses, a metric the inputs do not give). -> SearchPlan's fields. A ConfigError otherwise."""
    from cion_ray.config import load_config
    from cion_ray.pretrain.config import PretrainConfig
    from cion_ray.tune.space import check_space, load_spec

    values = {"data": args.data, "eval_data": args.eval_data, "optim.epochs": args.epochs}
    if args.validation is not None:
        values["validation"] = args.validation
    base = load_config(PretrainConfig, args.config, args.set, values=values)
    metrics = available_metrics(base)
    held = [m for m in metrics if m.endswith("_mAP")]
    space = Path(args.space) if args.space else default_space()
    try:
        spec = load_spec(space, PretrainConfig, metrics=metrics, fixed=FIXED,
                         default_metric=args.metric or (held[0] if held else ""))
    except ConfigError as e:
        if "no metric" not in str(e):
            raise
        raise ConfigError("nothing held out to search on: pass --validation F (a fraction of the identities of "
                          "--data held out) or --eval-data (a Market-style split), or name a training metric in the "
                          "space file (metric: loss, mode: min)") from None
    if args.metric:
        if args.metric not in metrics:
            raise ConfigError(f"--metric {args.metric!r} does not exist here: one of {', '.join(metrics)}")
        spec.metric = args.metric
    unknown = sorted(set(spec.extra) - set(SPACE_KEYS))
    if unknown:
        raise ConfigError(f"{space}: unknown top-level key {unknown[0]!r} (known: metric, mode, trials, space, "
                          f"{', '.join(SPACE_KEYS)})")
    if args.trials is not None:
        if args.trials < 1:
            raise ConfigError(f"--trials must be >= 1, got {args.trials}")
        spec.trials = args.trials
    check_space(spec, base)
    epochs = base.optim.epochs
    grace = _int_setting("grace_period", args.grace_period, spec.extra, 1, 1, str(space))
    if grace > epochs:
        raise ConfigError(f"grace period {grace} is longer than a trial ({epochs} epochs): ASHA could never stop one")
    rf = _int_setting("reduction_factor", args.reduction_factor, spec.extra, 2, 2, str(space))
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise ConfigError(f"--max-concurrent must be >= 1, got {args.max_concurrent}")
    return {"base": base, "spec": spec, "out": args.out, "grace_period": grace, "reduction_factor": rf,
            "max_concurrent": args.max_concurrent or 0, "base_trial": not args.no_base}


def _int_setting(name: str, cli, extra: dict, default: int, low: int, source: str) -> int:
    v = cli if cli is not None else extra.get(name, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        where = f"--{name.replace('_', '-')}" if cli is not None else f"{source}: {name}"
        raise ConfigError(f"{where} must be an integer >= {low}, got {v!r}")
    return v


def run(args: argparse.Namespace) -> int:
    settings = checked_args(args)  # before Ray is imported
    from cion_ray.runtime.tune_pretrain import run_search
    from cion_ray.tune.pretrain import SearchPlan

    r = run_search(SearchPlan(**settings), address=args.address)
    print(summary(r))
    return 0


def summary(r) -> str:
    """The closing lines: trials by outcome, the best trial against the base config's, the files."""
    m = r.metric
    counts: dict[str, int] = {}
    for row in r.rows:
        key = "failed" if row.status.startswith("error") else row.status
        counts[key] = counts.get(key, 0) + 1
    b = r.best
    value = b.last(m) if b.status == "completed" else b.best(m, r.mode)[1]
    import textwrap

    params = "  ".join(f"{k} {_fmt(v)}" for k, v in b.params.items())
    lines = [f"searched in {r.seconds:.0f}s: {len(r.rows)} trials, "
             + ", ".join(f"{n} {k}" for k, n in counts.items()),
             f"  best:     trial {b.number} ({b.trial_id}), {m} {value:.4f}"]
    lines += textwrap.wrap(params, 110, initial_indent=" " * 12, subsequent_indent=" " * 12)
    base = next((row for row in r.rows if row.base), None)
    if base is not None and base is not b:
        bv = base.last(m) if base.status == "completed" else None
        lines.append(f"  base:     trial {base.number}, {m} " + (f"{bv:.4f} ({value - bv:+.4f} for the best)"
                                                                  if bv is not None else f"- ({base.status})"))
    elif base is b:
        lines.append("  base:     the base config's values were the best")
    lines.append(f"  results:  {r.files['results.csv']}, {r.files['results.md']}, {r.files['curves.png']}")
    lines.append(f"  best.yaml: {r.files['best.yaml']} (cion-ray pretrain --config best.yaml --data ... --out ...)")
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
