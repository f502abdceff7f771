"""A second curation round with a full-size backbone pre-trained on one GPU, on a world the
hand-crafted descriptor links badly (the alt renderer): does CION's own output embed better?

Three steps, because the GPU machine has no Ray:
1. `prepare` (here, Ray): the world, `cion-ray track` (public detections + ByteTrack) and round 1,
   `cion-ray curate` with the hand-crafted descriptor and calibrated thresholds, under --work.
2. `train` (GPU, no Ray; torch, timm, pyarrow and Pillow): pre-training on round 1's identities,
   ResNet50-IBN at 256x128 with the fixes that make the full-size network learn at this scale
   (RESULTS.md, bench_pretrain_gpu 19:10), then every crop of the tracking output embedded with the
   teacher's backbone; features saved as float16 in parts of at most 12 MiB under --out.
3. `score` (here): round 1 (the descriptor) and round 2 (the backbone's features) curated in process
   with calibrated thresholds on the same tracked crops; pairwise F1 per level against the ground
   truth, and how often an identity's nearest identity in another video is the same person.

    python benchmarks/bench_round2_gpu.py prepare --work runs/round2 --world alt
    python benchmarks/bench_round2_gpu.py train --work runs/round2/alt --out OUT     # on the GPU machine
    python benchmarks/bench_round2_gpu.py score --work runs/round2/alt --feats OUT [--feats OUT2 ...]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_results  # noqa: E402

PART_BYTES = 12 << 20
# the full-size recipe with the small profile's fixes, as in RESULTS.md (bench_pretrain_gpu, 19:10)
FIXES = ["model.head_bn=true", "optim.centering=sinkhorn", "optim.teacher_temp=0.02",
         "optim.warmup_teacher_temp=0.02", "optim.momentum_teacher=0.99", "optim.lr=0.002"]


def crops_table(crops: str):
    """The tracking output's committed crops, sorted by crop id: pyarrow Table (crop_id, video_id,
    track_id, frame, x1, y1, x2, y2, crop)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cion_ray.io import runs

    files = runs.committed_files(crops, "track")
    cols = ["crop_id", "video_id", "track_id", "frame", "x1", "y1", "x2", "y2", "crop"]
    t = pa.concat_tables([pq.read_table(f, columns=cols) for f in files])
    return t.take(np.argsort(np.array(t.column("crop_id").to_pylist(), object), kind="stable"))


def prepare(args) -> int:
    from bench_curation import WORLDS

    from cion_ray.curation.config import CurateConfig
    from cion_ray.runtime.curate import run_curate
    from cion_ray.runtime.track import run_track
    from cion_ray.synth import SynthConfig, generate_world
    from cion_ray.tracking.config import DetectorConfig, TrackConfig

    out = Path(args.work) / args.world
    cfg = SynthConfig(seed=0) if args.world == "seed0" else WORLDS[args.world][1]
    world = generate_world(cfg, out / "world")
    run_track(TrackConfig(videos=str(world.out / "videos"), out=str(out / "crops"),
                          detector=DetectorConfig(kind="mot-det", mot=str(world.out / "mot"))))
    run_curate(CurateConfig(crops=str(out / "crops"), out=str(out / "curated"), gt=str(world.out)))
    print(f"[round2] {out}: world, crops and round-1 curated output ready")
    return 0


