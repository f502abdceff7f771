"""Self-calibrated curation thresholds (cion_ray.curation.calibrate): the distances measured from
a run's own data, the thresholds they give, and calibration against a fixed threshold that is
wrong for the embedder's distance scale."""
from __future__ import annotations

import numpy as np
import pytest

from cion_ray.curation.calibrate import (REFERENCE, Distances, calibrate, corpus_distances, curate_calibrated,
                                         pool, video_distances)
from cion_ray.curation.config import CalibrateConfig, CurateConfig, DenoiseConfig, LinkConfig
from cion_ray.curation.core import VideoCrops
from cion_ray.curation.report import calibration_text
from cion_ray.denoise.tracklet import normalize
from cion_ray.errors import ConfigError
from cion_ray.evaluate.clustering import pairwise_prf


def _two_people(rng, n=20, noise=0.05, dim=32):
    """Two tracklets (ids 1 and 2) in the same frames, of two people; tracklet 3 alone later."""
    a, b = normalize(rng.normal(size=dim)), normalize(rng.normal(size=dim))
    fa = normalize(a + noise * rng.normal(size=(n, dim)))
    fb = normalize(b + noise * rng.normal(size=(n, dim)))
    fc = normalize(a + noise * rng.normal(size=(n, dim)))
    feats = np.concatenate([fa, fb, fc]).astype(np.float32)
    tracks = np.repeat([1, 2, 3], n)
    frames = np.concatenate([np.arange(n), np.arange(n), np.arange(n) + 100])
    return feats, tracks, frames


def test_video_distances_separate_same_from_different_people():
    feats, tracks, frames = _two_people(np.random.default_rng(0))
    d = video_distances(feats, tracks, frames, min_len=4)
    assert len(d.same_sample) == 60  # every sample of the three tracklets against its own centroid
    assert len(d.same_centroid) == 3  # each tracklet's two halves
    assert len(d.diff_centroid) == 1  # tracklets 1 and 2 share frames; 3 shares none
    assert len(d.diff_sample) == 40  # each sample of 1 against 2's centroid and back
    assert d.same_sample.max() < d.diff_sample.min()
    assert d.same_centroid.max() < d.diff_centroid.min()


def test_video_distances_leave_out_short_tracklets_and_bound_the_sample():
    feats, tracks, frames = _two_people(np.random.default_rng(1))
    d = video_distances(feats, tracks, frames, min_len=25)  # every tracklet too short for L1
    assert all(len(getattr(d, k)) == 0 for k in ("same_sample", "diff_sample", "same_centroid", "diff_centroid"))
    d = video_distances(feats, tracks, frames, min_len=4, max_per_kind=10)
    assert len(d.same_sample) == 10 and len(d.diff_sample) == 10
    e = video_distances(feats, tracks, frames, min_len=4, max_per_kind=10)
    assert np.array_equal(d.same_sample, e.same_sample)  # seeded: the same sample every time


def _distances(scale: float, n: int = 400, rng=None) -> Distances:
    rng = rng or np.random.default_rng(0)
    f32 = np.float32
    return Distances(same_sample=(scale * rng.gamma(4, 0.13 / 4, n)).astype(f32),
                     diff_sample=(scale * rng.uniform(0.4, 1.4, n)).astype(f32),
                     same_centroid=(scale * rng.gamma(4, 0.035 / 4, n)).astype(f32),
                     diff_centroid=(scale * rng.uniform(0.3, 1.4, n)).astype(f32))


def test_thresholds_follow_the_distance_scale():
    cfg, dn, lk = CalibrateConfig(), DenoiseConfig(), LinkConfig()
    one = calibrate(_distances(1.0), cfg, dn, lk)
    two = calibrate(_distances(2.0), cfg, dn, lk)
    assert one.applied and two.applied
    for k in one.thresholds:
        assert two.thresholds[k] == pytest.approx(2 * one.thresholds[k], abs=2e-3)
    st = one.stats
    assert st["s"] == pytest.approx(np.median(_distances(1.0).same_sample) / REFERENCE["spread"])
    # the different-person distances lie well beyond the tuning worlds': the same-person scale rules
    assert st["ds"] > st["s"] and st["dc"] > st["s"] and not one.bounded
    assert one.thresholds["threshold"] == pytest.approx(lk.threshold * st["s"], abs=5e-4)
    assert one.thresholds["radius"] == pytest.approx(dn.radius * st["s"], abs=5e-4)


