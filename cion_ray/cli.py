"""cion-ray turns street videos into identity-labelled person crops and pre-trains, evaluates and
fine-tunes person re-identification backbones on them, on a Ray cluster.

The command line: parse, build, run. Each stage lives in its own module; heavy imports (Ray,
torch) happen inside the command that needs them.
"""
from __future__ import annotations

import argparse
import os
import re
import sys

from cion_ray.errors import CionError


def _synth(args: argparse.Namespace) -> int:
    from cion_ray.config import load_config
    from cion_ray.synth import SynthConfig, generate_world, preset

    if args.workers < 0:
        raise CionError(f"--workers must be >= 0 (0: one per core), got {args.workers}")
    direct = {k: getattr(args, k) for k in ("videos", "identities", "frames", "seed", "cameras", "width", "height",
                                            "style", "cast")}
    cfg = load_config(SynthConfig, args.config, args.set, base=preset(args.preset), values=direct)
    s = generate_world(cfg, args.out, workers=args.workers, force=args.force)
    print(f"world: {s.out}  ({'reused' if s.reused else f'generated in {s.seconds:.1f}s'})")
    print(f"  videos:      {s.out / 'videos'}  ({s.videos} videos, {s.frames} frames)")
    print(f"  MOT files:   {s.out / 'mot'}  ({s.gt_boxes} gt boxes, {s.detections} detections)")
    print(f"  identities:  {s.out / 'identities.json'}  ({s.tracks} tracks of {s.identities} identities)")
    r = s.reid
    print(f"  ReID split:  {s.out / 'reid'}  (train {r['bounding_box_train']['identities']} ids / "
          f"{r['bounding_box_train']['images']} images; query {r['query']['images']}; "
          f"gallery {r['bounding_box_test']['images']}; {r['bounding_box_test']['cameras']} cameras)")
    print(f"  preview:     {s.out / 'preview.png'}")
    return 0



def add_run_args(s: argparse.ArgumentParser, config_class: str, set_help: str = "override a config field",
                 config_help: str = "") -> None:
    """--address, --config and --set, as every Ray stage takes them."""
    s.add_argument("--address", help="Ray address (default: $RAY_ADDRESS, else a local instance)")
    s.add_argument("--config", help=config_help or f"YAML file with {config_class} fields")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)

def add_track_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--videos", required=True, help="folder or s3:// prefix of videos (or one video file)")
    s.add_argument("--out", required=True, help="output folder or s3:// prefix")
    s.add_argument("--detector", choices=["yolo", "mot-det"], help="yolo (with --weights) or mot-det (with --mot)")
    s.add_argument("--weights", help="YOLO weights: .pt path or s3:// URI (or a model .yaml: untrained)")
    s.add_argument("--mot", help="folder or s3:// prefix with <video_id>/det.txt public detections")
    s.add_argument("--gt", help="folder with <video_id>/gt.txt for the quality report (default: --mot)")
    s.add_argument("--tracker", choices=["bytetrack", "botsort"])
    s.add_argument("--actors", type=int, help="detector+tracker actors in the pool")
    s.add_argument("--cpus-per-actor", type=float)
    s.add_argument("--gpus-per-actor", type=float, help="GPUs per actor (default: 1 with yolo when GPUs exist)")
    s.add_argument("--chunk-frames", type=int, help="split videos longer than this into chunks (0: never)")
    s.add_argument("--overlap", type=int, help="frames shared by adjacent chunks, for stitching")
    s.add_argument("--frame-step", type=int, help="track every n-th frame")
    s.add_argument("--target-fps", type=float, help="track at about this frame rate (overrides --frame-step)")
    s.add_argument("--overwrite", action="store_true", help="discard what is committed in --out first")
    add_run_args(s, "TrackConfig")


def track_config_from_args(args: argparse.Namespace):
    from cion_ray.config import load_config
    from cion_ray.tracking.config import TrackConfig

    direct = {"videos": args.videos, "out": args.out, "gt": args.gt, "detector.kind": args.detector,
              "detector.weights": args.weights, "detector.mot": args.mot, "tracker.kind": args.tracker,
              "pool.actors": args.actors, "pool.cpus_per_actor": args.cpus_per_actor,
              "pool.gpus_per_actor": args.gpus_per_actor, "chunks.frames": args.chunk_frames,
              "chunks.overlap": args.overlap, "chunks.frame_step": args.frame_step,
              "chunks.target_fps": args.target_fps}
    if args.weights and not args.detector:
        direct["detector.kind"] = "yolo"
    return load_config(TrackConfig, args.config, args.set, values=direct)


