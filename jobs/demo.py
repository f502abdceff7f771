"""The demo: build the synthetic world, then run each stage of the pipeline on it.

Usage: python jobs/demo.py --out runs/demo
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cion_ray.errors import CionError
from cion_ray.synth import SynthConfig, generate_world
from cion_ray.tracking.config import DetectorConfig, PoolConfig, TrackConfig


# the small-scale profile (a ResNet18 at 64x32 that learns in minutes on 2 CPU cores; see the file)
SMALL = Path(__file__).resolve().parents[1] / "configs" / "small.yaml"
# the demo's comparison: fewer iterations per arm than the profile, the same for every arm
DEMO_COMPARE = ["optim.epochs=5", "optim.warmup_epochs=1"]
DEMO_ARMS = "instance,tracklet,curated,random,random_bn,supervised"


def pretrain(out: Path, workers: int | None) -> dict:
    import json

    from cion_ray.config import load_config
    from cion_ray.pretrain.config import PretrainConfig
    from cion_ray.runtime.pretrain import run_pretrain

    run = out / "pretrain"
    cfg = load_config(PretrainConfig, SMALL, [f"data={out / 'curated'}", f"out={run}",
                                              f"eval_data={out / 'world' / 'reid'}"]
                      + ([f"scale.workers={workers}", "scale.cpus_per_worker=1"] if workers else []))
    done = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").exists() else []
    if done and done[-1]["epoch"] == cfg.optim.epochs and (run / "export" / "teacher.pth").exists():
        return done[-1]
    for m in done:
        print(f"  epoch {m['epoch']}: loss {m['loss']:.3f} (done earlier)")
    r = run_pretrain(cfg, resume=(run / "pretrain.json").exists(),
                     log=lambda m: print(m, flush=True))
    for m in json.loads((run / "metrics.json").read_text()):
        print(f"  epoch {m['epoch']}/{cfg.optim.epochs}  K {m['k']}  loss {m['loss']:.3f} = teacher entropy "
              f"{m['teacher_entropy']:.3f} + KL {m['kl']:.3f}  lr {m['lr']:.2e}  {m['images_per_s']:.0f} img/s"
              + (f"  mAP {m['eval_mAP']:.3f}" if "eval_mAP" in m else ""))
    return r.metrics


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

        print("\n== 2/5 tracking (Ray Data, public detections + ByteTrack) ==", flush=True)
        from cion_ray.runtime.track import run_track

        track = run_track(TrackConfig(videos=str(world.out / "videos"), out=str(out / "crops"),
                                      detector=DetectorConfig(kind="mot-det", mot=str(world.out / "mot")),
                                      pool=PoolConfig(actors=args.actors)))
        o = track.report["overall"]
        print(f"tracking:   {out / 'crops'}: {track.report['tracklets']} tracklets, {track.report['crops']} crops "
              f"({len(track.videos_done)} videos this run, {len(track.videos_skipped_finished)} already done)")
        print(f"  quality   MOTA {o['mota']:.3f}  IDF1 {o['idf1']:.3f}  ID switches {int(o['num_switches'])}"
              f"  (per video: {out / 'crops' / 'report.txt'})")

        print("\n== 3/5 curation (embeddings, L1/L2 denoising, sliding-range linking) ==", flush=True)
        from cion_ray.curation.config import CurateConfig, PoolConfig as CuratePool
        from cion_ray.curation.report import report_text
        from cion_ray.runtime.curate import run_curate

        cur = run_curate(CurateConfig(crops=str(out / "crops"), out=str(out / "curated"), gt=str(world.out),
                                      pool=CuratePool(actors=args.actors)), log=lambda m: None)
        print(report_text(cur.report).rstrip())
        print(f"curated:    {out / 'curated'}: {cur.identities} identities, {cur.samples} images")
        print(f"  exports   {out / 'curated' / 'cion_al.json'}, {out / 'curated' / 'market'}")
        print(f"  sheet     {out / 'curated' / 'sheet.png'}  <- open this: each row should be one person")

        print("\n== 4/5 pre-training (Ray Train, identity-guided self-distillation) ==", flush=True)
        pre = pretrain(out, args.workers)
        print(f"pre-trained: {out / 'pretrain'}: {pre['epoch']} epochs, loss {pre['loss']:.3f} "
              f"(K {pre['k']}), {pre['images_per_s']:.0f} img/s over {pre['identities']} identities")
        print(f"  exports   {out / 'pretrain' / 'export' / 'teacher.pth'} (CION layout), backbone.pth")
        if "eval_mAP" in pre:
            print(f"  retrieval teacher on {out / 'world' / 'reid'}: mAP {pre['eval_mAP']:.3f}, rank-1 "
                  f"{pre['eval_rank1']:.3f}, mINP {pre['eval_mINP']:.3f} (before training: mAP "
                  f"{pre['eval_mAP_init']:.3f}, rank-1 {pre['eval_rank1_init']:.3f})")
        print(f"  metrics   {out / 'pretrain' / 'metrics.json'}, TensorBoard: {out / 'pretrain' / 'tensorboard'}")
        print(f"  curves    {out / 'pretrain' / 'curves.png'}  <- open this: loss = teacher entropy + KL, collapse "
              "watch, retrieval")

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