def train(args) -> int:
    import torch

    from cion_ray.config import load_config
    from cion_ray.embed.timm_embedder import TimmEmbedder
    from cion_ray.pretrain.config import PretrainConfig
    from cion_ray.pretrain.loop import LocalContext
    from cion_ray.pretrain.loop import train as pretrain

    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_round2_gpu train: no GPU on this machine (--device cpu for a dry run)", file=sys.stderr)
        return 2
    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = Path(args.ckpt or tempfile.mkdtemp(prefix="round2-ckpt-"))
    if (ckpt / "checkpoint.pt").exists():
        raise SystemExit(f"{ckpt}: holds a checkpoint already (training would resume from it); use a new --ckpt")
    cfg = load_config(PretrainConfig, None, [
        f"data={work / 'curated'}", f"crops={work / 'crops'}", f"eval_data={work / 'world' / 'reid'}",
        f"out={ckpt / 'run'}", f"model.arch={args.arch}", f"optim.epochs={args.epochs}",
        f"optim.iters_per_epoch={args.iters}", "optim.warmup_epochs=1",
        f"scale.loader_workers={args.loader_workers}"] + FIXES + args.set)
    torch.backends.cudnn.benchmark = True
    t0 = time.perf_counter()
    history: list[dict] = []

    def on_epoch(m):
        history.append({k: v for k, v in m.items() if isinstance(v, (int, float, str))})

    pretrain(cfg, LocalContext(ckpt, args.device), log=lambda s: print(s, flush=True), on_epoch=on_epoch)
    train_s = time.perf_counter() - t0
    t = crops_table(str(work / "crops"))
    emb = TimmEmbedder(None, str(ckpt / "checkpoint.pt"), device=args.device)
    jpegs = t.column("crop").to_pylist()
    t1 = time.perf_counter()
    feats = np.concatenate([emb(jpegs[i:i + 512]) for i in range(0, len(jpegs), 512)]).astype(np.float16)
    embed_s = time.perf_counter() - t1
    rows = max(1, PART_BYTES // feats[0].nbytes)
    for p, i in enumerate(range(0, len(feats), rows)):
        np.save(out / f"feats-{p:02d}.npy", feats[i:i + rows])
    (out / "round2.json").write_text(json.dumps({
        "crop_ids": t.column("crop_id").to_pylist(), "history": history, "train_seconds": train_s,
        "embed_seconds": embed_s, "arch": cfg.model.arch, "settings": FIXES + args.set,
        "epochs": args.epochs, "iters": args.iters,
        "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else "none (cpu)"}))
    print(f"[round2] trained in {train_s:.0f} s; {len(feats)} crops embedded ({feats.shape[1]} dims) in "
          f"{embed_s:.1f} s", flush=True)
    return 0


def score(args) -> int:
    from bench_curation import report
    from tune_curation import nearest_same

    from cion_ray.curation.calibrate import curate_calibrated
    from cion_ray.curation.config import CalibrateConfig, DenoiseConfig, LinkConfig
    from cion_ray.curation.local import labelled_videos
    from cion_ray.embed.handcrafted import HandcraftedEmbedder

    work = Path(args.work)
    t = crops_table(str(work / "crops"))
    runs = []  # (row name, features, the train step's record)
    for d in args.feats:
        meta = json.loads((Path(d) / "round2.json").read_text())
        if t.column("crop_id").to_pylist() != meta["crop_ids"]:
            raise SystemExit(f"{d}: the features are not of {work / 'crops'}'s crops")
        labels = "ground truth" if any(x.startswith("labels=gt") for x in meta["settings"]) else "round 1's identities"
        feats = np.concatenate([np.load(f) for f in sorted(Path(d).glob("feats-*.npy"))]).astype(np.float32)
        runs.append((f"round 2: {meta['arch']} pre-trained on {labels}", feats, meta))
    feats1 = HandcraftedEmbedder()(t.column("crop").to_pylist())
    results = {}
    for name, feats, _ in [("round 1: hand-crafted descriptor", feats1, None)] + runs:
        videos, gt = labelled_videos(t, feats, work / "world")
        res, cal, _ = curate_calibrated(videos, DenoiseConfig(), LinkConfig(), CalibrateConfig())
        rep = report(videos, gt, res)
        results[name] = {"levels": rep["levels"], "thresholds": cal.to_json()["thresholds"],
                         "nearest_same": nearest_same(videos, gt), "dim": int(feats.shape[1])}
        l3 = rep["levels"]["L3"]
        print(f"[round2] {name}: F1 {l3['f1']:.3f} (P {l3['precision']:.3f} R {l3['recall']:.3f}), "
              f"nearest other-video identity right {results[name]['nearest_same']:.3f}", flush=True)
    rows = "".join(
        f"| {n} | {r['dim']} | {r['nearest_same']:.3f} | "
        + " / ".join(f"{r['thresholds'][k]:.3f}" for k in ("radius", "merge", "threshold")) + " | "
        + f"{r['levels']['L3']['samples']} | {r['levels']['L3']['precision']:.3f} | "
        + f"{r['levels']['L3']['recall']:.3f} | **{r['levels']['L3']['f1']:.3f}** | "
        + " / ".join(f"{r['levels'][lv]['f1']:.3f}" for lv in ("tracker", "L1", "L2", "L3")) + " |\n"
        for n, r in results.items())
    trained = "".join(
        f"- {name}: one GPU ({m['gpu']}), {m['epochs']} epochs x {m['iters']} iterations, settings "
        f"{', '.join(m['settings'])}, {m['history'][-1]['identities']} identities, {m['history'][-1]['images']} "
        f"images, {m['train_seconds']:.0f} s; held-out mAP {m['history'][-1].get('eval_mAP_init', float('nan')):.3f} "
        f"at initialisation -> {m['history'][-1].get('eval_mAP', float('nan')):.3f} (rank-1 "
        f"{m['history'][-1].get('eval_rank1', float('nan')):.3f}); every tracked crop embedded with the teacher's "
        f"backbone in {m['embed_seconds']:.1f} s.\n" for name, _, m in runs)
    body = (f"World `{args.world}` under {work}: round 1 is `cion-ray curate` with the hand-crafted descriptor "
            f"and calibrated thresholds; each round 2 pre-trains a full-size backbone at 256x128 on round 1's "
            "kept crops, embeds every tracked crop with it, and curates them again in process with calibrated "
            "thresholds. F1 is pairwise over the samples each level keeps.\n\n" + trained + "\n"
            "| round | dims | nearest other-video identity is the same person | radius / merge / link | "
            "L3 samples | P | R | F1 | F1 tracker / L1 / L2 / L3 |\n|---|---|---|---|---|---|---|---|---|\n" + rows)
    print(body)
    if not args.no_record:
        append_results("bench_round2_gpu: a second curation round with a backbone pre-trained on one GPU", body)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="step", required=True)
    a = sub.add_parser("prepare", help="world, tracking and round 1 (here, with Ray)")
    a.add_argument("--work", default="runs/round2")
    a.add_argument("--world", default="alt", help="a world of bench_curation.py, or seed0 (the default world)")
    b = sub.add_parser("train", help="pre-train on round 1 and embed every crop (GPU, no Ray)")
    b.add_argument("--work", required=True, help="the prepared world's folder")
    b.add_argument("--out", required=True, help="where the features go")
    b.add_argument("--ckpt", help="where the training checkpoint goes (default: a new temporary folder)")
    b.add_argument("--arch", default="resnet50_ibn")
    b.add_argument("--device", default="cuda", help="cuda, or cpu for a dry run of the step")
    b.add_argument("--epochs", type=int, default=8)
    b.add_argument("--iters", type=int, default=60)
    b.add_argument("--loader-workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    c = sub.add_parser("score", help="round 1 against round 2 (here)")
    c.add_argument("--work", required=True)
    c.add_argument("--world", default="alt")
    c.add_argument("--feats", action="append", required=True, help="a train step's --out (repeatable)")
    c.add_argument("--no-record", action="store_true")
    args = p.parse_args()
    return {"prepare": prepare, "train": train, "score": score}[args.step](args)


if __name__ == "__main__":
    sys.exit(main())