def _track(args: argparse.Namespace) -> int:
    from cion_ray.runtime.track import run_track

    cfg = track_config_from_args(args)
    r = run_track(cfg, overwrite=args.overwrite, address=args.address)
    print(f"tracked {len(r.videos_done)} videos ({r.frames} frames) in {r.seconds:.1f}s: {r.tracklets} tracklets, "
          f"{r.crops} crops; {len(r.videos_skipped_finished)} already done; {len(r.skipped)} skipped")
    print(f"  output:  {r.out}  (read it through {r.out}/_manifest.json)")
    print(f"  report:  {r.out}/report.txt")
    return 0


THRESHOLDS = {"radius": "denoise.radius", "merge": "denoise.merge", "margin": "denoise.margin",
              "link": "link.threshold", "drift": "link.drift"}


def add_curate_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--crops", required=True, help="output of `cion-ray track` (folder or s3:// prefix)")
    s.add_argument("--out", required=True, help="output folder or s3:// prefix")
    s.add_argument("--gt", help="synthetic world folder (or MOT folder) for per-level quality figures")
    s.add_argument("--embedder", help="handcrafted (no weights), timm:NAME (with --weights) or cion:RUN (a `cion-ray pretrain` run)")
    s.add_argument("--weights", help="embedder checkpoint: path or s3:// URI")
    s.add_argument("--dtype", choices=["float32", "float16"], help="stored embedding type")
    s.add_argument("--window", type=int, help="videos per sliding range (W)")
    s.add_argument("--stride", type=int, help="videos between range starts (S < W)")
    s.add_argument("--k", type=int, help="mutual k-nearest neighbours for a link")
    s.add_argument("--thresholds", metavar="NAME=VALUE,...",
                   help="fixed cosine-distance thresholds: " + ", ".join(THRESHOLDS) + " (e.g. radius=0.2,link=0.08); "
                        "they are used as given (calibration off)")
    s.add_argument("--no-calibrate", action="store_true",
                   help="use the configured thresholds as given instead of scaling them to the data's own "
                        "same- and different-person distances")
    s.add_argument("--min-len", type=int, help="samples a tracklet keeps at least (L1)")
    s.add_argument("--min-images", type=int, help="images an identity needs to be kept (L3)")
    s.add_argument("--actors", type=int, help="embedding actors")
    s.add_argument("--gpus-per-actor", type=float, help="GPUs per embedding actor (default: 1 for timm with GPUs)")
    s.add_argument("--no-export", action="store_true",
                   help="write no exports (no CION-AL JSON and images, no Market-1501 folder, no WebDataset shards)")
    s.add_argument("--no-market", action="store_true",
                   help="skip the Market-1501 folder (it is skipped anyway, with a note, above 9999 identities)")
    s.add_argument("--market-test-fraction", type=float, metavar="F",
                   help="hold out this fraction of the identities (seeded: --set export.market_seed=N) for the "
                        "Market query/ and bounding_box_test/ folders")
    s.add_argument("--webdataset", action="store_true",
                   help="also write WebDataset tar shards (exports/<run>/webdataset/shard-*.tar + index.json)")
    s.add_argument("--export-writers", type=int, metavar="N",
                   help="actors writing the export files (default: one per CPU)")
    s.add_argument("--overwrite", action="store_true", help="discard what is in --out first")
    add_run_args(s, "CurateConfig")


def curate_config_from_args(args: argparse.Namespace):
    from cion_ray.config import load_config
    from cion_ray.curation.config import CurateConfig
    from cion_ray.errors import ConfigError

    values = {"crops": args.crops, "out": args.out, "gt": args.gt, "embed.embedder": args.embedder,
              "embed.weights": args.weights, "embed.dtype": args.dtype, "link.window": args.window,
              "link.stride": args.stride, "link.k": args.k, "denoise.min_len": args.min_len,
              "link.min_images": args.min_images, "pool.actors": args.actors,
              "pool.gpus_per_actor": args.gpus_per_actor, "export_market": False if args.no_export else None,
              "export.market": False if args.no_market else None,
              "export.market_test_fraction": args.market_test_fraction,
              "export.webdataset": True if args.webdataset else None, "export.writers": args.export_writers,
              "calibrate.enabled": False if args.no_calibrate or args.thresholds else None}
    if args.weights and not args.embedder:
        raise ConfigError("--weights needs --embedder timm:NAME")
    for item in (args.thresholds or "").split(","):
        if not item.strip():
            continue
        name, _, value = item.partition("=")
        if name.strip() not in THRESHOLDS or not value:
            raise ConfigError(f"--thresholds: expected NAME=VALUE with NAME in {', '.join(THRESHOLDS)}, got {item!r}")
        try:
            values[THRESHOLDS[name.strip()]] = float(value)
        except ValueError:
            raise ConfigError(f"--thresholds: {item!r} is not a number") from None
    return load_config(CurateConfig, args.config, args.set, values=values)


def _curate(args: argparse.Namespace) -> int:
    from cion_ray.runtime.curate import run_curate

    cfg = curate_config_from_args(args)
    r = run_curate(cfg, overwrite=args.overwrite, address=args.address)
    state = " (nothing had changed: the committed output is current)" if r.current else ""
    print(f"curated {r.report['videos']} videos in {r.seconds:.1f}s: {r.identities} identities, {r.samples} images"
          + state)
    print(f"  identities: {r.out}/identities (Parquet; read through {r.out}/_manifest.json)")
    if r.exports:
        print(f"  exports:    {', '.join(r.exports)}")
    else:
        print("  exports:    none" + (" (--no-export)" if not cfg.export_market else " (no identities)"))
    print(f"  report:     {r.out}/report.txt   contact sheet: {r.out}/sheet.png")
    return 0


def add_pretrain_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--data", required=True,
                   help="curated output, tracking output (with --labels tracklet) or CION-AL JSON; local or s3://")
    s.add_argument("--arch", help="backbone: a ReIDZoo name (cion-ray zoo list) or a timm name")
    s.add_argument("--epochs", type=int)
    s.add_argument("--workers", type=int, help="Ray Train workers")
    s.add_argument("--gpus-per-worker", type=float, help="GPUs per worker (default: 1 when the cluster has GPUs)")
    s.add_argument("--cpus-per-worker", type=float)
    s.add_argument("--batch", type=int, help="images per worker and step (P x K)")
    s.add_argument("--data-fraction", type=float, help="train on this seeded fraction of the identities")
    s.add_argument("--seed", type=int)
    s.add_argument("--labels", choices=["identity", "tracklet", "instance", "gt"],
                   help="tracklet / instance: the tracklet- and instance-level baselines (use instance with "
                        "--k-schedule 0:1); gt: ground-truth identities (with --gt)")
    s.add_argument("--gt", help="with --labels gt: the synthetic world (or a MOT folder with <video>/gt.txt)")
    s.add_argument("--init", help="backbone checkpoint to start from (e.g. ImageNet weights); default random")
    s.add_argument("--k-schedule", help='gradual K as "fraction:K,..." (default 0:2,0.4:4,0.6:6,0.8:8; '
                                        '"0:1" = instance-level DINO)')
    s.add_argument("--out", required=True, help="run folder or s3:// prefix")
    s.add_argument("--eval-data", help="Market-style split (query/, bounding_box_test/): the teacher's "
                                       "CMC / mAP / mINP on it before training and at every checkpoint")
    s.add_argument("--validation", type=float, metavar="FRACTION",
                   help="hold out this seeded fraction of the identities: the teacher's retrieval on them "
                        "(val_mAP, val_rank1, val_mINP) at every checkpoint, with no labelled data (default 0: off)")
    s.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    add_run_args(s, "PretrainConfig", "override a config field, e.g. --set model.out_dim=4096")


