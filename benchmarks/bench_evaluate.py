"""Evaluation benchmark: time and peak memory of ranking and k-reciprocal re-ranking on an
MSMT17-sized problem (11,659 queries x 82,161 gallery images, 3,060 identities, 15 cameras) of
generated clustered features, dense vs faiss engines.

Each run is its own process: `peak` is its peak RSS minus its RSS once the features exist, i.e.
the memory evaluation itself needs. The published re-ranking code (Zhong et al.; torchreid and
fast-reid copy it) holds at least three N x N matrices (distances, V, the full ranking), which is
computed here from N rather than run.

    python benchmarks/bench_evaluate.py --queries 11659 --gallery 82161 --dim 256
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_results  # noqa: E402

IDENTITIES, CAMERAS = 3060, 15


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_problem(nq: int, ng: int, dim: int, noise: float, seed: int = 0):
    """Clustered L2-normalised features: identity centres plus noise, a camera offset per camera."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((IDENTITIES, dim)).astype(np.float32)
    cam_shift = 0.5 * rng.standard_normal((CAMERAS + 1, dim)).astype(np.float32)

    def split(n):
        pids = rng.integers(1, IDENTITIES, n)
        cams = rng.integers(1, CAMERAS + 1, n)
        f = centres[pids] + cam_shift[cams] + noise * rng.standard_normal((n, dim)).astype(np.float32)
        return f / np.linalg.norm(f, axis=1, keepdims=True), pids, cams

    (qf, qp, qc), (gf, gp, gc) = split(nq), split(ng)
    return qf, gf, qp, gp, qc, gc


def one(args) -> dict:
    """One measured run in this process."""
    from cion_ray.evaluate.search import RankingOptions, evaluate_features

    qf, gf, qp, gp, qc, gc = make_problem(args.queries, args.gallery, args.dim, args.noise)
    base = rss_mib()
    opts = RankingOptions(distance="cosine", rerank=args.rerank, backend=args.backend, memory_mb=args.memory_mb)
    t0 = time.perf_counter()
    r = evaluate_features(qf, gf, qp, gp, qc, gc, opts)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_mib": peak - base, "features_mib": base, "mAP": r.mAP, "rank1": r.rank(1),
            "mINP": r.mINP, "queries": r.queries}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--queries", type=int, default=11_659)
    p.add_argument("--gallery", type=int, default=82_161)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--noise", type=float, default=1.8, help="feature noise around each identity centre")
    p.add_argument("--memory-mb", type=float, default=512)
    p.add_argument("--runs", default="dense,faiss,dense+rerank,faiss+rerank")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--backend", default="dense", help=argparse.SUPPRESS)
    p.add_argument("--rerank", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-append", action="store_true", help="print, do not append to RESULTS.md")
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args)))
        return 0
    rows = []
    for run in args.runs.split(","):
        backend, _, rr = run.partition("+")
        cmd = [sys.executable, __file__, "--one", "--queries", str(args.queries), "--gallery", str(args.gallery),
               "--dim", str(args.dim), "--noise", str(args.noise), "--memory-mb", str(args.memory_mb),
               "--backend", backend] + (["--rerank"] if rr else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        m = json.loads(out.stdout.strip().splitlines()[-1])
        print(run, m, flush=True)
        rows.append((run, m))
    n = args.queries + args.gallery
    body = [f"Problem: {args.queries} queries x {args.gallery} gallery images, {IDENTITIES} identities, {CAMERAS} "
            f"cameras, D = {args.dim} float32, noise {args.noise:g} (RSS once the features exist: "
            f"{rows[0][1]['features_mib']:.0f} MiB); cosine distance; memory budget per chunked step {args.memory_mb:g} MiB. `peak`: peak RSS "
            "of the run minus its RSS once the features exist.", "",
            "| run | seconds | peak MiB | mAP | rank-1 | mINP |", "|---|---|---|---|---|---|"]
    for run, m in rows:
        body.append(f"| {run} | {m['seconds']:.1f} | {m['peak_mib']:.0f} | {m['mAP']:.4f} | {m['rank1']:.4f} | "
                    f"{m['mINP']:.4f} |")
    qg = args.queries * args.gallery * 4 / 2**30
    body += ["", f"For comparison, not run: the whole query x gallery matrix is {qg:.1f} GiB in float32 and its "
             f"argsort {2 * qg:.1f} GiB (int64); the published re-ranking's N x N matrices (N = {n}) take "
             f"{n * n * 4 / 2**30:.1f} GiB each in float32, at least three of them "
             f"({3 * n * n * 4 / 2**30:.1f} GiB)."]
    text = "\n".join(body)
    if args.no_append:
        print(text)
    else:
        append_results("bench_evaluate: ranking and re-ranking at MSMT17 size", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
