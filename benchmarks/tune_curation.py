"""How the curation defaults were chosen: a grid search on synthetic worlds with ground truth.

For each seed: generate the default world, track it (public detections, in process), embed the
crops with the hand-crafted descriptor, then run L1/L2/L3 for every combination of thresholds
and measure the final pairwise F1 against the ground truth. The defaults maximise the worst F1
over the seeds. Also reports, per world, how often an identity's nearest neighbour in another
video is the same person (the descriptor's own quality). Results go to benchmarks/RESULTS.md.

    python benchmarks/tune_curation.py --seeds 0,1 --root runs/tune
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_results  # noqa: E402

from cion_ray.curation.config import DenoiseConfig, LinkConfig  # noqa: E402
from cion_ray.curation.core import VideoCrops, curate_local  # noqa: E402
from cion_ray.denoise.tracklet import normalize  # noqa: E402
from cion_ray.evaluate.clustering import pairwise_prf  # noqa: E402
from cion_ray.curation.local import embedded_world  # noqa: E402
from cion_ray.synth import SynthConfig  # noqa: E402

GRID = {"radius": [0.15, 0.2, 0.25], "merge": [0.06, 0.1], "threshold": [0.06, 0.08, 0.1, 0.12],
        "drift": [0.05, 0.08, 0.12], "k": [2, 3]}


def prepare(seed: int, root: Path) -> tuple[list[VideoCrops], np.ndarray]:
    return embedded_world(SynthConfig(seed=seed), root / f"world-{seed}")


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
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--root", default="runs/tune")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    data = {s: prepare(s, Path(args.root)) for s in seeds}
    results = []
    keys = list(GRID)
    for combo in itertools.product(*GRID.values()):
        c = dict(zip(keys, combo))
        f1 = {}
        for s, (videos, gt) in data.items():
            r = curate_local(videos, DenoiseConfig(radius=c["radius"], merge=c["merge"]),
                             LinkConfig(threshold=c["threshold"], drift=c["drift"], k=c["k"]))
            lab = np.concatenate(r.sample_labels())
            keep = lab >= 0
            f1[s] = (pairwise_prf(gt[keep], lab[keep])["f1"], int(keep.sum()))
        results.append((min(v[0] for v in f1.values()), c, f1))
        print(c, {s: round(v[0], 3) for s, v in f1.items()}, flush=True)
    results.sort(key=lambda r: -r[0])
    d = DenoiseConfig()
    lk = LinkConfig()
    default = {"radius": d.radius, "merge": d.merge, "threshold": lk.threshold, "drift": lk.drift, "k": lk.k}
    rows = "| worst F1 | " + " | ".join(keys) + " | " + " | ".join(f"F1 seed {s} (samples)" for s in seeds) + " |\n"
    rows += "|---" * (1 + len(keys) + len(seeds)) + "|\n"
    for worst, c, f1 in results[:8]:
        mark = " (default)" if c == default else ""
        rows += (f"| {worst:.3f}{mark} | " + " | ".join(str(c[k]) for k in keys) + " | "
                 + " | ".join(f"{f1[s][0]:.3f} ({f1[s][1]})" for s in seeds) + " |\n")
    nn = ", ".join(f"seed {s}: {nearest_same(*data[s]):.3f}" for s in seeds)
    body = (f"Default synthetic worlds, seeds {args.seeds}; public detections + ByteTrack; hand-crafted "
            f"descriptor. Grid: {GRID}. Final pairwise F1 (over the samples kept) for the best 8 settings by "
            f"worst-seed F1:\n\n{rows}\nDescriptor quality (nearest other-video identity is the same person): "
            f"{nn}.\n")
    append_results("tune_curation: curation thresholds", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