def pretrain_config_from_args(args: argparse.Namespace):
    from cion_ray.config import load_config
    from cion_ray.pretrain.config import PretrainConfig

    values = {"data": args.data, "out": args.out, "model.arch": args.arch, "optim.epochs": args.epochs,
              "scale.workers": args.workers, "scale.gpus_per_worker": args.gpus_per_worker,
              "scale.cpus_per_worker": args.cpus_per_worker, "optim.batch_per_worker": args.batch,
              "data_fraction": args.data_fraction, "seed": args.seed, "labels": args.labels,
              "optim.k_schedule": args.k_schedule, "eval_data": args.eval_data, "gt": args.gt, "init": args.init,
              "validation": args.validation}
    return load_config(PretrainConfig, args.config, args.set, values=values)


def _pretrain(args: argparse.Namespace) -> int:
    from cion_ray.runtime.pretrain import run_pretrain

    r = run_pretrain(pretrain_config_from_args(args), address=args.address, resume=args.resume)
    m = r.metrics
    print(f"pre-trained in {r.seconds:.0f}s: epoch {m.get('epoch')}, loss {m.get('loss', float('nan')):.4f}, "
          f"{m.get('images_per_s', 0):.1f} img/s")
    if "eval_mAP" in m:
        print(f"  retrieval:   mAP {m['eval_mAP']:.3f} rank-1 {m['eval_rank1']:.3f} mINP {m['eval_mINP']:.3f} on "
              f"{args.eval_data} (before training: mAP {m.get('eval_mAP_init', float('nan')):.3f})")
    if "val_mAP" in m:
        print(f"  validation:  mAP {m['val_mAP']:.3f} rank-1 {m['val_rank1']:.3f} mINP {m['val_mINP']:.3f} on "
              f"{m.get('val_queries', 0)} held-out queries (before training: "
              f"mAP {m.get('val_mAP_init', float('nan')):.3f})")
    print(f"  exports:     {r.exports['teacher.pth']} (CION layout), {r.exports['backbone.pth']} (state dict)")
    print(f"  metrics:     {r.out}/metrics.json, {r.out}/curves.png, TensorBoard: {r.out}/tensorboard")
    print(f"  checkpoint:  {r.checkpoint}")
    return 0


