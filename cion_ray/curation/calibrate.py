"""Thresholds calibrated from the data itself.

Curation's thresholds are cosine distances, and every embedder (and every kind of footage) has
its own distance scale. A run has no ground truth, but the method gives two kinds of pairs for
free:

  same person       samples of one tracklet: each sample against its tracklet's centroid
                    (sample level), and the centroids of a tracklet's two halves in time
                    (centroid level);
  different people  tracklets present in the same frame (the cannot-link pairs): each sample
                    against the other tracklet's centroid (sample level), and the two centroids
                    (centroid level).

`video_distances` collects them per video (a bounded, seeded sample); `calibrate` turns the
corpus' distributions into thresholds. The configured thresholds were tuned on worlds whose
distances are in `REFERENCE` (the default world, seeds 0 and 1, hand-crafted descriptor). Three
scales compare a run's data with them:

  s   same-person spread: the median distance of a sample to its tracklet's centroid;
  ds  where samples of other people begin: the 2% quantile of samples' distances to another
      person's centroid;
  dc  where other people's centroids begin: the 1% quantile of centroid distances.

An embedder (or footage) with twice the distances has all three doubled, and gets twice the
thresholds. When they disagree, each threshold follows what it guards against:

  radius                 x min(s, ds)   a sample of another person must still be dropped;
  margin                 x min(s, dc)
  merge, link threshold,
  drift                  x max(min(s, dc), link_floor x s)
                         other people's centroids bound them, but not below a fraction of the
                         same-person scale (where people look alike, linking nobody costs more
                         than the false links it saves).

Thresholds are rounded to 0.001. A corpus with too few pairs of either kind keeps the thresholds
as configured, and the report says so. The rule was chosen on a handful of worlds
(benchmarks/bench_curation.py has them, and where it still falls short).

Adding videos to a curated corpus adds their distances to the pool, so the thresholds may move;
when they do, every video's L1 / L2 and every range is computed again (the embeddings stay
cached), and the result still equals curating everything afresh.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np

from cion_ray.curation.config import CalibrateConfig, DenoiseConfig, LinkConfig
from cion_ray.curation.core import clean_features, curate_local
from cion_ray.denoise.tracklet import normalize
from cion_ray.denoise.video import cannot_link_pairs

KINDS = ("same_sample", "diff_sample", "same_centroid", "diff_centroid")


@dataclass
class Distances:
    """Distances of the four kinds (float32 arrays), from one video or pooled over many."""

    same_sample: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    diff_sample: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    same_centroid: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    diff_centroid: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def to_npz(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in KINDS}

    @classmethod
    def from_npz(cls, d) -> "Distances":
        return cls(**{k: np.asarray(d[k], np.float32) for k in KINDS})


def pool(parts: list[Distances]) -> Distances:
    return Distances(**{k: np.concatenate([getattr(p, k) for p in parts] or [np.zeros(0, np.float32)])
                        .astype(np.float32) for k in KINDS})


def _subsample(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return x if len(x) <= n else x[np.sort(rng.choice(len(x), n, replace=False))]


def video_distances(feats: np.ndarray, tracks: np.ndarray, frames: np.ndarray, min_len: int,
                    max_per_kind: int = 2000, seed: int = 0) -> Distances:
    """The same- and different-person distances of one video. feats: (n, D) L2-normalised with
    finite rows; tracks, frames: (n,). Tracklets shorter than `min_len` take no part (L1 drops
    them). At most `max_per_kind` distances of each kind, sampled with `seed`."""
    out = Distances()
    if len(feats) == 0:
        return out
    # one order whatever order the rows came in (Ray Data's groups do not keep one), so the
    # seeded sample, and with it the thresholds, depend on the data alone
    o = np.lexsort((frames, tracks))
    feats, tracks, frames = feats[o], tracks[o], frames[o]
    ids, tr = np.unique(tracks, return_inverse=True)
    size = np.bincount(tr, minlength=len(ids))
    start = np.concatenate([[0], np.cumsum(size)])  # tracklet i's rows: start[i]:start[i + 1], in time order
    sums = np.add.reduceat(feats.astype(np.float64), start[:-1], axis=0)
    cent = normalize(sums).astype(np.float32)
    long_enough = size >= min_len
    ok = long_enough[tr]
    same_sample = 1.0 - np.einsum("nd,nd->n", feats[ok], cent[tr[ok]])

    # a tracklet's two halves in time: the noise of a centroid of half its length
    halves = []
    for i in np.flatnonzero(size >= 2 * min_len):
        a, b = start[i], start[i + 1]
        h = a + (b - a) // 2
        halves.append(1.0 - float(normalize(feats[a:h].sum(0)) @ normalize(feats[h:b].sum(0))))

    pairs = cannot_link_pairs(tracks, frames)
    diff_sample, diff_centroid = [], []
    if len(pairs):
        pa, pb = np.searchsorted(ids, pairs[:, 0]), np.searchsorted(ids, pairs[:, 1])
        keep = long_enough[pa] & long_enough[pb]
        pa, pb = pa[keep], pb[keep]
        diff_centroid = 1.0 - np.einsum("nd,nd->n", cent[pa], cent[pb])
        for a, b in zip(pa, pb):  # every sample of each against the other's centroid
            diff_sample.append(1.0 - feats[start[a]:start[a + 1]] @ cent[b])
            diff_sample.append(1.0 - feats[start[b]:start[b + 1]] @ cent[a])
    rng = np.random.default_rng(seed)
    f32 = np.float32
    out.same_sample = _subsample(same_sample.astype(f32), max_per_kind, rng)
    out.same_centroid = _subsample(np.asarray(halves, f32), max_per_kind, rng)
    out.diff_centroid = _subsample(np.asarray(diff_centroid, f32), max_per_kind, rng)
    out.diff_sample = _subsample(np.concatenate(diff_sample).astype(f32) if diff_sample else np.zeros(0, f32),
                                 max_per_kind, rng)
    return out


@dataclass
class Calibration:
    """The thresholds chosen, those configured, the statistics they came from, the pair counts, and
    which thresholds were held below the same-person scale by the different-person distances."""

    applied: bool
    thresholds: dict[str, float]
    fixed: dict[str, float]
    counts: dict[str, int]
    stats: dict[str, float]
    bounded: list[str] = field(default_factory=list)
    reason: str = ""

    def to_json(self) -> dict:
        return asdict(self)

    def apply(self, denoise: DenoiseConfig, link: LinkConfig) -> tuple[DenoiseConfig, LinkConfig]:
        if not self.applied:
            return denoise, link
        t = self.thresholds
        return (replace(denoise, radius=t["radius"], merge=t["merge"], margin=t["margin"]),
                replace(link, threshold=t["threshold"], drift=t["drift"]))


def fixed_thresholds(denoise: DenoiseConfig, link: LinkConfig) -> dict[str, float]:
    return {"radius": denoise.radius, "merge": denoise.merge, "margin": denoise.margin,
            "threshold": link.threshold, "drift": link.drift}


# the tuning worlds' statistics (default world, seeds 0 and 1, hand-crafted descriptor: the mean of
# the two; benchmarks/bench_curation.py prints them for any world)
REFERENCE = {"spread": 0.1305, "diff_sample": 0.254, "diff_centroid": 0.157}
DIFF_SAMPLE_QUANTILE = 0.02
DIFF_CENTROID_QUANTILE = 0.01


def scales(d: Distances) -> dict[str, float]:
    """The data's statistics (spread, diff_sample, diff_centroid) and their ratios to REFERENCE
    (s, ds, dc)."""
    st = {"spread": float(np.median(d.same_sample)),
          "diff_sample": float(np.quantile(d.diff_sample, DIFF_SAMPLE_QUANTILE)),
          "diff_centroid": float(np.quantile(d.diff_centroid, DIFF_CENTROID_QUANTILE))}
    st.update({"s": st["spread"] / REFERENCE["spread"], "ds": st["diff_sample"] / REFERENCE["diff_sample"],
               "dc": st["diff_centroid"] / REFERENCE["diff_centroid"]})
    return st


def calibrate(d: Distances, cfg: CalibrateConfig, denoise: DenoiseConfig, link: LinkConfig) -> Calibration:
    """Thresholds from the pooled distances `d` (see the module's docstring)."""
    fixed = fixed_thresholds(denoise, link)
    counts = {k: int(len(getattr(d, k))) for k in KINDS}
    if not cfg.enabled:
        return Calibration(False, fixed, fixed, counts, {}, reason="calibration is off: the thresholds as configured")
    short = [k for k in KINDS if counts[k] < cfg.min_pairs]
    if short:
        return Calibration(False, fixed, fixed, counts, {},
                           reason=f"too few pairs to calibrate ({', '.join(f'{k} {counts[k]}' for k in short)}; "
                                  f"need {cfg.min_pairs} of each): the thresholds as configured")
    st = scales(d)
    s, ds, dc = st["s"], st["ds"], st["dc"]
    link_scale = max(min(s, dc), cfg.link_floor * s)
    factor = {"radius": min(s, ds), "margin": min(s, dc), "merge": link_scale, "threshold": link_scale,
              "drift": link_scale}
    # 0.001 steps: adding a few videos to a corpus seldom moves a threshold, so the per-video
    # L1 / L2 results and the ranges cached under it stay valid
    t = {k: float(np.clip(round(v * factor[k], 3), 1e-3, 2.0)) for k, v in fixed.items()}
    bounded = [k for k in fixed if factor[k] < s - 1e-12]
    return Calibration(True, t, fixed, counts, st, bounded)


def corpus_distances(videos, min_len: int, max_per_video: int = 2000) -> Distances:
    """Pooled distances of several videos (core.VideoCrops; invalid embeddings are left out)."""
    parts = []
    for v in videos:
        v, _ = clean_features(v)
        parts.append(video_distances(v.feats, v.track_id, v.frame, min_len, max_per_video))
    return pool(parts)


def curate_calibrated(videos, denoise: DenoiseConfig, link: LinkConfig, cfg: CalibrateConfig):
    """core.curate_local with the thresholds calibrated first: -> (CurationResult, Calibration,
    Distances). With cfg.enabled False, the thresholds as given."""
    d = corpus_distances(videos, denoise.min_len, cfg.max_per_video)
    cal = calibrate(d, cfg, denoise, link)
    dn, lk = cal.apply(denoise, link)
    return curate_local(videos, dn, lk), cal, d
