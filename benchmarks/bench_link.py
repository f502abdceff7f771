"""Cross-video linking benchmark on generated clustered features (D = 256).

--corpus realistic (the default; link_corpus.py): noise calibrated to the descriptor quality of
the synthetic world (nearest other-video identity the same person about 0.92 of the time),
look-alike people that tempt chaining, ground truth. Per size: linking time (ranges as Ray
tasks + reducer), pairwise F1 / precision / recall over samples against the ground truth (also
for union-find without the guard, and for the tracker-only baseline), and the anti-chaining
guard's time in all and on the largest component it rebuilt. Curate's link settings.

    python benchmarks/bench_link.py --tracklets 100000,1000000

--corpus separable (the first benchmark): people are random unit vectors, noise 0.012, each in
2-4 videos mostly near each other in the order. Measured:
1. sliding-range linking (the Ray tasks of the curate stage) vs all-pairs exact kNN (faiss) on
   the same centroids, 100k tracklets over 1k videos: speed ratio, and the fraction of the
   all-pairs links between videos at most W - S apart that the ranges recover;
2. end-to-end linking time (ranges as Ray tasks + union-find reducer) at growing corpus sizes,
   and the reducer's peak memory (tracemalloc).

    python benchmarks/bench_link.py --corpus separable --sizes 10000,100000,500000,1000000
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
from cion_ray.curation.core import IdentityTable, reduce_identities, union_of_relations  # noqa: E402
from cion_ray.evaluate.clustering import pairwise_prf  # noqa: E402
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


def sample_prf(person: np.ndarray, labels: np.ndarray, counts: np.ndarray) -> dict[str, float]:
    """Pairwise precision / recall / F1 over samples (each identity weighs its sample count)."""
    return pairwise_prf(np.repeat(person, counts), np.repeat(labels, counts))


def tight_component(m: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The guard's worst case: m views of one person (cosine ~0.0002 from their centroid), each in
    its own video but the last in the first's video (so the whole component is rebuilt), linked
    to the next and to 2m random others. -> (relations (r, 3), videos (m,), sums (m, D))."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(DIM)
    x = x / np.linalg.norm(x) + 0.02 * rng.standard_normal((m, DIM)) / np.sqrt(DIM)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    videos = np.arange(m)
    videos[-1] = 0
    pairs = np.concatenate([np.stack([np.arange(m - 1), np.arange(1, m)], 1), rng.integers(0, m, (2 * m, 2))])
    pairs = pairs[pairs[:, 0] < pairs[:, 1]]
    rel = np.stack([pairs[:, 0], pairs[:, 1], 1.0 - (x[pairs[:, 0]] * x[pairs[:, 1]]).sum(1)], 1)
    return rel, videos, x * 10


def guard_stress(sizes: str, drift: float) -> str:
    from cion_ray.linking.reduce import reduce_relations
    from cion_ray.linking.union_find import UnionFind
    md = "| component size | relations | guard on it (s) | unions refused |\n|---|---|---|---|\n"
    for m in [int(x) for x in sizes.split(",")]:
        rel, videos, sums = tight_component(m)
        _, st = reduce_relations(UnionFind(m).union_many(rel[:, :2]), rel, videos, sums, drift)
        print(f"guard stress: a tight component of {m}: {st.largest_rebuild_seconds:.2f} s", flush=True)
        md += f"| {m} | {len(rel)} | {st.largest_rebuild_seconds:.2f} | {st.unions_refused} |\n"
    return md


def realistic(args) -> int:
    from link_corpus import PER_VIDEO as PV, SPREAD, calibrate_sigma, make_realistic, nearest_other_video_precision
    base = LinkConfig()
    ratio = base.global_ratio if args.global_ratio is None else args.global_ratio
    link = LinkConfig(window=args.window or base.window, stride=args.stride or base.stride, min_images=1,
                      global_ratio=ratio)
    with tempfile.TemporaryDirectory() as d:  # warm-up: start the worker processes
        sliding_links(make_realistic(4000, 0.2, seed=args.seed + 1).table, CurateConfig(out=d, link=link))
    rows = []
    for n in [int(s) for s in args.tracklets.split(",")]:
        t0 = time.perf_counter()
        sigma = calibrate_sigma(args.precision, args.seed, args.lookalike, link.window, link.stride, n)
        print(f"{n} tracklets: noise scale {sigma:.4f} for precision {args.precision} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        corpus = make_realistic(n, sigma, seed=args.seed, lookalike=args.lookalike)
        table = corpus.table
        prec = nearest_other_video_precision(table.centroids, table.video_pos, corpus.person, link.window, link.stride)
        with tempfile.TemporaryDirectory() as d:
            rels, t_link = sliding_links(table, CurateConfig(out=d, link=link))
        t0 = time.perf_counter()
        labels, st, _ = reduce_identities(table, rels, link)
        t_reduce = time.perf_counter() - t0
        f = sample_prf(corpus.person, labels, table.counts)
        loose = sample_prf(corpus.person, union_of_relations(n, rels).labels(), table.counts)
        alone = sample_prf(corpus.person, np.arange(n), table.counts)
        # the last relations are the global pass's (none when it is off)
        in_ranges = sample_prf(corpus.person, reduce_identities(table, rels[:-1], link)[0], table.counts)
        rows.append((n, len(table.video_ids), sigma, prec, t_link, t_reduce, f, loose, alone, st, in_ranges,
                     len(rels[-1])))
        print(f"{n} tracklets: nearest-other-video precision {prec:.3f}; ranges {t_link:.1f} s, reducer "
              f"{t_reduce:.1f} s (guard {st.guard_seconds:.2f} s, {st.components_split} components rebuilt, largest "
              f"{st.largest_rebuilt} in {st.largest_rebuild_seconds:.3f} s; largest component {st.largest_component}); "
              f"F1 {f['f1']:.4f} (P {f['precision']:.4f} R {f['recall']:.4f}), without the guard "
              f"{loose['f1']:.4f}, tracker only {alone['f1']:.4f}, ranges only {in_ranges['f1']:.4f} (global pass: "
              f"{len(rels[-1])} relations)", flush=True)
    md = ("| tracklets | videos | noise | NN precision | ranges + global pass (s) | reducer (s) | total (s) | F1 | P | "
          "R | F1 ranges only (P / R) | global pass relations | F1 no guard (P / R) | F1 tracker only | guard (s) | "
          "components rebuilt | largest rebuilt | guard on it (s) | largest component |\n" + "|---" * 19 + "|\n")
    for n, v, sig, prec, tl, tr, f, lo, al, st, rg, ng in rows:
        md += (f"| {n} | {v} | {sig:.4f} | {prec:.3f} | {tl:.1f} | {tr:.1f} | {tl + tr:.1f} | {f['f1']:.4f} | "
               f"{f['precision']:.4f} | {f['recall']:.4f} | {rg['f1']:.4f} ({rg['precision']:.3f} / "
               f"{rg['recall']:.3f}) | {ng} | {lo['f1']:.4f} ({lo['precision']:.3f} / "
               f"{lo['recall']:.3f}) | {al['f1']:.4f} | {st.guard_seconds:.2f} | {st.components_split} | "
               f"{st.largest_rebuilt} | {st.largest_rebuild_seconds:.3f} | {st.largest_component} |\n")
    body = (f"Corpus (benchmarks/link_corpus.py, seed {args.seed}): D = 256, {PV} tracklets per video, people "
            f"spread {SPREAD} around a common direction, look-alike groups (30% of people in groups of 2-5, 5% "
            f"in uniform groups of 1% of people spread over the whole order) at {args.lookalike} of the spread, "
            f"each person in 2-5 videos (10% as two fragments in one video), 5-60 samples per identity; noise "
            f"scale calibrated per size (noise column) to nearest-other-video precision {args.precision} within a "
            f"range on a corpus of another seed (measured on the benchmark's corpus: NN precision column). Linking: curate's defaults W = {link.window}, "
            f"S = {link.stride}, k = {link.k}, threshold {link.threshold}, drift {link.drift}, global pass ratio "
            f"{link.global_ratio} (0: off), min_images 1; "
            f"ranges as Ray tasks on a local 2-CPU Ray. F1 / P / R: pairwise over samples against the ground "
            f"truth. Guard: time rebuilding the components that break a rule; 'guard on it': its time on the "
            f"largest component it rebuilt; 'largest component': before the guard.\n\n{md}")
    if args.stress:
        body += (f"\n**The guard's worst case** (`tight_component`: one person's views, D = {DIM}, one cannot-link "
                 f"violation, so the whole component is rebuilt; drift {link.drift}):\n\n"
                 + guard_stress(args.stress, link.drift))
    append_results("bench_link: linking quality and the anti-chaining guard on a realistic corpus", body)
    return 0


def separable(args) -> int:
    link = LinkConfig(window=args.window or 8, stride=args.stride or 4, k=2, threshold=0.15, drift=0.15, min_images=1,
                      global_ratio=LinkConfig.global_ratio if args.global_ratio is None else args.global_ratio)

    with tempfile.TemporaryDirectory() as d:  # warm-up: start the worker processes
        sliding_links(make_corpus(4000, seed=1), CurateConfig(out=d, link=link))

    # 1. sliding ranges vs all pairs
    table = make_corpus(args.compare_size)
    with tempfile.TemporaryDirectory() as d:
        rels, t_slide = sliding_links(table, CurateConfig(out=d, link=link))
    ours = {(int(a), int(b)) for r in rels for a, b, _ in r}
    full, t_all = all_pairs_links(table, link)
    gap = link.window - link.stride
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
            f"videos mostly within 3 of each other. Linking: W = {link.window}, S = {link.stride}, mutual "
            f"k = {link.k}, threshold {link.threshold}, global pass ratio {link.global_ratio} (0: off; when on, its "
            f"time is in the ranges column); ranges as Ray tasks on a local 2-CPU Ray.\n\n"
            f"**Sliding ranges vs all pairs ({args.compare_size} tracklets, {args.compare_size // PER_VIDEO} videos):** "
            f"sliding {t_slide:.1f} s, all-pairs faiss kNN {t_all:.1f} s: speed ratio x{t_all / t_slide:.1f} "
            f"(target >= 10); in-window links recovered {recovered:.4f} of {len(in_window)} (target >= 0.99).\n\n"
            f"**Scaling, end to end (ranges + reducer):**\n\n{table_md}\n{growth}\n"
            f"Targets: <= 2.2x per doubling; 1M end to end < 600 s.\n")
    append_results("bench_link: cross-video linking", body)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", choices=["realistic", "separable"], default="realistic")
    p.add_argument("--tracklets", default="100000", help="realistic: corpus sizes, comma-separated (up to 1M)")
    p.add_argument("--precision", type=float, default=0.92, help="realistic: nearest-other-video precision to match")
    p.add_argument("--lookalike", type=float, default=0.3, help="realistic: look-alikes' distance to their group "
                   "centre, as a fraction of the spread between people")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stress", default="", help="realistic: also time the guard on tight components of these sizes")
    p.add_argument("--sizes", default="10000,100000,500000,1000000", help="separable: corpus sizes")
    p.add_argument("--compare-size", type=int, default=100_000, help="separable: sliding vs all pairs")
    p.add_argument("--window", type=int, default=None, help="default: curate's (realistic), 8 (separable)")
    p.add_argument("--stride", type=int, default=None, help="default: curate's (realistic), 4 (separable)")
    p.add_argument("--global-ratio", type=float, default=None, help="the global pass's ratio (0: off); default: curate's")
    args = p.parse_args()
    from cion_ray.runtime.session import ensure_ray
    ensure_ray(num_cpus=2)
    return realistic(args) if args.corpus == "realistic" else separable(args)


if __name__ == "__main__":
    sys.exit(main())