def add_evaluate_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--weights", required=True,
                   help="checkpoint: backbone.pth / teacher.pth, a pre-training run folder or Ray Train checkpoint "
                        "(the newest), a released CION .pth; local or s3://. 'random': a seeded random init")
    s.add_argument("--arch", help="backbone (cion-ray zoo list); optional when the checkpoint records it")
    s.add_argument("--data", required=True, help="dataset folder (local or s3://)")
    s.add_argument("--dataset", help="market1501 | dukemtmc | cuhk03np | msmt17 | synthetic (default: detected)")
    s.add_argument("--protocol", choices=["detected", "labeled"], help="CUHK03-NP boxes (default detected)")
    s.add_argument("--distance", choices=["cosine", "euclidean"], help="feature distance (default cosine)")
    s.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking (k1 20, k2 6, lambda 0.3; "
                                                         "--set ranking.k1=N to change)")
    s.add_argument("--size", help="input size H,W (default: the size the checkpoint was trained at when it "
                                   "records one, else 256,128)")
    s.add_argument("--batch", type=int, help="images per forward pass")
    s.add_argument("--no-flip", action="store_true", help="do not average with the mirrored image's features")
    s.add_argument("--device", help="cpu | cuda (default cpu)")
    s.add_argument("--seed", type=int, help="seed of --weights random")
    s.add_argument("--max-rank", type=int, help="CMC length (default 50)")
    s.add_argument("--backend", choices=["auto", "dense", "faiss"],
                   help="search engine, same results (auto: dense ranking, faiss for re-ranking's neighbours "
                        "above --set ranking.faiss_above images)")
    s.add_argument("--actors", type=int, help="feature actors of the Ray pool (used above --ray-above images)")
    s.add_argument("--gpus-per-actor", type=float, help="GPUs per feature actor (default: 1 with --device cuda)")
    s.add_argument("--ray-above", type=int, help="extract with a Ray Data actor pool above this many images "
                                                 "(default 20000; 0: always)")
    s.add_argument("--out", help="write the result as JSON here (local or s3://)")
    add_run_args(s, "EvaluateConfig", "override a config field, e.g. --set ranking.memory_mb=2048")