def test_look_alikes_hold_the_linking_thresholds_down_to_the_floor():
    cfg, dn, lk = CalibrateConfig(), DenoiseConfig(), LinkConfig()
    d = _distances(1.0)
    d.diff_centroid = np.full(400, 0.5 * REFERENCE["diff_centroid"], np.float32)  # other people closer
    cal = calibrate(d, cfg, dn, lk)
    s = cal.stats["s"]
    assert cal.stats["dc"] == pytest.approx(0.5, rel=1e-5) and {"merge", "threshold", "drift", "margin"} <= set(cal.bounded)
    # linking is bounded by the look-alikes, but not below link_floor x the same-person scale
    assert cal.thresholds["threshold"] == pytest.approx(lk.threshold * max(0.5, cfg.link_floor * s), abs=5e-4)
    assert cal.thresholds["margin"] == pytest.approx(dn.margin * min(s, 0.5), abs=5e-4)
    assert "radius" not in cal.bounded
    assert "held down by the different-person distances" in calibration_text(cal.to_json())
    d.diff_sample = np.full(400, 0.5 * REFERENCE["diff_sample"], np.float32)  # and their samples closer
    assert calibrate(d, cfg, dn, lk).thresholds["radius"] == pytest.approx(dn.radius * 0.5, abs=5e-4)


def test_too_few_pairs_or_calibration_off_keep_the_configured_thresholds():
    dn, lk = DenoiseConfig(radius=0.3), LinkConfig(threshold=0.1)
    d = _distances(1.0)
    d.diff_centroid = d.diff_centroid[:5]
    cal = calibrate(d, CalibrateConfig(), dn, lk)
    assert not cal.applied and "too few pairs" in cal.reason and "diff_centroid 5" in cal.reason
    assert cal.apply(dn, lk) == (dn, lk)
    off = calibrate(_distances(1.0), CalibrateConfig(enabled=False), dn, lk)
    assert not off.applied and off.thresholds["radius"] == 0.3 and "off" in calibration_text(off.to_json())


def test_pool_and_bad_settings():
    a, b = _distances(1.0, 10), _distances(1.0, 20)
    assert len(pool([a, b]).same_sample) == 30 and len(pool([]).diff_centroid) == 0
    with pytest.raises(ConfigError, match="calibrate.link_floor"):
        CalibrateConfig(link_floor=1.5)
    with pytest.raises(ConfigError, match="calibrate.min_pairs"):
        CalibrateConfig(min_pairs=0)
    # the calibration settings are part of the curation's fingerprint
    assert CurateConfig().fingerprint() != CurateConfig(calibrate=CalibrateConfig(link_floor=0.5)).fingerprint()


@pytest.fixture(scope="module")
def tiny_embedded(tiny_world):
    from cion_ray.curation.local import embedded_world
    return embedded_world(None, tiny_world)


def _squash(videos: list[VideoCrops], amount: float) -> list[VideoCrops]:
    """Another embedder: every feature pulled towards one direction, so all distances shrink."""
    u = normalize(np.random.default_rng(5).normal(size=videos[0].feats.shape[1]))
    return [VideoCrops(v.video_id, v.crop_id, v.track_id, v.frame,
                       normalize(v.feats + amount * u).astype(np.float32)) for v in videos]


def _f1(result, gt: np.ndarray) -> tuple[float, int]:
    lab = np.concatenate(result.sample_labels())
    keep = lab >= 0
    return pairwise_prf(gt[keep], lab[keep])["f1"], int(keep.sum())


def test_calibration_beats_a_fixed_threshold_wrong_for_the_embedder(tiny_embedded):
    videos, gt = tiny_embedded
    dn, lk = DenoiseConfig(), LinkConfig(min_images=2)
    base, _, _ = curate_calibrated(videos, dn, lk, CalibrateConfig(enabled=False))
    f1_base, _ = _f1(base, gt)
    squashed = _squash(videos, 2.5)  # distances about 6x smaller: the defaults now merge different people
    fixed, _, _ = curate_calibrated(squashed, dn, lk, CalibrateConfig(enabled=False))
    calibrated, cal, _ = curate_calibrated(squashed, dn, lk, CalibrateConfig())
    f1_fixed, kept_fixed = _f1(fixed, gt)
    f1_cal, kept = _f1(calibrated, gt)
    _, kept_base = _f1(base, gt)
    total = sum(len(v.crop_id) for v in videos)
    assert cal.applied and cal.stats["s"] < 0.4
    # the fixed radius is far too wide for the squashed distances: L1 cleans nothing, and different
    # people are linked; calibrated, the run cleans and links as it does with the right embedder
    assert kept_fixed > 0.95 * total > kept_base
    assert f1_cal > f1_fixed + 0.02, (f1_cal, f1_fixed)
    assert f1_cal >= f1_base - 0.02, (f1_cal, f1_base)
    assert abs(kept - kept_base) < 0.1 * kept_base


def test_corpus_distances_leave_out_invalid_embeddings(tiny_embedded):
    videos, _ = tiny_embedded
    v = videos[0]
    feats = v.feats.copy()
    feats[:3] = np.nan
    broken = [VideoCrops(v.video_id, v.crop_id, v.track_id, v.frame, feats)] + videos[1:]
    d = corpus_distances(broken, 4)
    assert all(np.isfinite(getattr(d, k)).all() for k in ("same_sample", "diff_sample", "same_centroid",
                                                           "diff_centroid"))
