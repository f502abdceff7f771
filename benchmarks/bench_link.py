"""Cross-video linking benchmark on generated clustered features (D = 256).

People are random unit vectors; each appears in 2-4 videos, mostly near each other in the
order; a tracklet's centroid is its person's vector plus noise. Measured:
1. sliding-range linking (the Ray tasks of the curate stage) vs all-pairs exact kNN (faiss) on
   the same centroids, 100k tracklets over 1k videos: speed ratio, and the fraction of the
   all-pairs links between videos at most W - S apart that the ranges recover;
2. end-to-end linking time (ranges as Ray tasks + union-find reducer) at growing corpus sizes,
   and the reducer's peak memory (tracemalloc).

    python benchmarks/bench_link.py --sizes 10000,100000,500000,1000000
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_results  # noqa: E402

from cion_ray.curation.config import CurateConfig, LinkConfig  # noqa: E402
from cion_ray.curation.core import IdentityTable, reduce_identities  # noqa: E402
from cion_ray.linking.relations import linking_relations  # noqa: E402

DIM = 256
PER_VIDEO = 100


def make_corpus(n_tracklets: int, seed: int = 0, noise: float = 0.012) -> IdentityTable:
    """Tracklet centroids over n_tracklets / 100 videos; each person in 2-4 videos near each other."""
    rng = np.random.default_rng(seed)
    n_videos = max(2, n_tracklets // PER_VIDEO)
    video_of, person_of = [], []
    p = 0
    while len(video_of) < n_tracklets:
        home = int(rng.integers(n_videos))
        k = int(rng.integers(2, 5))
        vids = {home}
        while len(vids) < k:
            vids.add(int(np.clip(home + rng.integers(-3, 4), 0, n_videos - 1)) if rng.random() > 0.1
                     else int(rng.integers(n_videos)))
        for v in vids:
            video_of.append(v)
            person_of.append(p)
        p += 1
    video_of = np.array(video_of[:n_tracklets])
    person_of = np.array(person_of[:n_tracklets])
    order = np.argsort(video_of, kind="stable")
    video_of, person_of = video_of[order], person_of[order]
    people = rng.standard_normal((p, DIM)).astype(np.float32)
    people /= np.linalg.norm(people, axis=1, keepdims=True)
    x = people[person_of] + rng.standard_normal((n_tracklets, DIM)).astype(np.float32) * noise
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    offsets = np.searchsorted(video_of, np.arange(n_videos + 1))
    return IdentityTable(video_of, x.astype(np.float64) * 10, np.full(n_tracklets, 10), offsets,
                         [f"v{i:06d}" for i in range(n_videos)])


def all_pairs_links(table: IdentityTable, cfg: LinkConfig) -> tuple[set, float]:
    t0 = time.perf_counter()
    rel = linking_relations(table.centroids, table.video_pos, cfg.k, cfg.threshold)
    return {(int(a), int(b)) for a, b, _ in rel}, time.perf_counter() - t0


def sliding_links(table: IdentityTable, cfg: CurateConfig) -> tuple[list[np.ndarray], float]:
    from cion_ray.runtime.curate import Keys, _link
    t0 = time.perf_counter()
    names = {v: v for v in table.video_ids}  # each synthetic video is its own content
    rels, _, _ = _link(cfg, table, Keys(names, names, names, names), log=lambda m: None)
    return rels, time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10000,100000,500000,1000000")
    p.add_argument("--compare-size", type=int, default=100_000)
    p.add_argument("--window", type=int, default=8)
    p.add_argument("--stride", type=int, default=4)
    args = p.parse_args()
    from cion_ray.runtime.session import ensure_ray
    ensure_ray(num_cpus=2)
    link = LinkConfig(window=args.window, stride=args.stride, k=2, threshold=0.15, drift=0.15, min_images=1)

    with tempfile.TemporaryDirectory() as d:  # warm-up: start the worker processes
        sliding_links(make_corpus(4000, seed=1), CurateConfig(out=d, link=link))

    # 1. sliding ranges vs all pairs
    table = make_corpus(args.compare_size)
    with tempfile.TemporaryDirectory() as d:
        rels, t_slide = sliding_links(table, CurateConfig(out=d, link=link))
    ours = {(int(a), int(b)) for r in rels for a, b, _ in r}
    full, t_all = all_pairs_links(table, link)
    gap = args.window - args.stride
    in_window = {(a, b) for a, b in full if abs(int(table.video_pos[a]) - int(table.video_pos[b])) <= gap}
    recovered = len(in_window & ours) / max(1, len(in_window))
    print(f"{args.compare_size} tracklets: sliding {t_slide:.1f}s, all pairs {t_all:.1f}s, "
          f"recovered {recovered:.4f} of {len(in_window)} in-window links", flush=True)

    # 2. scaling, end to end, and the reducer's memory
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        table = make_corpus(n)
        with tempfile.TemporaryDirectory() as d:
            rels, t_link = sliding_links(table, CurateConfig(out=d, link=link))
        tracemalloc.start()
        t0 = time.perf_counter()
        labels, stats, _ = reduce_identities(table, rels, link)
        t_reduce = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        rows.append((n, len(table.video_ids), t_link, t_reduce, peak, stats.relations, int(labels.max()) + 1))
        print(f"{n} tracklets: ranges {t_link:.1f}s, reducer {t_reduce:.1f}s, peak {peak / 2**20:.0f} MiB", flush=True)

    table_md = "| tracklets | videos | ranges (s) | reducer (s) | total (s) | reducer peak (MiB) | relations | identities |\n"
    table_md += "|---|---|---|---|---|---|---|---|\n"
    for n, v, tl, tr, pk, nr, ni in rows:
        table_md += f"| {n} | {v} | {tl:.1f} | {tr:.1f} | {tl + tr:.1f} | {pk / 2**20:.0f} | {nr} | {ni} |\n"
    growth = ""
    for (n0, _, a0, b0, *_), (n1, _, a1, b1, *_) in zip(rows, rows[1:]):
        factor = ((a1 + b1) / (a0 + b0)) ** (np.log(2) / np.log(n1 / n0))
        growth += f"- {n0} -> {n1}: x{(a1 + b1) / (a0 + b0):.2f} time, x{factor:.2f} per doubling\n"
    body = (f"Corpus: clustered unit vectors, D = {DIM}, {PER_VIDEO} tracklets per video, each person in 2-4 "
            f"videos mostly within 3 of each other. Linking: W = {args.window}, S = {args.stride}, mutual "
            f"k = {link.k}, threshold {link.threshold}; ranges as Ray tasks on a local 2-CPU Ray.\n\n"
            f"**Sliding ranges vs all pairs ({args.compare_size} tracklets, {args.compare_size // PER_VIDEO} videos):** "
            f"sliding {t_slide:.1f} s, all-pairs faiss kNN {t_all:.1f} s: speed ratio x{t_all / t_slide:.1f} "
            f"(target >= 10); in-window links recovered {recovered:.4f} of {len(in_window)} (target >= 0.99).\n\n"
            f"**Scaling, end to end (ranges + reducer):**\n\n{table_md}\n{growth}\n"
            f"Targets: <= 2.2x per doubling; 1M end to end < 600 s.\n")
    append_results("bench_link: cross-video linking", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