def evaluate_config_from_args(args: argparse.Namespace):
    from cion_ray.config import load_config
    from cion_ray.errors import ConfigError
    from cion_ray.evaluate.pipeline import EvaluateConfig

    size = None
    if args.size:
        try:
            size = [int(v) for v in args.size.split(",")]
        except ValueError:
            raise ConfigError(f"--size {args.size!r}: expected H,W, e.g. 256,128") from None
    values = {"weights": args.weights, "arch": args.arch, "data": args.data, "dataset": args.dataset,
              "cuhk03_protocol": args.protocol, "seed": args.seed, "out": args.out, "features.size": size,
              "features.batch": args.batch, "features.flip": False if args.no_flip else None,
              "features.device": args.device, "features.actors": args.actors,
              "features.gpus_per_actor": args.gpus_per_actor, "features.ray_above": args.ray_above,
              "ranking.distance": args.distance, "ranking.rerank": True if args.rerank else None,
              "ranking.max_rank": args.max_rank, "ranking.backend": args.backend}
    cfg = load_config(EvaluateConfig, args.config, args.set, values=values)
    if cfg.arch:
        from cion_ray.zoo.factory import check_backbone

        check_backbone(cfg.arch)  # an unknown name fails before any data is read
    return cfg


def _evaluate(args: argparse.Namespace) -> int:
    from cion_ray.evaluate.pipeline import result_table
    from cion_ray.runtime.evaluate import run_evaluate

    r = run_evaluate(evaluate_config_from_args(args), address=args.address)
    print(result_table(r))
    if args.out:
        print(f"  result: {args.out}")
    return 0


def add_finetune_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--data", required=True, help="training images: a ReID dataset folder (its train split), a "
                                                 "curated output (market/bounding_box_train) or Market-named images")
    s.add_argument("--dataset", help="loader of --data: market1501 | dukemtmc | cuhk03np | msmt17 | synthetic "
                                     "(default: detected)")
    s.add_argument("--eval-data", help="dataset folder with query / gallery to evaluate on (default: --data)")
    s.add_argument("--arch", help="backbone: a ReIDZoo name (cion-ray zoo list) or a timm name")
    init = s.add_mutually_exclusive_group()
    init.add_argument("--weights", help="initial weights: a checkpoint file or run folder (local or s3://)")
    init.add_argument("--random-init", action="store_true", help="start from a seeded random initialisation")
    s.add_argument("--out", required=True, help="run folder or s3:// prefix")
    s.add_argument("--steps", type=int, help="length in iterations (images seen = steps x P x K x workers)")
    s.add_argument("--epochs", type=int, help="length in epochs (default 120), when --steps is not given")
    s.add_argument("--fractions", help="data-efficiency protocol: nested fractions of the training identities, "
                                       "one run each, e.g. 0.1,0.25,0.5,1")
    s.add_argument("--compare", action="append", default=[], metavar="RUN",
                   help="another protocol run (folder or protocol.csv) to draw on the same plot (repeatable)")
    s.add_argument("--size", help="input size H,W (default 256,128)")
    s.add_argument("--pk", help="P,K: identities per batch and images per identity (default 16,4)")
    s.add_argument("--lr", type=float, help="learning rate (default 3.5e-4)")
    s.add_argument("--optimizer", choices=["adam", "adamw"])
    s.add_argument("--schedule", choices=["step", "cosine"], help="lr after the warm-up (default step)")
    s.add_argument("--id-only", action="store_true", help="the plain ID-classification loss (no triplet)")
    s.add_argument("--eval-every", type=int, help="also evaluate every N iterations")
    s.add_argument("--seed", type=int)
    s.add_argument("--label", help="this run's name in protocol tables and plots")
    s.add_argument("--workers", type=int, help="Ray Train workers (default 1)")
    s.add_argument("--gpus-per-worker", type=float, help="GPUs per worker (default: 1 when the cluster has GPUs)")
    s.add_argument("--cpus-per-worker", type=float)
    s.add_argument("--local", action="store_true", help="run in this process, without Ray")
    s.add_argument("--parallel", action="store_true", help="protocol on Ray: all fractions at once, as the "
                                                           "cluster has room")
    s.add_argument("--resume", action="store_true", help="continue the run in --out (finished fractions are kept)")
    add_run_args(s, "FinetuneConfig", "override a config field, e.g. --set loss.label_smoothing=0")


