"""Why pre-training did not learn at small scale: the plain loop (no Ray) on a curated synthetic
world, one variant per line, each a list of config overrides on one shared base, and the held-out
mAP of the teacher (the evaluated and exported network) and of the student after every epoch.

The base is the issue's researcher run (ResNet18 at 64x32, head 512/128 -> 1024, 2 local crops,
16 identities x 4 images, lr 0.002 per 256, 8 epochs x 20 iterations) with the released recipe's
loss settings; `small` is configs/small.yaml's choices on the same base. Runs go two at a time
(one torch thread each: two threads per process on 2 shared cores ran several times slower).

    python benchmarks/ablate_pretrain.py --curated runs/bench-compare/w0/curated \\
        --eval runs/bench-compare/w0/world/reid            # bench_compare.py makes these
    python benchmarks/ablate_pretrain.py ... --only "released;small"
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_results  # noqa: E402

BASE = ["model.arch=resnet18", "model.out_dim=1024", "model.hidden_dim=512", "model.bottleneck_dim=128",
        "views.global_size=64,32", "views.local_size=32,16", "views.local_crops=2", "optim.batch_per_worker=64",
        "optim.k_schedule=0:4", "optim.epochs=8", "optim.iters_per_epoch=20", "optim.warmup_epochs=2",
        "optim.lr=0.002", "scale.loader_workers=0"]
SMALL = ["model.head_bn=true", "optim.centering=sinkhorn", "optim.momentum_teacher=0.95", "optim.lr=0.004",
         "optim.teacher_temp=0.02", "optim.warmup_teacher_temp=0.02"]
VARIANTS = {
    "released": [],
    "lr0": ["optim.lr=0", "optim.min_lr=0", "optim.epochs=2"],  # no learning: only BN statistics move
    "weak-colour": ["views.colour_jitter=0.4,0.4,0.2,0", "views.grayscale_p=0", "views.solarize_p=0"],
    "sinkhorn": ["optim.centering=sinkhorn"],
    "head-bn": ["model.head_bn=true"],
    "head-bn+m0.99+lr0.004+t0.02": ["model.head_bn=true", "optim.momentum_teacher=0.99", "optim.lr=0.004",
                                    "optim.teacher_temp=0.02", "optim.warmup_teacher_temp=0.02"],
    "same, centre, m0.95": ["model.head_bn=true", "optim.momentum_teacher=0.95", "optim.lr=0.004",
                            "optim.teacher_temp=0.02", "optim.warmup_teacher_temp=0.02"],
    "small": SMALL,
    "small, no head BN": SMALL + ["model.head_bn=false"],
    "small, t0.04": SMALL + ["optim.teacher_temp=0.04", "optim.warmup_teacher_temp=0.04"],
    "small, t0.01": SMALL + ["optim.teacher_temp=0.01", "optim.warmup_teacher_temp=0.01"],
    "small, m0.99": SMALL + ["optim.momentum_teacher=0.99"],
    "small, m0.9": SMALL + ["optim.momentum_teacher=0.9"],
    "small, 100 iterations": SMALL + ["optim.epochs=5", "optim.warmup_epochs=1"],
}

WORKER = r'''
import json, sys, torch
from cion_ray.config import load_config
from cion_ray.evaluate.reid import evaluate_backbone
from cion_ray.pretrain import loop
from cion_ray.pretrain.config import PretrainConfig
torch.set_num_threads(1)
cfg = load_config(PretrainConfig, None, json.loads(sys.argv[1]))
teacher_eval = loop.evaluate_teacher
def both(cfg, task, device, log):  # the teacher's metrics, and the student's beside them
    r = teacher_eval(cfg, task, device, log)
    s = evaluate_backbone(task.student.backbone, cfg.eval_data, tuple(cfg.views.global_size), device=str(device))
    return {**r, "eval_student_mAP": s.mAP}
loop.evaluate_teacher = both
hist = []
loop.train(cfg, loop.LocalContext(), log=lambda m: None, on_epoch=hist.append)
print(json.dumps(hist))
'''


def run(name: str, sets: list[str], curated: str, eval_data: str, seed: int) -> dict:
    overrides = BASE + sets + [f"data={curated}", f"eval_data={eval_data}", "out=unused", f"seed={seed}"]
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", WORKER, json.dumps(overrides)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{name}: {out.stderr.strip().splitlines()[-1]}")
    hist = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{name}: teacher mAP {[round(m['eval_mAP'], 3) for m in hist]}", flush=True)
    return {"name": name, "hist": hist, "seconds": time.perf_counter() - t0}


def row(r: dict) -> str:
    h, last = r["hist"], r["hist"][-1]
    traj = " ".join(f"{m['eval_mAP']:.2f}" for m in h)
    return (f"| {r['name']} | {last['eval_mAP_init']:.3f} | {last['eval_mAP']:.3f} | {last['eval_student_mAP']:.3f} "
            f"| {traj} | {last['teacher_entropy']:.2f} | {min(m['teacher_mean_entropy'] for m in h):.2f} "
            f"| {last['feature_similarity']:.2f} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--curated", required=True)
    p.add_argument("--eval", required=True, help="held-out Market-style split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", help="variant names separated by ';' (names hold commas)")
    p.add_argument("--parallel", type=int, default=2)
    args = p.parse_args()
    names = [n.strip() for n in args.only.split(";")] if args.only else list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")
    with ThreadPoolExecutor(args.parallel) as pool:
        results = list(pool.map(lambda n: run(n, VARIANTS[n], args.curated, args.eval, args.seed), names))
    body = (f"Plain loop on {args.curated}, held-out split {args.eval}, seed {args.seed}. Base: "
            f"`{' '.join(BASE)}`; `small` adds `{' '.join(SMALL)}` (configs/small.yaml). mAP: the teacher's "
            "(evaluated and exported) after the last epoch, the student's beside it, the teacher's after every "
            "epoch; entropies in nats (ln 1024 = 6.93: uniform); feature similarity: mean pairwise cosine of the "
            "teacher's backbone features in a batch.\n\n"
            "| variant | mAP init | teacher mAP | student mAP | teacher mAP per epoch | teacher entropy | "
            "min batch-mean entropy | feature similarity |\n|---|---|---|---|---|---|---|---|\n"
            + "\n".join(row(r) for r in results) + "\n")
    append_results("ablate_pretrain: what makes small-scale pre-training learn", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
