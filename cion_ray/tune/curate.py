"""`cion-ray tune curate`: a Ray Tune search over the curation thresholds, scored by pairwise F1
against ground truth.

  crops --(the curate runtime's embedding stage, cached in <out>/embeddings)--> embeddings   [once]
  embeddings + ground truth --(driver)--> SearchData, put in the object store once
  each trial: L1/L2 with its denoise.* settings (cached per trial process, keyed by them)
              -> L3 with its link.* settings -> pairwise P / R / F1 / NMI of the final identities
  the base config as `cion-ray curate` runs it (calibrated) -> the baseline, on the driver

Trials run with calibration off: they set the thresholds themselves. The base config's own
thresholds (and the calibrated ones) are the first trials (`points_to_evaluate`), so the best
found is never below the default's fixed-threshold F1.

Several worlds can be searched at once (benchmarks/tune_curation.py): each trial is scored by the
worst of them. The scoring (`prepare_levels`, `link_levels`, `score`, `evaluate`) is plain numpy
over `curation.core`, as are the trial's body (`trial_scores`) and the outputs; loading the embeddings
and running the search on Ray Tune live in cion_ray.runtime.tune_curate.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from cion_ray.config import from_dict
from cion_ray.curation.config import CurateConfig, DenoiseConfig, LinkConfig
from cion_ray.curation.core import (CurationResult, VideoCrops, VideoLevels, denoise_video_levels,
                                    identity_table, link_table, reduce_identities)
from cion_ray.errors import CionError, ConfigError
from cion_ray.evaluate.clustering import assignment_quality, pairwise_prf
from cion_ray.tune.space import SearchSpec, apply_params, leaf_keys

METRICS = ("f1", "precision", "recall", "nmi", "l2_f1", "l1_f1")
DEFAULT_METRIC = "f1"
# what a trial cannot change: the data, the embeddings (computed once), calibration (off in trials)
# and the resources of the embedding pool
FIXED_PREFIXES = ("crops", "out", "gt", "export_market", "export.", "embed.", "pool.", "calibrate.", "link.use_gpu")


def fixed_keys() -> tuple[str, ...]:
    return tuple(k for k in leaf_keys(CurateConfig) if k.startswith(FIXED_PREFIXES))



@dataclass
class SearchData:
    """What every trial curates and scores: the embedded crops of each video (natural order) and,
    per video, the ground-truth identity of each sample L1 sees (invalid embeddings removed,
    `curation.gt`), or None for a video without ground truth (curated, not scored)."""

    videos: list[VideoCrops]
    gt: list[np.ndarray | None]

    @property
    def scored(self) -> int:
        return sum(g is not None for g in self.gt)


# -- pure scoring ------------------------------------------------------------------------------

def prepare_levels(data: SearchData, denoise: DenoiseConfig) -> list[VideoLevels]:
    """L1 + L2 of every video (the part of a trial that only the denoise.* settings change)."""
    return [denoise_video_levels(v, denoise) for v in data.videos]


def link_levels(levels: list[VideoLevels], link: LinkConfig) -> CurationResult:
    """L3 over the L1/L2 results (`curation.core.curate_local`'s second half)."""
    table = identity_table(levels)
    relations = link_table(table, link)
    identity_of, stats, small = reduce_identities(table, relations, link)
    return CurationResult(levels, table, identity_of, relations, stats, small)


def score(data: SearchData, result: CurationResult) -> dict[str, float]:
    """Pairwise P / R / F1 and NMI of the final identities against the ground truth, over the
    samples L3 keeps in the videos with ground truth (as `cion-ray curate --gt` reports its L3 row);
    l1_f1 / l2_f1: the same for the L1 tracklets and L2 video identities (over what each keeps);
    samples / identities: how much L3 keeps."""
    finals = result.sample_labels()
    gts, lab3, lab2, lab1 = [], [], [], []
    offset = 0
    for lv, g, final in zip(result.levels, data.gt, finals):
        if g is None:
            continue
        if len(g) != len(final):
            raise CionError(f"video {lv.video_id}: {len(g)} ground-truth labels for {len(final)} samples")
        gts.append(g)
        lab3.append(final)
        # per-video labels made corpus-unique by an offset (-1 stays: dropped)
        big = int(max(lv.l1.max(initial=-1), lv.l2.max(initial=-1))) + 1
        lab2.append(np.where(lv.l2 >= 0, lv.l2 + offset, -1))
        lab1.append(np.where(lv.l1 >= 0, lv.l1 + offset, -1))
        offset += big
    if not gts:
        raise CionError("no video with ground truth to score")
    gt = np.concatenate(gts)
    out: dict[str, float] = {}
    lab = np.concatenate(lab3)
    keep = lab >= 0
    if keep.any():
        q = assignment_quality(gt[keep], lab[keep])
        out.update({k: float(q[k]) for k in ("f1", "precision", "recall", "nmi")})
    else:  # nothing kept: nothing right
        out.update({"f1": 0.0, "precision": 0.0, "recall": 0.0, "nmi": 0.0})
    for name, parts in (("l2_f1", lab2), ("l1_f1", lab1)):
        lab = np.concatenate(parts)
        keep = lab >= 0
        out[name] = float(pairwise_prf(gt[keep], lab[keep])["f1"]) if keep.any() else 0.0
    kept = int((np.concatenate(lab3) >= 0).sum())
    out["samples"], out["kept"] = kept, kept / max(1, len(gt))
    out["identities"] = int(result.identity_of.max(initial=-1) + 1)
    return out


def evaluate(data: SearchData, denoise: DenoiseConfig, link: LinkConfig,
             levels: list[VideoLevels] | None = None) -> dict[str, float]:
    """One configuration's scores (`levels`: its L1/L2 results when already computed)."""
    levels = prepare_levels(data, denoise) if levels is None else levels
    return score(data, link_levels(levels, link))


def worst(scores: list[dict]) -> dict:
    """Several worlds' scores as one: each metric the worst (lowest: every metric is better higher)
    of them, the counts summed, and each world's metric as `<metric>@<i>`."""
    if len(scores) == 1:
        return scores[0]
    out = {k: min(s[k] for s in scores) for k in (*METRICS, "kept")}
    out.update({k: sum(s[k] for s in scores) for k in ("samples", "identities")})
    out.update({f"{k}@{i}": s[k] for i, s in enumerate(scores) for k in ("f1", "precision", "recall")})
    return out


def evaluate_worlds(worlds: list[SearchData], denoise: DenoiseConfig, link: LinkConfig) -> dict[str, float]:
    return worst([evaluate(d, denoise, link) for d in worlds])


def calibrated_default(data: SearchData, cfg: CurateConfig) -> tuple[dict[str, float], dict[str, float], object]:
    """The base config as `cion-ray curate` runs it: thresholds calibrated on the data when
    cfg.calibrate.enabled, else as given. -> (scores, the thresholds used, the Calibration)."""
    from cion_ray.curation.calibrate import calibrate, corpus_distances, fixed_thresholds

    d = corpus_distances(data.videos, cfg.denoise.min_len, cfg.calibrate.max_per_video)
    cal = calibrate(d, cfg.calibrate, cfg.denoise, cfg.link)
    dn, lk = cal.apply(cfg.denoise, cfg.link)
    return evaluate(data, dn, lk), fixed_thresholds(dn, lk), cal


THRESHOLD_KEYS = {"radius": "denoise.radius", "merge": "denoise.merge", "margin": "denoise.margin",
                  "threshold": "link.threshold", "drift": "link.drift"}


def start_points(spec: SearchSpec, base: CurateConfig, calibrated: list[dict[str, float]]) -> list[dict]:
    """The trials every search runs first: the base config's values of the searched keys, and
    (where calibration moved them) each world's calibrated thresholds, the other keys at the base."""
    flat = {k: _get(base, k) for k in spec.keys}
    points = [flat]
    for c in calibrated:
        point = {**flat, **{THRESHOLD_KEYS[k]: v for k, v in c.items() if THRESHOLD_KEYS[k] in flat}}
        if point not in points:
            points.append(point)
    return points


def _get(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


# -- the trial (runs in a Tune actor: cion_ray.runtime.tune_curate) ------------------------------

# L1/L2 results by (search, denoise settings), per trial process: with `reuse_actors` a trial that
# changes only link.* settings skips denoising. A few entries (each holds every video's labels).
_LEVELS: OrderedDict = OrderedDict()
_LEVELS_MAX = 32


def cached_levels(search: str, data: SearchData, denoise: DenoiseConfig) -> tuple[list[VideoLevels], bool]:
    key = (search, tuple(sorted(asdict(denoise).items())))  # search: names the search and the world
    if key in _LEVELS:
        _LEVELS.move_to_end(key)
        return _LEVELS[key], True
    levels = prepare_levels(data, denoise)
    _LEVELS[key] = levels
    while len(_LEVELS) > _LEVELS_MAX:
        _LEVELS.popitem(last=False)
    return levels, False


def trial_scores(params: dict, base: dict, worlds: list[SearchData], search: str) -> dict:
    """One trial's report: scores (the worst over `worlds`), whether L1/L2 came from the cache, and
    the seconds each part took."""
    try:
        cfg = apply_params(from_dict(CurateConfig, base), params, "trial")
    except ConfigError as e:  # a combination the stage refuses (checked ends cannot catch every mix)
        return {m: float("nan") for m in METRICS} | {"error": str(e), "levels_cached": False,
                                                      "levels_s": 0.0, "link_s": 0.0}
    scores, hit, levels_s, link_s = [], True, 0.0, 0.0
    for i, data in enumerate(worlds):
        t1 = time.perf_counter()
        levels, cached = cached_levels(f"{search}/{i}", data, cfg.denoise)
        t2 = time.perf_counter()
        scores.append(score(data, link_levels(levels, cfg.link)))
        hit, levels_s, link_s = hit and cached, levels_s + t2 - t1, link_s + time.perf_counter() - t2
    return {**worst(scores), "error": "", "levels_cached": hit, "levels_s": levels_s, "link_s": link_s}


# -- the search's result --------------------------------------------------------------------------

@dataclass
class SearchResult:
    rows: list[dict]  # per trial: trial, params, scores (in trial order)
    best: dict  # the best row
    default_fixed: dict  # the row of the base thresholds (calibration off)
    default_calibrated: dict  # the base config as `cion-ray curate` runs it: scores + thresholds
    calibration_applied: bool
    metric: str
    mode: str
    seconds: float
    reuse: dict = field(default_factory=dict)  # L1/L2 cache hits and seconds per part


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# -- outputs -------------------------------------------------------------------------------------

DROP = ("crops", "out", "gt")  # the command line gives them


def best_yaml(result: SearchResult, base: CurateConfig) -> str:
    """A curate config with the best thresholds and calibration off (`cion-ray curate --config`)."""
    from cion_ray.tune.space import params_yaml

    b = result.best
    header = (f"# cion-ray tune curate: the best of {len(result.rows)} trials, {result.metric} {b[result.metric]:.4f} "
              f"(default thresholds {result.default_fixed[result.metric]:.4f}, calibrated default "
              f"{result.default_calibrated[result.metric]:.4f}).\n# Thresholds as found, calibration off: "
              "use with `cion-ray curate --config best.yaml --crops ... --out ...`")
    fixed = replace(base, calibrate=replace(base.calibrate, enabled=False))
    return params_yaml(fixed, b["params"], header=header, drop=DROP)


def results_table(result: SearchResult, keys: list[str]) -> tuple[str, str]:
    """(CSV, Markdown) of every trial, best first."""
    import csv
    import io

    per_world = sorted({k for r in result.rows for k in r if "@" in k}, key=lambda k: (k.split("@")[1], k))
    cols = ["trial", *keys, "f1", "precision", "recall", "nmi", "l2_f1", "l1_f1", "samples", "kept", "identities",
            *per_world, "levels_cached", "error"]
    order = _ranked(result)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in order:
        w.writerow([_cell(r, c) for c in cols])
    md_cols = ["trial", *keys, "F1", "P", "R", "NMI", "L2 F1", "samples", "kept", "identities"]
    src = ["trial", *keys, "f1", "precision", "recall", "nmi", "l2_f1", "samples", "kept", "identities"]
    lines = [f"# cion-ray tune curate: {len(result.rows)} trials, {result.metric} ({result.mode})", "",
             f"- default config, calibrated (as `cion-ray curate` runs it): {result.metric} "
             f"{result.default_calibrated[result.metric]:.4f}"
             + ("" if result.calibration_applied else " (calibration off or not possible: thresholds as given)"),
             f"- default thresholds, calibration off: {result.metric} {result.default_fixed[result.metric]:.4f}",
             f"- best: {result.metric} {result.best[result.metric]:.4f} (trial {result.best['trial']})", "",
             "| " + " | ".join(md_cols) + " |", "|" + "---|" * len(md_cols)]
    for r in order:
        mark = " (default)" if r is result.default_fixed else ""
        lines.append(f"| {r['trial']}{mark} | " + " | ".join(_cell(r, c) for c in src[1:]) + " |")
    return buf.getvalue(), "\n".join(lines) + "\n"


def _ranked(result: SearchResult) -> list[dict]:
    sign = 1 if result.mode == "max" else -1

    def key(r):
        v = r.get(result.metric)
        return (v is None or v != v, -sign * (v if v is not None and v == v else 0), r["trial"])
    return sorted(result.rows, key=key)


def _cell(r: dict, c: str) -> str:
    v = r["params"][c] if c in r["params"] else r.get(c)
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if v != v else f"{v:.4f}" if c in METRICS or c == "kept" else f"{v:.4g}"
    return str(v)


def search_png(result: SearchResult, keys: list[str]) -> bytes:
    """Left: every trial's score, sorted, with the two defaults as lines; right: the score against
    the searched key that moves it most (the largest rank correlation with it)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = result.metric
    rows = [r for r in result.rows if r.get(m) is not None and r[m] == r[m]]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), constrained_layout=True)
    ax = axes[0]
    vals = sorted((r[m] for r in rows), reverse=result.mode == "max")
    ax.plot(range(1, len(vals) + 1), vals, "o-", ms=3, color="C0", label="trials, sorted")
    ax.axhline(result.default_fixed[m], color="C1", ls="--", label=f"default thresholds {result.default_fixed[m]:.3f}")
    ax.axhline(result.default_calibrated[m], color="C2", ls=":",
               label=f"default, calibrated {result.default_calibrated[m]:.3f}")
    ax.set(title=f"{m} of each trial", xlabel="trial (sorted)", ylabel=m)
    ax.legend(fontsize=8)
    key = influential_key(rows, keys, m)
    ax = axes[1]
    if key:
        x = [float(r["params"][key]) for r in rows]
        ax.scatter(x, [r[m] for r in rows], s=14, color="C0", label="trials")
        b = result.best
        ax.scatter([float(b["params"][key])], [b[m]], s=60, marker="*", color="C3", label="best", zorder=3)
        d = result.default_fixed
        ax.scatter([float(d["params"][key])], [d[m]], s=40, marker="s", color="C1", label="default", zorder=3)
        ax.set(title=f"{m} against {key} (the key that moves it most)", xlabel=key, ylabel=m)
        ax.legend(fontsize=8)
    else:
        ax.set_axis_off()
    for a in axes:
        a.title.set_fontsize(10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def influential_key(rows: list[dict], keys: list[str], metric: str) -> str:
    """The searched key whose values correlate most (Spearman, absolute) with the metric."""
    from scipy.stats import spearmanr

    best, best_r = "", -1.0
    y = np.array([r[metric] for r in rows], float)
    for k in keys:
        try:
            x = np.array([float(r["params"][k]) for r in rows])
        except (TypeError, ValueError):
            continue
        if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
            continue
        rho = abs(float(spearmanr(x, y).statistic))
        if rho == rho and rho > best_r:
            best, best_r = k, rho
    return best or next((k for k in keys if _numeric(rows, k)), "")


def _numeric(rows: list[dict], k: str) -> bool:
    return bool(rows) and all(isinstance(r["params"][k], (int, float)) for r in rows)


def write_outputs(result: SearchResult, spec: SearchSpec, base: CurateConfig, out: str) -> dict[str, str]:
    """results.csv, results.md, best.yaml, search.png and summary.json in `out`. -> their URIs."""
    import json

    from cion_ray.io import fs

    csv_text, md = results_table(result, spec.keys)
    files = {"results.csv": csv_text.encode(), "results.md": md.encode(),
             "best.yaml": best_yaml(result, base).encode(), "search.png": search_png(result, spec.keys),
             "summary.json": json.dumps(summary(result, spec), indent=1, default=float).encode()}
    uris = {}
    for name, data in files.items():
        uris[name] = fs.join(out, name)
        fs.write_bytes_atomic(uris[name], data)
    return uris


def summary(result: SearchResult, spec: SearchSpec) -> dict:
    m = result.metric
    return {"metric": m, "mode": result.mode, "trials": len(result.rows), "seconds": result.seconds,
            "default_calibrated": {k: result.default_calibrated.get(k) for k in (*METRICS, "samples", "identities",
                                                                                "thresholds")},
            "calibration_applied": result.calibration_applied,
            "default_fixed": {k: result.default_fixed.get(k) for k in (*METRICS, "samples", "identities", "params")},
            "best": {k: result.best.get(k) for k in ("trial", *METRICS, "samples", "identities", "params")},
            "reuse": result.reuse}