def finetune_config_from_args(args: argparse.Namespace):
    from cion_ray.config import load_config
    from cion_ray.finetune.config import FinetuneConfig
    from cion_ray.finetune.protocol import parse_fractions

    pk = None
    if args.pk:
        pk = args.pk.split(",")
        if len(pk) != 2:
            raise CionError(f"--pk {args.pk!r}: expected P,K, e.g. 16,4")
    values = {"data": args.data, "dataset": args.dataset, "eval.data": args.eval_data, "model.arch": args.arch,
              "model.weights": "" if args.random_init else args.weights, "out": args.out,
              "optim.steps": args.steps, "optim.epochs": args.epochs, "augment.size": args.size,
              "optim.identities_per_batch": pk[0] if pk else None, "optim.images_per_identity": pk[1] if pk else None,
              "optim.lr": args.lr, "optim.optimizer": args.optimizer, "optim.schedule": args.schedule,
              "loss.triplet_weight": 0 if args.id_only else None, "eval.every": args.eval_every, "seed": args.seed,
              "label": args.label, "scale.workers": args.workers, "scale.gpus_per_worker": args.gpus_per_worker,
              "scale.cpus_per_worker": args.cpus_per_worker,
              "fractions": list(parse_fractions(args.fractions)) if args.fractions else None,
              "parallel": True if args.parallel else None}
    cfg = load_config(FinetuneConfig, args.config, args.set, values=values)
    if not cfg.model.weights and not args.random_init:
        raise CionError("choose the initialisation: --weights CKPT (a checkpoint or run folder) or --random-init")
    return cfg


def _finetune(args: argparse.Namespace) -> int:
    from cion_ray.runtime.finetune import run_finetune, run_protocol

    cfg = finetune_config_from_args(args)
    kw = {"address": args.address, "local": args.local, "resume": args.resume}
    if cfg.fractions:
        from cion_ray.finetune.protocol import table_markdown

        p = run_protocol(cfg, compare=args.compare, **kw)
        print(f"data-efficiency protocol of {cfg.run_label}: {len(p.rows)} fractions")
        print(table_markdown(p.rows), end="")
        print(f"  table: {p.files['protocol.csv']}, {p.files['protocol.md']}   plot: {p.files['protocol.png']}")
        return 0
    if args.compare:
        raise CionError("--compare draws protocol runs together: it needs --fractions")
    r = run_finetune(cfg, **kw)
    m = r.metrics
    print(f"fine-tuned {cfg.model.arch} in {r.seconds:.0f}s: {m.get('step')} iterations, {m.get('images')} images "
          f"seen, loss {m.get('loss', float('nan')):.4f}" + (" (finished before; reused)" if r.reused else ""))
    if "eval_mAP" in m:
        before = f" (before: mAP {m['eval_mAP_init']:.4f}, rank-1 {m['eval_rank1_init']:.4f})" \
            if "eval_mAP_init" in m else ""
        print(f"  retrieval:  mAP {m['eval_mAP']:.4f}  rank-1 {m['eval_rank1']:.4f}  mINP {m['eval_mINP']:.4f}{before}")
    print(f"  exports:    {r.exports['model.pth']} (backbone, neck, classifier), {r.exports['backbone.pth']} "
          "(backbone state dict)")
    print(f"  metrics:    {r.out}/metrics.json, {r.out}/result.json")
    return 0


def add_compare_args(s: argparse.ArgumentParser) -> None:
    from cion_ray.compare.config import ARMS, DEFAULT_ARMS

    s.add_argument("--data", required=True, help="curated output (cion-ray curate) to pre-train on")
    s.add_argument("--eval-data", required=True, help="held-out split: any dataset cion-ray evaluate reads")
    s.add_argument("--out", required=True, help="output folder (local or shared by every node)")
    s.add_argument("--gt", help="synthetic world (or MOT folder) of the curated videos, for the gt arm")
    s.add_argument("--imagenet", help="ImageNet weights for the imagenet arms (make imagenet-weights)")
    s.add_argument("--arms", help=f"comma-separated, from {', '.join(ARMS)} (default {','.join(DEFAULT_ARMS)}, "
                                    "with gt and the imagenet arms when --gt and --imagenet are given)")
    s.add_argument("--seeds", help="comma-separated seeds; each arm runs once per seed (default 0)")
    s.add_argument("--profile", help="pre-training config every distillation arm starts from "
                                     "(default configs/small.yaml)")
    s.add_argument("--finetune-steps", type=int, help="also fine-tune each backbone for N steps on the "
                                                      "held-out split's training people (default 0: off)")
    s.add_argument("--parallel", type=int, help="arms at once (default: the cluster's CPUs)")
    s.add_argument("--gpus-per-arm", type=float, help="GPUs per arm (default 0)")
    s.add_argument("--address", help="Ray address (default: $RAY_ADDRESS, else a local instance)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the pre-training profile, e.g. --set model.arch=resnet18_ibn")


