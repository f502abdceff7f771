"""`cion-ray tune curate`: search the curation thresholds on Ray Tune against pairwise F1 on
ground truth. Parse, check the space (before Ray starts), embed once, search, write, print.
The search itself: cion_ray.tune.curate (pure) and cion_ray.runtime.tune_curate (on Ray Tune)."""
from __future__ import annotations

import argparse
from pathlib import Path

from cion_ray.cli import add_run_args
from cion_ray.errors import CionError

SPACE_FILE = "configs/tune-curate.yaml"


def add_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--crops", required=True, help="output of `cion-ray track` (folder or s3:// prefix)")
    s.add_argument("--gt", required=True, help="synthetic world folder, or a MOT folder with <video>/gt.txt "
                                               "(videos without one are curated, not scored)")
    s.add_argument("--out", required=True, help="search folder: embeddings cache, Tune's trials, results.csv / "
                                                ".md, best.yaml, search.png")
    s.add_argument("--space", help=f"search space YAML (default: {SPACE_FILE}); keys of CurateConfig's "
                                    "denoise.* and link.*")
    s.add_argument("--trials", type=int, help="configurations to sample (default: the space's `trials`)")
    s.add_argument("--metric", help="what to maximise: f1 (default), precision, recall, nmi, l2_f1, l1_f1")
    s.add_argument("--embedder", help="handcrafted (no weights), timm:NAME (with --weights) or cion:RUN")
    s.add_argument("--weights", help="embedder checkpoint: path or s3:// URI")
    s.add_argument("--seed", type=int, default=0, help="seed of the random search")
    add_run_args(s, "CurateConfig", "override a base config field",
                 config_help="YAML file with CurateConfig fields: the base the search starts from")


def default_space() -> Path:
    """The shipped space: configs/tune-curate.yaml beside the package (a checkout), else in the
    current folder."""
    here = Path(__file__).resolve().parents[2] / SPACE_FILE
    return here if here.is_file() else Path(SPACE_FILE)


def prepare(args: argparse.Namespace):
    """-> (search spec, base CurateConfig), every check done; nothing started."""
    from cion_ray.config import load_config
    from cion_ray.curation.config import CurateConfig
    from cion_ray.errors import ConfigError
    from cion_ray.tune.curate import DEFAULT_METRIC, METRICS, fixed_keys
    from cion_ray.tune.space import check_space, load_spec

    if args.weights and not args.embedder:
        raise ConfigError("--weights needs --embedder timm:NAME")
    base = load_config(CurateConfig, args.config, args.set,
                       values={"crops": args.crops, "out": args.out, "gt": args.gt, "embed.embedder": args.embedder,
                               "embed.weights": args.weights})
    spec = load_spec(args.space or default_space(), CurateConfig, metrics=METRICS, default_metric=DEFAULT_METRIC,
                     fixed=fixed_keys())
    if args.metric:
        if args.metric not in METRICS:
            raise ConfigError(f"--metric {args.metric!r} does not exist: one of {', '.join(METRICS)}")
        spec.metric = args.metric
    if args.trials is not None:
        if args.trials < 1:
            raise ConfigError(f"--trials must be >= 1, got {args.trials}")
        spec.trials = args.trials
    check_space(spec, base)
    return spec, base


def run(args: argparse.Namespace) -> int:
    spec, base = prepare(args)  # a bad space, metric or config: one line, before Ray starts
    from cion_ray.io import fs
    from cion_ray.runtime.tune_curate import embed_once, load_search_data, search
    from cion_ray.tune.curate import write_outputs

    if not fs.exists(base.gt):
        raise CionError(f"--gt {base.gt}: not found")
    videos = embed_once(base, args.address)
    data = load_search_data(base, videos)
    storage = fs.join(base.out, "tune")
    if not fs.is_remote(storage):
        storage = str(Path(storage).resolve())
    r = search(spec, base, data, storage, seed=args.seed)
    files = write_outputs(r, spec, base, base.out)
    m = r.metric
    best = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.best["params"].items())
    cal = "calibrated" if r.calibration_applied else "not calibrated: thresholds as given"
    print(f"searched {len(r.rows)} configurations of {len(spec.keys)} keys in {r.seconds:.0f}s "
          f"({data.scored} of {len(videos)} videos scored)")
    print(f"  default ({cal}):  {m} {r.default_calibrated[m]:.4f}")
    print(f"  default thresholds, fixed:  {m} {r.default_fixed[m]:.4f}")
    print(f"  best (trial {r.best['trial']}):  {m} {r.best[m]:.4f}  P {r.best['precision']:.3f} "
          f"R {r.best['recall']:.3f}, {r.best['identities']} identities  <- {best}")
    u = r.reuse
    print(f"  L1/L2 reused in {u['levels_cached']} of {u['trials']} trials (L1/L2 {u['levels_s']:.2f}s, "
          f"L3 + scoring {u['link_s']:.2f}s per trial)")
    print(f"  results: {files['results.md']}  best config: {files['best.yaml']}  plot: {files['search.png']}")
    return 0
