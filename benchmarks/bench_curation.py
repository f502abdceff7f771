"""Curation quality on worlds it was not tuned on: fixed thresholds against calibrated ones.

The curation defaults were tuned on the default synthetic world, seeds 0 and 1
(benchmarks/tune_curation.py). This benchmark generates other worlds: other seeds, another
renderer (`style: alt`), stronger colour casts, fewer cameras, a denser crowd, noisier
detections. Each is tracked (public detections + ByteTrack) and embedded with the hand-crafted
descriptor once, then curated three times: with the thresholds as configured, calibrated from the
world's own distances (cion_ray.curation.calibrate), and calibrated with the global linking pass
off (sliding ranges only: what the pass adds). Per world and setting it records pairwise
P / R / F1 and NMI per level, over the samples each level keeps and over the samples all levels
keep, the descriptor's own quality (how often an identity's nearest identity in another video is
the same person), and each world's calibration.png.

With --rounds, it also runs the pipeline job with two curation rounds on the default world
(round 2 embeds with the backbone pre-trained on round 1's data) and records both rounds.

    python benchmarks/bench_curation.py --work runs/bench-curation
    python benchmarks/bench_curation.py --work runs/bench-curation --worlds seed2,alt --no-record
"""
from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_results  # noqa: E402
from tune_curation import nearest_same  # noqa: E402

from cion_ray.curation.calibrate import curate_calibrated  # noqa: E402
from cion_ray.curation.config import CalibrateConfig, DenoiseConfig, LinkConfig  # noqa: E402
from cion_ray.curation.report import LEVELS, build_report  # noqa: E402
from cion_ray.curation.local import embedded_world  # noqa: E402
from cion_ray.synth import SynthConfig  # noqa: E402
from cion_ray.synth.config import DetNoiseConfig  # noqa: E402
from cion_ray.viz.calibration import calibration_png  # noqa: E402

# name -> (what differs from the tuning worlds, SynthConfig)
WORLDS = {
    **{f"seed{s}": (f"default world, seed {s}", SynthConfig(seed=s)) for s in range(2, 7)},
    "alt": ("another renderer (style alt), seed 7", SynthConfig(seed=7, style="alt")),
    "alt-cast": ("style alt with 1.5x colour casts, seed 8", SynthConfig(seed=8, style="alt", cast=1.5)),
    "casts": ("2x colour casts, seed 10", SynthConfig(seed=10, cast=2.0)),
    "cameras3": ("3 cameras instead of 6, seed 9", SynthConfig(seed=9, cameras=3)),
    "crowd": ("a denser crowd: 120 people instead of 60, seed 11", SynthConfig(seed=11, identities=120)),
    "detnoise": ("noisier detections (jitter 0.06, miss 0.1, 0.5 false positives per frame), seed 12",
                 SynthConfig(seed=12, det=DetNoiseConfig(jitter=0.06, miss_rate=0.1, fp_per_frame=0.5))),
}


# setting -> calibration on, linking settings
SETTINGS = (("fixed", False, LinkConfig()), ("calibrated", True, LinkConfig()),
            ("ranges only", True, LinkConfig(global_ratio=0.0)))


def load(name: str, work: Path):
    cache = work / f"{name}.pkl"
    if cache.exists():
        return pickle.loads(cache.read_bytes())
    t0 = time.perf_counter()
    data = embedded_world(WORLDS[name][1], work / name)
    cache.write_bytes(pickle.dumps(data))
    print(f"[bench] {name}: world, tracking and embedding in {time.perf_counter() - t0:.0f} s", flush=True)
    return data


def report(videos, gt: np.ndarray, result) -> dict:
    """The stage's own report (curation.report) of a local curation."""
    rows, off = [], 0
    for v, lv in zip(videos, result.levels):
        n = len(v.crop_id)
        rows.append({"video_id": v.video_id, "track_id": v.track_id, "l1": lv.l1, "l2": lv.l2,
                     "counts": lv.counts, "stats": lv.stats, "gt": gt[off:off + n]})
        off += n
    return build_report(rows, result.sample_labels(), {})


def run_world(name: str, work: Path) -> dict:
    videos, gt = load(name, work)
    out = {"world": name, "what": WORLDS[name][0], "nearest_same": nearest_same(videos, gt)}
    for setting, enabled, link in SETTINGS:
        t0 = time.perf_counter()
        res, cal, dist = curate_calibrated(videos, DenoiseConfig(), link, CalibrateConfig(enabled=enabled))
        out[setting] = {"report": report(videos, gt, res), "calibration": cal.to_json(),
                        "seconds": time.perf_counter() - t0}
        if setting == "calibrated":
            (work / f"{name}-calibration.png").write_bytes(calibration_png(dist, cal, title=name))
    f, c = out["fixed"]["report"]["levels"]["L3"], out["calibrated"]["report"]["levels"]["L3"]
    g = out["ranges only"]["report"]["levels"]["L3"]
    print(f"[bench] {name}: F1 fixed {f['f1']:.3f} ({f['samples']} samples), calibrated {c['f1']:.3f} "
          f"({c['samples']} samples), calibrated without the global pass {g['f1']:.3f}", flush=True)
    return out