def compare_config_from_args(args: argparse.Namespace):
    from cion_ray.compare.config import CompareConfig
    from cion_ray.config import load_config

    values = {"data": args.data, "eval_data": args.eval_data, "out": args.out, "gt": args.gt,
              "imagenet": args.imagenet, "arms": args.arms, "seeds": args.seeds, "profile": args.profile,
              "finetune_steps": args.finetune_steps, "parallel": args.parallel,
              "gpus_per_arm": args.gpus_per_arm, "overrides": args.set or None}
    return load_config(CompareConfig, None, None, values=values)


def _compare(args: argparse.Namespace) -> int:
    from cion_ray.compare.report import table_markdown
    from cion_ray.runtime.compare import run_compare

    r = run_compare(compare_config_from_args(args), address=args.address)
    print(table_markdown(r["rows"]), end="")
    print(f"  table: {args.out}/compare.md (.csv, .json)   chart: {args.out}/compare.png   "
          f"curves: {args.out}/curves.png")
    return 0


def _zoo(args: argparse.Namespace) -> int:
    from cion_ray.zoo.factory import count_parameters, create_backbone, feature_dim
    from cion_ray.zoo.registry import REGISTRY

    names = [n for n, e in REGISTRY.items() if args.all or not e.test]
    print(f"{'name':<18}{'family':<12}{'built from':<32}{'params (M)':>11}{'feature':>9}")
    for n in names:
        e = REGISTRY[n]
        m = create_backbone(n)
        src = f"timm {e.timm}" if e.timm else f"cion-ray ResNet{e.depth}{'-IBN-a' if e.ibn else ''}"
        print(f"{n:<18}{e.family:<12}{src:<32}{count_parameters(m) / 1e6:>11.2f}{feature_dim(m):>9}", flush=True)
    return 0


def first_sentence(text: str) -> str:
    """The first sentence of `text` (a docstring), its lines joined."""
    return re.split(r"(?<=[.!?])\s", " ".join(text.split()), maxsplit=1)[0]


