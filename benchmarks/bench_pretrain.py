"""Pre-training throughput: Ray Train vs a plain PyTorch loop over the same model, batch and data.

1. `plain`: cion_ray.pretrain.loop.train in this process (LocalContext: no Ray, no DDP), all cores;
2. `ray1`: run_pretrain with 1 Ray Train worker holding all cores (the same loop, behind Ray Train);
3. `ray2`: 2 workers (DDP over gloo), the cores split between them.
Images/s are the loop's own per-epoch figures (steps x global batch / epoch time), the first
epoch (warm-up) left out; medians over repeats. On a GPU, add `--gpu`: ResNet50 at 256x128,
bf16 autocast, channels_last, torch.compile; img/s and model FLOPs over the GPU's bf16 peak.

    python benchmarks/bench_pretrain.py --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_results, median  # noqa: E402

from cion_ray.config import load_config  # noqa: E402
from cion_ray.pretrain.config import PretrainConfig  # noqa: E402

BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16 tensor-core peaks


def cion_al(world: Path) -> Path:
    """The world's held-out split as a CION-AL JSON beside it (paths stay inside the JSON's folder)."""
    from cion_ray.synth import SynthConfig, generate_world

    generate_world(SynthConfig(), world)
    files = sorted((world / "reid").glob("*/*.jpg"))
    entries = [{"file_path": str(f.relative_to(world)), "id": int(f.name[:4])} for f in files
               if not f.name.startswith("-")]
    out = world / "cion_al.json"
    out.write_text(json.dumps(entries))
    return out


def settings(args) -> list[str]:
    return [f"model.arch={args.arch}", "model.out_dim=4096", "model.hidden_dim=512", "model.bottleneck_dim=128",
            "views.local_crops=2", "views.global_size=128,64", "views.local_size=64,32", "scale.loader_workers=0",
            f"optim.batch_per_worker={args.batch}", f"optim.epochs={args.epochs}",
            f"optim.iters_per_epoch={args.iters}", "optim.warmup_epochs=1", "optim.k_schedule=0:4"]


def steady(history: list[dict]) -> float:
    return median([m["images_per_s"] for m in history[1:]])


def plain(args, data: Path) -> float:
    import torch

    from cion_ray.pretrain.loop import LocalContext, train

    torch.set_num_threads(os.cpu_count() or 1)
    ctx = LocalContext(None)
    train(load_config(PretrainConfig, None, settings(args) + [f"data={data}"]), ctx, log=lambda s: None)
    return steady(ctx.metrics)


def ray_run(args, data: Path, workers: int) -> float:
    from cion_ray.runtime.pretrain import run_pretrain

    out = Path(tempfile.mkdtemp(prefix="bench-pretrain-"))
    cpus = (os.cpu_count() or 1) / workers
    cfg = load_config(PretrainConfig, None, settings(args) + [
        f"data={data}", f"out={out}", f"scale.workers={workers}", f"scale.cpus_per_worker={cpus}",
        "scale.gpus_per_worker=0"])
    run_pretrain(cfg, log=lambda m: None)
    return steady(json.loads((out / "metrics.json").read_text()))


def gpu_bench(args) -> str:
    """ResNet50 at 256x128, bf16 autocast, channels_last, torch.compile: a plain supervised-size step
    (forward + backward + AdamW) of the backbone, as the student's global views see it."""
    import torch

    from cion_ray.zoo.factory import create_backbone

    if not torch.cuda.is_available():
        return "GPU: not measured, no GPU on this machine.\n"
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
    model = create_backbone("resnet50").cuda().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    step_model = torch.compile(model)
    x = torch.randn(args.gpu_batch, 3, 256, 128, device="cuda").to(memory_format=torch.channels_last)
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            model(x).float().pow(2).mean().backward()
    flops = fc.get_total_flops()
    opt.zero_grad(set_to_none=True)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = step_model(x).float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(10):
        step()
    torch.cuda.synchronize()
    rates = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        for _ in range(20):
            step()
        torch.cuda.synchronize()
        rates.append(20 * args.gpu_batch / (time.perf_counter() - t))
    ips = median(rates)
    tflops = flops * ips / args.gpu_batch / 1e12
    frac = f"{tflops / peak:.1%} of the {peak:.0f} TFLOPS bf16 peak" if peak else "peak unknown for this GPU"
    return (f"GPU ({name}): ResNet50 256x128, batch {args.gpu_batch}, bf16 + channels_last + torch.compile: "
            f"{ips:.0f} img/s (median of {args.repeats}), {tflops:.1f} TFLOPS in model FLOPs, {frac} "
            f"(target >= 35%).\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", default="runs/demo/world")
    p.add_argument("--arch", default="resnet18_ibn")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--iters", type=int, default=6)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--gpu", action="store_true", help="also run the GPU ResNet50 figure")
    p.add_argument("--gpu-batch", type=int, default=256)
    args = p.parse_args()
    data = cion_al(Path(args.world))
    from cion_ray.runtime.session import ensure_ray

    ensure_ray(num_cpus=os.cpu_count())
    rates: dict[str, list[float]] = {"plain": [], "ray1": [], "ray2": []}
    for rep in range(args.repeats):
        rates["plain"].append(plain(args, data))
        rates["ray1"].append(ray_run(args, data, 1))
        rates["ray2"].append(ray_run(args, data, 2))
        print(f"repeat {rep + 1}: " + ", ".join(f"{k} {v[-1]:.1f} img/s" for k, v in rates.items()), flush=True)
    med = {k: median(v) for k, v in rates.items()}
    body = (f"Model `{args.arch}` + DINO head (out 4096), views 2 x 128x64 + 2 x 64x32, batch {args.batch} per "
            f"worker (P x K, K = 4), {args.iters} steps per epoch, {args.epochs} epochs (the first left out); "
            f"synthetic world's ReID images as CION-AL JSON; repeats {args.repeats} (medians). `plain`: the loop "
            f"in one process without Ray; `ray1`: 1 Ray Train worker with all cores; `ray2`: 2 workers (DDP, gloo), "
            f"cores split.\n\n| run | img/s (median) | all repeats | ratio vs plain |\n|---|---|---|---|\n"
            + "".join(f"| {k} | {med[k]:.1f} | {', '.join(f'{x:.1f}' for x in rates[k])} | "
                      f"{med[k] / med['plain']:.3f} |\n" for k in rates)
            + f"\nTarget: ray1 / plain >= 0.95 ({'met' if med['ray1'] / med['plain'] >= 0.95 else 'NOT met'}); "
              f"ray2 reported.\n\n" + (gpu_bench(args) if args.gpu else "GPU: not measured (no --gpu).\n"))
    append_results("bench_pretrain: pre-training throughput", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
