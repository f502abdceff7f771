"""The demo: build the synthetic world, run the pipeline job on it, then compare pre-training data sources.

Usage: python jobs/demo.py --out runs/demo
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cion_ray.errors import CionError
from cion_ray.synth import SynthConfig, generate_world


CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# the small-scale profile (a ResNet18 at 64x32 that learns in minutes on 2 CPU cores; see the file)
SMALL = CONFIGS / "small.yaml"
# the pipeline on a laptop: tracking, curation, pre-training with the small profile, evaluation
LAPTOP = CONFIGS / "pipeline-laptop.yaml"
# the demo's comparison: fewer iterations per arm than the profile, the same for every arm
DEMO_COMPARE = ["optim.epochs=5", "optim.warmup_epochs=1"]
DEMO_ARMS = "instance,tracklet,curated,random,random_bn,supervised"


def pipeline(out: Path, world: Path, args):
    """The main job, as `cion-ray run --config configs/pipeline-laptop.yaml` runs it, on the world."""
    from cion_ray.pipeline.config import load_pipeline
    from cion_ray.pipeline.run import run_pipeline

    sets = [f"out={out}", f"videos={world / 'videos'}", f"track.detector.mot={world / 'mot'}",
            f"track.pool.actors={args.actors}", f"curate.gt={world}", f"curate.pool.actors={args.actors}",
            f"pretrain.eval_data={world / 'reid'}", f"evaluate.data={world / 'reid'}", "name=demo"]
    if args.workers:
        sets += [f"pretrain.scale.workers={args.workers}", "pretrain.scale.cpus_per_worker=1"]
    return run_pipeline(load_pipeline(LAPTOP, sets), log=lambda m: print(m, flush=True))


def compare(out: Path) -> dict:
    from cion_ray.compare.config import CompareConfig
    from cion_ray.compare.report import table_markdown
    from cion_ray.runtime.compare import run_compare

    cfg = CompareConfig(data=str(out / "curated"), eval_data=str(out / "world" / "reid"), out=str(out / "compare"),
                        arms=tuple(DEMO_ARMS.split(",")), profile=str(SMALL), overrides=tuple(DEMO_COMPARE))
    r = run_compare(cfg, log=lambda m: print(m, flush=True))
    print(table_markdown(r["rows"]), end="")
    print("  (one seed, 100 iterations per arm, a few dozen held-out queries: differences under about 0.05 mAP "
          "are noise at this size; the full comparison and its reading: docs/pretraining.md)")
    return r


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/demo", help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--actors", type=int, default=2, help="detector+tracker actors")
    p.add_argument("--workers", type=int, default=None,
                   help="Ray Train workers for pre-training, 1 CPU each (default: the small profile's one worker "
                        "with 2 CPUs and the whole batch)")
    args = p.parse_args(argv)
    out = Path(args.out)
    try:
        print("== 1/5 synthetic world ==", flush=True)
        world = generate_world(SynthConfig(seed=args.seed), out / "world")
        r = world.reid
        print(f"world:      {world.out} ({'reused' if world.reused else f'{world.seconds:.0f}s'}): "
              f"{world.videos} videos, {world.frames} frames, {world.tracks} tracks of {world.identities} identities")
        print(f"  videos    {world.out / 'videos'}")
        print(f"  MOT       {world.out / 'mot'}  ({world.gt_boxes} gt boxes, {world.detections} noisy detections)")
        print(f"  ReID      {world.out / 'reid'}  (train {r['bounding_box_train']['images']} images, "
              f"query {r['query']['images']}, gallery {r['bounding_box_test']['images']})")
        print(f"  preview   {world.out / 'preview.png'}  <- open this: each row is one person across videos",
              flush=True)

        print("\n== 2-4/5 the pipeline: tracking -> curation -> pre-training -> evaluation (one job, "
              "configs/pipeline-laptop.yaml) ==", flush=True)
        p = pipeline(out, world.out, args)
        track, cur, pre, ev = (s.metrics for s in p.stages)
        print(f"\ntracking:    {out / 'crops'}: {track.get('tracklets', '?')} tracklets, {track.get('crops', '?')} "
              f"crops  (MOTA / IDF1 per video: {out / 'crops' / 'report.txt'})")
        print(f"curated:     {out / 'curated'}: {cur['identities']} identities, {cur['images']} images "
              f"(precision / recall per level: {out / 'curated' / 'report.txt'})")
        print(f"  sheet      {out / 'curated' / 'sheet.png'}  <- open this: each row should be one person")
        run = Path(p.stages[2].outputs["run"])
        print(f"pre-trained: {run}: {pre.get('epoch')} epochs, loss {pre.get('loss', float('nan')):.3f}")
        if "eval_mAP" in pre:
            print(f"  retrieval  teacher during training: mAP {pre['eval_mAP']:.3f} (before training: mAP "
                  f"{pre['eval_mAP_init']:.3f})")
        print(f"  curves     {run / 'curves.png'}  <- open this: loss = teacher entropy + KL, collapse watch, "
              "retrieval")
        print(f"evaluated:   mAP {ev['mAP']:.3f}, rank-1 {ev['rank1']:.3f}, mINP {ev['mINP']:.3f} on the world's "
              f"held-out people ({p.stages[3].outputs['result']})")
        print(f"  status     {out / 'status.json'}, resolved config {out / 'pipeline.yaml'}")

        print("\n== 5/5 what the data buys: the same backbone and budget pre-trained on single images, tracklets "
              "and curated identities, on held-out people ==", flush=True)
        compare(out)
        print(f"  chart     {out / 'compare' / 'compare.png'}  <- open this; curves: {out / 'compare' / 'curves.png'}")
    except CionError as e:
        print(f"demo: error: {e}", file=sys.stderr)
        print(f"demo: a second run reuses what {out} holds; to start afresh, remove it "
              f"({'make clean-demo' if out == Path('runs/demo') else f'rm -rf {out}'})", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
