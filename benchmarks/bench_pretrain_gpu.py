"""Pre-training on one GPU: the share of the GPU's peak, and whether the full-size recipe learns.

1. `throughput`: ResNet50 at 256x128, bf16 autocast, channels_last, torch.compile: a training step of
   the backbone (bench_pretrain.gpu_bench): img/s and model FLOPs over the GPU's bf16 peak;
2. `recipe`: the released recipe as `cion-ray pretrain` runs it by default (ResNet50-IBN, DINO head
   to 65536 without BatchNorm, EMA centre, teacher temperature 0.04, momentum 0.996 -> 1, 2 global
   256x128 + 8 local 128x64 views, batch 120, bf16), only the schedule shortened to fit a lease
   (--epochs x --iters, one warm-up epoch), in one process on the GPU (the loop Ray Train runs per
   worker), on a curated output: teacher entropy against ln(out_dim) and held-out mAP per epoch;
   `--set key=value` changes a setting (e.g. the small profile's fixes at full size).

It needs torch, timm, pyarrow and Pillow, not Ray: it runs on a GPU machine that has no cion-ray
install, from the repository root (PYTHONPATH=.).

    python benchmarks/bench_pretrain_gpu.py --data runs/bench-compare/w0/curated \\
        --crops runs/bench-compare/w0/crops --eval runs/bench-compare/w0/world/reid --epochs 8 --iters 60
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_results  # noqa: E402

from cion_ray.config import load_config  # noqa: E402
from cion_ray.pretrain.config import PretrainConfig  # noqa: E402


def recipe(args) -> tuple[str, list[dict]]:
    import torch

    from cion_ray.pretrain.loop import LocalContext, train

    cfg = load_config(PretrainConfig, None, [
        f"data={args.data}", f"crops={args.crops}", f"eval_data={args.eval}", "out=unused",
        f"model.arch={args.arch}", f"optim.epochs={args.epochs}", f"optim.iters_per_epoch={args.iters}",
        "optim.warmup_epochs=1", f"optim.k_schedule={args.k_schedule}", f"scale.loader_workers={args.loader_workers}"]
        + args.set)
    torch.backends.cudnn.benchmark = True
    history: list[dict] = []
    t0 = time.perf_counter()

    def on_epoch(m):
        history.append(m)
        print(f"epoch {m['epoch']}/{args.epochs}: loss {m['loss']:.3f} teacher entropy {m['teacher_entropy']:.3f} "
              f"(batch-mean {m['teacher_mean_entropy']:.3f}) KL {m['kl']:.3f} {m['images_per_s']:.0f} img/s"
              + (f" mAP {m['eval_mAP']:.3f}" if "eval_mAP" in m else ""), flush=True)

    train(cfg, LocalContext(None, "cuda"), log=lambda s: print(s, flush=True), on_epoch=on_epoch)
    seconds = time.perf_counter() - t0
    last, ln_d = history[-1], math.log(cfg.model.out_dim)
    rows = "".join(f"| {m['epoch']} | {m['k']} | {m['loss']:.3f} | {m['teacher_entropy']:.3f} | "
                   f"{m['teacher_mean_entropy']:.3f} | {m['kl']:.3f} | {m['images_per_s']:.0f} | "
                   + (f"{m['eval_mAP']:.3f} | {m['eval_rank1']:.3f} |" if "eval_mAP" in m else " | |") + "\n"
                   for m in history)
    text = (f"{'Released recipe' if not args.set else 'Released recipe with ' + ', '.join(args.set)} (`{cfg.model.arch}`, out_dim {cfg.model.out_dim}, head BN {cfg.model.head_bn}, "
            f"centring {cfg.optim.centering}, teacher temperature {cfg.optim.teacher_temp}, momentum "
            f"{cfg.optim.momentum_teacher}, views 2 x {cfg.views.global_size[0]}x{cfg.views.global_size[1]} + "
            f"{cfg.views.local_crops} x {cfg.views.local_size[0]}x{cfg.views.local_size[1]}, batch "
            f"{cfg.optim.batch_per_worker}, K schedule {args.k_schedule}), schedule shortened to {args.epochs} epochs "
            f"x {args.iters} iterations (warm-up 1 epoch), one process on the GPU, {args.loader_workers} loader "
            f"processes; data {args.data} ({last['identities']} identities, {last['images']} images); held-out "
            f"split {args.eval}. {seconds:.0f} s in all.\n\n"
            f"Teacher entropy at the end {last['teacher_entropy']:.2f} nats of ln {cfg.model.out_dim} = {ln_d:.2f}; "
            f"held-out mAP {last.get('eval_mAP_init', float('nan')):.3f} at initialisation -> "
            f"{last.get('eval_mAP', float('nan')):.3f}.\n\n"
            "| epoch | K | loss | teacher entropy | batch-mean entropy | KL | img/s | mAP | rank-1 |\n"
            "|---|---|---|---|---|---|---|---|---|\n" + rows)
    return text, history


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="a curated output or CION-AL JSON")
    p.add_argument("--crops", default="", help="the tracking output the curated output points to, if moved")
    p.add_argument("--eval", required=True, help="a held-out Market-style split")
    p.add_argument("--arch", default="resnet50_ibn")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--iters", type=int, default=60)
    p.add_argument("--k-schedule", default="0:2,0.4:4,0.6:6,0.8:8", help="the released gradual K")
    p.add_argument("--loader-workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--gpu-batch", type=int, default=256)
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a pre-training setting changed from the released recipe (repeatable)")
    args = p.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("bench_pretrain_gpu: no GPU on this machine", file=sys.stderr)
        return 2
    body = ""
    if not args.skip_throughput:
        from bench_pretrain import gpu_bench

        body += gpu_bench(args) + "\n"
        print(body, flush=True)
    text, _ = recipe(args)
    append_results("bench_pretrain_gpu: GPU share of peak and the released recipe on one GPU", body + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
