"""Does pre-training learn, and what does the data behind it buy? On a synthetic world:

1. `small`: `cion-ray pretrain --config configs/small.yaml` on the curated identities, on Ray Train
   as a user runs it (2 CPU workers), timed end to end: held-out mAP before and after, and the
   gain over the random initialisation (target: >= +0.10 within 15 minutes on 2 cores);
2. `compare`: the comparison of pre-training data (cion-ray compare): the same backbone and budget
   on single instances (K=1), tracklets, curated identities and ground-truth identities, against
   random initialisation (as built, and with BatchNorm statistics re-estimated), the curated
   identities with an ID-classification loss and, when ImageNet weights are given, ImageNet
   initialisation (MobileNetV2: a second table, since the weights fix the backbone).

The world, tracks and curation are made once under --work and reused.

    python benchmarks/bench_compare.py --seeds 0,1 --finetune-steps 100
    python benchmarks/bench_compare.py --world-seed 1 --skip-small
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def prepare(work: Path, seed: int) -> Path:
    """world -> crops -> curated under work/w<seed> (reused when there)."""
    from cion_ray.curation.config import CurateConfig
    from cion_ray.runtime.curate import run_curate
    from cion_ray.runtime.track import run_track
    from cion_ray.synth import SynthConfig, generate_world
    from cion_ray.tracking.config import DetectorConfig, TrackConfig

    out = work / f"w{seed}"
    world = generate_world(SynthConfig(seed=seed), out / "world")
    run_track(TrackConfig(videos=str(world.out / "videos"), out=str(out / "crops"),
                          detector=DetectorConfig(kind="mot-det", mot=str(world.out / "mot"))))
    run_curate(CurateConfig(crops=str(out / "crops"), out=str(out / "curated"), gt=str(world.out)),
               log=lambda m: None)
    import ray

    ray.shutdown()  # the timed runs below start their own, as a user's commands do
    return out


def cli(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cion_ray.cli", *args], check=True, cwd=ROOT)
    return time.perf_counter() - t0


def small_run(w: Path, out: Path) -> str:
    seconds = cli(["pretrain", "--config", "configs/small.yaml", "--data", str(w / "curated"),
                   "--eval-data", str(w / "world" / "reid"), "--out", str(out)])
    hist = json.loads((out / "metrics.json").read_text())
    scale = json.loads((out / "pretrain.json").read_text())["config"]["scale"]
    out_dim = json.loads((out / "pretrain.json").read_text())["config"]["model"]["out_dim"]
    last = hist[-1]
    gain = last["eval_mAP"] - last["eval_mAP_init"]
    rows = "\n".join(f"| {m['epoch']} | {m['loss']:.3f} | {m['teacher_entropy']:.3f} | {m['kl']:.3f} | "
                     f"{m.get('eval_mAP', float('nan')):.3f} | {m.get('eval_rank1', float('nan')):.3f} |"
                     for m in hist)
    return (f"`cion-ray pretrain --config configs/small.yaml` ({scale['workers']} Ray Train CPU "
            f"worker(s) of {scale['cpus_per_worker']:g} CPUs) on {w / 'curated'}: "
            f"{last['identities']} identities, {last['images']} images; {last['iteration']} iterations in "
            f"{seconds:.0f} s end to end (Ray start-up included).\n\n"
            f"Held-out mAP (teacher, {w / 'world' / 'reid'}): **{last['eval_mAP_init']:.3f} at initialisation -> "
            f"{last['eval_mAP']:.3f}** (rank-1 {last['eval_rank1_init']:.3f} -> {last['eval_rank1']:.3f}): "
            f"**{gain:+.3f}** (target: >= +0.10 within 900 s: {'met' if gain >= 0.10 and seconds <= 900 else 'NOT met'}). "
            f"Teacher entropy at the end {last['teacher_entropy']:.2f} nats, well below ln {out_dim} = "
            f"{math.log(out_dim):.2f} (where uniform collapse would put it).\n\n"
            "| epoch | loss | teacher entropy | KL | mAP | rank-1 |\n|---|---|---|---|---|---|\n" + rows + "\n")


def compare_run(w: Path, out: Path, seeds: str, finetune: int, extra: list[str]) -> tuple[str, float, int]:
    seconds = cli(["compare", "--data", str(w / "curated"), "--eval-data", str(w / "world" / "reid"),
                   "--gt", str(w / "world"), "--out", str(out), "--seeds", seeds,
                   "--finetune-steps", str(finetune), *extra])
    seen = json.loads((out / "compare.json").read_text())["budget"]["images_seen"]
    return (out / "compare.md").read_text(), seconds, seen


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="runs/bench-compare", help="worlds, crops, curated outputs and runs")
    p.add_argument("--world-seed", type=int, default=0)
    p.add_argument("--seeds", default="0", help="initialisation seeds of the comparison")
    p.add_argument("--finetune-steps", type=int, default=100)
    p.add_argument("--imagenet", default="runs/weights/mobilenetv2_imagenet.pth",
                   help="ImageNet MobileNetV2 weights (make imagenet-weights); skipped when absent")
    p.add_argument("--skip-small", action="store_true")
    p.add_argument("--skip-compare", action="store_true")
    args = p.parse_args()
    work = Path(args.work).resolve()
    w = prepare(work, args.world_seed)
    tag = f"world seed {args.world_seed}"
    if not args.skip_small:
        out = work / f"small-w{args.world_seed}-{time.strftime('%Y%m%d-%H%M%S')}"
        append_results(f"bench_compare: the small pre-training profile learns ({tag})", small_run(w, out))
    if args.skip_compare:
        return 0
    table, seconds, seen = compare_run(w, work / f"compare-w{args.world_seed}", args.seeds, args.finetune_steps, [])
    body = (f"`cion-ray compare` on {w / 'curated'} ({tag}), initialisation seeds {args.seeds}, ResNet18 at 64x32 "
            f"(configs/small.yaml), every trained arm {seen:,} images seen; kNN = cosine retrieval of the "
            f"backbone's features on the held-out people ({w / 'world' / 'reid'}); fine-tuned = BNNeck ID + triplet "
            f"for {args.finetune_steps} steps on the held-out split's training people, then retrieval. "
            f"Mean ± std over seeds. {seconds:.0f} s for all arms.\n\n" + table)
    imagenet = Path(args.imagenet)
    if imagenet.exists():
        t2, s2, _ = compare_run(w, work / f"compare-mnv2-w{args.world_seed}", args.seeds, args.finetune_steps,
                             ["--imagenet", str(imagenet), "--set", "model.arch=mobilenetv2",
                              "--arms", "curated,random,imagenet,imagenet_curated,supervised"])
        body += (f"\nThe same with MobileNetV2 (the ImageNet weights' backbone), {s2:.0f} s:\n\n" + t2)
    else:
        body += f"\nImageNet rows: not run ({imagenet} absent; `make imagenet-weights`).\n"
    append_results(f"bench_compare: pre-training data compared on held-out people ({tag})", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