def version_line() -> str:
    """"cion-ray X (ray Y, torch Z, python W)" from package metadata: nothing is imported."""
    from importlib.metadata import PackageNotFoundError, version

    def v(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "not installed"

    py = ".".join(map(str, sys.version_info[:3]))
    return f"cion-ray {v('cion-ray')} (ray {v('ray')}, torch {v('torch')}, python {py})"


VERBOSE_HELP = "more log output (Ray's included); sets CION_RAY_VERBOSE=1"


def _add_verbose(parser: argparse.ArgumentParser) -> None:
    """--verbose after the subcommand too (`cion-ray track --verbose`); SUPPRESS keeps a subparser
    from resetting what was given before the subcommand."""
    try:
        parser.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    except argparse.ArgumentError:  # the subcommand defines its own --verbose
        return
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _add_verbose(child)


def _add_run(sub) -> None:
    """`cion-ray run`, when cion_ray.pipeline.command is there (the CLI works without it)."""
    try:
        from cion_ray.pipeline.command import add_args, run
    except ImportError:
        return
    s = sub.add_parser("run", help="run the whole pipeline from one YAML config: track -> curate -> pretrain -> "
                                   "evaluate")
    add_args(s)
    s.set_defaults(func=run)


def _add_tune(sub) -> None:
    """`cion-ray tune pretrain` and `cion-ray tune curate`: searches on Ray Tune (cion_ray.tune)."""
    from cion_ray.tune import curate_command, pretrain_command

    s = sub.add_parser("tune", help="hyperparameter searches on Ray Tune: pre-training (ASHA on held-out "
                                    "retrieval) or curation thresholds (pairwise F1 against ground truth)")
    ts = s.add_subparsers(dest="tune_command", required=True, metavar="SEARCH")
    tp = ts.add_parser("pretrain", help="search pre-training hyperparameters; stop weak trials early (ASHA)")
    pretrain_command.add_args(tp)
    tp.set_defaults(func=pretrain_command.run)
    tc = ts.add_parser("curate", help="search curation thresholds against pairwise F1 on ground truth")
    curate_command.add_args(tc)
    tc.set_defaults(func=curate_command.run)


def _add_scale(sub) -> None:
    """`cion-ray scale`: the data-percentage scaling study (cion_ray.scaling)."""
    from cion_ray.scaling import command

    s = sub.add_parser("scale", help="pre-train on nested fractions of the curated identities and plot held-out "
                                     "mAP / rank-1 against the percentage (several backbones on one plot)")
    command.add_args(s)
    s.set_defaults(func=command.run)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cion-ray", description=first_sentence(__doc__),
                                epilog="Config keys of every stage (--config YAML, --set): docs/config.md")
    p.add_argument("--version", action="version", version=version_line())
    p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("synth", help="generate the synthetic multi-camera pedestrian world")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--preset", default="default", help="default | tiny | bench")
    s.add_argument("--videos", type=int, help="number of videos")
    s.add_argument("--identities", type=int, help="number of people walking through the videos")
    s.add_argument("--frames", type=int, help="frames per video")
    s.add_argument("--seed", type=int, help="random seed (same seed, same world)")
    s.add_argument("--cameras", type=int, help="number of cameras (1-9)")
    s.add_argument("--width", type=int, help="frame width in pixels")
    s.add_argument("--height", type=int, help="frame height in pixels")
    s.add_argument("--style", help="how people and imaging look: default | alt (other palettes, clothes, "
                                   "accessories and proportions; stronger casts, gain, blur and noise)")
    s.add_argument("--cast", type=float, help="strength of each video's colour cast (0: none, 1: the style's own)")
    s.add_argument("--workers", type=int, default=0, help="render processes (0 = one per core)")
    s.add_argument("--force", action="store_true", help="regenerate even if a complete world is there")
    s.add_argument("--config", help="YAML file with SynthConfig fields")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set det.miss_rate=0.1 (repeatable)")
    s.set_defaults(func=_synth)

    t = sub.add_parser("track", help="detect and track people in videos; write person crops to Parquet")
    add_track_args(t)
    t.set_defaults(func=_track)

    c = sub.add_parser("curate", help="denoise tracklets and link them across videos into identities")
    add_curate_args(c)
    c.set_defaults(func=_curate)

    r = sub.add_parser("pretrain", help="identity-guided self-distillation pre-training on Ray Train")
    add_pretrain_args(r)
    r.set_defaults(func=_pretrain)

    e = sub.add_parser("evaluate", help="ReID retrieval of a backbone: CMC, mAP, mINP (optional re-ranking)")
    add_evaluate_args(e)
    e.set_defaults(func=_evaluate)

    f = sub.add_parser("finetune", help="supervised fine-tuning (BNNeck, ID + triplet loss) and the "
                                        "data-efficiency protocol")
    add_finetune_args(f)
    f.set_defaults(func=_finetune)

    m = sub.add_parser("compare", help="pre-training data sources compared on held-out people (instances, "
                                       "tracklets, curated identities, ground truth, random, ID loss)")
    add_compare_args(m)
    m.set_defaults(func=_compare)

    z = sub.add_parser("zoo", help="the ReIDZoo backbones")
    zs = z.add_subparsers(dest="zoo_command", required=True, metavar="ACTION")
    zl = zs.add_parser("list", help="names, parameter counts and feature sizes (builds each model on the CPU)")
    zl.add_argument("--all", action="store_true", help="include the tiny test variants")
    zl.set_defaults(func=_zoo)
    _add_tune(sub)
    _add_scale(sub)
    _add_run(sub)
    for choice in sub._choices_actions:  # `cion-ray CMD -h` opens with the line `cion-ray -h` lists
        child = sub.choices[choice.dest]
        child.description = child.description or choice.help[:1].upper() + choice.help[1:] + "."
    for child in sub.choices.values():
        _add_verbose(child)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "verbose", False):
        os.environ["CION_RAY_VERBOSE"] = "1"  # before any stage runs: the runtime reads it when Ray starts
    try:
        return args.func(args)
    except CionError as e:
        from cion_ray.io.fs import redact  # a message built from a library's error may carry a key

        print(f"cion-ray {args.command}: error: {redact(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cion-ray {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
