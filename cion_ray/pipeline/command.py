"""`cion-ray run` and `jobs/pipeline.py`: the whole pipeline from one YAML config, here or
submitted to a Ray cluster as a job (with the pipeline's name and config digest in the job's
metadata)."""
from __future__ import annotations

import argparse
import os
import sys

from cion_ray.errors import CionError


def add_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--config", help="pipeline YAML: out, videos, stages, and a section per stage (docs/config.md; "
                                    "examples in configs/pipeline-*.yaml)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set out=s3://bucket/cion --set curate.link.window=8")
    s.add_argument("--address", help="Ray address to run on (default: $RAY_ADDRESS, else a local instance)")
    s.add_argument("--overwrite", action="append", default=[], choices=["track", "curate"],
                   help="replace that stage's committed output (its new output replaces the old one when it commits)")
    s.add_argument("--submit", metavar="DASHBOARD",
                   help="submit the pipeline as a Ray job to this cluster (e.g. http://head:8265) instead of "
                        "running it here; the token comes from RAY_AUTH_MODE=token and RAY_AUTH_TOKEN")
    s.add_argument("--wait", action="store_true", help="with --submit: follow the job's output until it ends")
    s.add_argument("--dry-run", action="store_true", help="check the config, print it resolved, run nothing")


def run(args: argparse.Namespace) -> int:
    from cion_ray.pipeline.config import load_pipeline, to_yaml

    cfg = load_pipeline(args.config, args.set)  # every key checked before Ray starts
    if args.dry_run:
        print(to_yaml(cfg), end="")
        return 0
    if args.submit:
        return _submit(cfg, args)
    from cion_ray.pipeline.run import run_pipeline

    print(f"pipeline {cfg.name}: {' -> '.join(cfg.stages)} into {cfg.out}")
    for line in _changed(cfg):
        print(f"  {line}")
    r = run_pipeline(cfg, address=args.address, overwrite=tuple(args.overwrite))
    ran = sum(s.state == "done" for s in r.stages)
    print(f"pipeline {cfg.name} finished in {r.seconds:.0f}s: {ran} stage(s) ran, {len(r.stages) - ran} skipped "
          "(committed before)")
    for s in r.stages:
        main = s.outputs.get("result") or s.outputs.get("backbone.pth") or s.outputs.get("curated") \
            or s.outputs.get("crops") or ""
        name, w = (s.name, 9) if cfg.rounds == 1 else (f"r{s.round} {s.name}", 12)  # rounds: the stage's round
        where = f"\n  {'':<{w + 8}}{main}" if main and s.name != "track" else ""
        print(f"  {name:<{w}}{s.state:<8}{s.summary}" + where)
    if r.study:
        print(f"  study:   {r.study['files']['study.md']}  plot: {r.study['files']['study.png']}")
    if r.rounds:
        print(f"  rounds:  {r.rounds['files']['rounds.csv']}  plot: {r.rounds['files']['rounds.png']}")
        print("".join(f"    {line}\n" for line in r.rounds["md"].splitlines()), end="")
    print(f"  status:  {r.out}/status.json   config: {r.out}/pipeline.yaml")
    return 0


def _changed(cfg) -> list[str]:
    """The resolved config's keys that differ from the defaults, as `key: value` (all of it is
    written to <out>/pipeline.yaml)."""
    from dataclasses import asdict

    from cion_ray.pipeline.config import PipelineConfig

    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    base, now = flat(asdict(PipelineConfig())), flat(asdict(cfg))
    from cion_ray.io.fs import redact

    return [f"{k}: {redact(str(v))}" for k, v in now.items() if base.get(k) != v]


def metadata(cfg) -> dict[str, str]:
    """The Ray job's metadata: what `ray job list` and the dashboard show for this submission."""
    from cion_ray.io.fs import redact
    from cion_ray.pipeline.config import digest

    return {"cion_ray.pipeline": cfg.name, "cion_ray.stages": ",".join(cfg.stages),
            "cion_ray.config": digest(cfg), "cion_ray.out": redact(cfg.out),
            "cion_ray.status": redact(cfg.out.rstrip("/") + "/status.json")}


def _submit(cfg, args) -> int:
    from cion_ray.runtime.submit import submit_pipeline

    return submit_pipeline(cfg, metadata(cfg), args.submit, tuple(args.overwrite), args.wait)


def main(argv: list[str] | None = None) -> int:
    """jobs/pipeline.py's entry: the same options as `cion-ray run`, and --verbose."""
    p = argparse.ArgumentParser(prog="jobs/pipeline.py", description="cion-ray pipeline (Ray job): track -> curate "
                                "-> pretrain -> evaluate from one YAML config")
    add_args(p)
    p.add_argument("--verbose", action="store_true", help="Ray's own logs and progress output too")
    args = p.parse_args(argv)
    if args.verbose:
        os.environ["CION_RAY_VERBOSE"] = "1"
    try:
        return run(args)
    except CionError as e:
        from cion_ray.io.fs import redact

        print(f"pipeline: error: {redact(str(e))}", file=sys.stderr)
        return 2