def tables(results: list[dict]) -> str:
    head = ("| world | setting | radius / merge / link | L3 samples | identities | P | R | F1 | NMI | "
            "F1 tracker / L1 / L2 / L3 (each level's samples) | F1 tracker / L1 / L2 / L3 (common samples) |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n")
    rows = ""
    for r in results:
        for setting, _, _ in SETTINGS:
            rep, cal = r[setting]["report"], r[setting]["calibration"]
            lv, t = rep["levels"], cal["thresholds"]
            l3 = lv["L3"]
            per = " / ".join(f"{lv[k].get('f1', float('nan')):.3f}" for k in LEVELS)
            com = " / ".join(f"{lv[k]['common']['f1']:.3f}" if "common" in lv[k] else "-" for k in LEVELS)
            rows += (f"| {r['world']} | {setting} | {t['radius']:.3f} / {t['merge']:.3f} / {t['threshold']:.3f} | "
                     f"{l3['samples']} | {l3['identities']} | {l3['precision']:.3f} | {l3['recall']:.3f} | "
                     f"**{l3['f1']:.3f}** | {l3['nmi']:.3f} | {per} | {com} |\n")
    summary = ("| world | what differs | descriptor: nearest other-video identity is the same person | "
               "F1 fixed | F1 calibrated | calibrated - fixed | calibrated >= 0.92 | F1 calibrated, ranges only "
               "(no global pass) |\n|---|---|---|---|---|---|---|---|\n")
    for r in results:
        f, c, g = (r[k]["report"]["levels"]["L3"]["f1"] for k in ("fixed", "calibrated", "ranges only"))
        summary += (f"| {r['world']} | {r['what']} | {r['nearest_same']:.3f} | {f:.3f} | {c:.3f} | {c - f:+.3f} | "
                    f"{'yes' if c >= 0.92 else 'NO'} | {g:.3f} |\n")
    return summary + "\n" + head + rows


def run_rounds(work: Path, seed: int) -> dict:
    """The pipeline job with two rounds on the default world of `seed` (laptop config, small
    pre-training profile): -> {"table": its rounds.md, "seconds", "out"}."""
    world = work / f"rounds-world-{seed}"
    out = work / f"rounds-{seed}"
    py = sys.executable
    if not (world / "identities.json").exists():
        subprocess.run([py, "-m", "cion_ray.cli", "synth", "--out", str(world), "--seed", str(seed)], check=True)
    sets = {"out": out, "videos": world / "videos", "track.detector.mot": world / "mot", "curate.gt": world,
            "pretrain.eval_data": world / "reid", "evaluate.data": world / "reid", "rounds": 2}
    cmd = [py, "jobs/pipeline.py", "--config", "configs/pipeline-laptop.yaml"]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parent.parent)
    return {"table": (out / "rounds.md").read_text().rstrip("\n"), "seconds": time.perf_counter() - t0,
            "out": str(out)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="runs/bench-curation")
    p.add_argument("--worlds", default=",".join(WORLDS), help="comma-separated, of: " + ", ".join(WORLDS))
    p.add_argument("--rounds", type=int, default=None, metavar="SEED",
                   help="also run the two-round pipeline on the default world of this seed")
    p.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    names = [n.strip() for n in args.worlds.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORLDS]
    if unknown:
        p.error(f"unknown world(s) {', '.join(unknown)}; choose from {', '.join(WORLDS)}")
    t0 = time.perf_counter()
    results = [run_world(n, work) for n in names]
    (work / "results.json").write_text(json.dumps(results, indent=1, default=float))
    body = (f"Hand-crafted descriptor; public detections + ByteTrack; thresholds as configured (the defaults, "
            f"tuned on seeds 0 and 1) against calibrated from each world's own distances, and calibrated with "
            f"sliding ranges only (link.global_ratio 0: no global pass). F1 is pairwise, "
            f"over the samples L3 keeps. {len(results)} worlds in {time.perf_counter() - t0:.0f} s "
            f"(world generation included where not cached). Plots: {work}/<world>-calibration.png.\n\n"
            + tables(results))
    if args.rounds is not None:
        r = run_rounds(work, args.rounds)
        body += (f"\nTwo curation rounds on the default world (seed {args.rounds}), `jobs/pipeline.py --config "
                 f"configs/pipeline-laptop.yaml --set rounds=2` ({r['seconds']:.0f} s; {r['out']}/rounds.md): "
                 f"round 2 embeds with the backbone pre-trained on round 1's curated data.\n\n{r['table']}\n")
    print(body)
    if not args.no_record:
        append_results("bench_curation: curation quality on worlds it was not tuned on", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
