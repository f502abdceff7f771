"""How the curation defaults were chosen: a Ray Tune search on synthetic worlds with ground truth.

For each seed: generate the default world, track it (public detections, in process), embed the
crops with the hand-crafted descriptor. Then one Tune search (`cion_ray.runtime.tune_curate.search`,
what `cion-ray tune curate` runs) over the thresholds of a space file (default
configs/tune-curate.yaml), every trial running L1/L2/L3 on every world and scored by the worst
of the worlds' final pairwise F1 (over the samples kept). The current defaults and each world's
calibrated thresholds are the first trials. Also reports, per world, how often an identity's
nearest neighbour in another video is the same person (the descriptor's own quality). Results
go to benchmarks/RESULTS.md.

    python benchmarks/tune_curation.py --seeds 0,1 --root runs/tune --trials 64
    python benchmarks/tune_curation.py --quick        # the tiny world, one seed, 8 trials (~1 min)
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_results  # noqa: E402

from cion_ray.curation.config import CurateConfig  # noqa: E402
from cion_ray.curation.core import VideoCrops, clean_features  # noqa: E402
from cion_ray.curation.local import embedded_world  # noqa: E402
from cion_ray.denoise.tracklet import normalize  # noqa: E402
from cion_ray.synth import SynthConfig, preset  # noqa: E402
from cion_ray.tune.curate import DEFAULT_METRIC, METRICS, SearchData, fixed_keys, results_table  # noqa: E402
from cion_ray.tune.space import check_space, load_spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def prepare(seed: int, root: Path, quick: bool = False) -> tuple[list[VideoCrops], np.ndarray]:
    cfg = preset("tiny") if quick else SynthConfig()
    cfg.seed = seed
    return embedded_world(cfg, root / (f"tiny-{seed}" if quick else f"world-{seed}"))


def search_data(videos: list[VideoCrops], gt: np.ndarray) -> SearchData:
    """embedded_world's labels (one per crop, all videos) split per video, over the samples L1 sees."""
    gts, off = [], 0
    for v in videos:
        g = gt[off:off + len(v.crop_id)]
        off += len(v.crop_id)
        clean, _ = clean_features(v)
        gts.append(g[np.isin(v.crop_id, clean.crop_id)])
    return SearchData(videos, gts)


def nearest_same(videos: list[VideoCrops], gt: np.ndarray) -> float:
    """Fraction of (video, person) centroids whose nearest centroid from another video is the same person."""
    cents, lab, vid, off = [], [], [], 0
    for v in videos:
        g = gt[off:off + len(v.crop_id)]
        off += len(v.crop_id)
        for p in np.unique(g):
            if "/" in p:  # unmatched crops
                continue
            cents.append(normalize(v.feats[g == p].mean(0)))
            lab.append(p)
            vid.append(v.video_id)
    c, lab, vid = np.array(cents), np.array(lab), np.array(vid)
    d = np.where(vid[:, None] != vid[None], 1 - c @ c.T, np.inf)
    has_match = ((lab[:, None] == lab[None]) & (vid[:, None] != vid[None])).any(1)
    return float(np.mean(lab[d.argmin(1)][has_match] == lab[has_match]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1", help="worlds (default world of each seed)")
    p.add_argument("--root", default="runs/tune", help="where the worlds and the search go")
    p.add_argument("--space", default=str(ROOT / "configs" / "tune-curate.yaml"), help="search space YAML")
    p.add_argument("--trials", type=int, help="configurations to sample (default: the space's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random search")
    p.add_argument("--quick", action="store_true", help="the tiny world of the first seed, 8 trials; results "
                                                        "printed, not recorded")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")][:1 if args.quick else None]
    spec = load_spec(args.space, CurateConfig, metrics=METRICS, default_metric=DEFAULT_METRIC, fixed=fixed_keys())
    spec.trials = args.trials or (8 if args.quick else spec.trials)
    base = CurateConfig()
    check_space(spec, base)
    root = Path(args.root)
    raw = {s: prepare(s, root, args.quick) for s in seeds}
    worlds = [search_data(*raw[s]) for s in seeds]

    import ray

    from cion_ray.runtime.tune_curate import search

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
    try:
        r = search(spec, base, worlds, str((root / "search").resolve()), seed=args.seed)
    finally:
        ray.shutdown()
    _, md = results_table(r, spec.keys)
    rows = [line for line in md.splitlines() if line.startswith("|")][:10]  # header + the best 8
    per_seed = ", ".join(f"seed {s}: F1 {r.best.get(f'f1@{i}', r.best['f1']):.3f}" for i, s in enumerate(seeds))
    nn = ", ".join(f"seed {s}: {nearest_same(*raw[s]):.3f}" for s in seeds)
    body = (f"{'Tiny' if args.quick else 'Default'} synthetic worlds, seeds {','.join(map(str, seeds))}; public "
            f"detections + ByteTrack; hand-crafted descriptor. Ray Tune random search ({len(r.rows)} trials, "
            f"space {Path(args.space).name}: {', '.join(d.key + ' ' + d.describe() for d in spec.space)}), each "
            f"trial scored by the worst final pairwise F1 over the worlds (over the samples kept).\n\n"
            f"- defaults, calibrated (as `cion-ray curate` runs them): worst F1 "
            f"{r.default_calibrated['f1']:.3f}\n- default thresholds, fixed: worst F1 {r.default_fixed['f1']:.3f}\n"
            f"- best: worst F1 {r.best['f1']:.3f} ({per_seed}) at "
            f"{', '.join(f'{k} {v:.4g}' if isinstance(v, float) else f'{k} {v}' for k, v in r.best['params'].items())}"
            f"\n- L1/L2 reused in {r.reuse['levels_cached']} of {r.reuse['trials']} trials; {r.seconds:.0f}s in all\n\n"
            "Best 8 trials by the worst F1 (F1, P, R: the worst over the worlds):\n\n" + "\n".join(rows) +
            f"\n\nDescriptor quality (nearest other-video identity is the same person): {nn}.\n")
    if args.quick:
        print(body)
    else:
        append_results("tune_curation: curation thresholds", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
